//! The only memory a request's two sides share: its Python thread (thread.rs, body.rs)
//! and nginx's event loop (output.rs, shutdown.rs). This file exists so that neither side
//! touches the other's data: the state is private here, behind one mutex, and each side
//! holds a handle with the few operations it may perform. Nothing here calls nginx or
//! runs Python.
//!
//! - [`ThreadSide`] (the engine's sink, see thread.rs) hands over output events and log
//!   lines, waits or parks while too many bytes wait for a slow client, and reads the
//!   request body only while the request lives.
//! - [`LoopSide`], owned by the request's `RequestCtx`, acknowledges bytes nginx has sent,
//!   marks the client gone, and finishes the request for the thread.
//! - [`Ready`] is what the bridge carries from a thread to the loop; on the loop,
//!   [`Ready::take`] hands out what the thread queued, with the request's context.
//!
//! Backpressure: a streamed body does not hold its thread while the client is slow.
//! `offer` says "full" past HIGH_WATER, the engine hands back the response parked, and
//! the exchange keeps it until nginx has sent all but LOW_WATER bytes, then queues it to
//! go on (thread.rs). A blocking `send` waits instead.
//!
//! A stream of tiny chunks (server-sent events, a row-by-row export) must not cost memory
//! per chunk: small chunks the loop has not taken yet are merged into one (up to
//! rwsgi::chunk::SHARE_FROM), and each body part counts as at least EVENT_COST bytes, so
//! the window bounds the events waiting as well as their bytes.
//!
//! How the loop finds the request: the handler registers the request's `RequestCtx` with
//! [`LoopSide::bind`]. The pointer is kept in the state as an opaque token that only
//! [`Ready::take`] hands out, and the loop side clears it, under the lock, when it
//! finishes the request and at the latest when the `RequestCtx` (which owns the
//! `LoopSide`) is dropped. Invariant: a token `take` returns points at a live
//! `RequestCtx`. Only the loop thread frees a `RequestCtx`, and it cannot do so while it
//! is running `take` and using what it returned.

use crate::output::RequestCtx;
use rwsgi::metrics::AppCounters;
use rwsgi::{ClientGone, Flow, LogLabel, LogLevel, OutputEvent, Parked};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes the app may have waiting for the client before it pauses.
pub const HIGH_WATER: usize = 256 * 1024;
/// A paused stream goes on when no more than this is still waiting.
pub const LOW_WATER: usize = 64 * 1024;
/// What a body part weighs at least in the window: its event, its buffer and chain link in
/// nginx and its allocation take about this much whatever its length.
const EVENT_COST: usize = 256;

/// The bytes a body part of `len` bytes counts for in the window (`unsent`); the loop
/// acknowledges the same amount once nginx has sent it.
pub fn cost(len: usize) -> usize {
    len.max(EVENT_COST)
}

/// Creates a request's exchange: the handle its Python work gets and the one its
/// `RequestCtx` keeps. `label` goes in front of the request's log lines (log.rs); `app`
/// counts them on the status page.
pub fn pair(label: LogLabel, app: Option<&'static AppCounters>) -> (ThreadSide, LoopSide) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        drained: Condvar::new(),
        label,
        app,
    });
    (ThreadSide(shared.clone()), LoopSide(shared))
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when `unsent` drops or the client is gone, for a thread in `send`.
    drained: Condvar,
    /// Fixed for the request's life, read by both sides without the lock.
    label: LogLabel,
    app: Option<&'static AppCounters>,
}

#[derive(Default)]
struct State {
    events: Vec<OutputEvent>,
    logs: Vec<(LogLevel, String)>,
    /// Body parts handed over and not yet sent by nginx, counted by `cost`.
    unsent: usize,
    /// The client is gone (or the response failed): the thread stops producing.
    gone: bool,
    /// On the bridge's ready list already.
    scheduled: bool,
    /// The loop is done with the request, which may be gone: the thread's output is
    /// dropped and its body reads fail.
    finished: bool,
    /// The thread is waiting for `unsent` to drop (saves a wake-up syscall otherwise).
    waiting: bool,
    /// A streamed response paused for the client (no thread holds it meanwhile).
    parked: Option<Parked>,
    /// The pool thread running the request's Python work right now (pthread_self, which
    /// is threading.get_ident()), so the loop can tell where it is stuck.
    thread: Option<u64>,
    /// The request's RequestCtx while it lives and the request is not finished (see the
    /// invariant at the top of this file).
    ctx: Option<CtxToken>,
}

/// A RequestCtx pointer kept for the loop. Threads only move it around inside `State`.
struct CtxToken(NonNull<RequestCtx>);

// SAFETY: the pointer is only read out (Ready::take) and dereferenced on the event-loop
// thread; other threads never look at it.
unsafe impl Send for CtxToken {}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a thread waiting in `send` (if one is), after its state changed.
    fn wake(&self, state: MutexGuard<'_, State>) {
        let waiting = state.waiting;
        drop(state);
        if waiting {
            self.drained.notify_all();
        }
    }
}

/// Puts the exchange on the bridge's ready list, unless it is there already or the
/// request is finished.
fn schedule(shared: &Arc<Shared>, state: &mut State) {
    if !state.scheduled && !state.finished {
        state.scheduled = true;
        crate::bridge::schedule(Ready(shared.clone()));
    }
}

// ---- thread side ---------------------------------------------------------------------

/// The request as its Python work sees it (the engine's ResponseSink, see thread.rs).
#[derive(Clone)]
pub struct ThreadSide(Arc<Shared>);

impl ThreadSide {
    /// Hands `events` to the loop (draining it) and waits while more than HIGH_WATER bytes
    /// wait for the client, unless the batch is the final one. Err once the client is
    /// gone: then only a final event is still handed over (it releases the request).
    pub fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        let mut state = self.0.lock();
        if state.gone {
            events.retain(OutputEvent::is_final);
        }
        if events.is_empty() {
            return if state.gone { Err(ClientGone) } else { Ok(()) };
        }
        let is_final = events.iter().any(OutputEvent::is_final);
        self.queue(&mut state, events);
        while !is_final && !state.gone && state.unsent > HIGH_WATER {
            state.waiting = true;
            state = self
                .0
                .drained
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            state.waiting = false;
        }
        if state.gone {
            Err(ClientGone)
        } else {
            Ok(())
        }
    }

    /// Hands streamed body parts to the loop without waiting; Full past HIGH_WATER.
    pub fn offer(&self, events: &mut Vec<OutputEvent>) -> Result<Flow, ClientGone> {
        let mut state = self.0.lock();
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

    /// The label of the request's log lines.
    pub fn label(&self) -> &LogLabel {
        &self.0.label
    }

    /// The request's app on the status page.
    pub fn app(&self) -> Option<&'static AppCounters> {
        self.0.app
    }

    /// Queues a log line for the request's log; false (nothing queued) once the request is
    /// over.
    pub fn log(&self, level: LogLevel, message: &str) -> bool {
        let mut state = self.0.lock();
        if state.finished {
            return false;
        }
        state.logs.push((level, message.to_string()));
        schedule(&self.0, &mut state);
        true
    }

    /// Hands `events` over, counting their body parts as unsent. A small body part joins
    /// the one queued before it when the loop has not taken that yet.
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
        schedule(&self.0, state);
    }

    /// The engine returned the response parked: keeps it until the client has caught up
    /// (the loop then queues it to go on), or gives it back to go on right away if the
    /// client already has (or has left).
    pub fn park(&self, parked: Parked) -> Option<Parked> {
        let mut state = self.0.lock();
        if state.gone || state.unsent <= LOW_WATER {
            return Some(parked);
        }
        state.parked = Some(parked);
        None
    }

    /// Records the pool thread running the request's Python work (None: none is).
    pub fn set_running(&self, thread: Option<u64>) {
        self.0.lock().thread = thread;
    }

    /// Runs `read` unless the request is over (then None), with the loop kept from
    /// finishing it meanwhile: while `read` runs, the request pool stays alive.
    pub fn while_live<R>(&self, read: impl FnOnce() -> R) -> Option<R> {
        let state = self.0.lock();
        if state.finished {
            return None;
        }
        let result = read();
        drop(state);
        Some(result)
    }
}

// ---- loop side -----------------------------------------------------------------------

/// The request's exchange as the event loop sees it; owned by its RequestCtx. Every
/// method runs on the event-loop thread.
pub struct LoopSide(Arc<Shared>);

impl LoopSide {
    /// Registers the RequestCtx that owns this handle, for [`Ready::take`].
    ///
    /// # Safety
    /// `ctx` is the (heap-pinned) RequestCtx that owns this LoopSide, and it is only
    /// dereferenced on the event-loop thread. It then stays valid as long as the token
    /// does: dropping the RequestCtx drops this handle, which clears the token first.
    pub unsafe fn bind(&self, ctx: NonNull<RequestCtx>) {
        self.0.lock().ctx = Some(CtxToken(ctx));
    }

    /// `bytes` were sent to the client: wakes the thread if it waits, and queues a parked
    /// response to go on once no more than LOW_WATER bytes wait.
    pub fn acknowledge(&self, bytes: usize) {
        let mut state = self.0.lock();
        state.unsent = state.unsent.saturating_sub(bytes);
        let resume = if state.unsent <= LOW_WATER {
            state.parked.take()
        } else {
            None
        };
        self.0.wake(state);
        if let Some(parked) = resume {
            crate::thread::resume(ThreadSide(self.0.clone()), parked);
        }
    }

    /// The client is gone: the thread stops producing. A parked response still runs to
    /// its end (close() and the final event), on a pool thread.
    pub fn mark_gone(&self) {
        let mut state = self.0.lock();
        state.gone = true;
        let resume = state.parked.take();
        self.0.wake(state);
        if let Some(parked) = resume {
            crate::thread::resume(ThreadSide(self.0.clone()), parked);
        }
    }

    /// The label of the request's log lines.
    pub fn label(&self) -> &LogLabel {
        &self.0.label
    }

    /// The pool thread running the request's Python work now, if one is.
    pub fn running_thread(&self) -> Option<u64> {
        self.0.lock().thread
    }

    /// The loop is done with the request, whatever its Python work still does: from now
    /// on the thread's output is dropped, its body reads fail, and a thread waiting for
    /// the client is woken with ClientGone. A parked response is dropped unresumed (call
    /// `mark_gone` first to have it run to its end). Returns the pool thread running the
    /// request's Python work, if one is.
    pub fn finish(&self) -> Option<u64> {
        let mut state = self.0.lock();
        state.finished = true;
        state.gone = true;
        state.ctx = None;
        let parked = state.parked.take();
        let thread = state.thread;
        self.0.wake(state);
        drop(parked);
        thread
    }
}

impl Drop for LoopSide {
    /// The RequestCtx is being freed: the token must not outlive it.
    fn drop(&mut self) {
        self.finish();
    }
}

// ---- the crossing --------------------------------------------------------------------

/// An exchange with something for the loop, on the bridge's ready list.
pub struct Ready(Arc<Shared>);

/// What a thread queued for the loop, taken by [`Ready::take`].
pub struct Batch {
    /// The request's context: live (see the invariant at the top of this file), and only
    /// to be used on the event-loop thread.
    pub ctx: NonNull<RequestCtx>,
    pub events: Vec<OutputEvent>,
    pub logs: Vec<(LogLevel, String)>,
}

impl Ready {
    /// On the event loop: takes what the thread queued. None once the request is
    /// finished (its RequestCtx may be gone).
    pub fn take(self) -> Option<Batch> {
        let mut state = self.0.lock();
        if state.finished {
            return None;
        }
        let ctx = state.ctx.as_ref()?.0;
        state.scheduled = false;
        Some(Batch {
            ctx,
            events: std::mem::take(&mut state.events),
            logs: std::mem::take(&mut state.logs),
        })
    }
}
