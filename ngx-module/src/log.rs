//! The one place this module writes its runtime lines to nginx's error log, each behind
//! its label (rwsgi::LogLabel): `rwsgi[app=/mount req=ID]` for a request's lines, where ID
//! is the request's `$request_id`, the value `log_format ... $request_id` prints in the
//! access log. Config-time messages are nginx's own (`nginx -t` names file and line).

use ngx::ffi::*;
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use rwsgi::{LogLabel, LogLevel};
use std::fmt::Display;

/// nginx's level for one of the engine's.
pub fn level(level: LogLevel) -> u32 {
    match level {
        LogLevel::Error => NGX_LOG_ERR,
        LogLevel::Warn => NGX_LOG_WARN,
        LogLevel::Info => NGX_LOG_INFO,
    }
}

/// Writes one line at nginx level `level` (NGX_LOG_*).
///
/// # Safety
/// `log` is a live ngx_log_t (a connection's, the cycle's); on the event loop.
pub unsafe fn write_at(log: *mut ngx_log_t, level: u32, label: &LogLabel, message: impl Display) {
    ngx_log_error!(level, log, "{}", label.labelled(message));
}

/// Writes one line at the engine's level `level`.
///
/// # Safety
/// As for [`write_at`].
pub unsafe fn write(log: *mut ngx_log_t, level: LogLevel, label: &LogLabel, message: impl Display) {
    // SAFETY: the caller's contract.
    unsafe { write_at(log, self::level(level), label, message) };
}

/// The index of `$request_id` among the config's variables (kept in its MainConf).
/// Asking for it while the config is read makes nginx keep the value per request, so the
/// access log and the error log print the same id.
///
/// # Safety
/// cf is live, inside the http block.
pub unsafe fn index_request_id(cf: *mut ngx_conf_t) -> Option<usize> {
    let mut name = ngx_str_t {
        len: c"request_id".count_bytes(),
        data: c"request_id".as_ptr() as *mut u8,
    };
    // SAFETY: cf is live (caller); nginx copies the name into its config pool.
    let index = unsafe { ngx_http_get_variable_index(cf, &mut name) };
    usize::try_from(index).ok()
}

/// The label of request `r` to the app mounted at `app`.
///
/// # Safety
/// r is live; on the event loop.
pub unsafe fn request_label(r: *mut ngx_http_request_t, app: &str) -> LogLabel {
    // SAFETY: the caller's contract.
    LogLabel::request(app, &unsafe { request_id(r) })
}

/// The request's `$request_id`.
///
/// # Safety
/// r is live; on the event loop.
unsafe fn request_id(r: *mut ngx_http_request_t) -> String {
    // SAFETY: r is live (caller); its main conf is the config it runs under.
    let index = crate::Module::main_conf(unsafe { &*r }).and_then(|mc| mc.request_id_index);
    // SAFETY: r is live (caller); the index was handed out by the variables of r's own
    // config; the value lives in r's pool and is copied out at once.
    unsafe {
        let v = match index {
            Some(index) => ngx_http_get_indexed_variable(r, index as ngx_uint_t),
            None => std::ptr::null_mut(),
        };
        if v.is_null() || (*v).not_found() != 0 || (*v).data.is_null() {
            let c = (*r).connection;
            return format!("*{}-{}", (*c).number, (*c).requests);
        }
        let bytes = std::slice::from_raw_parts((*v).data, (*v).len() as usize);
        String::from_utf8_lossy(bytes).into_owned()
    }
}
