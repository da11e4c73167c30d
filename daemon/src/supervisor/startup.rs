//! Becoming the supervisor of a directory: as root only, with none of the caller's
//! descriptors, in a root-owned directory nobody else can change, holding its lock, and
//! (when a server's master started it) detached from that master.

use super::log::info;
use super::sys;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name inside the directory.
pub const LOCK: &str = "supervisor.lock";
/// How long to wait for a supervisor of the same directory that is stopping.
const STOPPING_WAIT: Duration = Duration::from_secs(60);

pub fn require_root() -> Result<(), String> {
    if sys::euid() != 0 {
        return Err(format!(
            "must run as root (it runs each group's processes as the group's user); \
             running as uid {}",
            sys::euid()
        ));
    }
    Ok(())
}

/// Closes every inherited descriptor but stderr (the server's error log), reads stdin
/// from /dev/null and sends stdout to stderr (so an app's stray prints are logged).
/// A standard descriptor the caller left closed is opened on /dev/null first, or the
/// next file opened would take its number and receive everything written to it.
pub fn sanitize_descriptors() {
    sys::close_from(3);
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags; open takes a static path and
        // returns the lowest free number, which is `fd` since the lower ones are open.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors, from descriptors open here.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(2, 1);
        }
    }
}

/// Creates `dir` (and missing parents) `root 0755`, and refuses a directory another user
/// could change: the group sockets and the control socket live there, and whoever could
/// replace them could read every request or command the supervisor.
pub fn prepare_dir(dir: &Path) -> Result<PathBuf, String> {
    // Directories made here are 0755 whatever umask the server's master had.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    let real = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if meta.uid() != 0 {
        return Err(format!(
            "the socket directory {} belongs to uid {}, not root: refusing it (chown root)",
            real.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the socket directory {} is writable by group or others (mode {:o}): refusing it \
             (chmod 755)",
            real.display(),
            meta.mode() & 0o7777
        ));
    }
    // The umask may have narrowed a directory just created; 0755 lets the server's
    // workers reach their sockets.
    if meta.mode() & 0o755 != 0o755 {
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", real.display()))?;
    }
    // Above it: root's, and not writable by others unless sticky (like /tmp), or another
    // user could rename the directory away and put one of their own in its place.
    for parent in real.ancestors().skip(1) {
        let m = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let sticky = m.mode() & 0o1000 != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "the socket directory {} is inside {}, which a user other than root can \
                 change: use a directory whose parents are all root's",
                real.display(),
                parent.display()
            ));
        }
    }
    Ok(real)
}

/// Takes `dir`'s lock. None: another supervisor runs there (and answers on its socket).
/// A supervisor that holds the lock but no longer answers is stopping: wait for it.
pub fn take_lock(dir: &Path, control: &Path) -> Result<Option<File>, String> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let started = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor this process owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
        let holder = holder_pid(&file);
        if std::os::unix::net::UnixStream::connect(control).is_ok() {
            info!(
                "another supervisor (pid {holder}) runs in {}: leaving it in charge",
                dir.display()
            );
            return Ok(None);
        }
        if started.elapsed() >= STOPPING_WAIT {
            return Err(format!(
                "the supervisor (pid {holder}) holding {} neither answers nor stops",
                path.display()
            ));
        }
        if !said {
            info!(
                "waiting for the supervisor (pid {holder}) of {} to finish stopping",
                dir.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn holder_pid(mut file: &File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    match text.trim() {
        "" => "unknown".into(),
        pid => pid.to_string(),
    }
}

/// Writes this process's pid into the lock file, for the messages above.
pub fn record_pid(mut file: &File) {
    let _ = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()));
}

/// The first process exits 0 at once (the server's master waits for it); the second
/// leads a new session, so the master neither reaps it nor signals it with its group.
/// The lock and sockets taken before are shared with the child and stay held.
pub fn detach() -> Result<(), String> {
    // SAFETY: the process is single-threaded here; the child continues normally and the
    // parent leaves with _exit, running no destructor that could touch shared state.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        // SAFETY: setsid has no preconditions; the child of a fork is not a group leader.
        0 => match unsafe { libc::setsid() } {
            -1 => Err(format!("setsid: {}", std::io::Error::last_os_error())),
            _ => Ok(()),
        },
        // SAFETY: _exit ends the first process without running anything else.
        _ => unsafe { libc::_exit(0) },
    }
}
