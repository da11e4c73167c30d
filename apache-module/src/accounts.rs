//! The accounts a WSGIDaemonProcess line names (`user=`, `group=`), looked up while the
//! configuration is read, as httpd does for its own User and Group: a misspelt name fails
//! `apache2 -t` instead of leaving the group unable to start later.

use std::ffi::{c_char, CString};

/// How big a buffer the lookups get at most (the entries of very large groups need more
/// than the usual 16 KiB).
const MAX_BUFFER: usize = 1 << 20;

/// The uid of `name` (a user name, or `#N` as httpd writes numeric ids).
pub fn user_id(name: &str) -> Result<u32, String> {
    if let Some(n) = numeric(name) {
        return n;
    }
    let c = c_name(name)?;
    lookup(name, "user", |buf| {
        // SAFETY: passwd is plain data (all-zero is valid); getpwnam_r writes into it and
        // into `buf`, whose length it is given, and sets `found` to it or NULL.
        unsafe {
            let mut entry: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                c.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            (rc, (!found.is_null()).then_some(entry.pw_uid))
        }
    })
}

/// The gid of `name` (a group name, or `#N`).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Some(n) = numeric(name) {
        return n;
    }
    let c = c_name(name)?;
    lookup(name, "group", |buf| {
        // SAFETY: as in user_id, for getgrnam_r and a group entry.
        unsafe {
            let mut entry: libc::group = std::mem::zeroed();
            let mut found: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(
                c.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            (rc, (!found.is_null()).then_some(entry.gr_gid))
        }
    })
}

fn numeric(name: &str) -> Option<Result<u32, String>> {
    let digits = name.strip_prefix('#')?;
    Some(
        digits
            .parse::<u32>()
            .map_err(|_| format!("\"{name}\" is not a number after #")),
    )
}

fn c_name(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("\"{name}\" contains a NUL byte"))
}

/// Runs a `get*nam_r` call with a buffer grown on ERANGE.
fn lookup(
    name: &str,
    what: &str,
    mut call: impl FnMut(&mut [c_char]) -> (libc::c_int, Option<u32>),
) -> Result<u32, String> {
    let mut size = 16 * 1024;
    loop {
        let mut buf = vec![0 as c_char; size];
        match call(&mut buf) {
            (0, Some(id)) => return Ok(id),
            (0, None) => return Err(format!("no {what} named \"{name}\" exists")),
            (libc::ERANGE, _) if size < MAX_BUFFER => size *= 4,
            (rc, _) => {
                return Err(format!(
                    "cannot look up the {what} \"{name}\": {}",
                    std::io::Error::from_raw_os_error(rc)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown_names() {
        assert_eq!(user_id("root"), Ok(0));
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(user_id("#33"), Ok(33));
        assert!(user_id("#x").is_err());
        assert!(user_id("rwsgi-no-such-user")
            .unwrap_err()
            .contains("no user named \"rwsgi-no-such-user\""));
        assert!(group_id("rwsgi-no-such-group")
            .unwrap_err()
            .contains("no group named"));
    }
}
