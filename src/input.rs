//! `wsgi.input`: a read-only binary file over the server's [`BodyReader`], with the
//! methods PEP 3333 requires (read, read(n), readline, readline(size), readlines,
//! iteration). Reads from the server happen without the GIL.

use crate::py_bytes::{self, BytesBuilder};
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

    /// Reads up to `max` more bytes (at most one block) from the server, GIL released.
    fn fill(&mut self, py: Python<'_>, max: usize) -> PyResult<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + max.min(FILL_SIZE), 0);
        let reader = &mut self.reader;
        let target = &mut self.buf[start..];
        let result = py.detach(|| reader.read(target));
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(start);
                return Err(read_error(e));
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

    /// Reads up to `max` bytes from the server straight into `out` (GIL released).
    fn read_into(
        &mut self,
        py: Python<'_>,
        out: &mut BytesBuilder<'_>,
        max: usize,
    ) -> PyResult<()> {
        let target = out.spare_block(max.min(FILL_SIZE))?;
        let reader = &mut self.reader;
        // The object is not shared yet: filling it without the GIL is safe.
        let n = py.detach(|| reader.read(target)).map_err(read_error)?;
        out.commit(n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
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
        let bytes = py_bytes::new_filled(py, left as usize, |target| {
            // The new object is not shared yet: filling it without the GIL is safe.
            py.detach(|| read_full(reader.as_mut(), target))
                .map_err(read_error)
        })?;
        self.eof = true;
        Ok(Some(bytes))
    }

    /// Up to `size` bytes (all the rest for None). A small read is served from the block
    /// buffer; a large one goes straight into the bytes object returned, so the body is
    /// held once, not in a buffer and then again in its copy.
    fn read<'py>(&mut self, py: Python<'py>, size: Option<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let want = size.unwrap_or(usize::MAX);
        if want <= FILL_SIZE {
            while !self.eof && self.available().len() < want {
                self.fill(py, FILL_SIZE)?;
            }
            return Ok(PyBytes::new(py, self.take(want)));
        }
        let mut out = BytesBuilder::with_capacity(py, self.available().len().max(FILL_SIZE))?;
        out.extend(self.take(want))?;
        while !self.eof && out.len() < want {
            let rest = want - out.len();
            self.read_into(py, &mut out, rest)?;
        }
        out.finish()
    }

    /// One line, at most `size` bytes. Bytes that cannot end the line move out of the block
    /// buffer into the object returned as they arrive, and no more is read from the
    /// server than `size` allows: memory stays at the line plus one block.
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size.unwrap_or(usize::MAX);
        let mut out: Option<BytesBuilder<'py>> = None;
        loop {
            let got = out.as_ref().map_or(0, BytesBuilder::len);
            let room = limit - got;
            let window = self.available().len().min(room);
            let end = match self.available()[..window].iter().position(|&b| b == b'\n') {
                Some(i) => Some(i + 1),
                None if window == room || self.eof => Some(window),
                None => None,
            };
            if let Some(end) = end {
                return match out {
                    None => Ok(PyBytes::new(py, self.take(end))),
                    Some(mut out) => {
                        out.extend(self.take(end))?;
                        out.finish()
                    }
                };
            }
            // Everything buffered belongs to the line, and the line goes on.
            if window > 0 {
                let line = match out.as_mut() {
                    Some(line) => line,
                    None => out.insert(BytesBuilder::with_capacity(py, 2 * FILL_SIZE)?),
                };
                line.extend(self.take(window))?;
            }
            self.fill(py, room - window)?;
        }
    }
}

fn read_error(e: std::io::Error) -> PyErr {
    pyo3::exceptions::PyOSError::new_err(format!("error reading the request body: {e}"))
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
            None => s.read(py, limit(size)),
        })
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.with_state(|s| s.readline(py, limit(size)))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint).filter(|&n| n > 0);
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.with_state(|s| s.readline(py, None))?;
            if line.as_bytes().is_empty() {
                break;
            }
            total += line.as_bytes().len();
            lines.append(line)?;
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
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}
