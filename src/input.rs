//! `wsgi.input`: a read-only binary file over the server's [`BodyReader`], with the
//! methods PEP 3333 requires (read, read(n), readline, readline(size), readlines,
//! iteration). Reads from the server happen without the GIL.

use crate::server::BodyReader;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::sync::Mutex;

const FILL_SIZE: usize = 64 * 1024;

#[pyclass(frozen, module = "rwsgi", name = "Input")]
pub struct Input {
    state: Mutex<Buffered>,
}

struct Buffered {
    reader: Box<dyn BodyReader>,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Buffered {
    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads one more block from the server with the GIL released.
    fn fill(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + FILL_SIZE, 0);
        let reader = &mut self.reader;
        let target = &mut self.buf[start..];
        let result = py.detach(|| reader.read(target));
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(start);
                return Err(pyo3::exceptions::PyOSError::new_err(format!(
                    "error reading the request body: {e}"
                )));
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.available().len());
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        out
    }

    /// The rest of the body straight into one bytes object, when nothing is buffered and
    /// the server knows how much is left (the common `read()` of a whole body).
    fn read_rest_direct<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<usize>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let Some(left) = self.reader.remaining() else {
            return Ok(None);
        };
        if self.pos < self.buf.len() || size.is_some_and(|n| (n as u64) < left) {
            return Ok(None);
        }
        let reader = &mut self.reader;
        let bytes = new_bytes_filled(py, left as usize, |target| {
            // The new object is not shared yet: filling it without the GIL is safe.
            py.detach(|| read_full(reader.as_mut(), target))
                .map_err(|e| {
                    pyo3::exceptions::PyOSError::new_err(format!(
                        "error reading the request body: {e}"
                    ))
                })
        })?;
        self.eof = true;
        Ok(Some(bytes))
    }

    fn read(&mut self, py: Python<'_>, size: Option<usize>) -> PyResult<Vec<u8>> {
        while !self.eof && size.is_none_or(|n| self.available().len() < n) {
            self.fill(py)?;
        }
        let n = size.unwrap_or(usize::MAX);
        Ok(self.take(n).to_vec())
    }

    fn readline(&mut self, py: Python<'_>, size: Option<usize>) -> PyResult<Vec<u8>> {
        let limit = size.unwrap_or(usize::MAX);
        let mut scanned = 0;
        loop {
            let avail = self.available();
            if let Some(i) = avail[scanned..].iter().position(|&b| b == b'\n') {
                return Ok(self.take((scanned + i + 1).min(limit)).to_vec());
            }
            scanned = avail.len();
            if scanned >= limit || self.eof {
                return Ok(self.take(limit).to_vec());
            }
            self.fill(py)?;
        }
    }
}

impl Input {
    pub fn new(reader: Box<dyn BodyReader>) -> Self {
        Input {
            state: Mutex::new(Buffered {
                reader,
                buf: Vec::new(),
                pos: 0,
                eof: false,
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut Buffered) -> PyResult<T>) -> PyResult<T> {
        // try_lock: blocking here while holding the GIL could deadlock with a thread that
        // holds the lock and waits for the GIL inside fill().
        let mut guard = self
            .state
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("wsgi.input is being read by another thread"))?;
        f(&mut guard)
    }
}

/// A new bytes object of `len` bytes, every one written by `fill`. Unlike
/// `PyBytes::new_with` the buffer is not zeroed first: for a 1 MiB upload that memset
/// cost about as much CPU as the copy that follows (9% of the worker in a profile).
fn new_bytes_filled<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new reference to a bytes object
    // with an n-byte buffer that the caller may write until the object is shared (or NULL
    // with an exception set, which from_owned_ptr_or_err turns into Err).
    let obj = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t),
        )?
    };
    // SAFETY: obj is a bytes object of exactly `len` bytes that nobody else refers to yet.
    // `fill` (read_full) only writes the slice, and either writes all of it or fails, in
    // which case the object is dropped unread: no byte is ever read before it is written.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(obj.as_ptr()) as *mut u8, len)
    };
    fill(buf)?;
    // SAFETY: created as bytes above.
    Ok(unsafe { obj.cast_into_unchecked() })
}

fn read_full(reader: &mut dyn BodyReader, mut target: &mut [u8]) -> std::io::Result<()> {
    while !target.is_empty() {
        let n = reader.read(target)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "request body ended early",
            ));
        }
        target = &mut target[n..];
    }
    Ok(())
}

/// PEP 3333 passes None or a negative number for "no limit".
fn limit(size: Option<isize>) -> Option<usize> {
    size.filter(|&n| n >= 0).map(|n| n as usize)
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.with_state(|s| match s.read_rest_direct(py, limit(size))? {
            Some(bytes) => Ok(bytes),
            None => Ok(PyBytes::new(py, &s.read(py, limit(size))?)),
        })
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with_state(|s| s.readline(py, limit(size)))?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint).filter(|&n| n > 0);
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.with_state(|s| s.readline(py, None))?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            lines.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.with_state(|s| s.readline(py, None))?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}
