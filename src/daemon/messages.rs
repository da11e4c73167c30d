//! What the frames of a daemon-mode connection mean (docs/daemon-internals.md, "Wire
//! protocol"): [`ToApp`] from a server worker to an app process, [`FromApp`] back. The
//! response frames are the engine's [`OutputEvent`]s one for one, so each server hands
//! them to the output code it has for embedded mode.
//!
//! Decoding trusts neither side: an app process runs a tenant's code and a server worker
//! may be any local process that reached the socket. Every length is checked against the
//! payload before anything is allocated, and a response head is checked with the same
//! rules as `start_response` before a server sees it.

use super::frame::{header, Fields, Frame, PutField, WireError, DATA_FRAME};
use crate::app::AppTarget;
use crate::server::{ExtraValue, LogLevel, OutputEvent, Request, ResponseHead, Stage};
use crate::Chunk;
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The per-group secret a server worker proves itself with.
pub const SECRET_LEN: usize = 32;

const REQUEST: u8 = 1;
const BODY: u8 = 2;
const READ: u8 = 16;
const HEAD: u8 = 17;
const DATA: u8 = 18;
const FILE: u8 = 19;
const END: u8 = 20;
const ABORT: u8 = 21;
const FAIL: u8 = 22;
const LOG: u8 = 23;
const STAGE: u8 = 24;

/// Which of its group's apps the request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppRef {
    pub target: AppTarget,
    pub callable: String,
}

/// The clock of `RequestFrame::connected_at_us`: microseconds since the Unix epoch (0
/// for a clock before it), read by the server worker and compared by the app process.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The first frame of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFrame {
    pub secret: [u8; SECRET_LEN],
    /// The server can take an open file (FILE with SCM_RIGHTS) instead of its bytes.
    pub accepts_files: bool,
    /// The server understands STAGE frames. A server that does not say so (an older
    /// module, still running while a newer app process serves it) gets none.
    pub accepts_stages: bool,
    /// When the server worker began to connect, in microseconds since the Unix epoch (0:
    /// not known): how long the request waited for a process (queue-timeout).
    pub connected_at_us: u64,
    pub app: AppRef,
    pub request: Request,
}

/// A frame from a server worker to an app process.
#[derive(Debug, Clone, PartialEq)]
pub enum ToApp {
    Request(Box<RequestFrame>),
    /// Answers one `Read`; empty when the body is complete.
    Body(Vec<u8>),
}

/// A frame from an app process to a server worker.
#[derive(Debug)]
pub enum FromApp {
    /// The app wants up to this many more body bytes.
    Read(u32),
    /// An output event. For `OutputEvent::File` the file is the descriptor that came with
    /// the frame: [`FromApp::decode`] takes it from `fds`.
    Event(OutputEvent),
    Log(LogLevel, String),
    /// The engine's [`Stage`] for the request, for the server's status page (the app
    /// loaded or not, the request entered Python).
    Stage(Stage),
}

impl ToApp {
    /// Appends this frame, header included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToApp::Request(r) => {
                let mut p = Vec::with_capacity(512);
                p.extend_from_slice(&r.secret);
                p.put_u8(u8::from(r.accepts_files) | u8::from(r.accepts_stages) << 1);
                p.put_u64(r.connected_at_us);
                put_app(&mut p, &r.app);
                put_request(&mut p, &r.request);
                push_frame(out, REQUEST, &p);
            }
            ToApp::Body(b) => push_frame(out, BODY, b),
        }
    }

    pub fn decode(frame: &Frame) -> Result<ToApp, WireError> {
        match frame.kind {
            REQUEST => {
                let mut f = Fields::new(&frame.payload, "REQUEST");
                let secret = f.fixed::<SECRET_LEN>()?;
                let flags = f.u8()?;
                let (accepts_files, accepts_stages) = (flags & 1 == 1, flags & 2 == 2);
                let connected_at_us = f.u64()?;
                let app = get_app(&mut f)?;
                let request = get_request(&mut f)?;
                f.end()?;
                Ok(ToApp::Request(Box::new(RequestFrame {
                    secret,
                    accepts_files,
                    accepts_stages,
                    connected_at_us,
                    app,
                    request,
                })))
            }
            BODY => Ok(ToApp::Body(frame.payload.clone())),
            other => Err(unknown(other, "server")),
        }
    }
}

impl FromApp {
    /// Appends this frame, header included, to `out`. A `File` event writes only its
    /// frame: the caller sends the descriptor with these bytes (SCM_RIGHTS).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FromApp::Read(n) => push_frame(out, READ, &n.to_be_bytes()),
            FromApp::Log(level, msg) => {
                let mut p = Vec::with_capacity(msg.len() + 5);
                p.put_u8(level_code(*level));
                p.put_bytes(msg.as_bytes());
                push_frame(out, LOG, &p);
            }
            FromApp::Stage(stage) => push_frame(out, STAGE, &[stage_code(*stage)]),
            FromApp::Event(e) => encode_event(e, out),
        }
    }

    /// Reads one frame. A FILE frame takes the first descriptor of `fds` (those that came
    /// with the frame's bytes, in order); without one it is a protocol error.
    pub fn decode(
        frame: &Frame,
        fds: &mut std::collections::VecDeque<std::fs::File>,
    ) -> Result<FromApp, WireError> {
        let p = &frame.payload;
        let event = match frame.kind {
            READ => {
                let mut f = Fields::new(p, "READ");
                let n = f.u32()?;
                f.end()?;
                return Ok(FromApp::Read(n));
            }
            LOG => {
                let mut f = Fields::new(p, "LOG");
                let level = level_from_code(f.u8()?)?;
                let msg = String::from_utf8_lossy(&f.bytes()?).into_owned();
                f.end()?;
                return Ok(FromApp::Log(level, msg));
            }
            STAGE => {
                let mut f = Fields::new(p, "STAGE");
                let stage = stage_from_code(f.u8()?)?;
                f.end()?;
                return Ok(FromApp::Stage(stage));
            }
            HEAD => OutputEvent::Head(get_head(p)?),
            DATA => OutputEvent::Data(Chunk::owned(p.clone())),
            FILE => {
                let mut f = Fields::new(p, "FILE");
                let (offset, len) = (f.u64()?, f.u64()?);
                f.end()?;
                let file = fds
                    .pop_front()
                    .ok_or_else(|| WireError("FILE frame came without its descriptor".into()))?;
                OutputEvent::File { file, offset, len }
            }
            END | ABORT => {
                Fields::new(p, "END").end()?;
                if frame.kind == END {
                    OutputEvent::End
                } else {
                    OutputEvent::Abort
                }
            }
            FAIL => {
                let mut f = Fields::new(p, "FAIL");
                let status = f.u16()?;
                f.end()?;
                if !(500..=599).contains(&status) {
                    return Err(WireError(format!("FAIL with status {status}")));
                }
                OutputEvent::Fail(status)
            }
            other => return Err(unknown(other, "app")),
        };
        Ok(FromApp::Event(event))
    }
}

/// Appends the frames for one output event. Data longer than DATA_FRAME goes in several
/// frames so that the reader never holds more than that for one frame.
pub fn encode_event(e: &OutputEvent, out: &mut Vec<u8>) {
    match e {
        OutputEvent::Head(h) => push_frame(out, HEAD, &put_head(h)),
        OutputEvent::Data(chunk) => {
            for part in chunk.chunks(DATA_FRAME) {
                push_frame(out, DATA, part);
            }
        }
        OutputEvent::File { offset, len, .. } => {
            let mut p = Vec::with_capacity(16);
            p.put_u64(*offset);
            p.put_u64(*len);
            push_frame(out, FILE, &p);
        }
        OutputEvent::End => push_frame(out, END, &[]),
        OutputEvent::Abort => push_frame(out, ABORT, &[]),
        OutputEvent::Fail(status) => push_frame(out, FAIL, &status.to_be_bytes()),
    }
}

/// Appends a frame of `kind` carrying `payload`; payloads above DATA_FRAME are only heads
/// and requests, bounded by MAX_FRAME (see `header`).
fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
}

fn unknown(kind: u8, from: &str) -> WireError {
    WireError(format!("unknown frame type {kind} from the {from}"))
}

fn level_code(level: LogLevel) -> u8 {
    match level {
        LogLevel::Error => 0,
        LogLevel::Warn => 1,
        LogLevel::Info => 2,
    }
}

fn level_from_code(code: u8) -> Result<LogLevel, WireError> {
    match code {
        0 => Ok(LogLevel::Error),
        1 => Ok(LogLevel::Warn),
        2 => Ok(LogLevel::Info),
        n => Err(WireError(format!("unknown log level {n}"))),
    }
}

fn stage_code(stage: Stage) -> u8 {
    match stage {
        Stage::Running => 0,
        Stage::LoadFailed => 1,
    }
}

fn stage_from_code(code: u8) -> Result<Stage, WireError> {
    match code {
        0 => Ok(Stage::Running),
        1 => Ok(Stage::LoadFailed),
        n => Err(WireError(format!("unknown stage {n}"))),
    }
}

fn put_app(p: &mut Vec<u8>, app: &AppRef) {
    match &app.target {
        AppTarget::Script(path) => {
            p.put_u8(0);
            p.put_bytes(path.as_os_str().as_encoded_bytes());
        }
        AppTarget::Module(m) => {
            p.put_u8(1);
            p.put_bytes(m.as_bytes());
        }
    }
    p.put_bytes(app.callable.as_bytes());
}

fn get_app(f: &mut Fields<'_>) -> Result<AppRef, WireError> {
    let target = match f.u8()? {
        0 => {
            use std::os::unix::ffi::OsStringExt;
            AppTarget::Script(PathBuf::from(std::ffi::OsString::from_vec(f.bytes()?)))
        }
        1 => AppTarget::Module(f.string()?),
        n => return Err(WireError(format!("unknown app kind {n}"))),
    };
    Ok(AppRef {
        target,
        callable: f.string()?,
    })
}

fn put_head(h: &ResponseHead) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + h.headers.len() * 48);
    p.put_u16(h.status);
    p.put_bytes(&h.status_line);
    p.put_u32(h.headers.len() as u32);
    for (name, value) in &h.headers {
        p.put_bytes(name);
        p.put_bytes(value);
    }
    put_opt_u64(&mut p, h.content_length);
    p
}

fn get_head(payload: &[u8]) -> Result<ResponseHead, WireError> {
    let mut f = Fields::new(payload, "HEAD");
    let status = f.u16()?;
    let status_line = f.bytes()?;
    let n = f.count(8)?;
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        headers.push((f.bytes()?, f.bytes()?));
    }
    let content_length = get_opt_u64(&mut f)?;
    f.end()?;
    crate::status::check_encoded_head(status, &status_line, &headers, content_length)
        .map_err(|e| WireError(format!("refused response head: {e}")))?;
    Ok(ResponseHead {
        status,
        status_line,
        headers,
        content_length,
    })
}

fn put_opt_u64(p: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(n) => {
            p.put_u8(1);
            p.put_u64(n);
        }
        None => p.put_u8(0),
    }
}

fn get_opt_u64(f: &mut Fields<'_>) -> Result<Option<u64>, WireError> {
    match f.u8()? {
        0 => Ok(None),
        1 => Ok(Some(f.u64()?)),
        n => Err(WireError(format!("bad option flag {n}"))),
    }
}

const EXTRA_STR: u8 = 0;
const EXTRA_INTS: u8 = 1;

/// The engine's `Request`, field by field in declaration order.
fn put_request(p: &mut Vec<u8>, r: &Request) {
    p.put_bytes(r.method.as_bytes());
    p.put_bytes(&r.script_name);
    p.put_bytes(&r.path_info);
    p.put_bytes(&r.query_string);
    p.put_bytes(r.protocol.as_bytes());
    p.put_bytes(&r.server_name);
    p.put_bytes(r.server_port.as_bytes());
    p.put_bytes(r.remote_addr.as_bytes());
    p.put_bytes(r.remote_port.as_bytes());
    p.put_u8(u8::from(r.https));
    p.put_u32(r.headers.len() as u32);
    for (name, value) in &r.headers {
        p.put_bytes(name);
        p.put_bytes(value);
    }
    put_opt_u64(p, r.content_length);
    p.put_bytes(&r.request_uri);
    p.put_bytes(r.server_software.as_bytes());
    p.put_u32(r.extra.len() as u32);
    for (name, value) in &r.extra {
        p.put_bytes(name.as_bytes());
        match value {
            ExtraValue::Str(b) => {
                p.put_u8(EXTRA_STR);
                p.put_bytes(b);
            }
            ExtraValue::Static(s) => {
                p.put_u8(EXTRA_STR);
                p.put_bytes(s.as_bytes());
            }
            ExtraValue::IntTuple(v) => {
                p.put_u8(EXTRA_INTS);
                p.put_u32(v.len() as u32);
                for n in v {
                    p.put_u64(*n as u64);
                }
            }
        }
    }
    p.put_u32(r.params.len() as u32);
    for (name, value) in &r.params {
        p.put_bytes(name.as_bytes());
        p.put_bytes(value);
    }
}

fn get_request(f: &mut Fields<'_>) -> Result<Request, WireError> {
    let mut r = Request {
        method: f.string()?,
        script_name: f.bytes()?,
        path_info: f.bytes()?,
        query_string: f.bytes()?,
        protocol: f.string()?,
        server_name: f.bytes()?,
        server_port: f.string()?,
        remote_addr: f.string()?,
        remote_port: f.string()?,
        https: f.u8()? == 1,
        ..Request::default()
    };
    let n = f.count(8)?;
    r.headers.reserve(n);
    for _ in 0..n {
        r.headers.push((f.bytes()?, f.bytes()?));
    }
    r.content_length = get_opt_u64(f)?;
    r.request_uri = f.bytes()?;
    r.server_software = Cow::Owned(f.string()?);
    let n = f.count(9)?;
    for _ in 0..n {
        let name = Cow::Owned(f.string()?);
        let value = match f.u8()? {
            EXTRA_STR => ExtraValue::Str(f.bytes()?),
            EXTRA_INTS => {
                let len = f.count(8)?;
                let mut v = Vec::with_capacity(len);
                for _ in 0..len {
                    v.push(f.u64()? as i64);
                }
                ExtraValue::IntTuple(v)
            }
            n => return Err(WireError(format!("unknown environ value kind {n}"))),
        };
        r.extra.push((name, value));
    }
    let n = f.count(8)?;
    for _ in 0..n {
        r.params.push((f.string()?, f.bytes()?));
    }
    Ok(r)
}
