//! One connection from an Apache thread to a daemon process group (blocking, on the
//! request's thread): connecting with retries while the group's processes are busy or
//! starting, writing frames, and reading frames together with the open files that ride
//! on FILE frames (SCM_RIGHTS), so a `wsgi.file_wrapper` file reaches Apache's sendfile.

use rwsgi::daemon::fd_passing::recv_with_files;
use rwsgi::daemon::{Frame, FrameBuffer};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How much is read from the socket at once.
const READ_SIZE: usize = 64 * 1024;

pub struct AppStream {
    sock: UnixStream,
    frames: FrameBuffer,
    /// Descriptors received and not yet taken by their FILE frame, in order.
    files: VecDeque<File>,
    buf: Vec<u8>,
}

/// Why no connection could be made.
pub struct ConnectError {
    pub attempts: u32,
    pub last: io::Error,
}

impl AppStream {
    /// Connects to `socket`, trying again until `timeout` passes while the socket is
    /// missing (the supervisor is starting the group), refuses (no process listens) or
    /// its backlog is full.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<AppStream, ConnectError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match connect_once(socket, deadline.saturating_duration_since(Instant::now())) {
                Ok(sock) => {
                    return Ok(AppStream {
                        sock,
                        frames: FrameBuffer::new(),
                        files: VecDeque::new(),
                        buf: vec![0; READ_SIZE],
                    })
                }
                Err(last) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ConnectError { attempts, last });
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    /// How long a read or write may wait for the app process (socket-timeout).
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(timeout))?;
        self.sock.set_write_timeout(Some(timeout))
    }

    /// Writes all of `bytes` (without SIGPIPE: a gone peer is an error).
    pub fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: bytes is a live slice for the call; the fd is the open socket's.
            let n = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(timed_out(e));
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }

    /// The next frame, waiting for it; `Ok(None)` when the app process closed the
    /// connection between frames.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(Some(frame));
            }
            let n = loop {
                match recv_with_files(self.sock.as_raw_fd(), &mut self.buf, &mut self.files, 0) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other.map_err(timed_out)?,
                }
            };
            if n == 0 {
                return if self.frames.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            self.frames.extend(&self.buf[..n]);
        }
    }

    /// The next frame if it has arrived whole already (never waits).
    pub fn buffered_frame(&mut self) -> io::Result<Option<Frame>> {
        Ok(self.frames.next_frame()?)
    }

    /// The descriptors that came with FILE frames, for `FromApp::decode`.
    pub fn files(&mut self) -> &mut VecDeque<File> {
        &mut self.files
    }

    /// No more from this side: the app's next read of the request body ends in an error.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

/// One connect that waits at most `wait` for room in a full backlog (a plain blocking
/// connect to a unix socket would wait for as long as the group's processes are busy).
fn connect_once(path: &Path, wait: Duration) -> io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket owned by nobody else; the stream closes it on error too.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    // A zero timeout would mean "wait forever".
    sock.set_write_timeout(Some(wait.max(Duration::from_millis(1))))?;
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a filled sockaddr_un and len covers the family, the path and its NUL.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// A socket timeout shows as EAGAIN: name it for what it is.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    } else {
        e
    }
}
