//! The module's configuration: per-server (script aliases, interpreter settings) and
//! per-directory (mod_wsgi's per-directory directives), their creation and merging, and
//! the settings in effect for one request.
//!
//! Server configs hold Rust values (Vec, String) and live in httpd's config pool: they are
//! boxed and dropped by a pool cleanup, so nothing leaks across restarts. Directory configs
//! are merged by httpd for every request, so they are plain data allocated in the pool.

use crate::apr::{module_config, pool_box, pool_value, string};
use crate::bindings::*;
use crate::daemon_conf::{DaemonDef, GroupRef};
use crate::ffi::guard;
use crate::module::module_index;
use crate::options::MapHead;
use crate::req::Req;
use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::ptr;

/// Options given on a WSGIScriptAlias line; they win over the directory's directives.
#[derive(Debug, Clone, Default)]
pub struct ScriptOptions {
    /// As written: a daemon process group's name or `%{GLOBAL}` (embedded).
    pub process_group: Option<String>,
    pub application_group: Option<String>,
    pub callable_object: Option<String>,
    pub pass_authorization: Option<bool>,
    /// process-group and application-group were both given without substitutions: mod_wsgi
    /// then loads the script when the process starts, and so do we.
    pub preload: bool,
}

#[derive(Debug, Clone)]
pub enum Pattern {
    /// WSGIScriptAlias: a URL prefix matched segment by segment, like mod_alias.
    Prefix(String),
    /// WSGIScriptAliasMatch: compiled in the config pool (freed by httpd with it).
    Regex(*mut ap_regex_t),
}

#[derive(Debug, Clone)]
pub struct Alias {
    pub pattern: Pattern,
    /// The script file, or for a regex the template with `$N` references.
    pub target: String,
    /// `target` as a C string in the config pool (ap_pregsub needs one).
    pub target_c: *const c_char,
    pub options: ScriptOptions,
}

/// WSGIImportScript: run in every child when it starts.
#[derive(Debug, Clone)]
pub struct ImportScript {
    pub path: String,
    pub application_group: String,
    /// The daemon process group it runs in; None: embedded (`%{GLOBAL}`).
    pub process_group: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// This server's aliases, then (after merging) the main server's.
    pub aliases: Vec<Alias>,
    /// Import scripts declared in this server block (not inherited).
    pub imports: Vec<ImportScript>,
    /// WSGIPythonHome (main server only).
    pub python_home: Option<PathBuf>,
    /// WSGIPythonPath (main server only), in front of sys.path for every app.
    pub python_path: Vec<String>,
    /// WSGIStuckAfter (main server only): seconds after which a request still in the app
    /// is logged with its Python stack.
    pub stuck_after: Option<u64>,
    /// WSGIDaemonProcess lines of this server block (not inherited).
    pub daemons: Vec<DaemonDef>,
    /// Daemon process group names used in this server block, checked once the whole
    /// configuration is read (not inherited).
    pub group_refs: Vec<GroupRef>,
    /// WSGIRestrictEmbedded On (main server only): no Python in Apache's children.
    pub restrict_embedded: bool,
    /// WSGISocketPrefix (main server only), made absolute.
    pub socket_prefix: Option<String>,
    /// WSGIDaemonProgram (main server only).
    pub daemon_program: Option<PathBuf>,
}

/// Per-directory settings; None/NULL means "not set here, inherit".
#[derive(Debug, Clone, Copy)]
pub struct DirConfig {
    /// WSGIProcessGroup: a daemon process group's name or `%{GLOBAL}`.
    pub process_group: *const c_char,
    pub callable_object: *const c_char,
    pub application_group: *const c_char,
    pub pass_authorization: Option<bool>,
    pub script_reloading: Option<bool>,
    pub enable_sendfile: Option<bool>,
    pub map_head_to_get: Option<MapHead>,
}

impl DirConfig {
    pub const UNSET: DirConfig = DirConfig {
        process_group: ptr::null(),
        callable_object: ptr::null(),
        application_group: ptr::null(),
        pass_authorization: None,
        script_reloading: None,
        enable_sendfile: None,
        map_head_to_get: None,
    };

    fn merge(base: &DirConfig, add: &DirConfig) -> DirConfig {
        let pick = |a: *const c_char, b: *const c_char| if a.is_null() { b } else { a };
        DirConfig {
            process_group: pick(add.process_group, base.process_group),
            callable_object: pick(add.callable_object, base.callable_object),
            application_group: pick(add.application_group, base.application_group),
            pass_authorization: add.pass_authorization.or(base.pass_authorization),
            script_reloading: add.script_reloading.or(base.script_reloading),
            enable_sendfile: add.enable_sendfile.or(base.enable_sendfile),
            map_head_to_get: add.map_head_to_get.or(base.map_head_to_get),
        }
    }
}

pub const DEFAULT_APPLICATION_GROUP: &str = "%{RESOURCE}";

/// The process group that means "in Apache's own children" (embedded mode).
pub const EMBEDDED: &str = "%{GLOBAL}";

/// The settings in effect for one request.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The daemon process group the request runs in; None: embedded (`%{GLOBAL}`).
    pub process_group: Option<String>,
    pub callable: String,
    /// Unexpanded (`%{RESOURCE}`, `%{GLOBAL}`, a name...).
    pub application_group: String,
    pub pass_authorization: bool,
    pub script_reloading: bool,
    pub map_head_to_get: MapHead,
    /// None: follow httpd's EnableSendfile for the directory.
    pub enable_sendfile: Option<bool>,
}

impl Effective {
    /// Alias options first, then the directory's directives, then mod_wsgi's defaults.
    ///
    /// # Safety
    /// The string pointers in `dir` are NULL or NUL-terminated pool strings.
    pub unsafe fn resolve(dir: &DirConfig, alias: Option<&ScriptOptions>) -> Effective {
        let alias = alias.cloned().unwrap_or_default();
        // SAFETY: per the function contract.
        let (dir_callable, dir_group, dir_process_group) = unsafe {
            (
                string(dir.callable_object),
                string(dir.application_group),
                string(dir.process_group),
            )
        };
        Effective {
            process_group: alias
                .process_group
                .or(dir_process_group)
                .filter(|g| g != EMBEDDED),
            callable: alias
                .callable_object
                .or(dir_callable)
                .unwrap_or_else(|| rwsgi::DEFAULT_CALLABLE.to_string()),
            application_group: alias
                .application_group
                .or(dir_group)
                .unwrap_or_else(|| DEFAULT_APPLICATION_GROUP.to_string()),
            pass_authorization: alias
                .pass_authorization
                .or(dir.pass_authorization)
                .unwrap_or(false),
            script_reloading: dir.script_reloading.unwrap_or(true),
            map_head_to_get: dir.map_head_to_get.unwrap_or(MapHead::Auto),
            enable_sendfile: dir.enable_sendfile,
        }
    }
}

/// The config of a server (virtual host), if httpd created one.
///
/// # Safety
/// `s` is a live server_rec; the result must not outlive its config pool.
pub unsafe fn server<'a>(s: *const server_rec) -> Option<&'a ServerConfig> {
    // SAFETY: the slot holds what create/merge_server_config returned (or NULL).
    unsafe { (module_config((*s).module_config, module_index()) as *const ServerConfig).as_ref() }
}

/// Mutable access while httpd reads the configuration (single-threaded).
///
/// # Safety
/// As [`server`], and no other reference to this config exists.
pub unsafe fn server_mut<'a>(s: *const server_rec) -> Option<&'a mut ServerConfig> {
    // SAFETY: as above; config reading is single-threaded.
    unsafe { (module_config((*s).module_config, module_index()) as *mut ServerConfig).as_mut() }
}

/// The merged per-directory config of a request (the server's defaults until httpd's
/// directory walk is done).
pub fn dir(req: Req<'_>) -> DirConfig {
    // SAFETY: the request is live (Req); per_dir_config is always a config vector with a
    // slot for every module.
    let slot = unsafe { module_config((*req.ptr()).per_dir_config, module_index()) };
    // SAFETY: our slot holds NULL or a DirConfig from create/merge_dir_config, in a pool
    // that outlives the request.
    unsafe { (slot as *const DirConfig).as_ref() }
        .copied()
        .unwrap_or(DirConfig::UNSET)
}

/// The server-level directory defaults (directives outside any section).
///
/// # Safety
/// `s` is a live server_rec.
pub unsafe fn server_dir_defaults(s: *const server_rec) -> DirConfig {
    // SAFETY: lookup_defaults is the server's base per-directory vector.
    unsafe {
        (module_config((*s).lookup_defaults, module_index()) as *const DirConfig)
            .as_ref()
            .copied()
            .unwrap_or(DirConfig::UNSET)
    }
}

pub unsafe extern "C" fn create_server_config(
    p: *mut apr_pool_t,
    _s: *mut server_rec,
) -> *mut c_void {
    guard("create_server_config", ptr::null_mut(), || {
        // SAFETY: p is the config pool httpd passes in; the box is dropped with it.
        unsafe { pool_box(p, ServerConfig::default()) as *mut c_void }
    })
}

pub unsafe extern "C" fn merge_server_config(
    p: *mut apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    guard("merge_server_config", add, || {
        // SAFETY: both pointers come from create_server_config (or a previous merge), or
        // are NULL; the configs live in the config pool and are not changed meanwhile.
        let base_conf = unsafe { (base as *const ServerConfig).as_ref() };
        // SAFETY: as for base.
        let add_conf = unsafe { (add as *const ServerConfig).as_ref() };
        let (Some(base), Some(add)) = (base_conf, add_conf) else {
            return add;
        };
        let merged = ServerConfig {
            aliases: add
                .aliases
                .iter()
                .chain(base.aliases.iter())
                .cloned()
                .collect(),
            imports: add.imports.clone(),
            python_home: base.python_home.clone(),
            python_path: base.python_path.clone(),
            stuck_after: base.stuck_after,
            daemons: add.daemons.clone(),
            group_refs: add.group_refs.clone(),
            restrict_embedded: base.restrict_embedded,
            socket_prefix: base.socket_prefix.clone(),
            daemon_program: base.daemon_program.clone(),
        };
        // SAFETY: p is the config pool.
        unsafe { pool_box(p, merged) as *mut c_void }
    })
}

pub unsafe extern "C" fn create_dir_config(p: *mut apr_pool_t, _dir: *mut c_char) -> *mut c_void {
    guard("create_dir_config", ptr::null_mut(), || {
        // SAFETY: p is a live pool; DirConfig is plain data.
        unsafe { pool_value(p, DirConfig::UNSET) as *mut c_void }
    })
}

pub unsafe extern "C" fn merge_dir_config(
    p: *mut apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    guard("merge_dir_config", add, || {
        // SAFETY: both come from create_dir_config / merge_dir_config (or are NULL).
        let base = unsafe { (base as *const DirConfig).as_ref() }
            .copied()
            .unwrap_or(DirConfig::UNSET);
        // SAFETY: as for base.
        let add = unsafe { (add as *const DirConfig).as_ref() }
            .copied()
            .unwrap_or(DirConfig::UNSET);
        // SAFETY: p is a live pool.
        unsafe { pool_value(p, DirConfig::merge(&base, &add)) as *mut c_void }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_merge_prefers_the_inner_section() {
        let base = DirConfig {
            pass_authorization: Some(true),
            script_reloading: Some(false),
            callable_object: c"outer".as_ptr(),
            ..DirConfig::UNSET
        };
        let add = DirConfig {
            script_reloading: Some(true),
            ..DirConfig::UNSET
        };
        let m = DirConfig::merge(&base, &add);
        assert_eq!(m.pass_authorization, Some(true));
        assert_eq!(m.script_reloading, Some(true));
        assert_eq!(m.callable_object, base.callable_object);
    }

    #[test]
    fn effective_defaults_and_alias_options() {
        // SAFETY: the string pointers are NULL or static C strings.
        let e = unsafe { Effective::resolve(&DirConfig::UNSET, None) };
        assert_eq!(e.callable, "application");
        assert_eq!(e.application_group, "%{RESOURCE}");
        assert!(!e.pass_authorization);
        assert!(e.script_reloading);
        assert_eq!(e.map_head_to_get, MapHead::Auto);
        let dir = DirConfig {
            callable_object: c"app".as_ptr(),
            pass_authorization: Some(true),
            ..DirConfig::UNSET
        };
        let opts = ScriptOptions {
            callable_object: Some("make".into()),
            pass_authorization: Some(false),
            ..Default::default()
        };
        // SAFETY: as above.
        let e = unsafe { Effective::resolve(&dir, Some(&opts)) };
        assert_eq!(e.callable, "make");
        assert!(!e.pass_authorization);
        // SAFETY: as above.
        let e = unsafe { Effective::resolve(&dir, None) };
        assert_eq!(e.callable, "app");
        assert!(e.pass_authorization);
        assert_eq!(e.process_group, None);
    }

    #[test]
    fn process_group_from_alias_then_directory() {
        let dir = DirConfig {
            process_group: c"site".as_ptr(),
            ..DirConfig::UNSET
        };
        // SAFETY: the string pointers are NULL or static C strings.
        let e = unsafe { Effective::resolve(&dir, None) };
        assert_eq!(e.process_group.as_deref(), Some("site"));
        let embedded = ScriptOptions {
            process_group: Some("%{GLOBAL}".into()),
            ..Default::default()
        };
        // SAFETY: as above.
        let e = unsafe { Effective::resolve(&dir, Some(&embedded)) };
        assert_eq!(e.process_group, None);
        let other = ScriptOptions {
            process_group: Some("other".into()),
            ..Default::default()
        };
        // SAFETY: as above.
        let e = unsafe { Effective::resolve(&DirConfig::UNSET, Some(&other)) };
        assert_eq!(e.process_group.as_deref(), Some("other"));
    }
}
