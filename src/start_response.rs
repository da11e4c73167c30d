//! The `start_response` callable and the `write` callable it returns (PEP 3333), over a
//! [`Response`]. Status and headers are validated here, so a bad header raises inside
//! the app (which then gets a 500) and never reaches the wire.

use crate::response::{Response, Stop};
use crate::server::{LogLevel, ResponseHead};
use crate::status::{check_header_name, check_header_value, is_hop_by_hop, parse_status};
use pyo3::exceptions::{PyAssertionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use std::sync::{Mutex, MutexGuard};

#[pyclass(frozen, module = "rwsgi", name = "StartResponse")]
pub struct StartResponse {
    response: Mutex<Response>,
}

impl StartResponse {
    pub fn new(response: Response) -> Self {
        StartResponse {
            response: Mutex::new(response),
        }
    }

    /// The response state. try_lock: blocking on it while holding the GIL could deadlock
    /// with a thread that holds it and waits for the GIL after a write.
    pub fn lock(&self) -> PyResult<MutexGuard<'_, Response>> {
        self.response
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("the response is being written by another thread"))
    }
}

/// Checks the app's header list and returns the head to send.
fn parse_head(
    status: &Bound<'_, PyAny>,
    headers: &Bound<'_, PyAny>,
    response: &Response,
) -> PyResult<ResponseHead> {
    let status = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str"))?;
    let status = parse_status(status.to_str()?).map_err(|e| PyValueError::new_err(e.0))?;
    let headers = headers
        .cast::<PyList>()
        .map_err(|_| PyTypeError::new_err("headers must be a list of (name, value) tuples"))?;
    let mut out = Vec::with_capacity(headers.len());
    let mut content_length = None;
    for item in headers.iter() {
        let pair = item
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err(format!("header {item} is not a tuple")))?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(format!(
                "header {pair} is not a (name, value) pair"
            )));
        }
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "header {pair}: name and value must be str"
            )));
        };
        let (name, value) = (name.to_str()?, value.to_str()?);
        check_header_name(name).map_err(|e| PyValueError::new_err(e.0))?;
        check_header_value(name, value).map_err(|e| PyValueError::new_err(e.0))?;
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| PyValueError::new_err(format!("invalid Content-Length {value:?}")))?;
            content_length = Some(n);
        } else if is_hop_by_hop(name) {
            response.sink().log(
                LogLevel::Warn,
                &format!("dropped hop-by-hop header {name:?} set by the application"),
            );
        } else {
            out.push((name.as_bytes().to_vec(), latin1(value)));
        }
    }
    if status.code == 204 {
        // RFC 9110 8.6: a 204 carries no Content-Length (its body is dropped anyway).
        content_length = None;
    }
    Ok(ResponseHead {
        status: status.code,
        status_line: latin1(&status.line),
        headers: out,
        content_length,
    })
}

/// A checked native string as wire bytes: every character is below U+0100 (the checks
/// refuse anything else), and goes out as the byte of the same value.
fn latin1(s: &str) -> Vec<u8> {
    s.chars().map(|c| c as u32 as u8).collect()
}

/// Turns a body-writing failure into the exception the app sees.
pub fn stop_error(stop: Stop) -> PyErr {
    match stop {
        Stop::ClientGone => PyOSError::new_err("client connection closed"),
        Stop::Overrun => PyOSError::new_err("response exceeds its Content-Length"),
        Stop::NotStarted => {
            PyAssertionError::new_err("body data before start_response() was called")
        }
        // Never raised: write() drops such bytes and the body walk ends without an error.
        Stop::Bodyless => PyOSError::new_err("this response has no body"),
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let mut response = this.lock()?;
        let exc_info = exc_info.filter(|e| !e.is_none());
        match exc_info {
            Some(info) if response.head_sent => {
                // PEP 3333: too late to change the status; re-raise the app's error.
                let value = info.get_item(1)?;
                return Err(PyErr::from_value(value));
            }
            None if response.head.is_some() => {
                return Err(PyAssertionError::new_err(
                    "start_response() called a second time without exc_info",
                ));
            }
            _ => {}
        }
        response.head = Some(parse_head(status, headers, &response)?);
        drop(response);
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    /// PEP 3333's write(): unbuffered, sent before returning.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", data.get_type()))
        })?;
        let mut response = self.lock()?;
        match response.push_data(data) {
            // HEAD, 204, 304: the bytes are dropped, the app goes on (see Response).
            Err(Stop::Bodyless) => return Ok(()),
            other => other.map_err(stop_error)?,
        }
        response.flush(py).map_err(stop_error)
    }
}
