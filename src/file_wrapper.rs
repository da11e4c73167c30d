//! `wsgi.file_wrapper`: marks a file-like as the response body so the server can send a
//! real file with sendfile. As an iterable it reads blocks, which is what happens for
//! file-likes without a usable file descriptor (BytesIO) and under middleware that
//! consumes the iterable itself.

use pyo3::prelude::*;
use std::fs::File;
use std::os::fd::FromRawFd;

#[pyclass(frozen, module = "rwsgi", name = "FileWrapper")]
pub struct FileWrapper {
    pub filelike: Py<PyAny>,
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: isize) -> Self {
        FileWrapper {
            filelike,
            blksize: if blksize > 0 { blksize as usize } else { 8192 },
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        Ok((block.len()? > 0).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}

/// A regular file behind a file_wrapper: a duplicate of its descriptor and the byte range
/// from the file-like's current position to the end of the file.
pub struct FileSpan {
    pub file: File,
    pub offset: u64,
    pub len: u64,
}

impl FileWrapper {
    /// The open regular file behind the file-like, if it has one; None means "iterate it".
    pub fn file_span(&self, py: Python<'_>) -> Option<FileSpan> {
        let f = self.filelike.bind(py);
        let fd: i32 = f.call_method0("fileno").ok()?.extract().ok()?;
        // The object's logical position (it accounts for Python-level buffering); the
        // server sends from there with explicit offsets, whatever the descriptor's own.
        let offset: u64 = f.call_method0("tell").ok()?.extract().ok()?;
        // SAFETY: fd is a descriptor the file-like owns and keeps open; dup gives us our
        // own descriptor that lives as long as the returned File, whatever the app does.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: dup is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let len = meta.len().saturating_sub(offset);
        Some(FileSpan { file, offset, len })
    }
}
