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
use crate::req::Req;
use std::ffi::{c_char, c_int, c_void};

/// What the translate hook found, kept in the request's config vector (pool memory).
#[derive(Clone, Copy)]
struct Stored {
    script: *const c_char,
    script_name: *const c_char,
    path_info: *const c_char,
    /// The alias's options; they live in the server config (config pool).
    options: *const ScriptOptions,
}

/// What the translate hook found for a request, borrowed for the request's lifetime.
#[derive(Clone, Copy)]
pub struct Matched<'a> {
    pub script: &'a [u8],
    pub script_name: &'a [u8],
    pub path_info: &'a [u8],
    pub options: Option<&'a ScriptOptions>,
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
    // SAFETY: httpd passes a live request, ours for the duration of the hook.
    let req = unsafe { Req::new(r) };
    guard("translate_name", DECLINED, || translate(req))
}

/// A script alias that matched: how much of the URI it took, and the script.
struct Hit<'c> {
    matched: usize,
    script: *const c_char,
    options: &'c ScriptOptions,
}

fn translate(req: Req<'_>) -> c_int {
    let uri = req.uri().unwrap_or_default();
    if uri.first() != Some(&b'/') {
        return DECLINED;
    }
    // SAFETY: the request's server_rec is live; its config is read-only while requests
    // run and lives in the config pool, longer than the request.
    let Some(conf) = (unsafe { config::server(req.server()) }) else {
        return DECLINED;
    };
    for alias in &conf.aliases {
        let hit = match alias.pattern {
            Pattern::Prefix(ref prefix) => match prefix_match(uri, prefix.as_bytes()) {
                Some(matched) => Hit {
                    matched,
                    // SAFETY: the request pool is live.
                    script: unsafe { pstr(req.pool(), alias.target.as_bytes()) },
                    options: &alias.options,
                },
                None => continue,
            },
            Pattern::Regex(re) => match regex_match(req, re, alias.target_c) {
                RegexOutcome::NoMatch => continue,
                RegexOutcome::Match { end, script } => Hit {
                    matched: end,
                    script,
                    options: &alias.options,
                },
                RegexOutcome::TooLong => {
                    // Which app the alias would have named is what failed.
                    let label = log::request_label(req, "-");
                    log::for_request(
                        req,
                        Level::Error,
                        &label,
                        &format!(
                            "substituting \"{}\" for {} failed (result too long)",
                            alias.target,
                            String::from_utf8_lossy(uri)
                        ),
                    );
                    return HTTP_INTERNAL_SERVER_ERROR as c_int;
                }
            },
        };
        map_to_script(req, uri, hit);
        return OK as c_int;
    }
    DECLINED
}

enum RegexOutcome {
    NoMatch,
    /// The match ends at `end` bytes into the URI; `script` is the substituted target.
    Match {
        end: usize,
        script: *const c_char,
    },
    /// ap_pregsub refused (the result would be too long).
    TooLong,
}

/// Runs a WSGIScriptAliasMatch pattern on the request's URI and substitutes `$N` in the
/// target.
fn regex_match(req: Req<'_>, re: *mut ap_regex_t, target: *const c_char) -> RegexOutcome {
    let mut groups = [ap_regmatch_t {
        rm_so: -1,
        rm_eo: -1,
    }; AP_MAX_REG_MATCH as usize];
    // SAFETY: r->uri is a NUL-terminated pool string (checked non-empty by the caller);
    // the request is live (Req).
    let uri = unsafe { (*req.ptr()).uri };
    // SAFETY: re was compiled by ap_pregcomp into the config pool, which outlives every
    // request; groups has room for the count we pass.
    let rc = unsafe { ap_regexec(re, uri, groups.len() as apr_size_t, groups.as_mut_ptr(), 0) };
    if rc != 0 {
        return RegexOutcome::NoMatch;
    }
    let end = groups[0].rm_eo.max(0) as usize;
    if end == 0 {
        return RegexOutcome::NoMatch;
    }
    // SAFETY: the request pool is live; target is a NUL-terminated config-pool string;
    // groups holds the offsets ap_regexec found in this very uri.
    let script = unsafe {
        ap_pregsub(
            req.pool(),
            target,
            uri,
            groups.len() as apr_size_t,
            groups.as_mut_ptr(),
        )
    };
    if script.is_null() {
        RegexOutcome::TooLong
    } else {
        RegexOutcome::Match {
            end,
            script: script as *const c_char,
        }
    }
}

/// Points the request at the script (r->filename, the wsgi-script handler) and keeps
/// SCRIPT_NAME / PATH_INFO for the content handler.
fn map_to_script(req: Req<'_>, uri: &[u8], hit: Hit<'_>) {
    let (script_name, path_info) = split_mount(uri, hit.matched);
    let pool = req.pool();
    // SAFETY: the request pool is live; the copies live as long as the request.
    let (script_name, path_info) = unsafe { (pstr(pool, script_name), pstr(pool, path_info)) };
    let found = Stored {
        script: hit.script,
        script_name,
        path_info,
        options: hit.options,
    };
    let r = req.ptr();
    // SAFETY: the request is live and ours during the hook (Req); Stored is plain data
    // copied into its pool, and the slot is this module's in the request's config vector.
    unsafe {
        set_module_config(
            (*r).request_config,
            module_index(),
            pool_value(pool, found) as *mut c_void,
        )
    };
    // SAFETY: as above; the script is a request-pool string and the handler name a
    // static one, both outliving the request; the notes table belongs to the request.
    unsafe {
        (*r).filename = hit.script as *mut c_char;
        (*r).handler = c"wsgi-script".as_ptr();
        apr_table_setn((*r).notes, c"alias-forced-type".as_ptr(), (*r).handler);
    }
}

/// The match the translate hook stored for this request, if any.
pub fn matched<'a>(req: Req<'a>) -> Option<Matched<'a>> {
    // SAFETY: the request is live (Req); its config vector has a slot for every module.
    let slot = unsafe { module_config((*req.ptr()).request_config, module_index()) };
    // SAFETY: our slot is NULL or a Stored that translate() put in this request's pool.
    let stored = unsafe { (slot as *const Stored).as_ref() }.copied()?;
    // SAFETY: Stored's strings are NUL-terminated strings in the request pool (or the
    // config pool), and its options point into the server config: all outlive 'a.
    unsafe {
        Some(Matched {
            script: bytes(stored.script),
            script_name: bytes(stored.script_name),
            path_info: bytes(stored.path_info),
            options: stored.options.as_ref(),
        })
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
