//! Who a process group's processes run as: its `user=` / `group=` looked up in the
//! system's account database (`#N` for a numeric id, as httpd writes them), or the
//! server's worker account for a group without `user=`. One lookup for everyone who
//! needs it: the server modules while they read the config (so that `nginx -t` and
//! `apache2 -t` refuse a misspelt name alike, through `GroupSpec::check_accounts`) and
//! the supervisor at apply time (for the account it switches to). Never root: an account
//! with uid 0 or a group with gid 0 is refused. Plain libc, no Python.

use super::GroupSpec;
use std::ffi::{c_char, c_int, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// A user as the supervisor switches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// For initgroups, USER and LOGNAME.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// HOME, and the working directory when the group has no `home=`.
    pub home: PathBuf,
    /// False for a worker uid without a passwd entry: its only group is `gid`.
    pub in_passwd: bool,
}

/// The buffer a lookup starts with, and the most it grows to (the entries of very large
/// groups need more than the usual size).
const FIRST_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 1 << 20;

/// The accounts `spec` names itself: its `user=` (if any) and the gid its processes get
/// from `user=` or `group=` (if either is given). Refuses a name that does not exist, a
/// user with uid 0, and a gid 0 (given, or the user's own without `group=`).
fn named(spec: &GroupSpec) -> Result<(Option<Account>, Option<u32>), String> {
    let user = spec.user.as_deref().map(user).transpose()?;
    let gid = match (&spec.group, &user) {
        (Some(group), _) => Some(group_id(group)?),
        (None, Some(account)) if account.gid == 0 => {
            return Err(format!(
                "user \"{}\" has root's group (gid 0) as its own: refused, set group=",
                account.name
            ))
        }
        (None, Some(account)) => Some(account.gid),
        (None, None) => None,
    };
    Ok((user, gid))
}

/// What the config can be checked for while it is read (the worker account is only
/// known at apply time): the error names the option.
pub(super) fn check(spec: &GroupSpec) -> Result<(), String> {
    named(spec).map(|_| ())
}

/// Who `spec`'s processes run as, with the server's worker account for a group without
/// `user=`. Errors name the group.
pub fn for_group(spec: &GroupSpec, worker_uid: u32, worker_gid: u32) -> Result<Account, String> {
    let g = &spec.name;
    let (user, gid) = named(spec).map_err(|e| format!("group {g}: {e}"))?;
    let mut account = match user {
        Some(account) => account,
        None if worker_uid == 0 => {
            return Err(format!(
                "group {g}: has no user= and the server's worker user is root: \
                 set user= (an app process never runs as root)"
            ))
        }
        None => by_uid(worker_uid)?.unwrap_or(Account {
            name: worker_uid.to_string(),
            uid: worker_uid,
            gid: worker_gid,
            home: PathBuf::from("/"),
            in_passwd: false,
        }),
    };
    account.gid = gid.unwrap_or(worker_gid);
    if account.gid == 0 {
        return Err(format!(
            "group {g}: its processes would run with group root (gid 0): refused, set group="
        ));
    }
    Ok(account)
}

/// The user `user=` names: a user name, or `#N` for a uid, which must have a passwd
/// entry (as mod_wsgi requires: its name and home are needed).
fn user(value: &str) -> Result<Account, String> {
    let found = match value.strip_prefix('#') {
        Some(n) => {
            let uid = n
                .parse()
                .map_err(|_| format!("user=\"{value}\" is not #<uid>"))?;
            by_uid(uid)?.ok_or_else(|| format!("no user has uid {uid} (user=\"{value}\")"))?
        }
        None => {
            by_name(value)?.ok_or_else(|| format!("no user named \"{value}\" exists (user=)"))?
        }
    };
    if found.uid == 0 {
        return Err(format!(
            "user=\"{value}\" is root (uid 0): refused, an app process never runs as root"
        ));
    }
    Ok(found)
}

/// The gid `group=` names: a group name, or `#N` (any number, as httpd's Group).
fn group_id(value: &str) -> Result<u32, String> {
    let gid = match value.strip_prefix('#') {
        Some(n) => n
            .parse()
            .map_err(|_| format!("group=\"{value}\" is not #<gid>"))?,
        None => gid_by_name(value)?
            .ok_or_else(|| format!("no group named \"{value}\" exists (group=)"))?,
    };
    if gid == 0 {
        return Err(format!(
            "group=\"{value}\" is root's group (gid 0): refused, an app process never runs \
             with gid 0"
        ));
    }
    Ok(gid)
}

/// Runs a reentrant lookup (`getpwnam_r` and friends) with a buffer that grows on
/// ERANGE. `call` returns the function's result code and the entry, if one was found.
fn lookup<T>(
    what: &str,
    mut call: impl FnMut(&mut [c_char]) -> (c_int, Option<T>),
) -> Result<Option<T>, String> {
    let mut size = FIRST_BUFFER;
    loop {
        let mut buf = vec![0 as c_char; size];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            // What some C libraries answer for "no such entry".
            (libc::ENOENT | libc::ESRCH, _) => return Ok(None),
            (libc::ERANGE, _) if size < MAX_BUFFER => size *= 4,
            (rc, _) => {
                return Err(format!(
                    "cannot look up {what}: {}",
                    std::io::Error::from_raw_os_error(rc)
                ))
            }
        }
    }
}

fn c_name(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("\"{}\" contains a NUL byte", name.escape_debug()))
}

/// # Safety
/// `pw` was filled by getpwnam_r / getpwuid_r into a buffer that is still alive.
unsafe fn account_of(pw: &libc::passwd) -> Account {
    // SAFETY: pw_name and pw_dir point to NUL-terminated strings inside that buffer.
    let (name, home) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
    Account {
        name: name.to_string_lossy().into_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(OsStr::from_bytes(home.to_bytes())),
        in_passwd: true,
    }
}

fn by_name(name: &str) -> Result<Option<Account>, String> {
    let cname = c_name(name)?;
    lookup(&format!("the user \"{name}\""), |buf| {
        // SAFETY: passwd is plain data (all-zero is valid); getpwnam_r writes into it and
        // into buf, whose length it is given, and sets found to &pw or NULL; account_of
        // reads pw while buf lives.
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

fn by_uid(uid: u32) -> Result<Option<Account>, String> {
    lookup(&format!("uid {uid}"), |buf| {
        // SAFETY: as in by_name, for getpwuid_r.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
            (rc, (!found.is_null()).then(|| account_of(&pw)))
        }
    })
}

fn gid_by_name(name: &str) -> Result<Option<u32>, String> {
    let cname = c_name(name)?;
    lookup(&format!("the group \"{name}\""), |buf| {
        // SAFETY: group is plain data; getgrnam_r writes into gr and buf (of the length
        // given) and sets found to &gr or NULL.
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
    fn looks_up_users_and_groups() {
        let a = for_group(&spec(Some("nobody"), None), 33, 33).unwrap();
        assert_eq!((a.uid, a.name.as_str()), (65534, "nobody"));
        assert!(a.in_passwd);
        let a = for_group(&spec(Some("#65534"), None), 33, 33).unwrap();
        assert_eq!(a.name, "nobody");
        // Without user=: the worker account, with the worker's group.
        let a = for_group(&spec(None, None), 65534, 33).unwrap();
        assert_eq!((a.uid, a.gid), (65534, 33));
        let a = for_group(&spec(Some("nobody"), Some("#4242")), 33, 33).unwrap();
        assert_eq!(a.gid, 4242);
        let a = for_group(&spec(None, Some("nogroup")), 65534, 33).unwrap();
        assert_eq!(a.gid, 65534);
        // A worker uid without a passwd entry still runs, in its own group only.
        let a = for_group(&spec(None, None), 4_000_000_000, 33).unwrap();
        assert!(!a.in_passwd && a.gid == 33 && a.home == std::path::Path::new("/"));
        assert_eq!(check(&spec(Some("nobody"), Some("nogroup"))), Ok(()));
        assert_eq!(check(&spec(None, None)), Ok(()));
    }

    #[test]
    fn refusals_name_the_option_and_the_group() {
        for (s, words) in [
            (
                spec(Some("rwsgi-no-such-user"), None),
                "no user named \"rwsgi-no-such-user\" exists (user=)",
            ),
            (spec(Some("root"), None), "is root (uid 0)"),
            (spec(Some("#0"), None), "never runs as root"),
            (spec(Some("#x"), None), "user=\"#x\" is not #<uid>"),
            (
                spec(Some("#4000000000"), None),
                "no user has uid 4000000000",
            ),
            (spec(Some("a\0b"), None), "contains a NUL byte"),
            (
                spec(Some("nobody"), Some("rwsgi-no-such-group")),
                "no group named \"rwsgi-no-such-group\" exists (group=)",
            ),
            (spec(Some("nobody"), Some("#0")), "gid 0"),
            (spec(Some("nobody"), Some("root")), "gid 0"),
            (spec(None, Some("#y")), "group=\"#y\" is not #<gid>"),
        ] {
            let err = check(&s).unwrap_err();
            assert!(err.contains(words), "{err}");
            let err = for_group(&s, 33, 33).unwrap_err();
            assert!(
                err.contains(words) && err.starts_with("group site: "),
                "{err}"
            );
        }
        // What only the worker account can tell.
        let err = for_group(&spec(None, None), 0, 0).unwrap_err();
        assert!(err.contains("worker user is root"), "{err}");
        let err = for_group(&spec(None, None), 33, 0).unwrap_err();
        assert!(err.contains("gid 0"), "{err}");
    }
}
