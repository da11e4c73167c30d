//! Copies an httpd request_rec into an [`rwsgi::Request`]: the CGI/PEP 3333 basics plus
//! what mod_wsgi adds to the environ (server variables, auth, mod_wsgi.* and
//! apache.version, and the request's subprocess_env such as SetEnv values).

use crate::apr::{bytes, string};
use crate::bindings::*;
use crate::config::Effective;
use crate::options::MapHead;
use rwsgi::{ExtraValue, Request};
use std::borrow::Cow;
use std::ffi::c_char;
use std::sync::OnceLock;

/// Where the request is mounted and which script runs it.
pub struct Target<'a> {
    pub script: &'a [u8],
    pub script_name: &'a [u8],
    pub path_info: &'a [u8],
}

/// The server banner (SERVER_SOFTWARE), fixed once httpd has started.
fn server_banner() -> &'static str {
    static BANNER: OnceLock<String> = OnceLock::new();
    // SAFETY: ap_get_server_banner returns a NUL-terminated string that lives as long as
    // the process configuration (or an empty one before it is set).
    BANNER.get_or_init(|| {
        String::from_utf8_lossy(unsafe { bytes(ap_get_server_banner()) }).into_owned()
    })
}

/// Headers the app sees only with WSGIPassAuthorization On.
fn is_credentials(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"proxy-authorization")
}

/// Expands mod_wsgi's application group forms for `mod_wsgi.application_group`.
///
/// # Safety
/// `r` is a live request.
pub unsafe fn application_group(r: *mut request_rec, group: &str, script_name: &[u8]) -> Vec<u8> {
    // SAFETY: reads of a live request and its server.
    unsafe {
        let port = ap_get_server_port(r);
        let with_port = |host: &[u8]| {
            let mut out = host.to_vec();
            if port != 80 && port != 443 {
                out.extend_from_slice(format!(":{port}").as_bytes());
            }
            out
        };
        let server = || with_port(bytes((*(*r).server).server_hostname));
        match group {
            "" | "%{GLOBAL}" => Vec::new(),
            "%{SERVER}" => server(),
            "%{HOST}" => {
                let host = bytes((*r).hostname);
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
                    let value = env_value(r, name);
                    match value {
                        Some(v) if v.starts_with(b"%{") && !v.starts_with(b"%{ENV:") => {
                            application_group(r, &String::from_utf8_lossy(&v), script_name)
                        }
                        Some(v) => v,
                        None => group.as_bytes().to_vec(),
                    }
                }
                None => group.as_bytes().to_vec(),
            },
        }
    }
}

/// A variable from the request notes, subprocess_env, or the process environment.
unsafe fn env_value(r: *mut request_rec, name: &str) -> Option<Vec<u8>> {
    let key = std::ffi::CString::new(name).ok()?;
    // SAFETY: tables of a live request; apr_table_get returns NULL or a pool string.
    unsafe {
        for table in [(*r).notes, (*r).subprocess_env] {
            let v = apr_table_get(table, key.as_ptr());
            if !v.is_null() {
                return Some(bytes(v).to_vec());
            }
        }
    }
    std::env::var_os(name).map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
}

/// The request line's URI of the original request (before internal redirects).
unsafe fn original_uri(r: *const request_rec) -> Vec<u8> {
    // SAFETY: r->prev links live requests of the same connection.
    unsafe {
        let mut first = r;
        while !(*first).prev.is_null() {
            first = (*first).prev;
        }
        bytes((*first).unparsed_uri).to_vec()
    }
}

/// True when HEAD runs the app as GET: always with On; with Auto when an output filter
/// that may need the body (content or resource filter, e.g. mod_deflate) is present.
unsafe fn head_as_get(r: *const request_rec, mode: MapHead) -> bool {
    // SAFETY: r and its filter list are live.
    unsafe {
        if (*r).method_number != M_GET as i32 || (*r).header_only == 0 {
            return false;
        }
        match mode {
            MapHead::Off => false,
            MapHead::On => true,
            MapHead::Auto => {
                let f = (*r).output_filters;
                !f.is_null()
                    && !(*f).frec.is_null()
                    && (*(*f).frec).ftype < ap_filter_type_AP_FTYPE_PROTOCOL
            }
        }
    }
}

fn extra(out: &mut Vec<(Cow<'static, str>, ExtraValue)>, key: &'static str, value: &[u8]) {
    out.push((Cow::Borrowed(key), ExtraValue::Str(value.to_vec())));
}

/// Builds the engine's request.
///
/// # Safety
/// `r` is a live request in the content handler phase.
pub unsafe fn build(r: *mut request_rec, settings: &Effective, target: &Target<'_>) -> Request {
    // SAFETY (whole function): every pointer read belongs to the live request, its
    // connection or server, and is NULL or a NUL-terminated pool string.
    unsafe {
        let c = (*r).connection;
        let method = if head_as_get(r, settings.map_head_to_get) {
            "GET".to_string()
        } else {
            string((*r).method).unwrap_or_default()
        };

        let mut headers = Vec::new();
        let mut content_length = None;
        let table = apr_table_elts((*r).headers_in);
        if !table.is_null() && (*table).nelts > 0 {
            let entries = std::slice::from_raw_parts(
                (*table).elts as *const apr_table_entry_t,
                (*table).nelts as usize,
            );
            for e in entries {
                if e.key.is_null() {
                    continue;
                }
                let (name, value) = (bytes(e.key), bytes(e.val));
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
        }

        let mut x: Vec<(Cow<'static, str>, ExtraValue)> = Vec::with_capacity(32);
        extra(&mut x, "SCRIPT_FILENAME", target.script);
        extra(&mut x, "DOCUMENT_ROOT", bytes(ap_document_root(r)));
        extra(&mut x, "CONTEXT_PREFIX", bytes(ap_context_prefix(r)));
        extra(
            &mut x,
            "CONTEXT_DOCUMENT_ROOT",
            bytes(ap_context_document_root(r)),
        );
        let admin = (*(*r).server).server_admin;
        if !admin.is_null() {
            extra(&mut x, "SERVER_ADMIN", bytes(admin));
        }
        extra(&mut x, "SERVER_ADDR", bytes((*c).local_ip));
        if !(*r).user.is_null() {
            extra(&mut x, "REMOTE_USER", bytes((*r).user));
        }
        if !(*r).ap_auth_type.is_null() {
            extra(&mut x, "AUTH_TYPE", bytes((*r).ap_auth_type));
        }
        let group = application_group(r, &settings.application_group, target.script_name);
        extra(&mut x, "mod_wsgi.process_group", b"");
        extra(&mut x, "mod_wsgi.application_group", &group);
        extra(
            &mut x,
            "mod_wsgi.callable_object",
            settings.callable.as_bytes(),
        );
        extra(&mut x, "mod_wsgi.request_handler", bytes((*r).handler));
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
            (*r).request_time.to_string().as_bytes(),
        );
        if !(*r).log_id.is_null() {
            extra(&mut x, "mod_wsgi.request_id", bytes((*r).log_id));
        }
        let mut version = ap_version_t {
            major: 0,
            minor: 0,
            patch: 0,
            add_string: std::ptr::null(),
        };
        ap_get_server_revision(&mut version);
        x.push((
            Cow::Borrowed("apache.version"),
            ExtraValue::IntTuple(vec![
                version.major.into(),
                version.minor.into(),
                version.patch.into(),
            ]),
        ));

        // SetEnv / SetEnvIf / mod_rewrite E= / mod_ssl variables, as mod_wsgi passes them
        // (the engine leaves out any that would replace a per-request key).
        let mut params = Vec::new();
        let env = apr_table_elts((*r).subprocess_env);
        if !env.is_null() && (*env).nelts > 0 {
            let entries = std::slice::from_raw_parts(
                (*env).elts as *const apr_table_entry_t,
                (*env).nelts as usize,
            );
            for e in entries {
                let Some(key) = string(e.key as *const c_char) else {
                    continue;
                };
                params.push((key, bytes(e.val).to_vec()));
            }
        }

        let client = (*c).client_addr;
        Request {
            method,
            script_name: target.script_name.to_vec(),
            path_info: target.path_info.to_vec(),
            query_string: bytes((*r).args).to_vec(),
            protocol: string((*r).protocol).unwrap_or_else(|| "HTTP/1.0".to_string()),
            server_name: bytes(ap_get_server_name_for_url(r)).to_vec(),
            server_port: ap_get_server_port(r).to_string(),
            remote_addr: string((*r).useragent_ip).unwrap_or_default(),
            remote_port: if client.is_null() {
                String::new()
            } else {
                (*client).port.to_string()
            },
            // TLS to this server, or a ServerName https://... behind a TLS proxy.
            https: ap_ssl_conn_is_ssl(c) != 0 || bytes(ap_run_http_scheme(r)) == b"https",
            headers,
            content_length,
            request_uri: original_uri(r),
            server_software: Cow::Borrowed(server_banner()),
            extra: x,
            params,
        }
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
