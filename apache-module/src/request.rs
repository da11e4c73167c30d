//! Copies an httpd request_rec into an [`rwsgi::Request`]: the CGI/PEP 3333 basics plus
//! what mod_wsgi adds to the environ (server variables, auth, mod_wsgi.* and
//! apache.version, and the request's subprocess_env such as SetEnv values).

use crate::bindings::*;
use crate::config::Effective;
use crate::options::MapHead;
use crate::req::{server_banner, server_revision, Req, Table};
use rwsgi::{ExtraValue, Request};
use std::borrow::Cow;

/// Where the request is mounted and which script runs it.
pub struct Target<'a> {
    pub script: &'a [u8],
    pub script_name: &'a [u8],
    pub path_info: &'a [u8],
}

/// Headers the app sees only with WSGIPassAuthorization On.
fn is_credentials(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"proxy-authorization")
}

/// Expands mod_wsgi's application group forms for `mod_wsgi.application_group`.
pub fn application_group(req: Req<'_>, group: &str, script_name: &[u8]) -> Vec<u8> {
    let port = req.server_port();
    let with_port = |host: &[u8]| {
        let mut out = host.to_vec();
        if port != 80 && port != 443 {
            out.extend_from_slice(format!(":{port}").as_bytes());
        }
        out
    };
    let server = || with_port(req.server_hostname().unwrap_or_default());
    match group {
        "" | "%{GLOBAL}" => Vec::new(),
        "%{SERVER}" => server(),
        "%{HOST}" => {
            let host = req.hostname().unwrap_or_default();
            if host.is_empty() {
                server()
            } else {
                with_port(host)
            }
        }
        "%{RESOURCE}" => {
            let mut out = server();
            out.push(b'|');
            out.extend_from_slice(script_name);
            out
        }
        _ => match group
            .strip_prefix("%{ENV:")
            .and_then(|g| g.strip_suffix('}'))
        {
            Some(name) => {
                let value = env_value(req, name);
                match value {
                    Some(v) if v.starts_with(b"%{") && !v.starts_with(b"%{ENV:") => {
                        application_group(req, &String::from_utf8_lossy(&v), script_name)
                    }
                    Some(v) => v,
                    None => group.as_bytes().to_vec(),
                }
            }
            None => group.as_bytes().to_vec(),
        },
    }
}

/// A variable from the request notes, subprocess_env, or the process environment.
fn env_value(req: Req<'_>, name: &str) -> Option<Vec<u8>> {
    let key = std::ffi::CString::new(name).ok()?;
    for table in [Table::Notes, Table::SubprocessEnv] {
        if let Some(v) = req.table_get(table, &key) {
            return Some(v.to_vec());
        }
    }
    std::env::var_os(name).map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
}

/// The request line's URI of the original request (before internal redirects).
fn original_uri(req: Req<'_>) -> Vec<u8> {
    let mut first = req;
    while let Some(prev) = first.prev() {
        first = prev;
    }
    first.unparsed_uri().unwrap_or_default().to_vec()
}

/// True when HEAD runs the app as GET: always with On; with Auto when an output filter
/// that may need the body (content or resource filter, e.g. mod_deflate) is present.
fn head_as_get(req: Req<'_>, mode: MapHead) -> bool {
    if req.method_number() != M_GET as i32 || !req.header_only() {
        return false;
    }
    match mode {
        MapHead::Off => false,
        MapHead::On => true,
        MapHead::Auto => req
            .first_output_filter_type()
            .is_some_and(|t| t < ap_filter_type_AP_FTYPE_PROTOCOL),
    }
}

fn extra(out: &mut Vec<(Cow<'static, str>, ExtraValue)>, key: &'static str, value: &[u8]) {
    out.push((Cow::Borrowed(key), ExtraValue::Str(value.to_vec())));
}

fn lossy(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// The request headers the app sees, and the declared Content-Length.
fn headers(req: Req<'_>, settings: &Effective) -> (Headers, Option<u64>) {
    let mut headers = Vec::new();
    let mut content_length = None;
    for (name, value) in req.table_entries(Table::HeadersIn) {
        if is_credentials(name) && !settings.pass_authorization {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        headers.push((name.to_vec(), value.to_vec()));
    }
    (headers, content_length)
}

/// Server variables and mod_wsgi's own keys (the engine sets the CGI constants).
fn extras(
    req: Req<'_>,
    settings: &Effective,
    target: &Target<'_>,
) -> Vec<(Cow<'static, str>, ExtraValue)> {
    let mut x: Vec<(Cow<'static, str>, ExtraValue)> = Vec::with_capacity(32);
    extra(&mut x, "SCRIPT_FILENAME", target.script);
    extra(
        &mut x,
        "DOCUMENT_ROOT",
        req.document_root().unwrap_or_default(),
    );
    extra(
        &mut x,
        "CONTEXT_PREFIX",
        req.context_prefix().unwrap_or_default(),
    );
    extra(
        &mut x,
        "CONTEXT_DOCUMENT_ROOT",
        req.context_document_root().unwrap_or_default(),
    );
    if let Some(admin) = req.server_admin() {
        extra(&mut x, "SERVER_ADMIN", admin);
    }
    extra(&mut x, "SERVER_ADDR", req.local_ip().unwrap_or_default());
    if let Some(user) = req.user() {
        extra(&mut x, "REMOTE_USER", user);
    }
    if let Some(auth_type) = req.ap_auth_type() {
        extra(&mut x, "AUTH_TYPE", auth_type);
    }
    let group = application_group(req, &settings.application_group, target.script_name);
    let process_group = settings.process_group.as_deref().unwrap_or_default();
    extra(&mut x, "mod_wsgi.process_group", process_group.as_bytes());
    extra(&mut x, "mod_wsgi.application_group", &group);
    extra(
        &mut x,
        "mod_wsgi.callable_object",
        settings.callable.as_bytes(),
    );
    extra(
        &mut x,
        "mod_wsgi.request_handler",
        req.handler().unwrap_or_default(),
    );
    extra(&mut x, "mod_wsgi.handler_script", b"");
    extra(
        &mut x,
        "mod_wsgi.script_reloading",
        if settings.script_reloading {
            b"1"
        } else {
            b"0"
        },
    );
    extra(
        &mut x,
        "mod_wsgi.enable_sendfile",
        if settings.enable_sendfile == Some(true) {
            b"1"
        } else {
            b"0"
        },
    );
    extra(
        &mut x,
        "mod_wsgi.request_start",
        req.request_time().to_string().as_bytes(),
    );
    if let Some(id) = req.log_id() {
        extra(&mut x, "mod_wsgi.request_id", id);
    }
    let (major, minor, patch) = server_revision();
    x.push((
        Cow::Borrowed("apache.version"),
        ExtraValue::IntTuple(vec![major.into(), minor.into(), patch.into()]),
    ));

    x
}

/// SetEnv / SetEnvIf / mod_rewrite E= / mod_ssl variables, as mod_wsgi passes them (the
/// engine leaves out any that would replace a per-request key).
fn params(req: Req<'_>) -> Vec<(String, Vec<u8>)> {
    req.table_entries(Table::SubprocessEnv)
        .map(|(key, value)| (lossy(key), value.to_vec()))
        .collect()
}

/// Builds the engine's request.
pub fn build(req: Req<'_>, settings: &Effective, target: &Target<'_>) -> Request {
    let method = if head_as_get(req, settings.map_head_to_get) {
        "GET".to_string()
    } else {
        req.method().map(lossy).unwrap_or_default()
    };
    let (headers, content_length) = headers(req, settings);
    let extra = extras(req, settings, target);
    Request {
        method,
        script_name: target.script_name.to_vec(),
        path_info: target.path_info.to_vec(),
        query_string: req.args().unwrap_or_default().to_vec(),
        protocol: req
            .protocol()
            .map(lossy)
            .unwrap_or_else(|| "HTTP/1.0".to_string()),
        server_name: req.server_name_for_url().unwrap_or_default().to_vec(),
        server_port: req.server_port().to_string(),
        remote_addr: req.useragent_ip().map(lossy).unwrap_or_default(),
        remote_port: req
            .client_port()
            .map(|port| port.to_string())
            .unwrap_or_default(),
        // TLS to this server, or `ServerName https://...` behind a TLS-terminating proxy.
        https: req.is_tls() || req.http_scheme() == Some(b"https"),
        headers,
        content_length,
        request_uri: original_uri(req),
        server_software: Cow::Owned(lossy(&server_banner())),
        extra,
        params: params(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        assert!(is_credentials(b"Authorization"));
        assert!(is_credentials(b"PROXY-AUTHORIZATION"));
        assert!(!is_credentials(b"X-Authorization-Hint"));
    }
}
