//! The interface between the engine and a server module: what the server hands in for a
//! request ([`Request`], a [`BodyReader`]) and where the response goes ([`ResponseSink`]).
//! Everything here is plain Rust data; the engine never sees an nginx or Apache struct.

pub use crate::chunk::Chunk;
use std::borrow::Cow;
use std::fs::File;
use std::io;

/// One request, copied out of the server's own request struct before Python runs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// Mount point, URL-decoded bytes (becomes a latin-1 str).
    pub script_name: Vec<u8>,
    /// Rest of the path after the mount point, URL-decoded bytes.
    pub path_info: Vec<u8>,
    /// Raw query string, not decoded.
    pub query_string: Vec<u8>,
    /// "HTTP/1.1", "HTTP/1.0", ... as sent by the client.
    pub protocol: String,
    pub server_name: Vec<u8>,
    pub server_port: String,
    pub remote_addr: String,
    pub remote_port: String,
    pub https: bool,
    /// Request headers in arrival order, names and values as received.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body length if known up front (CONTENT_LENGTH); None leaves it out.
    pub content_length: Option<u64>,
    /// The request line's target as the client sent it (REQUEST_URI).
    pub request_uri: Vec<u8>,
    /// SERVER_SOFTWARE: the server's name and version, then rwsgi's.
    pub server_software: Cow<'static, str>,
    /// Keys the server module adds for its own server (DOCUMENT_ROOT, mod_wsgi.*...);
    /// fixed names are borrowed, not allocated per request.
    pub extra: Vec<(Cow<'static, str>, ExtraValue)>,
    /// Keys from the server's configuration (nginx `wsgi_param`, Apache `SetEnv`): added
    /// to the environ unless they would replace a per-request key
    /// ([`crate::is_reserved_environ_key`]). An HTTPS key here can select the scheme.
    pub params: Vec<(String, Vec<u8>)>,
}

/// The value of a server-specific environ key.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraValue {
    /// Becomes a native (latin-1 decoded) str.
    Str(Vec<u8>),
    /// A constant str (no allocation per request).
    Static(&'static str),
    /// Becomes a tuple of ints, like `apache.version`.
    IntTuple(Vec<i64>),
}

/// The request body as the server delivers it. `read` may block on the client; the engine
/// calls it only with the GIL released. Ok(0) means the body is complete.
pub trait BodyReader: Send {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Bytes left, when the server knows: lets `wsgi.input.read()` fill one bytes object
    /// directly instead of growing a buffer.
    fn remaining(&self) -> Option<u64> {
        None
    }
}

/// A body that is already in memory.
impl BodyReader for io::Cursor<Vec<u8>> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(self, buf)
    }

    fn remaining(&self) -> Option<u64> {
        Some((self.get_ref().len() as u64).saturating_sub(self.position()))
    }
}

/// The status line and headers, checked and encoded for the wire: PEP 3333's native
/// strings go out as latin-1, one byte per character, the same from every server.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    /// The whole status line as the app gave it, e.g. `404 Not Found`, in latin-1.
    pub status_line: Vec<u8>,
    /// Headers other than Content-Length, in the app's order: names are RFC 9110 tokens
    /// (ASCII), values latin-1 without CR, LF or NUL.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub content_length: Option<u64>,
}

impl ResponseHead {
    /// No body may follow this head (204, 304; see status::forbids_body). The engine
    /// sends none; a server whose own filters decide this from the status can be told.
    pub fn forbids_body(&self) -> bool {
        crate::status::forbids_body(self.status)
    }
}

/// What the engine asks the server to do, in order. A response is `Head`, then body
/// parts, then exactly one of `End` / `Abort`; or `Fail` alone when nothing was sent.
#[derive(Debug)]
pub enum OutputEvent {
    Head(ResponseHead),
    /// Body bytes; read as `&[u8]` (see [`Chunk`]).
    Data(Chunk),
    /// Send `len` bytes of `file` starting at `offset` (sendfile where the server can).
    File {
        file: File,
        offset: u64,
        len: u64,
    },
    /// The body is complete.
    End,
    /// The body is broken after bytes went out: close the connection without the
    /// terminating chunk so the client can tell.
    Abort,
    /// Nothing was sent: answer with this status (500) from the server's error page.
    Fail(u16),
}

impl OutputEvent {
    /// True for the event that finishes a response.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            OutputEvent::End | OutputEvent::Abort | OutputEvent::Fail(_)
        )
    }
}

/// The client disconnected: stop producing the body. The final event must still be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGone;

/// Log levels the engine uses; each server maps them to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
}

/// Points in a request's life that the engine tells its server about, for the status
/// page's gauges and counters ([`ResponseSink::stage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The engine holds the GIL and is about to call the app: the request no longer waits
    /// to enter Python.
    Running,
    /// The app could not be loaded (its import failed or it has no such callable): the
    /// request gets a 500, and the next one tries again.
    LoadFailed,
}

/// What [`ResponseSink::offer`] tells the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on producing.
    Open,
    /// The client is behind: park the response until the server resumes it.
    Full,
}

/// Where one request's output and log lines go. Shared (Arc) between the response and
/// wsgi.errors, which the app may keep beyond the request: after the final event the
/// server must still accept `log` (and send it to its global log).
///
/// The contract that keeps one slow client from holding up every other request's Python:
/// - `send` and `offer` may wait for the client; the engine calls them only with the GIL
///   released.
/// - `log` never waits: not on I/O, nor on a lock that something holds across I/O. The
///   engine calls it with the GIL held (wsgi.errors, tracebacks), from any thread, also
///   while another thread of the same request is blocked in `send` or in a body read.
pub trait ResponseSink: Send + Sync {
    /// Hands over events in order; drains `events`. May block for backpressure (the engine
    /// calls it without the GIL). Err means the client is gone; later calls keep failing.
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone>;
    /// Like `send` for streamed body parts, but a sink that can hold a response for a slow
    /// client returns `Flow::Full` instead of waiting: the engine then hands the response
    /// back parked (see `call::Parked`) and the server resumes it once drained. The
    /// default waits in `send`, for servers whose request owns its thread anyway.
    fn offer(&self, events: &mut Vec<OutputEvent>) -> Result<Flow, ClientGone> {
        self.send(events).map(|()| Flow::Open)
    }
    /// One line for the server's error log, in the request's context where possible.
    /// Never blocks (see above). The server labels it (rwsgi::LogLabel); the engine
    /// passes the bare message.
    fn log(&self, level: LogLevel, message: &str);
    /// The request reached `stage`. Called with the GIL held, at most once per stage:
    /// never blocks (a few atomic adds). By default nothing is counted.
    fn stage(&self, _stage: Stage) {}
}
