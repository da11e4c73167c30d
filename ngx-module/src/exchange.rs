//! One request's meeting point between its Python thread and nginx's event loop. The
//! thread side is the engine's [`ResponseSink`]: it queues output events and log lines,
//! schedules the exchange on the bridge, and waits (GIL released, by the engine) while
//! too many bytes are waiting for a slow client. The loop side (output.rs) takes the
//! events, writes them, and acknowledges bytes once nginx has sent them.

use rwsgi::{ClientGone, LogLevel, OutputEvent, ResponseSink};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes the app may have waiting for the client before its thread pauses.
const HIGH_WATER: usize = 256 * 1024;

pub struct Exchange {
    state: Mutex<State>,
    drained: Condvar,
    /// The request's loop-side context (output::RequestCtx), set once by the handler;
    /// only dereferenced on the loop thread, and valid until the loop has processed the
    /// final event.
    ctx: std::sync::atomic::AtomicUsize,
    me: std::sync::Weak<Exchange>,
}

#[derive(Default)]
pub struct State {
    pub events: Vec<OutputEvent>,
    pub logs: Vec<(LogLevel, String)>,
    /// Data bytes handed over and not yet sent by nginx.
    pub unsent: usize,
    /// The client is gone (or the response failed): the thread stops producing.
    pub gone: bool,
    /// On the bridge's ready list already.
    pub scheduled: bool,
    /// The loop has processed the final event; the request may be gone.
    pub finished: bool,
    /// The thread is waiting for `unsent` to drop (saves a wake-up syscall otherwise).
    waiting: bool,
}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new_cyclic(|me| Exchange {
            state: Mutex::new(State::default()),
            drained: Condvar::new(),
            ctx: std::sync::atomic::AtomicUsize::new(0),
            me: me.clone(),
        })
    }

    /// Loop side: records the request context this exchange belongs to.
    pub fn bind(&self, ctx: usize) {
        self.ctx.store(ctx, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn ctx(&self) -> usize {
        self.ctx.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loop side: `bytes` were sent to the client; wake the thread if it waits.
    pub fn acknowledge(&self, bytes: usize) {
        let mut state = self.lock();
        state.unsent = state.unsent.saturating_sub(bytes);
        let waiting = state.waiting;
        drop(state);
        if waiting {
            self.drained.notify_all();
        }
    }

    /// Loop side: the client is gone; wake the thread so it stops.
    pub fn mark_gone(&self) {
        let mut state = self.lock();
        state.gone = true;
        let waiting = state.waiting;
        drop(state);
        if waiting {
            self.drained.notify_all();
        }
    }

    fn schedule(&self, state: &mut State) {
        if !state.scheduled && !state.finished {
            state.scheduled = true;
            if let Some(me) = self.me.upgrade() {
                crate::bridge::schedule(me);
            }
        }
    }
}

impl ResponseSink for Exchange {
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        let mut state = self.lock();
        if state.gone {
            // Only the final event still matters: it releases the request.
            events.retain(OutputEvent::is_final);
        }
        if events.is_empty() {
            return if state.gone { Err(ClientGone) } else { Ok(()) };
        }
        let bytes: usize = events
            .iter()
            .map(|e| match e {
                OutputEvent::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        let is_final = events.iter().any(OutputEvent::is_final);
        state.unsent += bytes;
        state.events.append(events);
        self.schedule(&mut state);
        while !is_final && !state.gone && state.unsent > HIGH_WATER {
            state.waiting = true;
            state = self.drained.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting = false;
        }
        if state.gone {
            Err(ClientGone)
        } else {
            Ok(())
        }
    }

    fn log(&self, level: LogLevel, message: &str) {
        let mut state = self.lock();
        if state.finished {
            // The request is over (the app kept wsgi.errors): nginx sends a worker's
            // stderr to its error log.
            eprintln!("rwsgi: {message}");
            return;
        }
        state.logs.push((level, message.to_string()));
        self.schedule(&mut state);
    }
}
