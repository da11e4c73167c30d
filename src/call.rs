//! Runs one request through a WSGI app: builds the environ, calls the app, walks the
//! returned iterable into the [`ResponseSink`], calls close() on every path, and turns
//! failures into a 500 (nothing sent yet) or an aborted body (something sent). A server
//! that can hold a response for a slow client ([`ResponseSink::offer`]) gets the app's
//! iterator back as a [`Parked`] response instead of a blocked thread.

use crate::app::{format_error, get_app, AppSpec};
use crate::environ::{environ_template, fill_environ};
use crate::errors::ErrorStream;
use crate::file_wrapper::FileWrapper;
use crate::input::Input;
use crate::response::{Response, Stop};
use crate::runtime::ServerTraits;
use crate::server::{BodyReader, Flow, LogLevel, OutputEvent, Request, ResponseSink, Stage};
use crate::start_response::{stop_error, StartResponse};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyTuple};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

static TEMPLATE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// Runs the request on the calling thread, which must not hold the GIL, until it is
/// complete — exactly one final event (End, Abort or Fail) then reached `sink`, whatever
/// happened — or until the sink is full ([`Flow::Full`]): then the response comes back
/// parked, and the server calls [`Parked::resume`] once the client has caught up.
pub fn run_request(
    spec: &AppSpec,
    traits: ServerTraits,
    req: Request,
    body: Box<dyn BodyReader>,
    sink: Arc<dyn ResponseSink>,
) -> Option<Parked> {
    let head_request = req.method == "HEAD";
    guarded(&sink, || {
        Python::attach(|py| run_in_python(py, spec, traits, &req, body, &sink, head_request))
    })
}

/// Where a stretch of Python work left the response.
enum Outcome {
    /// Waiting for a slow client.
    Parked(Parked),
    /// Done: the last events, ending with the final one, still to be sent.
    Finished(Vec<OutputEvent>),
}

/// Runs Python work, then sends a finished response's last batch after the GIL is let go
/// (sending can block on the client; and a thread that sent with the GIL released would
/// only have to win it back to return). A panic becomes a 500 (or a broken body) instead
/// of a lost request.
fn guarded(sink: &Arc<dyn ResponseSink>, work: impl FnOnce() -> Outcome) -> Option<Parked> {
    crate::interpreter::adopt_current_thread();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(Outcome::Parked(parked)) => Some(parked),
        Ok(Outcome::Finished(mut last)) => {
            let _ = sink.send(&mut last);
            None
        }
        Err(_) => {
            sink.log(
                LogLevel::Error,
                "internal error while running the application",
            );
            let _ = sink.send(&mut vec![OutputEvent::Fail(500)]);
            None
        }
    }
}

/// A streamed response waiting for a slow client: the app's iterator and everything
/// needed to go on. Holds no thread and no GIL.
pub struct Parked {
    context: String,
    sink: Arc<dyn ResponseSink>,
    start_response: Py<StartResponse>,
    iterable: Py<PyAny>,
    iterator: Py<PyIterator>,
}

impl Parked {
    /// Goes on walking the body on the calling thread (which must not hold the GIL);
    /// returns the response parked again if the client fell behind again.
    pub fn resume(self) -> Option<Parked> {
        let sink = self.sink.clone();
        guarded(&sink, move || {
            Python::attach(|py| {
                let start_response = self.start_response.bind(py).clone();
                let iterable = self.iterable.bind(py).clone();
                let iterator = self.iterator.bind(py).clone();
                let outcome = continue_body(py, &start_response, &iterable, Some(iterator));
                conclude(
                    py,
                    &|| self.context.clone(),
                    &self.sink,
                    &start_response,
                    &iterable,
                    outcome,
                )
            })
        })
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
) -> Outcome {
    sink.stage(Stage::Running);
    let start_response = match Bound::new(
        py,
        StartResponse::new(Response::new(sink.clone(), head_request)),
    ) {
        Ok(sr) => sr,
        Err(e) => {
            log_exception(py, sink, "creating start_response", &e);
            return Outcome::Finished(vec![OutputEvent::Fail(500)]);
        }
    };
    // Named only in log lines and parked responses: not worth a string per request.
    let context = || spec.describe();
    match call_app(py, spec, traits, req, body, sink, &start_response) {
        Ok(iterable) => {
            let outcome = continue_body(py, &start_response, &iterable, None);
            conclude(py, &context, sink, &start_response, &iterable, outcome)
        }
        Err(e) => {
            log_exception(py, sink, &context(), &e);
            Outcome::Finished(finish(sink, &start_response, true, &context))
        }
    }
}

/// After a stretch of body: park, or log what went wrong and send the final event.
fn conclude(
    py: Python<'_>,
    context: &dyn Fn() -> String,
    sink: &Arc<dyn ResponseSink>,
    start_response: &Bound<'_, StartResponse>,
    iterable: &Bound<'_, PyAny>,
    outcome: PyResult<Option<Bound<'_, PyIterator>>>,
) -> Outcome {
    let failed = match outcome {
        Ok(Some(iterator)) => {
            return Outcome::Parked(Parked {
                context: context(),
                sink: sink.clone(),
                start_response: start_response.clone().unbind(),
                iterable: iterable.clone().unbind(),
                iterator: iterator.unbind(),
            })
        }
        Ok(None) => false,
        Err(e) => {
            log_exception(py, sink, &context(), &e);
            true
        }
    };
    Outcome::Finished(finish(sink, start_response, failed, context))
}

/// The response's last batch (see [`Response::finish`]).
fn finish(
    sink: &Arc<dyn ResponseSink>,
    start_response: &Bound<'_, StartResponse>,
    failed: bool,
    context: &dyn Fn() -> String,
) -> Vec<OutputEvent> {
    match start_response.get().lock() {
        Ok(mut response) => {
            if response.dropped_body {
                warn_dropped_body(sink, context());
            }
            response.finish(failed)
        }
        Err(_) => {
            sink.log(
                LogLevel::Error,
                "response still in use by another thread; aborting",
            );
            vec![OutputEvent::Abort]
        }
    }
}

fn call_app<'py>(
    py: Python<'py>,
    spec: &AppSpec,
    traits: ServerTraits,
    req: &Request,
    body: Box<dyn BodyReader>,
    sink: &Arc<dyn ResponseSink>,
    start_response: &Bound<'py, StartResponse>,
) -> PyResult<Bound<'py, PyAny>> {
    let app = get_app(py, spec).inspect_err(|_| sink.stage(Stage::LoadFailed))?;
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

    app.call1((environ, start_response))
}

/// Walks (more of) the body; returns the iterator when the client fell behind, else
/// calls close() (on every path, as PEP 3333 requires) and returns None.
fn continue_body<'py>(
    py: Python<'py>,
    start_response: &Bound<'py, StartResponse>,
    iterable: &Bound<'py, PyAny>,
    iterator: Option<Bound<'py, PyIterator>>,
) -> PyResult<Option<Bound<'py, PyIterator>>> {
    let sent = match walk_body(py, start_response, iterable, iterator) {
        Ok(Some(iterator)) => return Ok(Some(iterator)),
        Ok(None) | Err(BodyError::Stop(Stop::ClientGone | Stop::Overrun | Stop::Bodyless)) => {
            Ok(())
        }
        Err(BodyError::Stop(stop)) => Err(stop_error(stop)),
        Err(BodyError::Python(e)) => Err(e),
    };
    let closed = close_iterable(py, iterable);
    sent.and(closed).map(|()| None)
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

/// Walks the body into the response: from the start when `iterator` is None, else on
/// from a parked iterator. Some(iterator) when the sink is full and the walk can wait.
fn walk_body<'py>(
    py: Python<'py>,
    start_response: &Bound<'py, StartResponse>,
    iterable: &Bound<'py, PyAny>,
    iterator: Option<Bound<'py, PyIterator>>,
) -> Result<Option<Bound<'py, PyIterator>>, BodyError> {
    let sr = start_response.get();
    if let Some(iterator) = iterator {
        return walk_iterator(py, sr, iterator);
    }
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if let Some(span) = wrapper.get().file_span(py) {
            // Goes out with the final batch.
            sr.lock()?.push_file(span.file, span.offset, span.len)?;
            return Ok(None);
        }
    }
    // A list or tuple is the whole body already: it goes out with the final batch (so a
    // slow client holds no thread), with Content-Length when the app gave none and there
    // is a single item.
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
            response.push_data(bytes)?;
        }
        return Ok(None);
    }
    walk_iterator(py, sr, iterable.try_iter()?)
}

/// Sends each item as it comes; stops early (returning the iterator) when the sink is full.
fn walk_iterator<'py>(
    py: Python<'py>,
    sr: &StartResponse,
    mut iterator: Bound<'py, PyIterator>,
) -> Result<Option<Bound<'py, PyIterator>>, BodyError> {
    while let Some(item) = iterator.next() {
        let item = item?;
        let bytes = body_bytes(&item)?;
        let mut response = sr.lock()?;
        response.push_data(bytes)?;
        if !bytes.as_bytes().is_empty() && response.offer(py)? == Flow::Full {
            drop(response);
            return Ok(Some(iterator));
        }
    }
    Ok(None)
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

/// Apps already told that they send a body with a status that has none: such an app
/// (Django's `HttpResponse(text, status=204)`) does it on every request, and one line
/// per app says what the log needs to.
static WARNED_DROPPED_BODY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn warn_dropped_body(sink: &Arc<dyn ResponseSink>, app: String) {
    let mut warned = WARNED_DROPPED_BODY
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if warned.insert(app.clone()) {
        drop(warned);
        sink.log(
            LogLevel::Warn,
            &format!(
                "{app} returned a body with a 204 or 304 status, which has none: the body \
                 was dropped and the iterable closed (logged once per application)"
            ),
        );
    }
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
