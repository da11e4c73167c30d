//! The content handler for "wsgi-script": checks the script, copies the request for the
//! engine, runs the app on this httpd worker thread (the engine attaches to Python and
//! releases the GIL around every read and write), and turns the outcome into the status
//! httpd expects.

use crate::bindings::*;
use crate::body::ApacheBody;
use crate::config::{self, Effective};
use crate::daemon_groups;
use crate::daemon_proxy;
use crate::ffi::guard;
use crate::live::{Finish, Live, State};
use crate::log::{self, Level};
use crate::mapping;
use crate::python;
use crate::req::{Req, Table};
use crate::request::{self, Target};
use crate::sink::ApacheSink;
use rwsgi::daemon::AppRef;
use rwsgi::{AppTarget, LogLabel};
use std::ffi::c_int;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

pub unsafe extern "C" fn handler(r: *mut request_rec) -> c_int {
    // SAFETY: httpd passes a live request in the handler phase, and it stays live (and
    // ours) until the handler returns.
    let req = unsafe { Req::new(r) };
    guard(
        "the WSGI handler",
        HTTP_INTERNAL_SERVER_ERROR as c_int,
        || handle(req),
    )
}

fn is_ours(handler: &[u8]) -> bool {
    handler == b"wsgi-script" || handler == b"application/x-httpd-wsgi"
}

/// The error status for a request httpd refuses before the app runs, with the log line.
fn refuse(req: Req<'_>, label: &LogLabel, status: u32, message: &str) -> c_int {
    log::for_request(req, Level::Error, label, message);
    status as c_int
}

fn handle(req: Req<'_>) -> c_int {
    if req.handler() == Some(b"rwsgi-status") {
        return crate::status::serve(req);
    }
    if !is_ours(req.handler().unwrap_or_default()) {
        return DECLINED;
    }
    let matched = mapping::matched(req);
    let (script_name, path_info) = match matched {
        Some(m) => (m.script_name.to_vec(), m.path_info.to_vec()),
        None => {
            // AddHandler/SetHandler wsgi-script: SCRIPT_NAME is the URI up to the file,
            // PATH_INFO what httpd found after it.
            let uri = req.uri().unwrap_or_default();
            let path_info = req.path_info().unwrap_or_default();
            let script_name = uri.strip_suffix(path_info).unwrap_or(uri);
            (script_name.to_vec(), path_info.to_vec())
        }
    };
    // The app's name on the status page and in log lines: its mount.
    let mount = match String::from_utf8_lossy(&script_name).into_owned() {
        m if m.is_empty() => "/".to_string(),
        m => m,
    };
    let label = Arc::new(log::request_label(req, &mount));
    let filename = req.filename().unwrap_or_default().to_vec();
    // The script the alias named (httpd's directory walk cuts r->filename short at the
    // first missing path segment), or the file httpd found for a handler mapping.
    let script = matched
        .map(|m| m.script.to_vec())
        .unwrap_or_else(|| filename.clone());
    let shown = String::from_utf8_lossy(&script).into_owned();
    if matched.is_none() && req.allow_options() & OPT_EXECCGI as c_int == 0 {
        return refuse(
            req,
            &label,
            HTTP_FORBIDDEN,
            &format!("Options ExecCGI is off in this directory: {shown}"),
        );
    }
    // For an alias, path info left over by the walk means it stopped before the script.
    let walked_short = matched.is_some() && !req.path_info().unwrap_or_default().is_empty();
    let kind = req.filetype();
    if kind == apr_filetype_e_APR_DIR && !walked_short {
        return refuse(
            req,
            &label,
            HTTP_FORBIDDEN,
            &format!("attempt to invoke directory as WSGI application: {shown}"),
        );
    }
    if kind != apr_filetype_e_APR_REG || walked_short {
        return refuse(
            req,
            &label,
            HTTP_NOT_FOUND,
            &format!("target WSGI script not found or unable to stat: {shown}"),
        );
    }
    if req.used_path_info() == AP_REQ_REJECT_PATH_INFO as c_int && !path_info.is_empty() {
        return refuse(
            req,
            &label,
            HTTP_NOT_FOUND,
            "AcceptPathInfo off disallows user's path",
        );
    }

    // SAFETY: the request's server_rec is live, and its config (in the config pool)
    // outlives the request.
    let Some(server_conf) = (unsafe { config::server(req.server()) }) else {
        return refuse(
            req,
            &label,
            HTTP_INTERNAL_SERVER_ERROR,
            "no server configuration",
        );
    };

    // A declared body over LimitRequestBody is refused before the app runs, as mod_wsgi does.
    let limit = req.limit_req_body();
    let declared = req
        .table_get(Table::HeadersIn, c"Content-Length")
        .and_then(|v| String::from_utf8_lossy(v).trim().parse::<i64>().ok());
    if let Some(length) = declared {
        if limit > 0 && length > limit {
            return refuse(
                req,
                &label,
                HTTP_REQUEST_ENTITY_TOO_LARGE,
                &format!("request body of {length} bytes is over LimitRequestBody {limit}"),
            );
        }
    }

    let options = matched.and_then(|m| m.options);
    let dir = config::dir(req);
    // SAFETY: the directory config's strings are NULL or copies in the config pool,
    // made by its directives (see config::DirConfig).
    let settings = unsafe { Effective::resolve(&dir, options) };
    let sendfile = match settings.enable_sendfile {
        Some(on) => on,
        None => core_sendfile(req),
    };
    let table = daemon_groups::current();
    let group = match &settings.process_group {
        Some(name) => match route(req, table, name, &script, &settings.callable) {
            Ok(group) => Some(group),
            Err(why) => return refuse(req, &label, HTTP_INTERNAL_SERVER_ERROR, &why),
        },
        None if table.restrict_embedded => {
            return refuse(
                req,
                &label,
                HTTP_INTERNAL_SERVER_ERROR,
                &format!(
                    "WSGIRestrictEmbedded On: {shown} is not in a daemon process group \
                     (give its WSGIScriptAlias process-group=, or set WSGIProcessGroup)"
                ),
            )
        }
        None => None,
    };
    let runtime = match (group, python::ready()) {
        (Some(_), _) => None,
        (None, Some(runtime)) => Some(runtime),
        (None, None) if !table.python => {
            return refuse(
                req,
                &label,
                HTTP_INTERNAL_SERVER_ERROR,
                &format!(
                    "{shown} would run in Apache's own process (embedded mode), but Python is \
                     not started there: every WSGIScriptAlias is in a daemon process group. \
                     Put this one in a group too (WSGIProcessGroup, process-group=)"
                ),
            )
        }
        (None, None) => {
            return refuse(
                req,
                &label,
                HTTP_INTERNAL_SERVER_ERROR,
                "Python is not available in this process (see the startup errors)",
            )
        }
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
    let request = request::build(req, &settings, &target);

    let chunked = req
        .table_get(Table::HeadersIn, c"Transfer-Encoding")
        .is_some();
    // Counted as in flight (and watched for WSGIStuckAfter) until `running.end`.
    // A length to read into one buffer, only when the body is not chunked.
    let declared = if chunked {
        None
    } else {
        request.content_length
    };
    let Some(runtime) = runtime else {
        let group = group.expect("a request without Python is in a group");
        // The app process's own watchdog (request-timeout) reports a stuck request.
        let running = crate::status::Running::start_unwatched(&mount);
        let proxied = daemon_proxy::Proxied {
            app: AppRef {
                target: spec.target,
                callable: spec.callable,
            },
            request,
            sendfile,
            declared,
        };
        let status = daemon_proxy::serve(req, group, proxied, label, running.phase());
        running.end(req, status);
        return status;
    };
    let running = crate::status::Running::start(req, &mount, label.clone());
    // From here until it is retired, the request is shared with whichever thread runs the
    // app's Python code, through Live only: nothing reads it through `req` meanwhile.
    let live = Arc::new(Live::new(req.ptr(), sendfile, label));
    let body = Box::new(ApacheBody::new(live.clone(), declared));
    let sink = Arc::new(ApacheSink::new(live.clone(), running.phase()));
    // ApacheSink::offer waits for the client in send and never says Full (this thread is
    // the request's anyway), so the engine never hands back a parked response.
    let parked = runtime.run(&spec, request, body, sink);
    debug_assert!(parked.is_none(), "ApacheSink never parks a response");
    // The sink dropped response chunks that kept bytes objects alive without the GIL:
    // free them now rather than at the next request (see rwsgi::chunk).
    runtime.free_dropped_chunks();

    // From here on the app's leftovers (a kept wsgi.input / wsgi.errors) no longer reach
    // this request.
    let Some(state) = live.retire() else {
        running.end(req, HTTP_INTERNAL_SERVER_ERROR as c_int);
        return HTTP_INTERNAL_SERVER_ERROR as c_int;
    };
    let status = outcome(&state);
    running.end(req, status);
    status
}

/// The handler's status once the response is over: OK when it went out (whole or cut),
/// else the app's failure status, or httpd's for a body it refused (413, 400...).
pub fn outcome(state: &State) -> c_int {
    match (state.finish, state.read_error) {
        (Some(Finish::Fail(_)), Some(status)) if !state.passed => status,
        (Some(Finish::Fail(status)), _) if !state.passed => c_int::from(status),
        (None, Some(status)) if !state.passed => status,
        (None, _) if !state.passed => HTTP_INTERNAL_SERVER_ERROR as c_int,
        _ => OK as c_int,
    }
}

/// The daemon process group a request names, if this server may use it and it runs the
/// request's script; else why not, for the log.
fn route<'t>(
    req: Req<'_>,
    table: &'t daemon_groups::Table,
    name: &str,
    script: &[u8],
    callable: &str,
) -> Result<&'t daemon_groups::Group, String> {
    let Some(group) = table.group(name) else {
        return Err(format!(
            "no WSGIDaemonProcess defines a process group named \"{name}\" (named by \
             WSGIProcessGroup or process-group= for this request)"
        ));
    };
    let host = req.server_hostname().map(String::from_utf8_lossy);
    if !group.home.allows(host.as_deref()) {
        return Err(format!(
            "daemon process group {name} is defined in another virtual host and cannot be \
             used by this one"
        ));
    }
    let target = AppTarget::Script(PathBuf::from(std::ffi::OsStr::from_bytes(script)));
    if !group.runs(&target, callable) {
        return Err(format!(
            "{} (callable {callable}) is not one of the applications of daemon process group \
             {name}: a group runs the WSGIScriptAlias scripts configured for it when Apache \
             started",
            String::from_utf8_lossy(script)
        ));
    }
    Ok(group)
}

/// httpd's own EnableSendfile for the request's directory.
fn core_sendfile(req: Req<'_>) -> bool {
    // SAFETY: the request's per-directory vector is live; the core module's config is
    // always in slot 0 (AP_CORE_MODULE_INDEX) and is a core_dir_config (or NULL).
    unsafe {
        let core =
            crate::apr::module_config((*req.ptr()).per_dir_config, 0) as *const core_dir_config;
        !core.is_null() && (*core).enable_sendfile() == ENABLE_SENDFILE_ON
    }
}
