//! The Python-thread side of a request: the job a pool thread runs for it, and the sink
//! the engine writes the response into. Nothing here touches nginx: output goes to the
//! request's exchange (exchange.rs), which the event loop drains (output.rs).
//!
//! A job runs the app until the response is complete or parked for a slow client; a
//! parked response holds no thread, and the loop queues a new job for it once the client
//! has caught up ([`resume`]).

use crate::exchange::ThreadSide;
use rwsgi::metrics::AppCounters;
use rwsgi::pool::Job;
use rwsgi::{
    AppSpec, BodyReader, ClientGone, Flow, LogLevel, OutputEvent, Parked, Request, ResponseSink,
    Runtime, Stage,
};
use std::sync::Arc;

/// The job that runs a request's app, from the start. The request counts as waiting for
/// a thread (status page) from now until the job starts, or is dropped unrun.
pub fn start(
    spec: Arc<AppSpec>,
    runtime: Runtime,
    request: Request,
    body: Box<dyn BodyReader>,
    side: ThreadSide,
) -> Job {
    let waiting = Waiting::new(side.app());
    Box::new(move || {
        drop(waiting);
        let sink: Arc<dyn ResponseSink> = Arc::new(side.clone());
        drive(&side, || runtime.run(&spec, request, body, sink));
    })
}

/// Called by the loop side (exchange.rs) once the client has caught up with a parked
/// response, or has left: queues it to go on in the pool. Runs on the event loop.
pub fn resume(side: ThreadSide, parked: Parked) {
    let Some(worker) = crate::worker::get() else {
        return;
    };
    worker
        .pool
        .enqueue_admitted(Box::new(move || drive(&side, || parked.resume())));
    // SAFETY: the loop side runs on the event-loop thread.
    unsafe { crate::worker::wake_pool_soon() };
}

/// Runs a request's engine work (`first`, then each resumption that can go on at once)
/// to its end or to its next pause, where it parks the response in the exchange.
fn drive(side: &ThreadSide, first: impl FnOnce() -> Option<Parked>) {
    let mut step = running(side, first);
    while let Some(parked) = step {
        step = side
            .park(parked)
            .and_then(|parked| running(side, || parked.resume()));
    }
}

/// Runs a stretch of the request's engine work, recording this thread as the one running
/// it meanwhile (shutdown.rs logs its Python stack if it gets stuck).
fn running(side: &ThreadSide, work: impl FnOnce() -> Option<Parked>) -> Option<Parked> {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as u64;
    side.set_running(Some(me));
    let step = work();
    side.set_running(None);
    step
}

impl ResponseSink for ThreadSide {
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        ThreadSide::send(self, events)
    }

    fn offer(&self, events: &mut Vec<OutputEvent>) -> Result<Flow, ClientGone> {
        ThreadSide::offer(self, events)
    }

    fn log(&self, level: LogLevel, message: &str) {
        if !ThreadSide::log(self, level, message) {
            // The request is over (the app kept wsgi.errors): nginx sends a worker's
            // stderr to its error log.
            eprintln!("{}", self.label().labelled(message));
        }
    }

    fn stage(&self, stage: Stage) {
        if let (Stage::LoadFailed, Some(app)) = (stage, self.app()) {
            app.import_failed();
        }
    }
}

/// A request counted as waiting for a pool thread while this lives.
struct Waiting(Option<&'static AppCounters>);

impl Waiting {
    fn new(app: Option<&'static AppCounters>) -> Waiting {
        if let Some(app) = app {
            app.wait();
        }
        Waiting(app)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(app) = self.0 {
            app.stop_waiting();
        }
    }
}
