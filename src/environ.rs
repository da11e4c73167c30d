//! Builds the PEP 3333 environ dict from a [`Request`]. The header-name mapping is pure
//! Rust (property-tested); the dict itself uses interned keys so a request allocates
//! only its values.

use crate::config_names::is_reserved_environ_key;
use crate::server::{ExtraValue, Request};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

/// The CGI name of a request header: `User-Agent` → `HTTP_USER_AGENT`. None for names
/// the environ must not carry: names with `_` (they would alias a dashed name and let a
/// client spoof e.g. `X-Forwarded-For`), non-token bytes, Content-Type/Content-Length
/// (they have their own keys), and `Proxy` (httpoxy: it would become HTTP_PROXY).
pub fn cgi_header_key(name: &[u8]) -> Option<String> {
    if name.is_empty() || !name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"proxy") {
        return None;
    }
    if name.eq_ignore_ascii_case(b"content-type") {
        return Some("CONTENT_TYPE".to_string());
    }
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.iter().map(|&b| match b {
        b'-' => '_',
        _ => b.to_ascii_uppercase() as char,
    }));
    Some(key)
}

/// Request headers as environ pairs, repeated headers joined as CGI does (", ", or "; "
/// for Cookie), in first-arrival order.
pub fn cgi_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let Some(key) = cgi_header_key(name) else {
            continue;
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) => {
                let sep: &[u8] = if key == "HTTP_COOKIE" { b"; " } else { b", " };
                existing.extend_from_slice(sep);
                existing.extend_from_slice(value);
            }
            None => out.push((key, value.clone())),
        }
    }
    out
}

/// SCRIPT_NAME and PATH_INFO for a URI under a mount prefix (no trailing slash): the
/// prefix and the rest when the URI is the prefix or continues with `/`, else no
/// SCRIPT_NAME and the whole path. `/api/x` under `/api` → (`/api`, `/x`); `/api` →
/// (`/api`, ``); `/apix` → (``, `/apix`).
pub fn split_mount(uri: &[u8], mount: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if !mount.is_empty() && is_under_mount(uri, mount) {
        (mount.to_vec(), uri[mount.len()..].to_vec())
    } else {
        (Vec::new(), uri.to_vec())
    }
}

/// True when the server's configuration says the client's connection is TLS although this
/// one is not: an `HTTPS` key of on, 1, yes or true (any case) among the server's own
/// keys, as a TLS-terminating proxy setup adds (nginx `wsgi_param HTTPS on;`, Apache
/// `SetEnvIf X-Forwarded-Proto https HTTPS=1`); mod_wsgi reads it the same way. A client
/// cannot set it: its `HTTPS:` request header becomes `HTTP_HTTPS`, never a server key.
pub fn https_configured(params: &[(String, Vec<u8>)]) -> bool {
    params.iter().any(|(key, value)| {
        key == "HTTPS"
            && [&b"on"[..], b"1", b"yes", b"true"]
                .iter()
                .any(|t| value.trim_ascii().eq_ignore_ascii_case(t))
    })
}

/// True when `uri` is the mount point or lies below it at a path-segment boundary:
/// `/app` and `/app/x` are under `/app`, `/appx` is not. Every URI is under the root ("").
pub fn is_under_mount(uri: &[u8], mount: &[u8]) -> bool {
    uri.starts_with(mount) && (uri.len() == mount.len() || uri[mount.len()] == b'/')
}

/// Bytes → str the PEP 3333 way: each byte becomes the code point of the same value.
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return PyString::new(py, unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    let s: String = bytes.iter().map(|&b| b as char).collect();
    PyString::new(py, &s)
}

/// The keys every environ of this process shares, built once; each request starts from
/// a copy (a C-level dict copy is cheaper than setting the keys one by one).
pub fn environ_template<'py>(
    py: Python<'py>,
    file_wrapper: &Bound<'py, PyAny>,
    multithread: bool,
    multiprocess: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let env = PyDict::new(py);
    env.set_item(intern!(py, "wsgi.version"), (1, 0).into_py_any(py)?)?;
    env.set_item(intern!(py, "wsgi.multithread"), multithread)?;
    env.set_item(intern!(py, "wsgi.multiprocess"), multiprocess)?;
    env.set_item(intern!(py, "wsgi.run_once"), false)?;
    env.set_item(intern!(py, "wsgi.file_wrapper"), file_wrapper)?;
    // Every server here ends wsgi.input at the end of the body (nginx has read it all;
    // Apache's input filters stop at Content-Length or the last chunk).
    env.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    env.set_item(intern!(py, "GATEWAY_INTERFACE"), intern!(py, "CGI/1.1"))?;
    Ok(env)
}

/// Fills `env` (a copy of the template) with the CGI and per-request wsgi.* keys of `req`.
pub fn fill_environ(py: Python<'_>, env: &Bound<'_, PyDict>, req: &Request) -> PyResult<()> {
    env.set_item(intern!(py, "REQUEST_METHOD"), &req.method)?;
    env.set_item(intern!(py, "SCRIPT_NAME"), latin1(py, &req.script_name))?;
    env.set_item(intern!(py, "PATH_INFO"), latin1(py, &req.path_info))?;
    env.set_item(intern!(py, "QUERY_STRING"), latin1(py, &req.query_string))?;
    env.set_item(intern!(py, "SERVER_NAME"), latin1(py, &req.server_name))?;
    env.set_item(intern!(py, "SERVER_PORT"), &req.server_port)?;
    env.set_item(intern!(py, "SERVER_PROTOCOL"), &req.protocol)?;
    env.set_item(intern!(py, "REMOTE_ADDR"), &req.remote_addr)?;
    env.set_item(intern!(py, "REMOTE_PORT"), &req.remote_port)?;
    if let Some(n) = req.content_length {
        env.set_item(intern!(py, "CONTENT_LENGTH"), n.to_string())?;
    }
    for (key, value) in cgi_headers(&req.headers) {
        env.set_item(key, latin1(py, &value))?;
    }
    for (key, value) in &req.params {
        if !is_reserved_environ_key(key) {
            env.set_item(key, latin1(py, value))?;
        }
    }
    for (key, value) in &req.extra {
        match value {
            ExtraValue::Str(v) => env.set_item(key.as_ref(), latin1(py, v))?,
            ExtraValue::Static(v) => env.set_item(key.as_ref(), *v)?,
            ExtraValue::IntTuple(v) => env.set_item(key.as_ref(), PyTuple::new(py, v)?)?,
        }
    }
    env.set_item(intern!(py, "REQUEST_URI"), latin1(py, &req.request_uri))?;
    env.set_item(intern!(py, "SERVER_SOFTWARE"), req.server_software.as_ref())?;
    if req.https {
        env.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
    }
    let scheme = if req.https || https_configured(&req.params) {
        intern!(py, "https")
    } else {
        intern!(py, "http")
    };
    env.set_item(intern!(py, "REQUEST_SCHEME"), scheme)?;
    env.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mounts() {
        assert_eq!(
            split_mount(b"/api/x", b"/api"),
            (b"/api".to_vec(), b"/x".to_vec())
        );
        assert_eq!(
            split_mount(b"/api", b"/api"),
            (b"/api".to_vec(), b"".to_vec())
        );
        assert_eq!(
            split_mount(b"/apix", b"/api"),
            (b"".to_vec(), b"/apix".to_vec())
        );
        assert_eq!(split_mount(b"/x", b""), (b"".to_vec(), b"/x".to_vec()));
        assert!(is_under_mount(b"/api", b"/api") && is_under_mount(b"/api/", b"/api"));
        assert!(!is_under_mount(b"/apix", b"/api") && !is_under_mount(b"/ap", b"/api"));
        assert!(is_under_mount(b"/anything", b""));
    }

    #[test]
    fn maps_names() {
        assert_eq!(cgi_header_key(b"User-Agent").unwrap(), "HTTP_USER_AGENT");
        assert_eq!(cgi_header_key(b"content-type").unwrap(), "CONTENT_TYPE");
        assert_eq!(cgi_header_key(b"Content-Length"), None);
        assert_eq!(cgi_header_key(b"X_Forwarded_For"), None);
        assert_eq!(cgi_header_key(b"Proxy"), None);
        assert_eq!(cgi_header_key(b"Bad Name"), None);
    }

    #[test]
    fn https_from_the_server_configuration() {
        let with = |value: &str| vec![("HTTPS".to_string(), value.as_bytes().to_vec())];
        for on in ["on", "ON", "1", "yes", "True", " on "] {
            assert!(https_configured(&with(on)), "{on:?}");
        }
        for off in ["off", "0", "", "no", "https"] {
            assert!(!https_configured(&with(off)), "{off:?}");
        }
        let other = vec![("HTTP_HTTPS".to_string(), b"on".to_vec())];
        assert!(!https_configured(&other));
    }

    #[test]
    fn joins_repeats() {
        let h = vec![
            (b"Accept".to_vec(), b"a".to_vec()),
            (b"Cookie".to_vec(), b"x=1".to_vec()),
            (b"accept".to_vec(), b"b".to_vec()),
            (b"Cookie".to_vec(), b"y=2".to_vec()),
        ];
        let got = cgi_headers(&h);
        assert_eq!(got[0], ("HTTP_ACCEPT".into(), b"a, b".to_vec()));
        assert_eq!(got[1], ("HTTP_COOKIE".into(), b"x=1; y=2".to_vec()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Any header list maps without panicking to unique keys that are valid CGI names,
        /// never CONTENT_LENGTH, and never from a name that held an underscore.
        #[test]
        fn header_keys_are_unique_and_safe(
            headers in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..12), proptest::collection::vec(any::<u8>(), 0..12)),
                0..16)
        ) {
            let out = cgi_headers(&headers);
            let mut keys: Vec<&String> = out.iter().map(|(k, _)| k).collect();
            keys.sort();
            let n = keys.len();
            keys.dedup();
            prop_assert_eq!(n, keys.len());
            for (k, _) in &out {
                prop_assert!(k == "CONTENT_TYPE" || k.starts_with("HTTP_"));
                prop_assert!(k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
                prop_assert!(k != "HTTP_CONTENT_LENGTH" && k != "HTTP_CONTENT_TYPE" && k != "HTTP_PROXY");
            }
            for (name, _) in &headers {
                if name.contains(&b'_') {
                    prop_assert!(cgi_header_key(name).is_none());
                }
            }
        }
    }
}
