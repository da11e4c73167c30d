//! The request as the body reader and the response sink share it while the handler runs.
//! Both may be called from whichever thread runs the app's Python code (the app can keep
//! wsgi.input / wsgi.errors and use them from another thread, even after the request), so
//! every touch of the request_rec goes through one lock, and the handler retires the state
//! before it returns to httpd: afterwards the reader and sink see no request at all.

use crate::bindings::*;
use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard};

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
}

impl Live {
    pub fn new(r: *mut request_rec, sendfile: bool) -> Live {
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        // A panic while holding the lock is caught at the FFI boundary; the state itself
        // stays consistent enough to finish the response, so ignore poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state while the request is live; None after [`Live::retire`].
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.lock().as_mut().map(f)
    }

    /// Ends the sharing: waits for any I/O in progress and returns the final state.
    pub fn retire(&self) -> Option<State> {
        self.lock().take()
    }
}
