//! Frames on a daemon-mode connection: `u32` big-endian length of what follows, a type
//! byte, the payload. This file only cuts a byte stream into frames and reads the plain
//! fields inside a payload; what each frame type means is messages.rs's.
//!
//! Both sides of a connection use it: an app process and an Apache thread read frames
//! with blocking [`read_frame`]; nginx's event loop feeds whatever bytes arrived into a
//! [`FrameBuffer`] and takes out the complete frames.

use std::fmt;
use std::io::{self, Read};

/// The largest frame either side accepts. Body data goes in frames of at most
/// [`DATA_FRAME`] bytes; only a head or a request with huge headers comes near this.
pub const MAX_FRAME: usize = 16 << 20;
/// How much body a single DATA or BODY frame carries at most, so neither side buffers
/// more than this per frame.
pub const DATA_FRAME: usize = 256 * 1024;
/// Length prefix plus type byte.
pub const HEADER_LEN: usize = 5;

/// Why a frame or a payload is refused. The connection cannot go on after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "daemon protocol error: {}", self.0)
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// One frame: its type and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// The header that starts a frame of `kind` whose payload is `payload_len` bytes.
pub fn header(kind: u8, payload_len: usize) -> [u8; HEADER_LEN] {
    assert!(
        payload_len < MAX_FRAME,
        "frame payload of {payload_len} bytes"
    );
    // Cannot overflow: the length is below MAX_FRAME (16 MiB).
    let len = (payload_len + 1) as u32;
    let l = len.to_be_bytes();
    [l[0], l[1], l[2], l[3], kind]
}

/// The payload length announced by a frame header, checked against MAX_FRAME.
fn payload_len(head: &[u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(*head) as usize;
    if len == 0 {
        return Err(WireError("empty frame (no type byte)".into()));
    }
    if len > MAX_FRAME {
        return Err(WireError(format!(
            "frame of {len} bytes (the limit is {MAX_FRAME})"
        )));
    }
    Ok(len - 1)
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
/// A connection closed inside a frame is an `UnexpectedEof` error.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = payload_len(&[head[0], head[1], head[2], head[3]])?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        kind: head[4],
        payload,
    }))
}

/// Bytes received without blocking, cut into frames as they complete.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// Where the next unconsumed byte is (consumed bytes are dropped in batches).
    start: usize,
}

impl FrameBuffer {
    pub fn new() -> FrameBuffer {
        FrameBuffer::default()
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole frame (or wait to be taken).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, if the bytes for it have arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = payload_len(&[avail[0], avail[1], avail[2], avail[3]])?;
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let frame = Frame {
            kind: avail[4],
            payload: avail[HEADER_LEN..HEADER_LEN + len].to_vec(),
        };
        self.start += HEADER_LEN + len;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

/// Appends payload fields; the counterpart of [`Fields`].
pub trait PutField {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    /// A u32 length, then the bytes.
    fn put_bytes(&mut self, v: &[u8]);
}

impl PutField for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_bytes(&mut self, v: &[u8]) {
        // Every field sits inside a frame below MAX_FRAME; `header` refuses bigger ones.
        self.put_u32(v.len().min(u32::MAX as usize) as u32);
        self.extend_from_slice(v);
    }
}

/// Reads the fields of one payload in order; every read checks what is left.
pub struct Fields<'a> {
    rest: &'a [u8],
    /// The frame being read, for error messages.
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(payload: &'a [u8], what: &'static str) -> Fields<'a> {
        Fields {
            rest: payload,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError(format!("{} frame is cut short", self.what)));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.array()
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    pub fn string(&mut self) -> Result<String, WireError> {
        let what = self.what;
        String::from_utf8(self.bytes()?)
            .map_err(|_| WireError(format!("{what} frame holds a string that is not UTF-8")))
    }
    /// A count of items that each take at least `min_item` bytes: refuses a count the
    /// payload cannot hold before anything is allocated for it.
    pub fn count(&mut self, min_item: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.rest.len() {
            return Err(WireError(format!(
                "{} frame announces {n} items",
                self.what
            )));
        }
        Ok(n)
    }
    /// The payload must end here.
    pub fn end(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError(format!(
                "{} frame has {} bytes too many",
                self.what,
                self.rest.len()
            )))
        }
    }
}
