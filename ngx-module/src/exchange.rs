//! One request's meeting point between its Python thread and nginx's event loop. The
//! thread side is the engine's [`ResponseSink`]: it queues output events and log lines,
//! schedules the exchange on the bridge, and waits (GIL released, by the engine) while
//! too many bytes are waiting for a slow client. The loop side (output.rs) takes the
//! events, writes them, and acknowledges bytes once nginx has sent them.
//!
//! A streamed body does not hold its thread while the client is slow: `offer` says
//! "full" past HIGH_WATER, the engine hands back the response parked, and the exchange
//! keeps it until nginx has sent all but LOW_WATER bytes, then queues it to go on.
//!
//! A stream of tiny chunks (server-sent events, a row-by-row export) must not cost memory
//! per chunk: small chunks the loop has not taken yet are merged into one (up to
//! rwsgi::chunk::SHARE_FROM), and each body part counts as at least EVENT_COST bytes, so
//! the window bounds the events waiting as well as their bytes.

use rwsgi::{ClientGone, Flow, LogLevel, OutputEvent, Parked, ResponseSink};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes the app may have waiting for the client before it pauses.
const HIGH_WATER: usize = 256 * 1024;
/// A paused stream goes on when no more than this is still waiting.
const LOW_WATER: usize = 64 * 1024;
/// What a body part weighs at least in the window: its event, its buffer and chain link in
/// nginx and its allocation take about this much whatever its length.
const EVENT_COST: usize = 256;

/// The bytes a body part of `len` bytes counts for in the window (`unsent`); the loop
/// acknowledges the same amount once nginx has sent it.
pub fn cost(len: usize) -> usize {
    len.max(EVENT_COST)
}

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
    /// Body parts handed over and not yet sent by nginx, counted by `cost`.
    pub unsent: usize,
    /// The client is gone (or the response failed): the thread stops producing.
    pub gone: bool,
    /// On the bridge's ready list already.
    pub scheduled: bool,
    /// The loop has processed the final event; the request may be gone.
    pub finished: bool,
    /// The thread is waiting for `unsent` to drop (saves a wake-up syscall otherwise).
    waiting: bool,
    /// A streamed response paused for the client (no thread holds it meanwhile).
    parked: Option<Parked>,
    /// The pool thread running the request's Python work right now (pthread_self, which
    /// is threading.get_ident()), so the loop can tell where it is stuck.
    thread: Option<u64>,
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
        let resume = if state.unsent <= LOW_WATER {
            state.parked.take()
        } else {
            None
        };
        drop(state);
        if waiting {
            self.drained.notify_all();
        }
        if let Some(parked) = resume {
            self.go_on(parked);
        }
    }

    /// Loop side: the client is gone; wake the thread so it stops.
    pub fn mark_gone(&self) {
        let mut state = self.lock();
        state.gone = true;
        let waiting = state.waiting;
        let resume = state.parked.take();
        drop(state);
        if waiting {
            self.drained.notify_all();
        }
        // A parked response must still run to its end: close() and the final event.
        if let Some(parked) = resume {
            self.go_on(parked);
        }
    }

    /// Loop side, when nginx gives up on the request while its Python work may still run
    /// (worker_shutdown_timeout): from now on the thread's output is dropped and its body
    /// reads fail, as after the final event. A parked response is dropped unresumed.
    /// Returns the thread running the request, if one is.
    pub fn abandon(&self) -> Option<u64> {
        let mut state = self.lock();
        state.finished = true;
        state.gone = true;
        let parked = state.parked.take();
        let thread = state.thread;
        let waiting = state.waiting;
        drop(state);
        if waiting {
            self.drained.notify_all();
        }
        drop(parked);
        thread
    }

    /// Thread side: runs a stretch of the request's engine work, recording this thread
    /// as the one running it meanwhile.
    fn running(&self, work: impl FnOnce() -> Option<Parked>) -> Option<Parked> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as u64;
        self.lock().thread = Some(me);
        let step = work();
        self.lock().thread = None;
        step
    }

    /// Thread side, when the engine returned the response parked: keeps it until the
    /// client has caught up, or goes on right away if it already has (or has left).
    pub fn park(&self, parked: Parked) -> Option<Parked> {
        let mut state = self.lock();
        if state.gone || state.unsent <= LOW_WATER {
            return Some(parked);
        }
        state.parked = Some(parked);
        None
    }

    /// Loop side: queues a parked response to go on in the pool.
    fn go_on(&self, parked: Parked) {
        let Some(me) = self.me.upgrade() else { return };
        let Some(worker) = crate::worker::get() else {
            return;
        };
        worker
            .pool
            .enqueue_admitted(Box::new(move || drive(&me, || parked.resume())));
        // SAFETY: acknowledge and mark_gone run on the event loop.
        unsafe { crate::worker::wake_pool_soon() };
    }

    /// Thread side: hands `events` to the loop, counting their body parts as unsent. A
    /// small body part joins the one queued before it when the loop has not taken that yet.
    fn queue(&self, state: &mut State, events: &mut Vec<OutputEvent>) {
        for event in events.drain(..) {
            if let OutputEvent::Data(data) = &event {
                if let Some(OutputEvent::Data(last)) = state.events.last_mut() {
                    let before = cost(last.len());
                    if last.try_append(data) {
                        state.unsent += cost(last.len()) - before;
                        continue;
                    }
                }
                state.unsent += cost(data.len());
            }
            state.events.push(event);
        }
        self.schedule(state);
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
        let is_final = events.iter().any(OutputEvent::is_final);
        self.queue(&mut state, events);
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

    fn offer(&self, events: &mut Vec<OutputEvent>) -> Result<Flow, ClientGone> {
        let mut state = self.lock();
        if state.gone {
            return Err(ClientGone);
        }
        self.queue(&mut state, events);
        Ok(if state.unsent > HIGH_WATER {
            Flow::Full
        } else {
            Flow::Open
        })
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

/// Runs a request's engine work (`first`, then each resumption that can go on at once)
/// to its end or to its next pause (parking it).
pub fn drive(exchange: &Exchange, first: impl FnOnce() -> Option<Parked>) {
    let mut step = exchange.running(first);
    while let Some(parked) = step {
        step = exchange
            .park(parked)
            .and_then(|parked| exchange.running(|| parked.resume()));
    }
}
