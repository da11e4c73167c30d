//! Signals reach the single-threaded event loop through a self-pipe: the handlers only
//! set a flag and write a byte that wakes `poll()`. SIGCHLD: an app process exited (reap
//! it); SIGTERM / SIGINT: stop every group and exit.
//!
//! Around `fork()` every signal is blocked, so that a signal arriving in the child before
//! it reset the handlers cannot run the supervisor's handler there (it would write to the
//! supervisor's own pipe).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static CHILD: AtomicBool = AtomicBool::new(false);
/// The stopping signal received, 0 if none.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    if signal == libc::SIGCHLD {
        CHILD.store(true, Ordering::SeqCst);
    } else {
        STOP.store(signal, Ordering::SeqCst);
    }
    // SAFETY: errno is thread-local and __errno_location always returns a valid pointer;
    // write is async-signal-safe, and WAKE_FD is the pipe's non-blocking write end (a
    // full pipe drops the byte, which is fine: the loop is awake already).
    unsafe {
        let errno = *libc::__errno_location();
        let byte = 1u8;
        libc::write(
            WAKE_FD.load(Ordering::SeqCst),
            (&byte as *const u8).cast(),
            1,
        );
        *libc::__errno_location() = errno;
    }
}

/// What arrived since the last [`Signals::take`].
pub struct Pending {
    pub child: bool,
    pub stop: Option<i32>,
}

pub struct Signals {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Signals {
    /// Creates the self-pipe and installs the handlers (once, in the supervisor).
    pub fn install() -> io::Result<Signals> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by no one else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            // SAFETY: a zeroed sigaction is valid (empty mask); the handler is an
            // extern "C" fn that only touches atomics and calls write.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Signals {
            read,
            _write: write,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Empties the pipe and returns what the handlers recorded.
    pub fn take(&self) -> Pending {
        let mut buf = [0u8; 64];
        // SAFETY: buf is valid for writes of its length; the fd is the non-blocking read
        // end, so this stops at EAGAIN.
        while unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        let stop = STOP.swap(0, Ordering::SeqCst);
        Pending {
            child: CHILD.swap(false, Ordering::SeqCst),
            stop: (stop != 0).then_some(stop),
        }
    }
}

/// Blocks every signal and returns the mask to restore (around `fork()`).
pub fn block_all() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initializes `all`, and pthread_sigmask
    // writes the previous mask into `old`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

pub fn restore(mask: &libc::sigset_t) {
    // SAFETY: mask was filled by pthread_sigmask in block_all.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

/// In a forked child, before `exec`: every signal back to its default action (ignored
/// ones would stay ignored across exec) and none blocked.
pub fn reset_in_child() {
    for signal in 1..libc::SIGRTMIN() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: setting a default disposition has no preconditions; signals that
            // cannot be changed make it fail harmlessly.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }
    // SAFETY: an empty set, initialized by sigemptyset, is a valid mask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}
