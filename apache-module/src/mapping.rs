//! URL → script mapping (the translate_name hook): WSGIScriptAlias prefixes and
//! WSGIScriptAliasMatch patterns. A match sets r->filename to the script (so <Directory>
//! access rules for the script's directory apply, as with mod_wsgi), the handler to
//! "wsgi-script", and remembers SCRIPT_NAME / PATH_INFO for the content handler.

use crate::apr::{bytes, module_config, pool_value, pstr, set_module_config};
use crate::bindings::*;
use crate::config::{self, Pattern, ScriptOptions};
use crate::ffi::guard;
use crate::log::{self, Level};
use crate::module::module_index;
use std::ffi::{c_char, c_int, c_void};

/// What the translate hook found, kept in the request's config vector (pool memory).
#[derive(Clone, Copy)]
pub struct Matched {
    pub script: *const c_char,
    pub script_name: *const c_char,
    pub path_info: *const c_char,
    /// The alias's options; they live in the server config (config pool).
    pub options: *const ScriptOptions,
}

/// mod_alias's prefix rule: each `/` in the alias matches one or more `/` in the URI, other
/// bytes match literally, and the match must end at a path-segment boundary. Returns how
/// many bytes of `uri` matched.
pub fn prefix_match(uri: &[u8], alias: &[u8]) -> Option<usize> {
    let (mut a, mut u) = (0, 0);
    while a < alias.len() {
        if alias[a] == b'/' {
            if uri.get(u) != Some(&b'/') {
                return None;
            }
            while alias.get(a) == Some(&b'/') {
                a += 1;
            }
            while uri.get(u) == Some(&b'/') {
                u += 1;
            }
        } else {
            if uri.get(u) != Some(&alias[a]) {
                return None;
            }
            a += 1;
            u += 1;
        }
    }
    let ends_segment = alias.last() == Some(&b'/') || u == uri.len() || uri[u] == b'/';
    (ends_segment && u > 0).then_some(u)
}

/// SCRIPT_NAME and PATH_INFO from the matched length: the mount without trailing slashes
/// ("" for "/"), and the rest of the URI.
pub fn split_mount(uri: &[u8], matched: usize) -> (&[u8], &[u8]) {
    let mut end = matched.min(uri.len());
    while end > 0 && uri[end - 1] == b'/' {
        end -= 1;
    }
    uri.split_at(end)
}

/// The translate_name hook.
pub unsafe extern "C" fn translate_name(r: *mut request_rec) -> c_int {
    // SAFETY: httpd passes a live request.
    guard("translate_name", DECLINED, || unsafe { translate(r) })
}

unsafe fn translate(r: *mut request_rec) -> c_int {
    // SAFETY (whole function): r is live; r->uri is a NUL-terminated pool string; the
    // server config is read-only while requests run.
    unsafe {
        let uri = bytes((*r).uri);
        if uri.first() != Some(&b'/') {
            return DECLINED;
        }
        let Some(conf) = config::server((*r).server) else {
            return DECLINED;
        };
        for alias in &conf.aliases {
            let (matched, script) = match alias.pattern {
                Pattern::Prefix(ref prefix) => match prefix_match(uri, prefix.as_bytes()) {
                    Some(n) => (n, pstr((*r).pool, alias.target.as_bytes())),
                    None => continue,
                },
                Pattern::Regex(re) => {
                    let mut groups = [ap_regmatch_t {
                        rm_so: -1,
                        rm_eo: -1,
                    }; AP_MAX_REG_MATCH as usize];
                    if ap_regexec(
                        re,
                        (*r).uri,
                        groups.len() as apr_size_t,
                        groups.as_mut_ptr(),
                        0,
                    ) != 0
                    {
                        continue;
                    }
                    let end = groups[0].rm_eo.max(0) as usize;
                    if end == 0 {
                        continue;
                    }
                    let script = ap_pregsub(
                        (*r).pool,
                        alias.target_c,
                        (*r).uri,
                        groups.len() as apr_size_t,
                        groups.as_mut_ptr(),
                    );
                    if script.is_null() {
                        log::request(
                            r,
                            Level::Error,
                            &format!(
                                "mod_rwsgi: substituting \"{}\" for {} failed (result too long)",
                                alias.target,
                                String::from_utf8_lossy(uri)
                            ),
                        );
                        return HTTP_INTERNAL_SERVER_ERROR as c_int;
                    }
                    (end, script as *const c_char)
                }
            };
            let (script_name, path_info) = split_mount(uri, matched);
            let found = Matched {
                script,
                script_name: pstr((*r).pool, script_name),
                path_info: pstr((*r).pool, path_info),
                options: &alias.options,
            };
            set_module_config(
                (*r).request_config,
                module_index(),
                pool_value((*r).pool, found) as *mut c_void,
            );
            (*r).filename = script as *mut c_char;
            (*r).handler = c"wsgi-script".as_ptr();
            apr_table_setn((*r).notes, c"alias-forced-type".as_ptr(), (*r).handler);
            return OK as c_int;
        }
        DECLINED
    }
}

/// The match the translate hook stored for this request, if any.
///
/// # Safety
/// `r` is a live request.
pub unsafe fn matched(r: *const request_rec) -> Option<Matched> {
    // SAFETY: the slot is NULL or a Matched stored by translate() in this request's pool.
    unsafe {
        (module_config((*r).request_config, module_index()) as *const Matched)
            .as_ref()
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(prefix_match(b"/app", b"/app"), Some(4));
        assert_eq!(prefix_match(b"/app/x/y", b"/app"), Some(4));
        assert_eq!(prefix_match(b"/apple", b"/app"), None);
        assert_eq!(prefix_match(b"/ap", b"/app"), None);
        assert_eq!(prefix_match(b"/anything", b"/"), Some(1));
        assert_eq!(prefix_match(b"/", b"/"), Some(1));
        assert_eq!(prefix_match(b"//app//x", b"/app/"), Some(7));
        assert_eq!(prefix_match(b"/app", b"/app/"), None);
        assert_eq!(prefix_match(b"/a/b/c", b"/a/b"), Some(4));
        assert_eq!(prefix_match(b"", b"/"), None);
    }

    #[test]
    fn mounts_split_into_script_name_and_path_info() {
        assert_eq!(split_mount(b"/app", 4), (&b"/app"[..], &b""[..]));
        assert_eq!(split_mount(b"/app/x", 4), (&b"/app"[..], &b"/x"[..]));
        assert_eq!(split_mount(b"/x/y", 1), (&b""[..], &b"/x/y"[..]));
        assert_eq!(split_mount(b"/", 1), (&b""[..], &b"/"[..]));
        assert_eq!(split_mount(b"/app/x", 5), (&b"/app"[..], &b"/x"[..]));
        assert_eq!(split_mount(b"/app/", 5), (&b"/app"[..], &b"/"[..]));
    }
}
