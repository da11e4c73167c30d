//! The content handler for "wsgi-script": checks the script, copies the request for the
//! engine, runs the app on this httpd worker thread (the engine attaches to Python and
//! releases the GIL around every read and write), and turns the outcome into the status
//! httpd expects.

use crate::apr::{bytes, string};
use crate::bindings::*;
use crate::body::ApacheBody;
use crate::config::{self, Effective};
use crate::ffi::guard;
use crate::live::{Finish, Live};
use crate::log::{self, Level};
use crate::mapping;
use crate::python;
use crate::request::{self, Target};
use crate::sink::ApacheSink;
use std::ffi::c_int;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

pub unsafe extern "C" fn handler(r: *mut request_rec) -> c_int {
    // SAFETY: httpd passes a live request in the handler phase.
    guard(
        "the WSGI handler",
        HTTP_INTERNAL_SERVER_ERROR as c_int,
        || unsafe { handle(r) },
    )
}

fn is_ours(handler: &[u8]) -> bool {
    handler == b"wsgi-script" || handler == b"application/x-httpd-wsgi"
}

/// The error status for a request httpd refuses before the app runs, with the log line.
unsafe fn refuse(r: *mut request_rec, status: u32, message: &str) -> c_int {
    // SAFETY: r is live.
    unsafe { log::request(r, Level::Error, &format!("mod_rwsgi: {message}")) };
    status as c_int
}

unsafe fn handle(r: *mut request_rec) -> c_int {
    // SAFETY (whole function): r is live until we return; pointers read from it are NULL
    // or pool strings of this request.
    unsafe {
        if !is_ours(bytes((*r).handler)) {
            return DECLINED;
        }
        let matched = mapping::matched(r);
        let filename = bytes((*r).filename).to_vec();
        // The script the alias named (httpd's directory walk cuts r->filename short at
        // the first missing path segment), or the file httpd found for a handler mapping.
        let script = matched
            .map(|m| bytes(m.script).to_vec())
            .unwrap_or_else(|| filename.clone());
        let shown = String::from_utf8_lossy(&script).into_owned();
        if matched.is_none() && ap_allow_options(r) & OPT_EXECCGI as c_int == 0 {
            return refuse(
                r,
                HTTP_FORBIDDEN,
                &format!("Options ExecCGI is off in this directory: {shown}"),
            );
        }
        // For an alias, path info left over by the walk means it stopped before the script.
        let walked_short = matched.is_some() && !bytes((*r).path_info).is_empty();
        let kind = (*r).finfo.filetype;
        if kind == apr_filetype_e_APR_DIR && !walked_short {
            return refuse(
                r,
                HTTP_FORBIDDEN,
                &format!("attempt to invoke directory as WSGI application: {shown}"),
            );
        }
        if kind != apr_filetype_e_APR_REG || walked_short {
            return refuse(
                r,
                HTTP_NOT_FOUND,
                &format!("target WSGI script not found or unable to stat: {shown}"),
            );
        }
        let (script_name, path_info) = match matched {
            Some(m) => (bytes(m.script_name).to_vec(), bytes(m.path_info).to_vec()),
            None => {
                // AddHandler/SetHandler wsgi-script: SCRIPT_NAME is the URI up to the
                // file, PATH_INFO what httpd found after it.
                let uri = bytes((*r).uri);
                let path_info = bytes((*r).path_info);
                let script_name = uri.strip_suffix(path_info).unwrap_or(uri);
                (script_name.to_vec(), path_info.to_vec())
            }
        };
        if (*r).used_path_info == AP_REQ_REJECT_PATH_INFO as c_int && !path_info.is_empty() {
            return refuse(
                r,
                HTTP_NOT_FOUND,
                "AcceptPathInfo off disallows user's path",
            );
        }

        let Some(traits) = python::ready() else {
            return refuse(
                r,
                HTTP_INTERNAL_SERVER_ERROR,
                "Python is not available in this process (see the startup errors)",
            );
        };
        let Some(server_conf) = config::server((*r).server) else {
            return refuse(r, HTTP_INTERNAL_SERVER_ERROR, "no server configuration");
        };

        // A declared body over LimitRequestBody is refused before the app runs, as mod_wsgi does.
        let limit = ap_get_limit_req_body(r);
        let declared = string(apr_table_get((*r).headers_in, c"Content-Length".as_ptr()))
            .and_then(|v| v.trim().parse::<i64>().ok());
        if let Some(length) = declared {
            if limit > 0 && length > limit {
                return refuse(
                    r,
                    HTTP_REQUEST_ENTITY_TOO_LARGE,
                    &format!("request body of {length} bytes is over LimitRequestBody {limit}"),
                );
            }
        }

        let options = matched.and_then(|m| m.options.as_ref());
        let settings = Effective::resolve(&config::dir(r), options);
        let sendfile = match settings.enable_sendfile {
            Some(on) => on,
            None => core_sendfile(r),
        };
        let spec = python::spec(
            PathBuf::from(std::ffi::OsStr::from_bytes(&script)),
            &settings,
            server_conf,
        );
        let target = Target {
            script: &script,
            script_name: &script_name,
            path_info: &path_info,
        };
        let req = request::build(r, &settings, &target);

        let live = Arc::new(Live::new(r, sendfile));
        // A length to read into one buffer, only when the body is not chunked.
        let chunked = !apr_table_get((*r).headers_in, c"Transfer-Encoding".as_ptr()).is_null();
        let declared = if chunked { None } else { req.content_length };
        let body = Box::new(ApacheBody::new(live.clone(), declared));
        let sink = Arc::new(ApacheSink::new(live.clone()));
        // ApacheSink::offer waits for the client in send and never says Full (this thread
        // is the request's anyway), so the engine never hands back a parked response.
        let parked = rwsgi::run_request(&spec, traits, req, body, sink);
        debug_assert!(parked.is_none(), "ApacheSink never parks a response");
        // The sink dropped response chunks that kept bytes objects alive without the GIL:
        // free them now rather than at the next request (see rwsgi::chunk).
        if rwsgi::chunk::take_dropped_off_gil() {
            pyo3::Python::attach(|_| ());
        }

        // From here on the app's leftovers (a kept wsgi.input / wsgi.errors) no longer
        // reach this request.
        let Some(state) = live.retire() else {
            return HTTP_INTERNAL_SERVER_ERROR as c_int;
        };
        match (state.finish, state.read_error) {
            (Some(Finish::Fail(_)), Some(status)) if !state.passed => status,
            (Some(Finish::Fail(status)), _) if !state.passed => c_int::from(status),
            (None, _) if !state.passed => HTTP_INTERNAL_SERVER_ERROR as c_int,
            _ => OK as c_int,
        }
    }
}

/// httpd's own EnableSendfile for the request's directory.
unsafe fn core_sendfile(r: *mut request_rec) -> bool {
    // SAFETY: the core module's config is always slot 0 (AP_CORE_MODULE_INDEX).
    unsafe {
        let core = crate::apr::module_config((*r).per_dir_config, 0) as *const core_dir_config;
        !core.is_null() && (*core).enable_sendfile() == ENABLE_SENDFILE_ON
    }
}
