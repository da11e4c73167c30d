//! Names a server's configuration hands the engine, checked by one rule for every server:
//! the Python name of a callable or module, and an environ key added by configuration
//! (nginx `wsgi_param`, Apache `SetEnv` / `SetEnvIf`), which may add to the environ but
//! never replace what the server sets for each request.

/// A Python name, or a dotted path of them: `application`, `myproject.wsgi`.
pub fn is_python_name(value: &str) -> bool {
    !value.is_empty()
        && value.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

/// Checks a callable name from the configuration (`wsgi_callable`, `callable-object=`).
pub fn check_callable_name(value: &str) -> Result<(), String> {
    if is_python_name(value) {
        Ok(())
    } else {
        Err(format!(
            "\"{value}\" is not a Python name for the WSGI callable"
        ))
    }
}

/// Environ keys that describe the request itself: the server computes them for each
/// request, and a configured key of the same name would let configuration (or a variable
/// a client controls) contradict it. HTTPS is not one: configuration sets it behind a
/// TLS-terminating proxy (see environ::https_configured).
const PER_REQUEST: &[&str] = &[
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "SERVER_ADDR",
    "SERVER_ADMIN",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_USER",
    "AUTH_TYPE",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "GATEWAY_INTERFACE",
    "REQUEST_URI",
    "REQUEST_SCHEME",
    "SCRIPT_FILENAME",
    "DOCUMENT_ROOT",
    "CONTEXT_PREFIX",
    "CONTEXT_DOCUMENT_ROOT",
    "PATH_TRANSLATED",
];

/// True for a key configuration may not set: a per-request CGI key, a request header
/// (`HTTP_*`), or one of the `wsgi.` / `mod_wsgi.` / `apache.` keys.
pub fn is_reserved_environ_key(key: &str) -> bool {
    PER_REQUEST.contains(&key)
        || ["HTTP_", "wsgi.", "mod_wsgi.", "apache."]
            .iter()
            .any(|prefix| key.starts_with(prefix))
}

/// Checks an environ key to be added by configuration.
pub fn check_param_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid environ key \"{name}\""));
    }
    if is_reserved_environ_key(name) {
        return Err(format!(
            "\"{name}\" is set by the server for each request and cannot be configured"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_names() {
        for ok in ["application", "app", "make_app.wsgi", "_x1", "caf\u{e9}"] {
            assert!(check_callable_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1app", "app()", "a..b", "a-b", ".a", "a."] {
            assert!(check_callable_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configured_keys() {
        for ok in ["MY_SETTING", "HTTPS", "DJANGO_SETTINGS_MODULE", "UNIQUE_ID"] {
            assert!(check_param_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "REQUEST_METHOD",
            "HTTP_HOST",
            "HTTP_X_FORWARDED_FOR",
            "wsgi.url_scheme",
            "mod_wsgi.process_group",
            "SCRIPT_NAME",
            "",
            "A B",
        ] {
            assert!(check_param_name(bad).is_err(), "{bad}");
        }
    }
}
