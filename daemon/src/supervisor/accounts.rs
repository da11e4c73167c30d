//! Who a group's processes run as: its `user=` / `group=` looked up in the system's
//! account database, or the server's worker account for a group without `user=`.
//! Looked up at apply time, so a name that does not exist is refused to the server
//! (naming the group and the name) instead of failing in every forked process. Never
//! root: a group that would run as uid 0 or with gid 0 is refused.

use rwsgi::daemon::GroupSpec;
use std::ffi::{CStr, CString};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// For initgroups, USER and LOGNAME.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// HOME, and the working directory when the group has no `home=`.
    pub home: PathBuf,
    /// False for a uid without a passwd entry: its only group is `gid`.
    pub in_passwd: bool,
}

pub fn for_group(spec: &GroupSpec, worker_uid: u32, worker_gid: u32) -> Result<Account, String> {
    let g = &spec.name;
    let mut account = match &spec.user {
        Some(user) => {
            let found = match user.strip_prefix('#') {
                Some(n) => {
                    let uid = n
                        .parse()
                        .map_err(|_| format!("group {g}: user=\"{user}\" is not #<uid>"))?;
                    passwd_by_uid(uid)?
                }
                None => passwd_by_name(user)?,
            };
            found.ok_or_else(|| format!("group {g}: user \"{user}\" does not exist (user=)"))?
        }
        None => {
            if worker_uid == 0 {
                return Err(format!(
                    "group {g}: has no user= and the server's worker user is root: \
                     set user= (an app process never runs as root)"
                ));
            }
            passwd_by_uid(worker_uid)?.unwrap_or(Account {
                name: worker_uid.to_string(),
                uid: worker_uid,
                gid: worker_gid,
                home: PathBuf::from("/"),
                in_passwd: false,
            })
        }
    };
    if spec.user.is_none() {
        account.gid = worker_gid;
    }
    if let Some(group) = &spec.group {
        account.gid = match group.strip_prefix('#') {
            Some(n) => n
                .parse()
                .map_err(|_| format!("group {g}: group=\"{group}\" is not #<gid>"))?,
            None => group_by_name(group)?.ok_or_else(|| {
                format!("group {g}: system group \"{group}\" does not exist (group=)")
            })?,
        };
    }
    if account.uid == 0 {
        return Err(format!(
            "group {g}: user \"{}\" is root (uid 0): refused, an app process never runs as root",
            account.name
        ));
    }
    if account.gid == 0 {
        return Err(format!(
            "group {g}: its processes would run with group root (gid 0): refused, set group="
        ));
    }
    Ok(account)
}

/// Calls a reentrant lookup (`getpwnam_r` and friends) with a buffer that grows on
/// ERANGE. `call` returns the function's result code and whether an entry was found.
fn with_buffer<T>(
    what: &str,
    mut call: impl FnMut(&mut Vec<libc::c_char>) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, String> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            (e, _) => {
                return Err(format!(
                    "cannot look up {what}: {}",
                    std::io::Error::from_raw_os_error(e)
                ))
            }
        }
    }
}

fn account_of(pw: &libc::passwd) -> Account {
    // SAFETY: pw was filled by getpwnam_r/getpwuid_r: pw_name and pw_dir point to
    // NUL-terminated strings inside the buffer, which outlives this call.
    let (name, home) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
    use std::os::unix::ffi::OsStrExt;
    Account {
        name: name.to_string_lossy().into_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(std::ffi::OsStr::from_bytes(home.to_bytes())),
        in_passwd: true,
    }
}

fn passwd_by_name(name: &str) -> Result<Option<Account>, String> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(&format!("user \"{name}\""), |buf| {
        // SAFETY: passwd is plain data; getpwnam_r writes into pw and buf (of the
        // length given) and sets found to &pw or null.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            (rc, (!found.is_null()).then(|| account_of(&pw)))
        }
    })
}

fn passwd_by_uid(uid: u32) -> Result<Option<Account>, String> {
    with_buffer(&format!("uid {uid}"), |buf| {
        // SAFETY: as in passwd_by_name.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
            (rc, (!found.is_null()).then(|| account_of(&pw)))
        }
    })
}

fn group_by_name(name: &str) -> Result<Option<u32>, String> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(&format!("group \"{name}\""), |buf| {
        // SAFETY: group is plain data; getgrnam_r writes into gr and buf (of the length
        // given) and sets found to &gr or null.
        unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut found: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            );
            (rc, (!found.is_null()).then_some(gr.gr_gid))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(user: Option<&str>, group: Option<&str>) -> GroupSpec {
        let mut g = GroupSpec::new("site");
        g.user = user.map(str::to_string);
        g.group = group.map(str::to_string);
        g
    }

    #[test]
    fn looks_up_users_and_refuses_root() {
        let a = for_group(&spec(Some("nobody"), None), 33, 33).unwrap();
        assert_eq!((a.uid, a.name.as_str()), (65534, "nobody"));
        // Without user=: the worker account, with the worker's group.
        let a = for_group(&spec(None, None), 65534, 33).unwrap();
        assert_eq!((a.uid, a.gid), (65534, 33));
        let a = for_group(&spec(Some("nobody"), Some("#4242")), 33, 33).unwrap();
        assert_eq!(a.gid, 4242);
        for (s, words) in [
            (
                spec(Some("rwsgi-no-such-user"), None),
                "user \"rwsgi-no-such-user\" does not exist",
            ),
            (spec(Some("#0"), None), "never runs as root"),
            (spec(None, None), "worker user is root"),
            (
                spec(Some("nobody"), Some("rwsgi-no-such-group")),
                "\"rwsgi-no-such-group\" does not exist",
            ),
            (spec(Some("nobody"), Some("#0")), "gid 0"),
        ] {
            let err = for_group(&s, 0, 0).unwrap_err();
            assert!(err.contains(words) && err.contains("group site"), "{err}");
        }
    }
}
