//! The engine's [`BodyReader`] in an app process: each read asks the server worker for
//! bytes (a READ frame) and takes its BODY answer. The server reads its client only when
//! asked, so an app that never reads the body never makes Apache send `100 Continue`.

use crate::socket_sink::SocketSink;
use rwsgi::daemon::messages::ToApp;
use rwsgi::daemon::{read_frame, WireError, DATA_FRAME};
use rwsgi::BodyReader;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

pub struct SocketBody {
    /// The connection's reading half (the server sends only BODY frames after REQUEST).
    stream: UnixStream,
    /// Where READ frames go, in order with the response's frames.
    sink: Arc<SocketSink>,
    /// Bytes the request announced and not yet read (None: chunked, unknown).
    remaining: Option<u64>,
    done: bool,
}

impl SocketBody {
    pub fn new(stream: UnixStream, sink: Arc<SocketSink>, length: Option<u64>) -> SocketBody {
        SocketBody {
            stream,
            sink,
            remaining: length,
            done: length == Some(0),
        }
    }
}

impl BodyReader for SocketBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let mut want = buf.len().min(DATA_FRAME);
        if let Some(left) = self.remaining {
            want = want.min(left.min(usize::MAX as u64) as usize);
        }
        self.sink.request_body(want as u32)?;
        let frame = read_frame(&mut self.stream)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let ToApp::Body(bytes) = ToApp::decode(&frame)? else {
            return Err(WireError("expected BODY after READ".into()).into());
        };
        if bytes.len() > want {
            return Err(WireError(format!(
                "BODY of {} bytes for a READ of {want}",
                bytes.len()
            ))
            .into());
        }
        if bytes.is_empty() {
            self.done = true;
            if self.remaining.is_some_and(|left| left > 0) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "request body cut short",
                ));
            }
            return Ok(0);
        }
        buf[..bytes.len()].copy_from_slice(&bytes);
        if let Some(left) = self.remaining.as_mut() {
            *left -= bytes.len() as u64;
            self.done = *left == 0;
        }
        Ok(bytes.len())
    }

    fn remaining(&self) -> Option<u64> {
        self.remaining
    }
}
