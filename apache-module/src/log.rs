//! Lines for httpd's error log. Messages always go through a "%s" format (never as the
//! format itself), tagged with this module so `LogLevel rwsgi:debug` applies.

use crate::bindings::*;
use crate::module::module_index;
use crate::req::Req;
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

fn c_text(message: &str) -> CString {
    CString::new(message.replace('\0', "\\0")).unwrap_or_default()
}

fn c_file(location: &Location<'_>) -> CString {
    CString::new(location.file()).unwrap_or_default()
}

/// Logs in the context of a request (client address, request log id).
///
/// # Safety
/// `r` is a live request_rec.
#[track_caller]
pub unsafe fn request(r: *const request_rec, level: Level, message: &str) {
    let location = Location::caller();
    let (file, text) = (c_file(location), c_text(message));
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
pub fn for_request(req: Req<'_>, level: Level, message: &str) {
    // SAFETY: a Req is live for as long as it is used.
    unsafe { request(req.ptr(), level, message) }
}

/// Logs for a server (virtual host), e.g. at startup.
///
/// # Safety
/// `s` is NULL or a live server_rec.
#[track_caller]
pub unsafe fn server(s: *const server_rec, level: Level, message: &str) {
    let location = Location::caller();
    let (file, text) = (c_file(location), c_text(message));
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

/// Logs on the main server: for lines that outlive their request.
#[track_caller]
pub fn main_server(level: Level, message: &str) {
    // SAFETY: ap_server_conf is set by httpd before any module code runs in a child and
    // stays valid for the process; reading the pointer value does not create a reference.
    let s = unsafe { std::ptr::addr_of!(ap_server_conf).read() };
    // SAFETY: s is the live main server_rec (or NULL, which ap_log_error accepts).
    unsafe { server(s, level, message) };
}
