//! Starting daemon mode in Apache's parent: at post_config, as root, the supervisor is
//! started (or found) and given the configured groups; its answer becomes the table the
//! children proxy with (daemon_groups.rs).
//!
//! httpd reads its configuration twice when it starts and runs post_config both times;
//! `apache2 -t` and `apache2 -k graceful` exit after the first reading. So the supervisor
//! is reached only on the second pass (AP_SQ_MS_CREATE_CONFIG), and again on every
//! restart, with the whole new set of groups: the supervisor keeps the processes of the
//! groups that did not change.
//!
//! The control connection is the supervisor's lifeline: it must stay open in the parent
//! across restarts. httpd unloads and reloads this module on each restart, which resets
//! its statics, so the descriptor is also written down in the process pool (which lives
//! as long as the parent) and taken back after the reload.

use crate::bindings::*;
use crate::config;
use crate::daemon_conf::{self, Home};
use crate::daemon_groups::{self, Group, Table};
use crate::log::{self, Level};
use rwsgi::daemon::control::{self, Apply};
use rwsgi::AppTarget;
use std::ffi::{c_void, CStr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

/// The process pool's note of the lifeline: "FD<TAB>DIR".
const KEPT: &CStr = c"mod_rwsgi daemon lifeline";

/// Runs in the parent's post_config: on the real start and on restarts, makes the
/// supervisor run the configured groups and publishes the table for the children.
///
/// # Safety
/// `pconf` is the configuration pool and `s` the main server, heading the list of
/// configured servers, as post_config receives them.
pub unsafe fn post_config(pconf: *mut apr_pool_t, s: *mut server_rec) -> Result<(), String> {
    // SAFETY: s heads the configured list (the contract); nothing changes it now.
    let blocks = unsafe { daemon_conf::blocks(s) };
    // SAFETY: s is the live main server.
    let Some(main) = (unsafe { config::server(s) }) else {
        return Ok(());
    };
    let mut table = Table {
        groups: Vec::new(),
        restrict_embedded: main.restrict_embedded,
        python: daemon_conf::children_need_python(&blocks, main),
    };
    // SAFETY: ap_state_query only reads httpd's state.
    let state = unsafe { ap_state_query(AP_SQ_MAIN_STATE as i32) };
    if state != AP_SQ_MS_CREATE_CONFIG as i32 {
        // The preflight reading: `apache2 -t` or `-k graceful` may stop right after it.
        daemon_groups::publish(table);
        return Ok(());
    }
    let mut specs = daemon_conf::groups_with_apps(&blocks);
    // A group without python-home= runs the server's WSGIPythonHome, as mod_wsgi's daemons do.
    for spec in &mut specs {
        if spec.python_home.is_none() {
            spec.python_home = main.python_home.clone();
        }
    }
    // SAFETY: pconf is live.
    let dir = unsafe { daemon_conf::supervisor_dir(pconf, main) };
    // SAFETY: s is the live main server, its process record live with the parent.
    let kept = unsafe { kept_lifeline(s) };
    if let Some((old_dir, fd)) = &kept {
        // SAFETY: the descriptor was written down by this parent after `ensure` and has
        // been open (owned by nobody) since the module was unloaded.
        unsafe { control::adopt_lifeline(old_dir, *fd) };
        if specs.is_empty() || *old_dir != dir {
            control::release_lifeline(old_dir);
            // SAFETY: s is live.
            unsafe { keep_lifeline(s, None) };
            // SAFETY: s is live.
            unsafe {
                log::server(
                    s,
                    Level::Info,
                    &format!(
                        "no daemon process groups in {} any more: its supervisor \
                         stops them once their requests are done",
                        old_dir.display()
                    ),
                )
            };
        }
    }
    if specs.is_empty() {
        daemon_groups::publish(table);
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "WSGIDaemonProcess needs Apache to be started as root (the supervisor switches \
             each group to its user)"
                .into(),
        );
    }
    let program = daemon_conf::program(main)?;
    // SAFETY: ap_unixd_config is filled by the User and Group directives (mod_unixd)
    // while the configuration is read, before post_config; a plain read of two ids.
    let (worker_uid, worker_gid) = unsafe { (ap_unixd_config.user_id, ap_unixd_config.group_id) };
    let apply = Apply {
        owner_pid: std::process::id(),
        server: "apache".into(),
        worker_uid,
        worker_gid,
        groups: specs.clone(),
    };
    let endpoints = control::ensure(&dir, &program, &apply)?;
    if let Some(fd) = control::lifeline_fd(&dir) {
        // SAFETY: s is live.
        unsafe { keep_lifeline(s, Some((&dir, fd))) };
    }
    let homes = daemon_conf::definitions(&blocks);
    for spec in &specs {
        let Some(endpoint) = endpoints.iter().find(|e| e.name == spec.name) else {
            return Err(format!(
                "the rwsgi supervisor did not start process group {}",
                spec.name
            ));
        };
        let secret = endpoint.secret_bytes().ok_or_else(|| {
            format!(
                "the rwsgi supervisor gave process group {} a malformed secret",
                spec.name
            )
        })?;
        let home = homes
            .iter()
            .find(|(d, _)| d.spec.name == spec.name)
            .map(|(_, h)| h.clone())
            .unwrap_or(Home::Main);
        let apps: Vec<(AppTarget, String)> = spec
            .apps
            .iter()
            .map(|a| (a.target.clone(), a.callable.clone()))
            .collect();
        table.groups.push(Group::new(
            spec.name.clone(),
            endpoint.socket.clone(),
            secret,
            apps,
            home,
            (spec.processes as usize).saturating_mul(spec.threads as usize),
            Duration::from_secs(spec.connect_timeout),
            Duration::from_secs(spec.socket_timeout),
        ));
    }
    let names: Vec<&str> = specs.iter().map(|g| g.name.as_str()).collect();
    // SAFETY: s is live.
    unsafe {
        log::server(
            s,
            Level::Info,
            &format!(
                "daemon process groups {} run under the rwsgi supervisor of {}{}",
                names.join(", "),
                dir.display(),
                if table.python {
                    ""
                } else {
                    "; Apache's children do not start Python"
                }
            ),
        )
    };
    daemon_groups::publish(table);
    Ok(())
}

/// In each new child: its copy of the lifeline goes (a child runs as Apache's user and
/// must not be able to command the supervisor), and the group table is fixed.
pub fn child_init() {
    control::close_lifelines_after_fork();
    daemon_groups::child_init();
}

/// The lifeline written down by an earlier generation of the module, if its descriptor
/// is still a socket.
///
/// # Safety
/// `s` is the live main server.
unsafe fn kept_lifeline(s: *mut server_rec) -> Option<(PathBuf, RawFd)> {
    let mut data: *mut c_void = std::ptr::null_mut();
    // SAFETY: s and its process record are live; the process pool lives as long as the
    // parent. The value, when set, is a NUL-terminated string in that pool.
    let text = unsafe {
        apr_pool_userdata_get(&mut data, KEPT.as_ptr(), (*(*s).process).pool);
        crate::apr::string(data as *const std::ffi::c_char)?
    };
    let (fd, dir) = text.split_once('\t')?;
    let fd: RawFd = fd.parse().ok()?;
    // SAFETY: fstat only writes the stat buffer; a closed descriptor fails.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    is_socket.then(|| (PathBuf::from(dir), fd))
}

/// Writes the lifeline down in the process pool (None: there is none).
///
/// # Safety
/// `s` is the live main server.
unsafe fn keep_lifeline(s: *mut server_rec, lifeline: Option<(&std::path::Path, RawFd)>) {
    let text = match lifeline {
        Some((dir, fd)) => format!("{fd}\t{}", dir.display()),
        None => String::new(),
    };
    // SAFETY: s and its process record are live. The string is copied into the process
    // pool, which keeps it (and the key apr_pool_userdata_set copies) for the parent's
    // life; no cleanup, so nothing of this module runs when it is gone.
    unsafe {
        let pool = (*(*s).process).pool;
        let value = crate::apr::pstr(pool, text.as_bytes());
        apr_pool_userdata_set(value as *const c_void, KEPT.as_ptr(), None, pool);
    }
}
