//! The request as the body reader and the response sink share it while the handler runs.
//! Both may be called from whichever thread runs the app's Python code (the app can keep
//! wsgi.input / wsgi.errors and use them from another thread, even after the request), so
//! every touch of the request_rec goes through one lock, and the handler retires the state
//! before it returns to httpd: afterwards the reader and sink see no request at all.
//!
//! That lock is held across blocking network I/O (`ap_pass_brigade`, `ap_get_brigade`)
//! for as long as the client makes it last (up to httpd's `Timeout`). Log lines arrive
//! with the GIL held, so they never wait for it ([`Live::log`]): a line that finds the
//! request busy goes to a small bounded backlog under a lock of its own, never held
//! across I/O, and whoever holds the request next writes it out.

use crate::bindings::*;
use crate::log::{self, Level};
use rwsgi::LogLabel;
use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// How the response ended, as the engine reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    End,
    Abort,
    Fail(u16),
}

/// Request I/O state; only reachable through [`Live::with`].
pub struct State {
    pub r: *mut request_rec,
    /// Output brigade (created on first use, in the request pool).
    pub out: *mut apr_bucket_brigade,
    /// Input brigade (created on first use, in the request pool).
    pub input: *mut apr_bucket_brigade,
    /// Body bytes read from httpd but not yet handed to the engine.
    pub leftover: Vec<u8>,
    pub leftover_pos: usize,
    pub input_done: bool,
    /// The status httpd mapped a body read failure to (413, 400, 408, AP_FILTER_ERROR...).
    pub read_error: Option<c_int>,
    /// Something was passed to the output filters (headers are on their way).
    pub passed: bool,
    /// The client is gone, or the output is no longer ours to write.
    pub gone: bool,
    pub finish: Option<Finish>,
    /// Use sendfile for wsgi.file_wrapper files.
    pub sendfile: bool,
}

// SAFETY: the request_rec and brigades are only touched while the Live mutex is held,
// so one thread at a time; httpd allows a request to be driven from any single thread,
// and the handler thread is blocked inside the engine (or waiting for this lock) meanwhile.
unsafe impl Send for State {}

pub struct Live {
    state: Mutex<Option<State>>,
    /// Log lines that found `state` locked. Never held across I/O or while logging.
    backlog: Mutex<Backlog>,
    /// In front of each of the request's lines (log.rs).
    label: Arc<LogLabel>,
}

impl Live {
    pub fn new(r: *mut request_rec, sendfile: bool, label: Arc<LogLabel>) -> Live {
        Live {
            state: Mutex::new(Some(State {
                r,
                out: std::ptr::null_mut(),
                input: std::ptr::null_mut(),
                leftover: Vec::new(),
                leftover_pos: 0,
                input_done: false,
                read_error: None,
                passed: false,
                gone: false,
                finish: None,
                sendfile,
            })),
            backlog: Mutex::new(Backlog::default()),
            label,
        }
    }

    /// The label of the request's log lines.
    pub fn label(&self) -> &LogLabel {
        &self.label
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        // A panic while holding the lock is caught at the FFI boundary; the state itself
        // stays consistent enough to finish the response, so ignore poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state's lock if nobody holds it right now.
    fn try_lock(&self) -> Option<MutexGuard<'_, Option<State>>> {
        match self.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state while the request is live; None after [`Live::retire`].
    /// Waits for the lock: call it only without the GIL (another thread may hold the lock
    /// across network I/O). Log lines that came in meanwhile are written before and after.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        let mut guard = self.lock();
        let state = guard.as_mut()?;
        self.drain(state);
        let out = f(state);
        self.drain(state);
        Some(out)
    }

    /// One line for the error log, in the request's context while it is live, on the
    /// main server after it was retired. Never waits for the request's I/O: safe to call
    /// with the GIL held.
    pub fn log(&self, level: Level, message: &str) {
        if let Some(mut guard) = self.try_lock() {
            match guard.as_mut() {
                Some(state) => {
                    self.drain(state);
                    // SAFETY: the state exists, so the handler has not returned and
                    // state.r is live; we hold the lock.
                    unsafe { log::request(state.r, level, &self.label, message) };
                }
                None => log::main_server(level, &self.label, message),
            }
            return;
        }
        let queued = self.backlog().push(level, message);
        if !queued {
            // Retired meanwhile: the request is gone.
            log::main_server(level, &self.label, message);
            return;
        }
        // The holder may have let go (after its last drain) before the line was queued:
        // write it out now if the request is free, else the holder will.
        if let Some(mut guard) = self.try_lock() {
            if let Some(state) = guard.as_mut() {
                self.drain(state);
            }
        }
    }

    /// Writes queued lines into the request's log; the caller holds the state's lock.
    fn drain(&self, state: &State) {
        let (lines, dropped) = self.backlog().take();
        // SAFETY: the caller holds the lock on a state that exists, so state.r is live.
        unsafe { emit(state.r, &self.label, lines, dropped) };
    }

    /// Ends the sharing: waits for any I/O in progress, writes the lines still queued,
    /// and returns the final state. Later log lines go to the main server.
    pub fn retire(&self) -> Option<State> {
        let mut guard = self.lock();
        let state = guard.take()?;
        let (lines, dropped) = {
            let mut backlog = self.backlog();
            backlog.retired = true;
            backlog.take()
        };
        // SAFETY: the handler calls retire before it returns to httpd: state.r is live.
        unsafe { emit(state.r, &self.label, lines, dropped) };
        Some(state)
    }
}

/// # Safety
/// `r` is a live request.
unsafe fn emit(r: *mut request_rec, label: &LogLabel, lines: Vec<(Level, String)>, dropped: u64) {
    for (level, line) in lines {
        // SAFETY: r is live (the caller's contract).
        unsafe { log::request(r, level, label, &line) };
    }
    if dropped > 0 {
        let note = format!(
            "{dropped} log lines of this request were dropped: more than \
             {BACKLOG_LINES} lines or {BACKLOG_BYTES} bytes came while it was blocked \
             on its connection"
        );
        // SAFETY: as above.
        unsafe { log::request(r, Level::Warn, label, &note) };
    }
}

/// Most lines (and bytes of them) kept while the request is busy; more are dropped and
/// counted.
const BACKLOG_LINES: usize = 1024;
const BACKLOG_BYTES: usize = 256 * 1024;

/// Log lines waiting for the request to be free.
#[derive(Default)]
struct Backlog {
    lines: Vec<(Level, String)>,
    bytes: usize,
    /// Lines refused since the last take (over the bounds).
    dropped: u64,
    /// The request was retired: nothing will take lines any more.
    retired: bool,
}

impl Backlog {
    /// Queues a line (or counts it as dropped when full); false once retired.
    fn push(&mut self, level: Level, message: &str) -> bool {
        if self.retired {
            return false;
        }
        if self.lines.len() >= BACKLOG_LINES || self.bytes + message.len() > BACKLOG_BYTES {
            self.dropped += 1;
        } else {
            self.bytes += message.len();
            self.lines.push((level, message.to_owned()));
        }
        true
    }

    /// The queued lines and the count of dropped ones, leaving the backlog empty.
    fn take(&mut self) -> (Vec<(Level, String)>, u64) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.lines),
            std::mem::take(&mut self.dropped),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_bounded_and_counts_what_it_drops() {
        let mut b = Backlog::default();
        for i in 0..BACKLOG_LINES + 10 {
            assert!(b.push(Level::Error, &format!("line {i}")));
        }
        let (lines, dropped) = b.take();
        assert_eq!(lines.len(), BACKLOG_LINES);
        assert_eq!(lines[0].1, "line 0");
        assert_eq!(dropped, 10);
        assert_eq!(b.take(), (Vec::new(), 0));

        let big = "x".repeat(BACKLOG_BYTES / 2);
        assert!(b.push(Level::Warn, &big));
        assert!(b.push(Level::Warn, &big));
        assert!(b.push(Level::Warn, "one byte too many"));
        let (lines, dropped) = b.take();
        assert_eq!((lines.len(), dropped), (2, 1));
        // The bytes bound starts over once taken.
        assert!(b.push(Level::Info, &big));
        assert_eq!(b.take().0.len(), 1);
    }

    #[test]
    fn backlog_refuses_lines_once_retired() {
        let mut b = Backlog::default();
        assert!(b.push(Level::Error, "before"));
        b.retired = true;
        assert!(!b.push(Level::Error, "after"));
        assert_eq!(b.take().0, vec![(Level::Error, "before".to_string())]);
    }
}
