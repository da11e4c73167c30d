//! The supervisor's end of the control protocol (docs/daemon-internals.md, "Control
//! protocol"; messages in rwsgi::daemon::control): `DIR/control.sock`, root 0600, JSON
//! lines in, one reply line out per request. Connections are non-blocking and buffered
//! both ways, so one slow or silent peer never holds the event loop.
//!
//! A connection that had an `apply` accepted is an owner: its closing is a lifeline
//! closing (the server's master stopped or died).

use super::log::warning;
use super::sys;
use rwsgi::daemon::control::{read_message, write_message, ControlReply, ControlRequest};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest request line (as read_message's limit).
const MAX_LINE: usize = 1 << 20;

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The server (name, master pid) whose lifeline this is, once it applied.
    owner: Option<(String, u32)>,
    closed: bool,
}

pub struct ControlServer {
    path: PathBuf,
    listener: Option<UnixListener>,
    conns: Vec<Conn>,
}

/// What [`ControlServer::service`] saw close.
#[derive(Default)]
pub struct Closed {
    /// Lifelines that closed: (server, master pid).
    pub owners: Vec<(String, u32)>,
}

impl ControlServer {
    /// Binds `path` (0600: only root may talk to the supervisor).
    pub fn bind(path: &Path) -> Result<ControlServer, String> {
        let fail =
            |e: std::io::Error| format!("cannot create the control socket {}: {e}", path.display());
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return Err(format!("{} is a directory", path.display())),
            Ok(_) => std::fs::remove_file(path).map_err(fail)?,
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            listener: Some(listener),
            conns: Vec::new(),
        })
    }

    /// The descriptors to poll, in the order [`ControlServer::service`] expects them.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>) {
        let pollfd = |fd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        if let Some(l) = &self.listener {
            fds.push(pollfd(l.as_raw_fd(), libc::POLLIN));
        }
        for c in &self.conns {
            let out = if c.output.is_empty() {
                0
            } else {
                libc::POLLOUT
            };
            fds.push(pollfd(c.stream.as_raw_fd(), libc::POLLIN | out));
        }
    }

    pub fn owners(&self) -> usize {
        self.conns.iter().filter(|c| c.owner.is_some()).count()
    }

    /// Accepts, reads, answers (with `answer`) and writes, given poll's results for the
    /// descriptors of [`ControlServer::poll_fds`].
    pub fn service(
        &mut self,
        fds: &[libc::pollfd],
        mut answer: impl FnMut(&ControlRequest) -> ControlReply,
    ) -> Closed {
        let mut fds = fds.iter();
        let accept = self.listener.is_some() && fds.next().is_some_and(|f| f.revents != 0);
        for (conn, fd) in self.conns.iter_mut().zip(fds) {
            if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                conn.read();
                for line in conn.lines() {
                    let reply = match read_message::<ControlRequest>(&mut &line[..]) {
                        Ok(Some(request)) => {
                            let reply = answer(&request);
                            if let (ControlRequest::Apply(a), ControlReply::Applied { .. }) =
                                (&request, &reply)
                            {
                                conn.owner = Some((a.server.clone(), a.owner_pid));
                            }
                            reply
                        }
                        Ok(None) => continue,
                        Err(e) => ControlReply::Error {
                            error: format!("bad control message: {e}"),
                        },
                    };
                    let _ = write_message(&mut conn.output, &reply);
                }
            }
            conn.write();
        }
        let mut closed = Closed::default();
        self.conns.retain_mut(|c| {
            if c.closed {
                closed.owners.extend(c.owner.take());
            }
            !c.closed
        });
        if accept {
            self.accept();
        }
        closed
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    // The socket is root's 0600 already; this is the second lock.
                    match sys::peer_uid(stream.as_raw_fd()) {
                        Some(0) => {}
                        uid => {
                            warning!("refused a control connection from uid {uid:?}: only root may use it");
                            continue;
                        }
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.conns.push(Conn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        owner: None,
                        closed: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    warning!("control socket: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Stops listening, removes the control socket and drops every connection (the
    /// supervisor is stopping; a server that comes next starts a new one).
    pub fn shut(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.conns.clear();
    }
}

impl Conn {
    fn read(&mut self) {
        let mut buf = [0u8; 16384];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    if self.input.len() > MAX_LINE && !self.input.contains(&b'\n') {
                        warning!("a control message over {MAX_LINE} bytes: closing its connection");
                        self.closed = true;
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// The complete lines read so far, each with its newline.
    fn lines(&mut self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while let Some(end) = self.input.iter().position(|b| *b == b'\n') {
            lines.push(self.input.drain(..=end).collect());
        }
        lines
    }

    fn write(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }
}
