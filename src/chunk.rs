//! Body bytes on their way to the server. A large chunk is not copied: it keeps the app's
//! `bytes` object alive, and with it the buffer the server writes from, until the server
//! drops the chunk. A small one is copied, which costs less than handing a Python
//! reference between threads. The server sees either as a plain `&[u8]` and needs no GIL.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

/// Chunks at least this long are shared rather than copied.
pub const SHARE_FROM: usize = 16 * 1024;

pub struct Chunk(Inner);

enum Inner {
    Copied(Vec<u8>),
    Shared {
        ptr: *const u8,
        len: usize,
        /// Keeps `ptr..ptr+len` valid; always Some until the chunk is dropped. Dropped on
        /// whatever thread the server drops the chunk: without the GIL, pyo3 defers the
        /// decref to the next thread that attaches (see [`take_dropped_off_gil`]).
        owner: Option<Py<PyBytes>>,
    },
}

/// Set when a shared chunk was dropped by a thread without the GIL.
static DROPPED_OFF_GIL: AtomicBool = AtomicBool::new(false);

/// True (once) when shared chunks were dropped without the GIL since the last call. Their
/// bytes objects then wait in pyo3's deferred-decref list until some thread attaches to
/// Python; in a worker that has gone quiet that could be never, keeping megabytes of
/// response bodies alive. The server should attach once soon (any `Python::attach` frees
/// them).
pub fn take_dropped_off_gil() -> bool {
    DROPPED_OFF_GIL.swap(false, Ordering::AcqRel)
}

// SAFETY: a bytes object is immutable and its buffer lives as long as the object, which
// `owner` keeps alive; reading it needs no GIL, and dropping `_owner` is safe on any
// thread (see above). So the chunk may be read on, and moved to, any thread.
unsafe impl Send for Chunk {}
// SAFETY: as above: shared access only reads an immutable buffer.
unsafe impl Sync for Chunk {}

impl Chunk {
    pub fn copied(data: &[u8]) -> Chunk {
        Chunk(Inner::Copied(data.to_vec()))
    }

    /// Bytes that already have their own buffer (read from a socket, say).
    pub fn owned(data: Vec<u8>) -> Chunk {
        Chunk(Inner::Copied(data))
    }

    /// The first `len` bytes of `bytes` (all of them if it is shorter).
    pub fn from_bytes(bytes: &Bound<'_, PyBytes>, len: usize) -> Chunk {
        let data = bytes.as_bytes();
        let len = len.min(data.len());
        if len < SHARE_FROM {
            return Chunk::copied(&data[..len]);
        }
        Chunk(Inner::Shared {
            ptr: data.as_ptr(),
            len,
            owner: Some(bytes.clone().unbind()),
        })
    }

    /// Appends `data` to a copied chunk while the result stays under [`SHARE_FROM`], so a
    /// run of tiny chunks reaches the client as one write instead of one each. Returns
    /// false, changing nothing, for a shared chunk or when the result would be longer.
    pub fn try_append(&mut self, data: &[u8]) -> bool {
        match &mut self.0 {
            Inner::Copied(bytes) if bytes.len() + data.len() < SHARE_FROM => {
                bytes.extend_from_slice(data);
                true
            }
            _ => false,
        }
    }

    /// True when the chunk borrows a Python object instead of owning a copy.
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Inner::Shared { .. })
    }
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Inner::Copied(v) => v,
            // SAFETY: ptr..ptr+len lies in the buffer of the bytes object `owner` keeps
            // alive, and bytes objects never change.
            Inner::Shared { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Inner::Shared { owner, .. } = &mut self.0 {
            // SAFETY: PyGILState_Check only looks at the calling thread's state.
            let attached = unsafe { pyo3::ffi::PyGILState_Check() } != 0;
            drop(owner.take());
            // After the decref was queued, so whoever sees the flag also sees the object.
            if !attached {
                DROPPED_OFF_GIL.store(true, Ordering::Release);
            }
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_shared() { "shared" } else { "copied" };
        write!(f, "Chunk({kind}, {} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_copied_chunks_append_up_to_share_from() {
        let mut chunk = Chunk::copied(b"ab");
        assert!(chunk.try_append(b"cd"));
        assert_eq!(&*chunk, b"abcd");
        let fill = vec![b'x'; SHARE_FROM - 5];
        assert!(chunk.try_append(&fill));
        assert_eq!(chunk.len(), SHARE_FROM - 1);
        // one more byte would reach SHARE_FROM: refused, chunk unchanged
        assert!(!chunk.try_append(b"y"));
        assert_eq!(chunk.len(), SHARE_FROM - 1);
        assert!(chunk.ends_with(b"xx"));
    }

    #[test]
    fn shared_chunks_never_grow() {
        crate::interpreter::initialize(None).expect("Python starts");
        Python::attach(|py| {
            let data = vec![b'z'; SHARE_FROM];
            let bytes = PyBytes::new(py, &data);
            let mut chunk = Chunk::from_bytes(&bytes, data.len());
            assert!(chunk.is_shared());
            assert!(!chunk.try_append(b"a"));
            assert_eq!(chunk.len(), SHARE_FROM);
        });
    }
}
