//! Unix socket paths: where a group's socket is (`<dir>/<group>.sock`), the longest path
//! a socket address holds, and the address of a path for connect(2). The supervisor binds
//! the group sockets; each server module checks the paths while it reads its config (or
//! applies it) and connects with a connect call of its own (non-blocking on nginx's event
//! loop, bounded by a timeout in Apache), for which std has no API.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The longest path a unix socket address holds (sun_path's 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The socket of group `name` in the supervisor directory `dir`, or why it cannot be
/// (a path too long for a unix socket: the caller says which setting shortens it).
pub fn group_socket(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.sock"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path {} is {len} bytes, longer than a unix socket allows \
             ({MAX_SOCKET_PATH})",
            path.display()
        ));
    }
    Ok(path)
}

/// The address of the unix socket at `path`, and its length, for connect(2).
pub fn address(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_SOCKET_PATH || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} cannot be a unix socket's path", path.display()),
        ));
    }
    // SAFETY: sockaddr_un is plain data; all-zero is valid (and NUL-terminates the path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_sockets_fit_in_an_address() {
        let dir = Path::new("/run/x");
        assert_eq!(group_socket(dir, "g").unwrap(), Path::new("/run/x/g.sock"));
        let longest = Path::new("/").join("d".repeat(MAX_SOCKET_PATH - "/.sock".len() - 2));
        let path = group_socket(&longest, "g").unwrap();
        assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
        let (addr, len) = address(&path).unwrap();
        assert_eq!(addr.sun_path[MAX_SOCKET_PATH], 0);
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_un>());
        let err = group_socket(&longest, "gg").unwrap_err();
        assert!(
            err.contains("108 bytes, longer than a unix socket allows"),
            "{err}"
        );
        assert!(address(&longest.join("gg.sock")).is_err());
        assert!(address(Path::new("/a\0b")).is_err());
    }

    #[test]
    fn an_address_reaches_a_listener() {
        let dir = std::env::temp_dir().join(format!("rwsgi-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = group_socket(&dir, "g").unwrap();
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (addr, len) = address(&path).unwrap();
        // SAFETY: socket has no memory preconditions.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: addr is a filled sockaddr_un of len meaningful bytes; fd is ours.
        let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert!(listener.accept().is_ok());
        // SAFETY: fd is ours and used no more.
        unsafe { libc::close(fd) };
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
