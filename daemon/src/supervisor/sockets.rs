//! A group's listening socket: `DIR/<group>.sock`, `root:<server group> 0660`, with the
//! group's listen-backlog. The supervisor creates it and keeps it for the group's whole
//! life (across changes of the group), so a server worker always finds it at the same
//! path; each app process gets a copy as fd 3.
//!
//! The directory is root's and 0755 (startup.rs): no one else can put a file or a link
//! there, so paths inside it can be used as they are.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// sun_path holds 108 bytes with the terminating NUL.
const MAX_PATH: usize = 107;

pub fn check_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > MAX_PATH {
        return Err(format!(
            "its socket path {} is {len} bytes, longer than a unix socket allows ({MAX_PATH}): \
             use a shorter socket directory or group name",
            path.display()
        ));
    }
    Ok(())
}

pub fn create(path: &Path, worker_gid: u32, backlog: u32) -> Result<UnixListener, String> {
    check_path(path)?;
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(format!("{} is a directory", path.display())),
        // A stale socket from a supervisor that did not stop cleanly.
        Ok(_) => std::fs::remove_file(path).map_err(|e| fail("cannot remove", e))?,
        Err(_) => {}
    }
    // The supervisor's umask (0077) makes it 0600 from the start: no one but root can
    // connect before the group's owner and mode are set.
    let listener = UnixListener::bind(path).map_err(|e| fail("cannot create", e))?;
    let set_up = std::os::unix::fs::lchown(path, Some(0), Some(worker_gid))
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)))
        .map_err(|e| fail("cannot set the owner and mode of", e))
        .and_then(|_| set_backlog(&listener, backlog).map_err(|e| fail("cannot listen on", e)));
    if let Err(e) = set_up {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// For a group that changed: the server's group or the backlog may be new.
pub fn update(
    listener: &UnixListener,
    path: &Path,
    worker_gid: u32,
    backlog: u32,
) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(0), Some(worker_gid))
        .and_then(|_| set_backlog(listener, backlog))
        .map_err(|e| format!("cannot update {}: {e}", path.display()))
}

/// listen() again on a listening socket changes its backlog (Linux).
fn set_backlog(listener: &UnixListener, backlog: u32) -> std::io::Result<()> {
    // SAFETY: listen on a socket this process owns.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog as libc::c_int) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
