//! Open files carried across a unix socket (SCM_RIGHTS), so that a file an app returns
//! through `wsgi.file_wrapper` reaches nginx or Apache as a descriptor they can sendfile,
//! not as bytes copied through the socket.
//!
//! A descriptor rides on the bytes of the `sendmsg` that carries it; on a stream socket
//! `recvmsg` never returns bytes from both sides of such a boundary in one call, so the
//! receiver sees each file together with the frame bytes it was sent with and queues it
//! for that FILE frame.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Most descriptors one `recvmsg` takes; a sender attaches one per FILE frame.
const MAX_FDS: usize = 4;

/// Writes `bytes` with `file`'s descriptor attached; returns how many bytes went (the
/// descriptor goes with the first of them, so a short write must not be retried with it).
pub fn send_with_file(sock: RawFd, bytes: &[u8], file: &File) -> io::Result<usize> {
    let fd = file.as_raw_fd();
    let mut control = Control::room_for(1);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let msg = message(&mut iov, &mut control);
    // SAFETY: msg_control points at room for one header (CMSG_FIRSTHDR then returns a
    // pointer inside it, never null).
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: cmsg points into `control`, which has room for the header and one int;
    // CMSG_DATA points at that int's place; write_unaligned needs no alignment.
    unsafe {
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
    }
    // SAFETY: msg and everything it points to live until sendmsg returns; the kernel
    // only reads them.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads bytes into `buf` like `recv`, queueing any descriptors that came with them
/// (close-on-exec) in `files`. `flags` as for recvmsg (MSG_DONTWAIT on a loop).
pub fn recv_with_files(
    sock: RawFd,
    buf: &mut [u8],
    files: &mut VecDeque<File>,
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut control = Control::room_for(MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut msg = message(&mut iov, &mut control);
    // SAFETY: buf and control outlive the call; the kernel writes at most their lengths.
    let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR walk only the
    // msg_controllen bytes the kernel wrote inside `control`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is a header inside `control` (see above).
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let data_len = len - unsafe { libc::CMSG_LEN(0) } as usize;
            for i in 0..data_len / size_of::<RawFd>() {
                // SAFETY: the header's data holds data_len bytes of ints, inside `control`.
                let fd = unsafe {
                    std::ptr::read_unaligned((libc::CMSG_DATA(cmsg) as *const RawFd).add(i))
                };
                // SAFETY: the kernel just installed fd in this process for us; nothing
                // else owns it.
                files.push_back(unsafe { File::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors than one frame may carry",
        ));
    }
    Ok(n as usize)
}

/// A control area for `sendmsg` / `recvmsg`, aligned for the `cmsghdr`s that go in it.
struct Control {
    words: Vec<u64>,
    /// Its size in bytes, as CMSG_SPACE says.
    len: usize,
}

impl Control {
    /// Room for one header carrying `fds` descriptors.
    fn room_for(fds: usize) -> Control {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let len = unsafe { libc::CMSG_SPACE((fds * size_of::<RawFd>()) as u32) } as usize;
        Control {
            words: vec![0; len.div_ceil(size_of::<u64>())],
            len,
        }
    }
}

/// A message of the one buffer `iov` and the control area `control`. It points into
/// both, which must stay in place until it is used no more.
fn message(iov: &mut libc::iovec, control: &mut Control) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.words.as_mut_ptr().cast();
    msg.msg_controllen = control.len as _;
    msg
}
