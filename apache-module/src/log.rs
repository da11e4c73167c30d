//! Lines for httpd's error log, the one place this module writes them: each behind its
//! label (rwsgi::LogLabel), `rwsgi[app=/mount req=ID]` for a request's lines, where ID is
//! the request's `UNIQUE_ID` (mod_unique_id) or else its log id, the value `%L` prints in
//! a LogFormat or ErrorLogFormat ([`request_label`]). Messages always go through a "%s"
//! format (never as the format itself), tagged with this module so `LogLevel rwsgi:debug`
//! applies.

use crate::bindings::*;
use crate::module::module_index;
use crate::req::{Req, Table};
use rwsgi::LogLabel;
use std::ffi::{c_int, CString};
use std::panic::Location;

/// The engine's log levels are the only ones: this module logs through the same type.
pub use rwsgi::LogLevel as Level;

/// httpd's level for one of ours.
fn apache_level(level: Level) -> c_int {
    (match level {
        Level::Error => APLOG_ERR,
        Level::Warn => APLOG_WARNING,
        Level::Info => APLOG_INFO,
    }) as c_int
}

fn c_text(label: &LogLabel, message: &str) -> CString {
    let line = label.line(message);
    CString::new(line.replace('\0', "\\0")).unwrap_or_default()
}

/// The label of `req`'s lines to the app mounted at `app`.
pub fn request_label(req: Req<'_>, app: &str) -> LogLabel {
    LogLabel::request(app, &request_id(req))
}

/// mod_unique_id's `UNIQUE_ID` when it is loaded; else httpd's log id for the request
/// (`%L`), generated now if nothing asked for it yet. With mod_unique_id the two are the
/// same: it generates the log id too.
fn request_id(req: Req<'_>) -> String {
    if let Some(id) = req.table_get(Table::SubprocessEnv, c"UNIQUE_ID") {
        return String::from_utf8_lossy(id).into_owned();
    }
    let r = req.ptr();
    if req.log_id().is_none() {
        let mut id: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: r and its connection are live (a Req is); this is what httpd's own
        // logging does when the first %L needs the id (the hook writes a string in r's
        // pool).
        unsafe {
            ap_run_generate_log_id((*r).connection, r, &mut id);
            if !id.is_null() {
                (*r).log_id = id;
            }
        }
    }
    String::from_utf8_lossy(req.log_id().unwrap_or(b"-")).into_owned()
}

fn c_file(location: &Location<'_>) -> CString {
    CString::new(location.file()).unwrap_or_default()
}

/// Logs in the context of a request (client address, request log id).
///
/// # Safety
/// `r` is a live request_rec.
#[track_caller]
pub unsafe fn request(r: *const request_rec, level: Level, label: &LogLabel, message: &str) {
    let location = Location::caller();
    let (file, text) = (c_file(location), c_text(label, message));
    // SAFETY: r is live; "%s" consumes exactly the one NUL-terminated argument.
    unsafe {
        ap_log_rerror_(
            file.as_ptr(),
            location.line() as c_int,
            module_index(),
            apache_level(level),
            0,
            r,
            c"%s".as_ptr(),
            text.as_ptr(),
        );
    }
}

/// Logs in the context of a request a hook is running for.
#[track_caller]
pub fn for_request(req: Req<'_>, level: Level, label: &LogLabel, message: &str) {
    // SAFETY: a Req is live for as long as it is used.
    unsafe { request(req.ptr(), level, label, message) }
}

/// Logs for a server (virtual host), e.g. at startup; a line of the process.
///
/// # Safety
/// `s` is NULL or a live server_rec.
#[track_caller]
pub unsafe fn server(s: *const server_rec, level: Level, message: &str) {
    // SAFETY: the caller's contract.
    unsafe { server_labelled(s, level, &LogLabel::process(), message) }
}

/// # Safety
/// As for [`server`].
#[track_caller]
unsafe fn server_labelled(s: *const server_rec, level: Level, label: &LogLabel, message: &str) {
    let location = Location::caller();
    let (file, text) = (c_file(location), c_text(label, message));
    // SAFETY: s is NULL (httpd then logs to stderr/main log) or live; "%s" as above.
    unsafe {
        ap_log_error_(
            file.as_ptr(),
            location.line() as c_int,
            module_index(),
            apache_level(level),
            0,
            s,
            c"%s".as_ptr(),
            text.as_ptr(),
        );
    }
}

/// Logs on the main server: for lines of an app, or that outlive their request.
#[track_caller]
pub fn main_server(level: Level, label: &LogLabel, message: &str) {
    // SAFETY: ap_server_conf is set by httpd before any module code runs in a child and
    // stays valid for the process; reading the pointer value does not create a reference.
    let s = unsafe { std::ptr::addr_of!(ap_server_conf).read() };
    // SAFETY: s is the live main server_rec (or NULL, which ap_log_error accepts).
    unsafe { server_labelled(s, level, label, message) };
}
