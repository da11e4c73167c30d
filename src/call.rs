//! Runs one request through a WSGI app: builds the environ, calls the app, walks the
//! returned iterable into the [`ResponseSink`], calls close() on every path, and turns
//! failures into a 500 (nothing sent yet) or an aborted body (something sent).

use crate::app::{format_error, get_app, AppSpec};
use crate::environ::{environ_template, fill_environ};
use crate::errors::ErrorStream;
use crate::file_wrapper::FileWrapper;
use crate::input::Input;
use crate::response::{Response, Stop};
use crate::server::{BodyReader, LogLevel, OutputEvent, Request, ResponseSink};
use crate::start_response::{stop_error, StartResponse};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::sync::Arc;

/// Facts about the hosting server that every environ carries.
#[derive(Debug, Clone, Copy)]
pub struct ServerTraits {
    pub multithread: bool,
    pub multiprocess: bool,
}

static TEMPLATE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// Runs the request to completion on the calling thread, which must not hold the GIL.
/// Exactly one final event (End, Abort or Fail) reaches `sink`, whatever happens.
pub fn run_request(
    spec: &AppSpec,
    traits: ServerTraits,
    req: Request,
    body: Box<dyn BodyReader>,
    sink: Arc<dyn ResponseSink>,
) {
    let head_request = req.method == "HEAD";
    crate::interpreter::adopt_current_thread();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Python::attach(|py| run_in_python(py, spec, traits, &req, body, &sink, head_request))
    }));
    if outcome.is_err() {
        sink.log(
            LogLevel::Error,
            "rwsgi: internal error while running the application",
        );
        let _ = sink.send(&mut vec![OutputEvent::Fail(500)]);
    }
}

fn run_in_python(
    py: Python<'_>,
    spec: &AppSpec,
    traits: ServerTraits,
    req: &Request,
    body: Box<dyn BodyReader>,
    sink: &Arc<dyn ResponseSink>,
    head_request: bool,
) {
    let start_response = match Bound::new(
        py,
        StartResponse::new(Response::new(sink.clone(), head_request)),
    ) {
        Ok(sr) => sr,
        Err(e) => {
            log_exception(py, sink, "creating start_response", &e);
            let _ = sink.send(&mut vec![OutputEvent::Fail(500)]);
            return;
        }
    };
    let failed = match call_app(py, spec, traits, req, body, sink, &start_response) {
        Ok(()) => false,
        Err(e) => {
            log_exception(py, sink, &spec.describe(), &e);
            true
        }
    };
    let locked = start_response.get().lock();
    match locked {
        Ok(mut response) => response.finish(py, failed),
        Err(_) => {
            sink.log(
                LogLevel::Error,
                "rwsgi: response still in use by another thread; aborting",
            );
            let _ = py.detach(|| sink.send(&mut vec![OutputEvent::Abort]));
        }
    };
}

fn call_app(
    py: Python<'_>,
    spec: &AppSpec,
    traits: ServerTraits,
    req: &Request,
    body: Box<dyn BodyReader>,
    sink: &Arc<dyn ResponseSink>,
    start_response: &Bound<'_, StartResponse>,
) -> PyResult<()> {
    let app = get_app(py, spec)?;
    let template = TEMPLATE.get_or_try_init(py, || {
        let file_wrapper = py.get_type::<FileWrapper>();
        environ_template(
            py,
            file_wrapper.as_any(),
            traits.multithread,
            traits.multiprocess,
        )
        .map(Bound::unbind)
    })?;
    let environ = template.bind(py).copy()?;
    fill_environ(py, &environ, req)?;
    environ.set_item(
        pyo3::intern!(py, "wsgi.input"),
        Bound::new(py, Input::new(body))?,
    )?;
    environ.set_item(
        pyo3::intern!(py, "wsgi.errors"),
        Bound::new(py, ErrorStream::new(sink.clone()))?,
    )?;

    let iterable = app.call1((environ, start_response))?;
    let sent = send_body(py, start_response, &iterable);
    let closed = close_iterable(py, &iterable);
    sent.and(closed)
}

/// Calls the iterable's close(), as PEP 3333 requires on every path.
fn close_iterable(py: Python<'_>, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    // Lists and tuples have no close(); asking would raise and discard an AttributeError.
    if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    let close = pyo3::intern!(py, "close");
    if iterable.hasattr(close)? {
        iterable.call_method0(close)?;
    }
    Ok(())
}

/// Walks the body into the response. A client that left ends the walk without error.
fn send_body(
    py: Python<'_>,
    start_response: &Bound<'_, StartResponse>,
    iterable: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let outcome = walk_body(py, start_response, iterable);
    match outcome {
        Ok(()) | Err(BodyError::Stop(Stop::ClientGone | Stop::Overrun)) => Ok(()),
        Err(BodyError::Stop(stop)) => Err(stop_error(stop)),
        Err(BodyError::Python(e)) => Err(e),
    }
}

enum BodyError {
    Stop(Stop),
    Python(PyErr),
}

impl From<PyErr> for BodyError {
    fn from(e: PyErr) -> Self {
        BodyError::Python(e)
    }
}

impl From<Stop> for BodyError {
    fn from(s: Stop) -> Self {
        BodyError::Stop(s)
    }
}

fn walk_body(
    py: Python<'_>,
    start_response: &Bound<'_, StartResponse>,
    iterable: &Bound<'_, PyAny>,
) -> Result<(), BodyError> {
    let sr = start_response.get();
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if let Some(span) = wrapper.get().file_span(py) {
            let mut response = sr.lock()?;
            response.push_file(span.file, span.offset, span.len)?;
            return Ok(response.flush(py)?);
        }
    }
    // A list or tuple is the whole body already: one batch, and Content-Length when the
    // app gave none and there is a single item.
    let items = iterable
        .cast::<PyList>()
        .map(|l| l.as_sequence().clone())
        .ok()
        .or_else(|| {
            iterable
                .cast::<PyTuple>()
                .map(|t| t.as_sequence().clone())
                .ok()
        });
    if let Some(items) = items {
        let len = items.len()?;
        let mut response = sr.lock()?;
        for i in 0..len {
            let item = items.get_item(i)?;
            let bytes = body_bytes(&item)?;
            if len == 1 {
                response.set_length_if_unset(bytes.as_bytes().len() as u64);
            }
            response.push_data(bytes.as_bytes())?;
        }
        return Ok(response.flush(py)?);
    }
    for item in iterable.try_iter()? {
        let item = item?;
        let bytes = body_bytes(&item)?;
        let mut response = sr.lock()?;
        response.push_data(bytes.as_bytes())?;
        if !bytes.as_bytes().is_empty() {
            response.flush(py)?;
        }
    }
    Ok(())
}

fn body_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "response body items must be bytes, not {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

/// Logs an exception with its traceback, one log entry per line.
pub fn log_exception(py: Python<'_>, sink: &Arc<dyn ResponseSink>, context: &str, err: &PyErr) {
    let text = format_error(py, err);
    sink.log(
        LogLevel::Error,
        &format!("exception in WSGI application {context}:"),
    );
    for line in text.lines() {
        sink.log(LogLevel::Error, line);
    }
}
