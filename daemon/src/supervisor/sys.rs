//! Small system calls the supervisor needs that std does not offer.

use std::io;
use std::os::fd::RawFd;

/// Closes every descriptor from `first` up. The supervisor inherits the server master's
/// descriptors (nginx leaks its listeners into helpers), and an app process must hold
/// nothing but its own socket: a tenant's code could otherwise use them.
pub fn close_from(first: RawFd) {
    // SAFETY: close_range only closes descriptors; no Rust object in this process owns
    // one from `first` up at the points this is called (start-up, a child before exec).
    let rc = unsafe { libc::close_range(first as libc::c_uint, libc::c_uint::MAX, 0) };
    if rc == 0 {
        return;
    }
    // A kernel without close_range (before 5.9): every possible descriptor.
    // SAFETY: rlimit is plain data filled by getrlimit.
    let most = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur.min(1 << 20) as RawFd
    };
    for fd in first..most {
        // SAFETY: as above; closing a descriptor that is not open fails harmlessly.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Fills `buf` from the kernel's random source.
pub fn random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled rest of buf.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

/// The uid of a unix socket's peer (SO_PEERCRED).
pub fn peer_uid(fd: RawFd) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// Sends `signal` to a child of this process that has not been reaped yet (so its pid
/// cannot have been reused).
pub fn kill(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is an unreaped child's.
    unsafe {
        libc::kill(pid, signal);
    }
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
