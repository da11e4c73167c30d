//! Python `bytes` objects written in place. A request body read into Rust memory and then
//! copied into a bytes object is held twice (three times while a growing buffer doubles):
//! 200 MiB read by `wsgi.input.readline()` cost 600 MiB. Writing into the bytes object that
//! the app will get holds the data once.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::ffi::c_int;

unsafe extern "C" {
    /// CPython's way to grow or shrink a bytes object that nothing else refers to yet
    /// (documented in the C API; pyo3-ffi does not export it). Large objects are resized
    /// by realloc, which moves pages instead of copying them (mremap). On failure it frees
    /// the object, sets `*bytes` to NULL and raises MemoryError.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, new_size: ffi::Py_ssize_t) -> c_int;
}

/// A new bytes object of `len` bytes, every one written by `fill`. Unlike
/// `PyBytes::new_with` the buffer is not zeroed first: for a 1 MiB upload that memset
/// cost about as much CPU as the copy that follows (9% of the worker in a profile).
pub fn new_filled<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut builder = BytesBuilder::with_capacity(py, len)?;
    // `fill` either writes the whole slice or fails, and then the object is dropped unread.
    fill(builder.spare(len))?;
    builder.commit(len);
    builder.finish()
}

/// A bytes object under construction: `len` bytes written, room for `capacity`. It is
/// handed to Python only by [`BytesBuilder::finish`], so until then it may be written
/// without the GIL and resized.
pub struct BytesBuilder<'py> {
    py: Python<'py>,
    /// A bytes object of `capacity` bytes that nothing else refers to.
    obj: *mut ffi::PyObject,
    len: usize,
    capacity: usize,
}

impl<'py> BytesBuilder<'py> {
    pub fn with_capacity(py: Python<'py>, capacity: usize) -> PyResult<Self> {
        // Never 0: CPython shares one empty bytes object, which must not be resized.
        let capacity = capacity.max(1);
        let size = ffi::Py_ssize_t::try_from(capacity)
            .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("body too large"))?;
        // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new reference to an
        // uninitialized n-byte bytes object (or NULL with MemoryError set); we hold the GIL.
        let obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), size) };
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(BytesBuilder {
            py,
            obj,
            len: 0,
            capacity,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `more` bytes past `len`, growing by at least half so that appending
    /// block by block stays linear.
    fn reserve(&mut self, more: usize) -> PyResult<()> {
        let needed = self.len + more;
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.max(self.capacity + self.capacity / 2);
        self.resize(capacity)
    }

    fn resize(&mut self, capacity: usize) -> PyResult<()> {
        let size = ffi::Py_ssize_t::try_from(capacity)
            .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("body too large"))?;
        // SAFETY: obj is a bytes object only this builder refers to (refcount 1), which is
        // what _PyBytes_Resize requires; we hold the GIL (self.py).
        if unsafe { _PyBytes_Resize(&mut self.obj, size) } < 0 {
            // The object was freed; nothing is left to release in Drop.
            self.obj = std::ptr::null_mut();
            return Err(PyErr::fetch(self.py));
        }
        self.capacity = capacity;
        Ok(())
    }

    /// The `want` writable bytes after what has been written (reserved by the caller),
    /// to be followed by `commit`. Writing them needs no GIL: nobody else sees the object.
    fn spare(&mut self, want: usize) -> &mut [u8] {
        debug_assert!(self.len + want <= self.capacity);
        // SAFETY: obj is a live bytes object of `capacity` bytes that nobody else sees; the
        // slice lies inside its buffer and borrows self mutably, so no resize can move the
        // buffer while it is in use.
        unsafe {
            let data = ffi::PyBytes_AsString(self.obj) as *mut u8;
            std::slice::from_raw_parts_mut(data.add(self.len), want)
        }
    }

    /// Counts `n` bytes written into the spare room as part of the object.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.capacity);
        self.len += n;
    }

    /// Appends a copy of `data`.
    pub fn extend(&mut self, data: &[u8]) -> PyResult<()> {
        self.reserve(data.len())?;
        self.spare(data.len()).copy_from_slice(data);
        self.commit(data.len());
        Ok(())
    }

    /// Room for up to `block` more bytes, for a read that `commit`s what it got.
    pub fn spare_block(&mut self, block: usize) -> PyResult<&mut [u8]> {
        self.reserve(block)?;
        Ok(self.spare(block))
    }

    /// The finished object, trimmed to what was written.
    pub fn finish(mut self) -> PyResult<Bound<'py, PyBytes>> {
        if self.len == 0 {
            return Ok(PyBytes::new(self.py, b""));
        }
        if self.len != self.capacity {
            self.resize(self.len)?;
        }
        let obj = std::mem::replace(&mut self.obj, std::ptr::null_mut());
        // SAFETY: obj is a new reference to a bytes object (created and resized above),
        // now handed over to the Bound.
        Ok(unsafe { Bound::from_owned_ptr(self.py, obj).cast_into_unchecked() })
    }
}

impl Drop for BytesBuilder<'_> {
    fn drop(&mut self) {
        if !self.obj.is_null() {
            // SAFETY: we own the only reference and hold the GIL (the builder carries
            // `py`, so it cannot outlive the GIL it was made under).
            unsafe { ffi::Py_DECREF(self.obj) };
        }
    }
}
