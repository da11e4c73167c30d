//! The boundary with httpd: every `extern "C"` entry point runs its body through
//! [`guard`], so a Rust panic becomes an error value (a 500, a failed directive) and
//! never unwinds into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `fallback` (after logging it).
pub fn guard<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            // A second panic while logging is caught as well. No server_rec is passed:
            // while httpd re-reads its configuration, ap_server_conf still points into the
            // cleared previous generation; with NULL httpd logs to its stderr log.
            let _ = catch_unwind(|| {
                let message = format!("internal error in {what}: {detail}");
                // SAFETY: a NULL server_rec is allowed by ap_log_error.
                unsafe { crate::log::server(std::ptr::null(), crate::log::Level::Error, &message) }
            });
            fallback
        }
    }
}
