//! worker_shutdown_timeout for requests still in Python.
//!
//! When an exiting worker's (reload, `nginx -s quit`) shutdown timeout ends, nginx marks
//! each of its connections close and error and calls its read handler, which terminates
//! the request and runs its cleanups (ngx_shutdown_timer_handler, then
//! ngx_http_request_handler and ngx_http_terminate_request). A request whose Python thread
//! is still in the app stays blocked (handler.rs) and its guard timer keeps the worker
//! alive, so nginx alone would wait for the app however long it takes: a slow endpoint
//! would pin one old worker, interpreter and all, per reload. The request cleanup here
//! lets such a request go instead, after logging where its thread is in Python; the
//! worker then exits with that thread still inside the app.
//!
//! Nothing else changes: without worker_shutdown_timeout, or for a client that merely
//! left, the worker still waits for the app to return.

use crate::output::RequestCtx;
use crate::{no_unwind, Site};
use ngx::ffi::*;
use rwsgi::{LogLabel, LogLevel};
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long the event loop waits for a stack. Formatting it takes the GIL, which the
/// stuck thread may hold: waiting on the loop at all is acceptable only because the
/// worker is exiting.
const STACK_WAIT: Duration = Duration::from_secs(1);

/// Set when a stack did not come in time: the GIL is held, the next would not come either.
static GIL_HELD: AtomicBool = AtomicBool::new(false);

/// Adds the request cleanup that watches for the shutdown timeout while the thread owns
/// the request. False if the pool is out of memory.
///
/// # Safety
/// r is live, on the event loop; ctx is r's context (freed with r's pool, after the
/// request's cleanups have run).
pub unsafe fn watch(r: *mut ngx_http_request_t, ctx: NonNull<RequestCtx>) -> bool {
    // SAFETY: r is live (caller).
    let cln = unsafe { ngx_http_cleanup_add(r, 0) };
    if cln.is_null() {
        return false;
    }
    // SAFETY: cln is a fresh cleanup of r; ctx outlives r's cleanups (caller).
    unsafe {
        (*cln).handler = Some(on_terminate);
        (*cln).data = ctx.as_ptr() as *mut c_void;
    }
    true
}

/// Request cleanup: run when nginx terminates the request (and when it frees it).
extern "C" fn on_terminate(data: *mut c_void) {
    // SAFETY: data is the request's ctx (see watch), alive with its request while the
    // request's cleanups run; called on the event loop.
    let site = unsafe { Site::ending(data as *mut RequestCtx) };
    no_unwind(site, "request cleanup", (), || {
        // SAFETY: as above; the only reference to ctx while it is used.
        let ctx = unsafe { &mut *(data as *mut RequestCtx) };
        if !ctx.held_by_thread() {
            return; // the thread is done with the request
        }
        let r = ctx.r();
        // SAFETY: r is live while its cleanups run, so is its connection; ngx_exiting is
        // only written on this (the event-loop) thread.
        let (c, shutdown_timeout) = unsafe {
            let c = (*r).connection;
            // c->close on a busy connection of an exiting worker: the shutdown timeout.
            (c, ngx_exiting != 0 && (*c).close() != 0)
        };
        // SAFETY: as above.
        let log = unsafe { (*c).log };
        if !shutdown_timeout {
            // Terminated for another reason (the client left): nginx has dropped the
            // request's cleanups, so watch again for a shutdown timeout to come.
            let again = NonNull::new(data as *mut RequestCtx).expect("watched ctx");
            // SAFETY: r is live, on the event loop, and `again` is its context.
            if !unsafe { watch(r, again) } {
                // SAFETY: log is the live connection's, on the event loop.
                unsafe {
                    crate::log::write_at(
                        log,
                        NGX_LOG_ALERT,
                        ctx.label(),
                        "cannot watch the request for worker_shutdown_timeout",
                    )
                };
            }
            return;
        }
        // From now on the thread's output is dropped and its body reads fail.
        // SAFETY: r is live, on the event loop.
        let Some(released) = (unsafe { ctx.release() }) else {
            return;
        };
        // SAFETY: log is the live connection's.
        unsafe {
            log_stuck(
                log,
                ctx.label(),
                released.python_thread,
                released.group.as_deref(),
            )
        };
        // SAFETY: r is live (its cleanups are running).
        unsafe {
            if (*r).header_sent() == 0 {
                (*r).headers_out.status = NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_uint_t;
            }
        }
        // ngx_http_terminate_request goes on from here and closes the request.
    })
}

/// # Safety
/// log is the request's connection log; on the event loop.
unsafe fn log_stuck(
    log: *mut ngx_log_t,
    label: &LogLabel,
    thread: Option<u64>,
    group: Option<&str>,
) {
    let (state, stack) = match thread.map(|t| (t, python_stack(t))) {
        // Its app process is told by the closed connection (and has its own timeouts).
        None if group.is_some() => (
            format!("proxied to process group {}", group.unwrap_or_default()),
            None,
        ),
        None => (
            "whose response waits for its client (no Python thread runs it)".to_string(),
            None,
        ),
        Some((t, Ok(Some(stack)))) => (
            format!("still running in Python, thread {t:#x} (most recent call last):"),
            Some(stack),
        ),
        Some((t, Ok(None))) => (format!("whose thread {t:#x} is outside Python code"), None),
        Some((t, Err(why))) => (
            format!("still running in Python, thread {t:#x}; stack unavailable: {why}"),
            None,
        ),
    };
    let message = format!("worker_shutdown_timeout: closing a request {state}");
    // SAFETY: log is live, on the event loop (the contract).
    unsafe { crate::log::write(log, LogLevel::Warn, label, message) };
    for line in stack.iter().flat_map(|s| s.lines()) {
        // SAFETY: as above.
        unsafe { crate::log::write(log, LogLevel::Warn, label, line) };
    }
}

/// The Python stack of `thread`, formatted on a short-lived thread that the caller does
/// not wait for: the result comes through the receiver (None if no thread could start).
/// At most STACKS_AT_ONCE such threads wait for the GIL at a time: if it stays taken
/// (a C extension holding it), later reports go without a stack instead of piling up
/// threads.
pub fn python_stack_later(thread: u64) -> Option<mpsc::Receiver<Result<Option<String>, String>>> {
    const STACKS_AT_ONCE: usize = 4;
    static WAITING: AtomicUsize = AtomicUsize::new(0);
    let runtime = crate::worker::get()?.runtime;
    if WAITING.fetch_add(1, Ordering::AcqRel) >= STACKS_AT_ONCE {
        WAITING.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rwsgi-stack".into())
        .spawn(move || {
            let stack = runtime.thread_stack(thread);
            WAITING.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(stack);
        });
    if spawned.is_err() {
        WAITING.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(rx)
}

/// The Python stack of `thread`, formatted on a short-lived thread so that the event
/// loop waits for the GIL no longer than STACK_WAIT.
fn python_stack(thread: u64) -> Result<Option<String>, String> {
    if GIL_HELD.load(Ordering::Relaxed) {
        return Err("the GIL was not free for an earlier stack".into());
    }
    let runtime = crate::worker::get()
        .ok_or("Python is not running in this worker")?
        .runtime;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("rwsgi-stack".into())
        .spawn(move || {
            let _ = tx.send(runtime.thread_stack(thread));
        })
        .map_err(|e| format!("cannot start a thread to format it: {e}"))?;
    rx.recv_timeout(STACK_WAIT).unwrap_or_else(|_| {
        GIL_HELD.store(true, Ordering::Relaxed);
        Err(format!(
            "the GIL was not free within {} s",
            STACK_WAIT.as_secs()
        ))
    })
}
