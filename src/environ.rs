//! Builds the PEP 3333 environ dict from a [`Request`]. The header-name mapping is pure
//! Rust (property-tested); the dict starts as a copy of a template that already holds
//! every fixed key, and the keys and common values are interned strings, so a request
//! allocates little more than its own values.

use crate::config_names::is_reserved_environ_key;
use crate::server::{ExtraValue, Request};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

/// The CGI name of a request header: `User-Agent` → `HTTP_USER_AGENT`. None for names
/// the environ must not carry: names with `_` (they would alias a dashed name and let a
/// client spoof e.g. `X-Forwarded-For`), non-token bytes, Content-Type/Content-Length
/// (they have their own keys), and `Proxy` (httpoxy: it would become HTTP_PROXY).
#[cfg(test)]
pub fn cgi_header_key(name: &[u8]) -> Option<String> {
    let mut key = Vec::new();
    write_cgi_header_key(name, &mut key).map(str::to_string)
}

/// [`cgi_header_key`] into a reused buffer (replacing what it held); None for a name the
/// environ must not carry.
fn write_cgi_header_key<'k>(name: &[u8], key: &'k mut Vec<u8>) -> Option<&'k str> {
    key.clear();
    if name.is_empty() || !name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"proxy") {
        return None;
    }
    if name.eq_ignore_ascii_case(b"content-type") {
        key.extend_from_slice(b"CONTENT_TYPE");
    } else {
        key.extend_from_slice(b"HTTP_");
        key.extend(name.iter().map(|&b| match b {
            b'-' => b'_',
            _ => b.to_ascii_uppercase(),
        }));
    }
    std::str::from_utf8(key).ok()
}

/// Calls `emit(key, value)` for each environ pair of the request headers, repeated
/// headers joined as CGI does (", ", or "; " for Cookie), in first-arrival order. A value
/// is borrowed unless it had to be joined, and one buffer serves every key: a request
/// allocates nothing here in the common case.
pub fn for_each_cgi_header<E>(
    headers: &[(Vec<u8>, Vec<u8>)],
    mut emit: impl FnMut(&str, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = Vec::with_capacity(64);
    for (i, (name, value)) in headers.iter().enumerate() {
        let Some(key) = write_cgi_header_key(name, &mut buf) else {
            continue;
        };
        // Two names give the same key exactly when they are equal but for case (a valid
        // name holds no `_`): a repeat was joined into its first occurrence.
        let same = |(other, _): &(Vec<u8>, Vec<u8>)| other.eq_ignore_ascii_case(name);
        if headers[..i].iter().any(same) {
            continue;
        }
        let mut repeats = headers[i + 1..].iter().filter(|h| same(h)).peekable();
        if repeats.peek().is_none() {
            emit(key, value)?;
            continue;
        }
        let sep: &[u8] = if key == "HTTP_COOKIE" { b"; " } else { b", " };
        let mut joined = value.clone();
        for (_, more) in repeats {
            joined.extend_from_slice(sep);
            joined.extend_from_slice(more);
        }
        emit(key, &joined)?;
    }
    Ok(())
}

/// The headers' environ pairs as a list (what [`for_each_cgi_header`] emits).
#[cfg(test)]
pub fn cgi_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let _ = for_each_cgi_header(headers, |key, value| {
        out.push((key.to_string(), value.to_vec()));
        Ok::<(), ()>(())
    });
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
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len = ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("value too large"))?;
    // SAFETY: bytes is a live buffer of len bytes; latin-1 decoding cannot fail but for
    // memory (NULL with the exception set, which from_owned_ptr_or_err fetches); we hold
    // the GIL (py).
    unsafe {
        let s = ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), len, std::ptr::null());
        Ok(Bound::from_owned_ptr_or_err(py, s)?.cast_into_unchecked())
    }
}

/// The environ keys every request sets, in the template with a placeholder: a copy of
/// the template then already holds them (replacing a value costs less than adding a key)
/// and has room for the headers' keys without growing.
const PER_REQUEST_KEYS: [&str; 15] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REQUEST_URI",
    "SERVER_SOFTWARE",
    "REQUEST_SCHEME",
    "wsgi.url_scheme",
    "wsgi.input",
    "wsgi.errors",
];

/// The keys every environ of this process shares, built once; each request starts from
/// a copy (a C-level dict copy, which duplicates the key table with its hashes, is
/// cheaper than setting the keys one by one).
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
    for key in PER_REQUEST_KEYS {
        env.set_item(PyString::intern(py, key), py.None())?;
    }
    Ok(env)
}

/// `value` as a str, the same object every time for the values most requests carry.
macro_rules! str_or_interned {
    ($py:expr, $value:expr, [$($known:literal),* $(,)?]) => {
        match $value {
            $($known => intern!($py, $known).clone(),)*
            other => PyString::new($py, other),
        }
    };
}

/// The environ key object of a request header: the names most requests carry map to
/// interned strings (no allocation, and the hash is already known).
fn header_key<'py>(py: Python<'py>, key: &str) -> Bound<'py, PyString> {
    str_or_interned!(
        py,
        key,
        [
            "HTTP_HOST",
            "HTTP_USER_AGENT",
            "HTTP_ACCEPT",
            "HTTP_ACCEPT_ENCODING",
            "HTTP_ACCEPT_LANGUAGE",
            "HTTP_CONNECTION",
            "HTTP_COOKIE",
            "HTTP_REFERER",
            "HTTP_ORIGIN",
            "HTTP_AUTHORIZATION",
            "HTTP_CACHE_CONTROL",
            "HTTP_PRAGMA",
            "HTTP_IF_NONE_MATCH",
            "HTTP_IF_MODIFIED_SINCE",
            "HTTP_UPGRADE_INSECURE_REQUESTS",
            "HTTP_X_FORWARDED_FOR",
            "HTTP_X_FORWARDED_PROTO",
            "HTTP_X_FORWARDED_HOST",
            "HTTP_X_REAL_IP",
            "HTTP_X_REQUESTED_WITH",
            "HTTP_X_CSRFTOKEN",
            "HTTP_SEC_FETCH_DEST",
            "HTTP_SEC_FETCH_MODE",
            "HTTP_SEC_FETCH_SITE",
            "HTTP_SEC_FETCH_USER",
            "HTTP_SEC_CH_UA",
            "HTTP_SEC_CH_UA_MOBILE",
            "HTTP_SEC_CH_UA_PLATFORM",
            "HTTP_DNT",
            "HTTP_TE",
            "CONTENT_TYPE",
        ]
    )
}

/// Fills `env` (a copy of the template) with the CGI and per-request wsgi.* keys of `req`.
pub fn fill_environ(py: Python<'_>, env: &Bound<'_, PyDict>, req: &Request) -> PyResult<()> {
    let method = str_or_interned!(
        py,
        req.method.as_str(),
        ["GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]
    );
    let protocol = str_or_interned!(
        py,
        req.protocol.as_str(),
        ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]
    );
    env.set_item(intern!(py, "REQUEST_METHOD"), method)?;
    env.set_item(intern!(py, "SCRIPT_NAME"), latin1(py, &req.script_name)?)?;
    env.set_item(intern!(py, "PATH_INFO"), latin1(py, &req.path_info)?)?;
    env.set_item(intern!(py, "QUERY_STRING"), latin1(py, &req.query_string)?)?;
    env.set_item(intern!(py, "SERVER_NAME"), latin1(py, &req.server_name)?)?;
    env.set_item(intern!(py, "SERVER_PORT"), &req.server_port)?;
    env.set_item(intern!(py, "SERVER_PROTOCOL"), protocol)?;
    env.set_item(intern!(py, "REMOTE_ADDR"), &req.remote_addr)?;
    env.set_item(intern!(py, "REMOTE_PORT"), &req.remote_port)?;
    if let Some(n) = req.content_length {
        env.set_item(intern!(py, "CONTENT_LENGTH"), n.to_string())?;
    }
    for_each_cgi_header(&req.headers, |key, value| {
        env.set_item(header_key(py, key), latin1(py, value)?)
    })?;
    for (key, value) in &req.params {
        if !is_reserved_environ_key(key) {
            env.set_item(key, latin1(py, value)?)?;
        }
    }
    for (key, value) in &req.extra {
        match value {
            ExtraValue::Str(v) => env.set_item(key.as_ref(), latin1(py, v)?)?,
            ExtraValue::Static(v) => env.set_item(key.as_ref(), *v)?,
            ExtraValue::IntTuple(v) => env.set_item(key.as_ref(), PyTuple::new(py, v)?)?,
        }
    }
    env.set_item(intern!(py, "REQUEST_URI"), latin1(py, &req.request_uri)?)?;
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

    /// The plain way to join repeated headers: a key list searched for each header.
    fn joined_by_key(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
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

    /// Header names that repeat (in any case), collide when mapped, or are refused.
    fn header_name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "Accept",
                "ACCEPT",
                "accept",
                "Cookie",
                "cookie",
                "X-A",
                "x-a",
                "X_A",
                "Content-Type",
                "content-type",
                "Content-Length",
                "Proxy",
                "Host",
            ])
            .prop_map(|n| n.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
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

        /// Repeated headers are joined, in first-arrival order, exactly as a list of keys
        /// searched for each header would join them.
        #[test]
        fn repeats_join_in_arrival_order(
            headers in proptest::collection::vec(
                (header_name(), proptest::collection::vec(any::<u8>(), 0..4)), 0..12)
        ) {
            prop_assert_eq!(cgi_headers(&headers), joined_by_key(&headers));
        }
    }
}
