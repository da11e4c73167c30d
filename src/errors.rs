//! `wsgi.errors`: a text stream whose lines go to the server's error log, attributed to
//! the request that created it.

use crate::server::{LogLevel, ResponseSink};
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};

#[pyclass(frozen, module = "rwsgi", name = "ErrorStream")]
pub struct ErrorStream {
    sink: Arc<dyn ResponseSink>,
    /// Text written since the last newline.
    partial: Mutex<String>,
}

impl ErrorStream {
    pub fn new(sink: Arc<dyn ResponseSink>) -> Self {
        ErrorStream {
            sink,
            partial: Mutex::new(String::new()),
        }
    }

    fn emit_lines(&self, text: &str, flush_all: bool) {
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        partial.push_str(text);
        let cut = if flush_all {
            partial.len()
        } else {
            partial.rfind('\n').map_or(0, |i| i + 1)
        };
        if cut == 0 {
            return;
        }
        let ready: String = partial.drain(..cut).collect();
        drop(partial);
        for line in ready.lines() {
            self.sink.log(LogLevel::Error, line);
        }
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&self, text: &str) -> usize {
        self.emit_lines(text, false);
        text.chars().count()
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            let line = line?;
            self.emit_lines(&line.extract::<String>()?, false);
        }
        Ok(())
    }

    fn flush(&self) {
        self.emit_lines("", true);
    }

    fn writable(&self) -> bool {
        true
    }
}

impl Drop for ErrorStream {
    fn drop(&mut self) {
        self.emit_lines("", true);
    }
}
