//! Daemon mode's configuration: the WSGIDaemonProcess, WSGIProcessGroup,
//! WSGIRestrictEmbedded, WSGISocketPrefix and WSGIDaemonProgram directives; the checks that
//! need the whole configuration (a group used but defined nowhere, defined twice, or
//! defined in another virtual host), run by check_config so that `apache2 -t` reports
//! them; and what the configuration asks of the supervisor: each group's options and the
//! apps it may run.
//!
//! A group's apps are fixed when Apache starts (an app process runs only the apps its
//! group was given): every WSGIScriptAlias whose `process-group=` names the group, or
//! without that option in a server block whose WSGIProcessGroup (at server level or in
//! any of its sections) names it, and every WSGIImportScript with its
//! `process-group=`.

use crate::accounts;
use crate::bindings::*;
use crate::config::{self, DirConfig, Effective, Pattern, ServerConfig, EMBEDDED};
use crate::directives::{call, dir_config, Cmd, Outcome};
use crate::options::{check_process_group, split_words};
use rwsgi::daemon::GroupSpec;
use rwsgi::{AppSpec, AppTarget};
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};

/// One WSGIDaemonProcess line.
#[derive(Debug, Clone)]
pub struct DaemonDef {
    pub spec: GroupSpec,
    /// "file:line", for messages.
    pub at: String,
}

/// A group name used by a directive, checked once the whole configuration is read.
#[derive(Debug, Clone)]
pub struct GroupRef {
    /// A group's name, or `%{GLOBAL}`.
    pub name: String,
    /// "WSGIProcessGroup at file:line" and the like.
    pub by: String,
    /// Used by WSGIProcessGroup inside a <Directory>, <Location> or <Files> section: it
    /// then applies to whichever of the block's aliases the section covers.
    pub in_section: bool,
}

/// Where sockets and the supervisor's files go: `<WSGISocketPrefix>.rwsgi/`, so that
/// mod_wsgi's `WSGISocketPrefix run/wsgi` keeps its meaning (a path prefix next to which
/// the sockets live).
const DIR_SUFFIX: &str = ".rwsgi";
/// mod_wsgi's default prefix, relative to DefaultRuntimeDir.
const DEFAULT_PREFIX: &std::ffi::CStr = c"wsgi";
/// The longest unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Records a use of a process group name by the directive being read (not from
/// .htaccess, which httpd reads per request: those are checked when the request runs).
pub fn note_use(conf: &mut ServerConfig, cmd: Cmd<'_>, name: &str) {
    if cmd.in_htaccess() {
        return;
    }
    let directive = cmd.name();
    let by = if directive == "WSGIProcessGroup" {
        format!("{directive} {name} at {}", cmd.location())
    } else {
        format!("{directive} process-group={name} at {}", cmd.location())
    };
    conf.group_refs.push(GroupRef {
        name: name.to_string(),
        by,
        in_section: cmd.in_section(),
    });
}

fn define(cmd: Cmd<'_>, args: &str) -> Outcome {
    let words = split_words(args)?;
    let Some((name, options)) = words.split_first() else {
        return Err(
            "expected a group name and options: WSGIDaemonProcess NAME [key=value ...]".into(),
        );
    };
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let spec = GroupSpec::parse(name, &options)
        .and_then(|spec| check_accounts(&spec).map(|()| spec))
        .map_err(|e| format!("WSGIDaemonProcess {name}: {e}"))?;
    let at = cmd.location();
    // SAFETY: the only reference to the server config in this directive.
    unsafe { cmd.server_config() }?
        .daemons
        .push(DaemonDef { spec, at });
    Ok(())
}

/// The accounts exist, and none is root under another name.
fn check_accounts(spec: &GroupSpec) -> Result<(), String> {
    if let Some(user) = &spec.user {
        if accounts::user_id(user)? == 0 {
            return Err(format!(
                "user=\"{user}\" is root (uid 0): an app must not run as root"
            ));
        }
    }
    if let Some(group) = &spec.group {
        accounts::group_id(group)?;
    }
    Ok(())
}

pub unsafe extern "C" fn daemon_process(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    args: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd and the rest of the line (RAW_ARGS).
    let (cmd, args) = unsafe { call(cmd, args) };
    cmd.run(|| define(cmd, &args))
}

pub unsafe extern "C" fn process_group(
    cmd: *mut cmd_parms,
    m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd and its one argument (TAKE1).
    let (cmd, text) = unsafe { call(cmd, value) };
    cmd.run(|| {
        check_process_group(&text)?;
        // SAFETY: httpd passes our DirConfig as m, referenced nowhere else meanwhile.
        unsafe { dir_config(m) }?.process_group = cmd.copy(text.as_bytes());
        if !cmd.in_htaccess() {
            // SAFETY: the only reference to the server config in this directive.
            let conf = unsafe { cmd.server_config() }?;
            note_use(conf, cmd, &text);
        }
        Ok(())
    })
}

pub unsafe extern "C" fn restrict_embedded(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    on: c_int,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd.
    let cmd = unsafe { Cmd::new(cmd) };
    cmd.run(|| {
        cmd.global_only()?;
        // SAFETY: the only reference to the server config in this directive.
        unsafe { cmd.server_config() }?.restrict_embedded = on != 0;
        Ok(())
    })
}

pub unsafe extern "C" fn socket_prefix(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd and its one argument (TAKE1).
    let (cmd, value) = unsafe { call(cmd, value) };
    cmd.run(|| {
        cmd.global_only()?;
        if value.is_empty() || value.ends_with('/') {
            return Err(format!(
                "\"{value}\" must be a path prefix such as run/wsgi (the sockets go in the \
                 directory PREFIX{DIR_SUFFIX})"
            ));
        }
        let prefix = cmd.server_relative(&value)?;
        // SAFETY: the only reference to the server config in this directive.
        unsafe { cmd.server_config() }?.socket_prefix = Some(prefix);
        Ok(())
    })
}

pub unsafe extern "C" fn daemon_program(
    cmd: *mut cmd_parms,
    _m: *mut c_void,
    value: *const c_char,
) -> *const c_char {
    // SAFETY: called by httpd with a live cmd and its one argument (TAKE1).
    let (cmd, value) = unsafe { call(cmd, value) };
    cmd.run(|| {
        cmd.global_only()?;
        if !value.starts_with('/') {
            return Err(format!("\"{value}\" must be an absolute path"));
        }
        // SAFETY: the only reference to the server config in this directive.
        unsafe { cmd.server_config() }?.daemon_program = Some(PathBuf::from(value));
        Ok(())
    })
}

// ---- the whole configuration -------------------------------------------------------

/// One server block (the main server or a virtual host) as daemon mode sees it.
pub struct Block<'a> {
    pub conf: &'a ServerConfig,
    /// The block's directory defaults (WSGIProcessGroup, WSGICallableObject... given
    /// outside any section).
    pub defaults: DirConfig,
    /// Its ServerName.
    pub hostname: Option<String>,
    pub is_virtual: bool,
}

/// Every server block, the main server first.
///
/// # Safety
/// `s` heads httpd's list of servers, all configured (check_config or later), and their
/// configs are not changed while the result is used.
pub unsafe fn blocks<'a>(s: *const server_rec) -> Vec<Block<'a>> {
    let mut out = Vec::new();
    let mut server = s;
    while !server.is_null() {
        // SAFETY: a live server_rec of httpd's list with its configs in the config pool.
        let (conf, defaults, hostname, is_virtual) = unsafe {
            (
                config::server(server),
                config::server_dir_defaults(server),
                crate::apr::string((*server).server_hostname),
                (*server).is_virtual != 0,
            )
        };
        if let Some(conf) = conf {
            out.push(Block {
                conf,
                defaults,
                hostname,
                is_virtual,
            });
        }
        // SAFETY: as above; next is NULL or the next live server_rec.
        server = unsafe { (*server).next };
    }
    out
}

/// Where the group is defined, for the vhost rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// In the main server: every virtual host may use it.
    Main,
    /// In a <VirtualHost>: only virtual hosts with this ServerName may use it (as
    /// mod_wsgi).
    Host(Option<String>),
}

impl Home {
    pub fn allows(&self, hostname: Option<&str>) -> bool {
        match self {
            Home::Main => true,
            Home::Host(h) => h.as_deref() == hostname,
        }
    }

    fn describe(&self) -> String {
        match self {
            Home::Main => "the main server".into(),
            Home::Host(Some(h)) => format!("the virtual host {h}"),
            Home::Host(None) => "a virtual host without ServerName".into(),
        }
    }
}

/// Every WSGIDaemonProcess with the block it is in.
pub fn definitions<'a>(blocks: &'a [Block<'a>]) -> Vec<(&'a DaemonDef, Home)> {
    blocks
        .iter()
        .flat_map(|b| {
            let home = if b.is_virtual {
                Home::Host(b.hostname.clone())
            } else {
                Home::Main
            };
            b.conf.daemons.iter().map(move |d| (d, home.clone()))
        })
        .collect()
}

/// The checks that need the whole configuration. The first problem found, worded for
/// the error log.
pub fn check(blocks: &[Block<'_>], main: &ServerConfig, dir: &Path) -> Result<(), String> {
    let defs = definitions(blocks);
    for (i, (def, _)) in defs.iter().enumerate() {
        if let Some((first, _)) = defs[..i].iter().find(|(d, _)| d.spec.name == def.spec.name) {
            return Err(format!(
                "WSGIDaemonProcess {} at {}: a group of that name is already defined at {}",
                def.spec.name, def.at, first.at
            ));
        }
    }
    for block in blocks {
        for r in block.conf.group_refs.iter().filter(|r| r.name != EMBEDDED) {
            let Some((_, home)) = defs.iter().find(|(d, _)| d.spec.name == r.name) else {
                return Err(format!(
                    "{}: no WSGIDaemonProcess defines a process group named \"{}\"",
                    r.by, r.name
                ));
            };
            if !home.allows(block.hostname.as_deref()) || (home != &Home::Main && !block.is_virtual)
            {
                return Err(format!(
                    "{}: process group \"{}\" is defined in {} and only that virtual host may \
                     use it (define it outside any <VirtualHost> to share it)",
                    r.by,
                    r.name,
                    home.describe()
                ));
            }
        }
        for alias in &block.conf.aliases {
            let dynamic = matches!(alias.pattern, Pattern::Regex(_)) && alias.target.contains('$');
            let grouped = alias
                .options
                .process_group
                .as_deref()
                .is_some_and(|g| g != EMBEDDED);
            if dynamic && grouped {
                return Err(format!(
                    "WSGIScriptAliasMatch to {}: a script path with $N substitutions cannot \
                     run in a daemon process group yet (a group's scripts are fixed when Apache \
                     starts); name each script with its own WSGIScriptAlias",
                    alias.target
                ));
            }
        }
    }
    if defs.is_empty() {
        return Ok(());
    }
    let program = program(main)?;
    rwsgi::daemon::launch::check_program(&program)
        .map_err(|e| format!("{e} (set WSGIDaemonProgram to rwsgi-daemon's path)"))?;
    for (def, _) in &defs {
        let socket = dir.join(format!("{}.sock", def.spec.name));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "WSGIDaemonProcess {}: the socket path {} is longer than {MAX_SOCKET_PATH} \
                 bytes; choose a shorter WSGISocketPrefix",
                def.spec.name,
                socket.display()
            ));
        }
    }
    Ok(())
}

/// The rwsgi-daemon program: WSGIDaemonProgram, else the one beside mod_rwsgi.so.
pub fn program(main: &ServerConfig) -> Result<PathBuf, String> {
    main.daemon_program
        .clone()
        .or_else(rwsgi::daemon::launch::default_program)
        .ok_or_else(|| {
            "cannot tell where mod_rwsgi.so was loaded from to find rwsgi-daemon beside it; \
             set WSGIDaemonProgram"
                .to_string()
        })
}

/// The supervisor's directory: `<WSGISocketPrefix>.rwsgi`, by default
/// `<DefaultRuntimeDir>/wsgi.rwsgi`.
///
/// # Safety
/// `pool` is a live pool (the result of ap_runtime_dir_relative is copied at once).
pub unsafe fn supervisor_dir(pool: *mut apr_pool_t, main: &ServerConfig) -> PathBuf {
    let prefix = match &main.socket_prefix {
        Some(p) => p.clone(),
        None => {
            // SAFETY: pool is live; the result is NULL or a NUL-terminated pool string.
            let dir = unsafe { ap_runtime_dir_relative(pool, DEFAULT_PREFIX.as_ptr()) };
            // SAFETY: as above.
            unsafe { crate::apr::string(dir) }.unwrap_or_else(|| "/var/run/apache2/wsgi".into())
        }
    };
    PathBuf::from(format!("{prefix}{DIR_SUFFIX}"))
}

/// The groups a block's aliases run in when their own line does not say: the block's
/// server-level WSGIProcessGroup, and every group its sections name.
fn block_groups(block: &Block<'_>) -> Vec<String> {
    let mut groups = Vec::new();
    // SAFETY: the defaults' strings are NULL or config-pool copies made by the directives.
    let default = unsafe { crate::apr::string(block.defaults.process_group) };
    groups.extend(default.filter(|g| g != EMBEDDED));
    for r in block.conf.group_refs.iter().filter(|r| r.in_section) {
        if r.name != EMBEDDED && !groups.contains(&r.name) {
            groups.push(r.name.clone());
        }
    }
    groups
}

/// The groups as the supervisor gets them: options plus the apps each may run.
pub fn groups_with_apps(blocks: &[Block<'_>]) -> Vec<GroupSpec> {
    let mut specs: Vec<GroupSpec> = definitions(blocks)
        .into_iter()
        .map(|(d, _)| d.spec.clone())
        .collect();
    let mut add = |group: &str, app: AppSpec| {
        if let Some(spec) = specs.iter_mut().find(|s| s.name == group) {
            if !spec.apps.contains(&app) {
                spec.apps.push(app);
            }
        }
    };
    for block in blocks {
        let inherited = block_groups(block);
        for alias in &block.conf.aliases {
            if matches!(alias.pattern, Pattern::Regex(_)) && alias.target.contains('$') {
                continue;
            }
            // SAFETY: the defaults' strings are NULL or config-pool copies.
            let settings = unsafe { Effective::resolve(&block.defaults, Some(&alias.options)) };
            let app = daemon_app(PathBuf::from(&alias.target), &settings);
            match alias.options.process_group.as_deref() {
                Some(EMBEDDED) => {}
                Some(group) => add(group, app),
                None => inherited.iter().for_each(|g| add(g, app.clone())),
            }
        }
        for import in &block.conf.imports {
            if let Some(group) = &import.process_group {
                // SAFETY: as above.
                let settings = unsafe { Effective::resolve(&block.defaults, None) };
                add(group, daemon_app(PathBuf::from(&import.path), &settings));
            }
        }
    }
    specs
}

/// An app as a group runs it. Its sys.path is the group's python-path= (WSGIPythonPath
/// is embedded mode's, as with mod_wsgi).
pub fn daemon_app(script: PathBuf, settings: &Effective) -> AppSpec {
    AppSpec {
        target: AppTarget::Script(script),
        callable: settings.callable.clone(),
        python_path: Vec::new(),
        reload_on_change: settings.script_reloading,
    }
}

/// Whether Apache's children need Python: not with WSGIRestrictEmbedded On, nor when
/// daemon groups are defined and every app the configuration names runs in one.
pub fn children_need_python(blocks: &[Block<'_>], main: &ServerConfig) -> bool {
    if main.restrict_embedded {
        return false;
    }
    if definitions(blocks).is_empty() {
        return true;
    }
    blocks.iter().any(|block| {
        // SAFETY: the defaults' strings are NULL or config-pool copies.
        let default = unsafe { crate::apr::string(block.defaults.process_group) };
        let default_embedded = default.as_deref().is_none_or(|g| g == EMBEDDED);
        let section_embedded = block
            .conf
            .group_refs
            .iter()
            .any(|r| r.in_section && r.name == EMBEDDED);
        let alias_embedded =
            block
                .conf
                .aliases
                .iter()
                .any(|a| match a.options.process_group.as_deref() {
                    Some(g) => g == EMBEDDED,
                    None => default_embedded,
                });
        let import_embedded = block.conf.imports.iter().any(|i| i.process_group.is_none());
        section_embedded || alias_embedded || import_embedded
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Alias, ImportScript, ScriptOptions};

    fn alias(prefix: &str, target: &str, group: Option<&str>) -> Alias {
        Alias {
            pattern: Pattern::Prefix(prefix.into()),
            target: target.into(),
            target_c: std::ptr::null(),
            options: ScriptOptions {
                process_group: group.map(str::to_string),
                ..Default::default()
            },
        }
    }

    fn def(name: &str, at: &str) -> DaemonDef {
        DaemonDef {
            spec: GroupSpec::new(name),
            at: at.into(),
        }
    }

    fn used(name: &str, in_section: bool) -> GroupRef {
        GroupRef {
            name: name.into(),
            by: format!("WSGIProcessGroup {name} at t.conf:9"),
            in_section,
        }
    }

    fn block<'a>(conf: &'a ServerConfig, host: Option<&str>, is_virtual: bool) -> Block<'a> {
        Block {
            conf,
            defaults: DirConfig::UNSET,
            hostname: host.map(str::to_string),
            is_virtual,
        }
    }

    #[test]
    fn apps_follow_alias_options_and_sections() {
        let main = ServerConfig {
            daemons: vec![def("a", "t.conf:1"), def("b", "t.conf:2")],
            aliases: vec![
                alias("/a", "/srv/a.wsgi", Some("a")),
                alias("/e", "/srv/e.wsgi", Some("%{GLOBAL}")),
                alias("/s", "/srv/s.wsgi", None),
            ],
            imports: vec![ImportScript {
                path: "/srv/warm.py".into(),
                application_group: "%{GLOBAL}".into(),
                process_group: Some("a".into()),
            }],
            group_refs: vec![used("b", true), used("a", false)],
            ..Default::default()
        };
        let blocks = [block(&main, None, false)];
        let specs = groups_with_apps(&blocks);
        let scripts = |i: usize| -> Vec<String> {
            specs[i]
                .apps
                .iter()
                .map(|a| match &a.target {
                    AppTarget::Script(p) => p.display().to_string(),
                    AppTarget::Module(m) => m.clone(),
                })
                .collect()
        };
        assert_eq!(scripts(0), ["/srv/a.wsgi", "/srv/warm.py"]);
        // /s has no option: the group a section names may run it.
        assert_eq!(scripts(1), ["/srv/s.wsgi"]);
        assert!(specs[0].apps.iter().all(|a| a.callable == "application"));
        assert!(children_need_python(&blocks, &main));
    }

    #[test]
    fn whole_configuration_checks() {
        let dir = Path::new("/run/x.rwsgi");
        let twice = ServerConfig {
            daemons: vec![def("a", "t.conf:1"), def("a", "t.conf:5")],
            ..Default::default()
        };
        let err = check(&[block(&twice, None, false)], &twice, dir).unwrap_err();
        assert!(err.contains("already defined at t.conf:1"), "{err}");

        let undefined = ServerConfig {
            group_refs: vec![used("nope", false)],
            ..Default::default()
        };
        let err = check(&[block(&undefined, None, false)], &undefined, dir).unwrap_err();
        assert!(
            err.contains("no WSGIDaemonProcess defines a process group named \"nope\""),
            "{err}"
        );

        let main = ServerConfig::default();
        let host_a = ServerConfig {
            daemons: vec![def("a", "t.conf:3")],
            ..Default::default()
        };
        let host_b = ServerConfig {
            group_refs: vec![used("a", false)],
            ..Default::default()
        };
        let blocks = [
            block(&main, Some("main"), false),
            block(&host_a, Some("a.example"), true),
            block(&host_b, Some("b.example"), true),
        ];
        let err = check(&blocks, &main, dir).unwrap_err();
        assert!(
            err.contains("defined in the virtual host a.example"),
            "{err}"
        );
    }

    #[test]
    fn python_stays_out_when_every_app_is_in_a_group() {
        let main = ServerConfig {
            daemons: vec![def("a", "t.conf:1")],
            aliases: vec![alias("/a", "/srv/a.wsgi", Some("a"))],
            ..Default::default()
        };
        assert!(!children_need_python(&[block(&main, None, false)], &main));
        let restricted = ServerConfig {
            restrict_embedded: true,
            ..Default::default()
        };
        assert!(!children_need_python(
            &[block(&restricted, None, false)],
            &restricted
        ));
        let plain = ServerConfig::default();
        assert!(children_need_python(&[block(&plain, None, false)], &plain));
    }
}
