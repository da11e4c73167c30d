//! The engine's [`ResponseSink`] in an app process: output events become frames on the
//! connection to the server worker (rwsgi::daemon::messages).
//!
//! The sink contract says `log` never waits, while `send` may block on a slow client
//! (the server stops reading our socket when its client does not read). So bytes go out
//! through one queue, `Writer::out`, written in order by whoever holds the writer:
//! `send` writes it out completely, blocking; `log` appends its frame and, only if the
//! writer is free, writes what the socket takes without blocking. Frames stay whole on
//! the wire because the queue is only ever written from its front. A log line that
//! comes while `send` holds the writer waits in `pending` (bounded) for the next holder.
//! After the final event, lines go to stderr, the server's main error log; so do the
//! lines that never reached the server because the connection broke (the client went
//! away while they waited behind a stuck response): a line is never lost. Lines go out
//! bare: the server puts its label for the request in front (rwsgi::LogLabel). The
//! engine's stages go the same way as log lines, for the server's status page.

use rwsgi::daemon::fd_passing::send_with_file;
use rwsgi::daemon::messages::{encode_event, FromApp};
use rwsgi::daemon::{FrameBuffer, DATA_FRAME};
use rwsgi::{ClientGone, LogLevel, OutputEvent, ResponseSink, Stage};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};

/// Log bytes that may wait for the writer; past this, lines go to stderr instead.
const MAX_PENDING_LOG: usize = 1 << 20;

pub struct SocketSink {
    writer: Mutex<Writer>,
    /// Log frames that came while the writer was busy.
    pending: Mutex<Vec<u8>>,
    /// The server takes files as descriptors (it said so in its REQUEST).
    accepts_files: bool,
    /// The server takes STAGE frames (it said so in its REQUEST).
    accepts_stages: bool,
    /// "group NAME, GET /uri", for lines that end up on stderr.
    context: String,
    /// The writer's socket, to shut it down while a write blocks (the writer's stream
    /// owns it and closes it only when the sink is dropped).
    fd: RawFd,
}

struct Writer {
    stream: UnixStream,
    /// Encoded frames not yet written, in order.
    out: Vec<u8>,
    head_sent: bool,
    /// The final event went out (or the request was failed from outside).
    finished: bool,
    /// A write failed: the server or its client is gone.
    broken: bool,
    /// Log lines of writes that failed, for stderr.
    lost_logs: Vec<(LogLevel, String)>,
}

impl SocketSink {
    pub fn new(
        stream: UnixStream,
        accepts_files: bool,
        accepts_stages: bool,
        context: String,
    ) -> SocketSink {
        SocketSink {
            fd: stream.as_raw_fd(),
            writer: Mutex::new(Writer {
                stream,
                out: Vec::with_capacity(16 * 1024),
                head_sent: false,
                finished: false,
                broken: false,
                lost_logs: Vec::new(),
            }),
            pending: Mutex::new(Vec::new()),
            accepts_files,
            accepts_stages,
            context,
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves waiting log frames to the end of the writer's queue.
    fn take_pending(&self, w: &mut Writer) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        w.out.append(&mut pending);
    }

    /// Asks the server for up to `n` body bytes (the body reader's half of the sink).
    pub fn request_body(&self, n: u32) -> io::Result<()> {
        let mut w = self.writer();
        if w.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.take_pending(&mut w);
        FromApp::Read(n).encode(&mut w.out);
        let result = w.flush().inspect_err(|_| w.broken = true);
        self.spill(&mut w);
        result
    }

    /// A request past its request-timeout: answer 504 if nothing was sent yet, else cut
    /// the response so the client sees it broken. Either way the app's later output is
    /// refused (its next write raises, and the engine closes its iterable). Never waits
    /// for a thread blocked on the client: its socket is shut down instead.
    pub fn time_out(&self) {
        let Ok(mut w) = self.writer.try_lock() else {
            // The writer's holder is blocked in a write: shutting the socket down wakes it
            // with an error.
            // SAFETY: fd is the writer's open socket, which lives as long as self;
            // shutdown changes no memory.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            return;
        };
        if w.finished {
            return;
        }
        if !w.head_sent && !w.broken {
            encode_event(&OutputEvent::Fail(504), &mut w.out);
            let _ = w.flush();
        }
        w.finished = true;
        w.broken = true;
        let _ = w.stream.shutdown(std::net::Shutdown::Both);
        self.spill(&mut w);
    }
}

impl Writer {
    /// Writes the whole queue, blocking (with the socket's write timeout). On failure
    /// the log lines that did not go out are kept in `lost_logs`.
    fn flush(&mut self) -> io::Result<()> {
        let mut sent = 0;
        let result = loop {
            if sent == self.out.len() {
                break Ok(());
            }
            match self.stream.write(&self.out[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            self.lose(sent);
        }
        self.out.clear();
        result
    }

    /// Keeps the log lines of the frames of `out` not wholly within its first `sent`
    /// bytes, which the server will never read.
    fn lose(&mut self, sent: usize) {
        let start = first_unsent_frame(&self.out, sent);
        let mut lines = log_lines(&self.out[start..]);
        self.lost_logs.append(&mut lines);
    }

    /// Writes what the socket takes now; keeps the rest queued.
    fn flush_without_waiting(&mut self) {
        let mut sent = 0;
        while sent < self.out.len() {
            let rest = &self.out[sent..];
            // SAFETY: rest is a live slice for the call; the fd is the open stream's.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n <= 0 {
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    self.broken = true;
                    self.lose(sent);
                    self.out.clear();
                    return;
                }
                break;
            }
            sent += n as usize;
        }
        self.out.drain(..sent);
    }

    /// Sends `len` bytes of `file` from `offset`: as a descriptor the server sends from,
    /// or, when it cannot take one, as data frames read here.
    fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
        as_descriptor: bool,
    ) -> io::Result<()> {
        let event = OutputEvent::File {
            file: file.try_clone()?,
            offset,
            len,
        };
        if as_descriptor {
            self.flush()?;
            encode_event(&event, &mut self.out);
            let frame = std::mem::take(&mut self.out);
            // The descriptor goes with the first bytes; the rest of a short write follows
            // as plain bytes.
            let n = send_with_file(self.stream.as_raw_fd(), &frame, file)?;
            return self.stream.write_all(&frame[n..]);
        }
        let mut buf = vec![0u8; DATA_FRAME.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let want = buf.len().min((len - done) as usize);
            let n = file.read_at(&mut buf[..want], offset + done)?;
            if n == 0 {
                // The file is shorter than the app said: the engine's framing reports
                // the shortfall (its Content-Length check) once it ends the response.
                break;
            }
            encode_event(
                &OutputEvent::Data(rwsgi::Chunk::copied(&buf[..n])),
                &mut self.out,
            );
            self.flush()?;
            done += n as u64;
        }
        Ok(())
    }
}

impl ResponseSink for SocketSink {
    fn send(&self, events: &mut Vec<OutputEvent>) -> Result<(), ClientGone> {
        let mut w = self.writer();
        if w.broken || w.finished {
            events.clear();
            return Err(ClientGone);
        }
        self.take_pending(&mut w);
        let mut result = Ok(());
        for event in events.drain(..) {
            if result.is_err() {
                continue;
            }
            match &event {
                OutputEvent::Head(_) => w.head_sent = true,
                e if e.is_final() => w.finished = true,
                _ => {}
            }
            result = match &event {
                OutputEvent::File { file, offset, len } => {
                    w.send_file(file, *offset, *len, self.accepts_files)
                }
                other => {
                    encode_event(other, &mut w.out);
                    Ok(())
                }
            };
        }
        let result = result.and_then(|()| w.flush());
        if result.is_err() {
            w.broken = true;
        }
        self.spill(&mut w);
        result.map_err(|_| ClientGone)
    }

    fn log(&self, level: LogLevel, message: &str) {
        if let Ok(mut w) = self.writer.try_lock() {
            if w.finished || w.broken {
                self.spill(&mut w);
                drop(w);
                return self.log_to_stderr(level, message);
            }
            self.take_pending(&mut w);
            FromApp::Log(level, message.to_string()).encode(&mut w.out);
            w.flush_without_waiting();
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() + message.len() > MAX_PENDING_LOG {
            drop(pending);
            return self.log_to_stderr(level, message);
        }
        FromApp::Log(level, message.to_string()).encode(&mut pending);
    }

    /// Never waits, like `log`. A stage after the response ended (or once the server is
    /// gone) has nobody to count it and is dropped, as is every stage for a server that
    /// did not ask for them.
    fn stage(&self, stage: Stage) {
        if !self.accepts_stages {
            return;
        }
        if let Ok(mut w) = self.writer.try_lock() {
            if !(w.finished || w.broken) {
                self.take_pending(&mut w);
                FromApp::Stage(stage).encode(&mut w.out);
                w.flush_without_waiting();
            }
            return;
        }
        // A few bytes, at most twice a request: no bound needed.
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        FromApp::Stage(stage).encode(&mut pending);
    }
}

impl SocketSink {
    /// Once nothing more goes to the server (the response ended or the connection
    /// broke): the lines that were waiting for it, or were lost with a failed write, go
    /// to stderr, in order.
    fn spill(&self, w: &mut Writer) {
        if !(w.finished || w.broken) {
            return;
        }
        let waiting = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut lines = std::mem::take(&mut w.lost_logs);
        if w.broken {
            lines.append(&mut log_lines(&std::mem::take(&mut w.out)));
        }
        lines.append(&mut log_lines(&waiting));
        for (level, message) in lines {
            self.log_to_stderr(level, &message);
        }
    }

    fn log_to_stderr(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
        };
        let mut err = io::stderr().lock();
        for line in message.lines() {
            let _ = writeln!(
                err,
                "rwsgi-app[{}] {level}: {}: {line}",
                std::process::id(),
                self.context
            );
        }
    }
}

/// Where the first frame of `out` that is not wholly within its first `sent` bytes
/// starts (frames are `u32 length of what follows` + type + payload).
fn first_unsent_frame(out: &[u8], sent: usize) -> usize {
    let mut pos = 0;
    while let Some(head) = out.get(pos..pos + 4) {
        let end = pos + 4 + u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if end > sent {
            return pos;
        }
        pos = end;
    }
    pos
}

/// The LOG frames' lines among whole encoded frames.
fn log_lines(bytes: &[u8]) -> Vec<(LogLevel, String)> {
    let mut frames = FrameBuffer::new();
    frames.extend(bytes);
    let mut no_files = VecDeque::new();
    let mut lines = Vec::new();
    while let Ok(Some(frame)) = frames.next_frame() {
        if let Ok(FromApp::Log(level, message)) = FromApp::decode(&frame, &mut no_files) {
            lines.push((level, message));
        }
    }
    lines
}
