//! The engine's one door for a server module. A front end (nginx's glue, Apache's, an app
//! process) starts Python through [`Runtime::start`], imports its apps with
//! [`Runtime::preload`], runs requests with [`Runtime::run`] (or a [`crate::pool`] of
//! threads from [`Runtime::start_pool`]) and does the housekeeping below; everything it
//! passes in and gets back is plain data (`server.rs`). No Python type crosses this
//! door, so the glue crates do not depend on pyo3.

use crate::app::{format_error, get_app, AppSpec};
use crate::call::{run_request, Parked};
use crate::pool::{Job, Threads, WorkerPool};
use crate::server::{BodyReader, Request, ResponseSink};
use pyo3::exceptions::PyLookupError;
use pyo3::Python;
use std::path::Path;
use std::sync::Arc;

/// Facts about the hosting server that every environ carries.
#[derive(Debug, Clone, Copy)]
pub struct ServerTraits {
    pub multithread: bool,
    pub multiprocess: bool,
}

/// The Python version the engine was built against ("3.11"), recorded by build.rs: a
/// virtualenv of another version cannot work, and saying so beats a crash in `encodings`.
pub const PYTHON_VERSION: &str = env!("RWSGI_PYTHON_VERSION");

/// Why an app could not be imported, with what the error log needs.
#[derive(Debug, Clone)]
pub struct LoadError {
    /// The script or module ran but defines no such callable (for an import script,
    /// which need not define one, this is not a failure).
    pub no_callable: bool,
    /// The exception with its traceback, ready for the log.
    pub traceback: String,
}

/// Python, started in this process. Cheap to copy; every copy is the same interpreter.
#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    traits: ServerTraits,
}

impl Runtime {
    /// Starts the interpreter once in this process (after fork, never in a server's
    /// master), with `home` a virtualenv or a Python prefix. Later calls return the same
    /// outcome as the first.
    pub fn start(home: Option<&Path>, traits: ServerTraits) -> Result<Runtime, String> {
        crate::interpreter::initialize(home)?;
        Ok(Runtime { traits })
    }

    pub fn traits(&self) -> ServerTraits {
        self.traits
    }

    /// Imports the app now, so that errors show at start-up instead of on the first request.
    pub fn preload(&self, spec: &AppSpec) -> Result<(), LoadError> {
        Python::attach(|py| match get_app(py, spec) {
            Ok(_) => Ok(()),
            Err(e) => Err(LoadError {
                no_callable: e.is_instance_of::<PyLookupError>(py),
                traceback: format_error(py, &e),
            }),
        })
    }

    /// Runs one request on the calling thread (see [`run_request`]).
    pub fn run(
        &self,
        spec: &AppSpec,
        req: Request,
        body: Box<dyn BodyReader>,
        sink: Arc<dyn ResponseSink>,
    ) -> Option<Parked> {
        run_request(spec, self.traits, req, body, sink)
    }

    /// Threads that run requests for an event-driven server, each keeping the GIL while
    /// it drains the queue (see [`crate::pool`]); a thread that retires gives its Python
    /// thread state back.
    pub fn start_pool(&self, threads: Threads, max_queue: usize) -> std::io::Result<WorkerPool> {
        WorkerPool::start(
            threads,
            max_queue,
            hold_gil,
            crate::interpreter::release_current_thread,
        )
    }

    /// True (once) when response chunks that kept the app's bytes objects alive were
    /// dropped without the GIL since the last call: their memory is freed only once some
    /// thread attaches to Python, so the server should run [`Runtime::free_dropped_chunks`]
    /// on a thread that may wait for the GIL. Cheap; never waits.
    pub fn chunks_dropped_off_gil(&self) -> bool {
        crate::chunk::take_dropped_off_gil()
    }

    /// A job that frees such chunks (attaching to Python once), for a pool thread.
    pub fn free_dropped_chunks_job(&self) -> Job {
        Box::new(|| Python::attach(|_| ()))
    }

    /// Frees such chunks now if there are any; waits for the GIL.
    pub fn free_dropped_chunks(&self) {
        if self.chunks_dropped_off_gil() {
            Python::attach(|_| ());
        }
    }

    /// Where the thread whose `threading.get_ident()` is `ident` is in Python, formatted
    /// like a traceback (None when it runs no Python code). Waits for the GIL.
    pub fn thread_stack(&self, ident: u64) -> Result<Option<String>, String> {
        Python::attach(|py| crate::stack::thread_stack(py, ident).map_err(|e| format_error(py, &e)))
    }
}

/// A pool thread keeps the GIL while it drains queued requests (see crate::pool).
fn hold_gil(drain: &mut dyn FnMut()) {
    crate::interpreter::adopt_current_thread();
    Python::attach(|_| drain());
}

/// The running Python's version line (`sys.version`), readable before Python starts.
pub fn python_version_line() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string and may be called
    // before (and without) initializing Python.
    let version = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) };
    version.to_string_lossy().into_owned()
}
