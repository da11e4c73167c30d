//! Python in a worker process: started in child_init (never in the httpd parent, which
//! unloads and reloads the module on every restart), the MPM's threading facts for
//! wsgi.multithread / wsgi.multiprocess, and WSGIImportScript preloading.

use crate::bindings::*;
use crate::config::{self, Effective, ServerConfig};
use crate::log::{self, Level};
use rwsgi::{AppSpec, AppTarget, LogLabel, Runtime, ServerTraits};
use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Set once in each child: Some when Python started, None when it failed.
static READY: OnceLock<Option<Runtime>> = OnceLock::new();

/// Python, when it is usable in this process.
pub fn ready() -> Option<Runtime> {
    READY.get().copied().flatten()
}

/// One of the MPM's facts (0 when it does not say).
fn mpm_query(code: u32) -> c_int {
    let mut value: c_int = 0;
    // SAFETY: ap_mpm_query writes one int; it is callable once the MPM is loaded.
    let rv = unsafe { ap_mpm_query(code as c_int, &mut value) };
    if rv == APR_SUCCESS as apr_status_t {
        value
    } else {
        0
    }
}

/// Threads each child runs requests on (ThreadsPerChild; 1 for prefork).
pub fn threads_per_child() -> usize {
    let threads = if mpm_query(AP_MPMQ_IS_THREADED) != AP_MPMQ_NOT_SUPPORTED as c_int {
        mpm_query(AP_MPMQ_MAX_THREADS)
    } else {
        1
    };
    usize::try_from(threads).unwrap_or(0).max(1)
}

/// What the MPM says, as mod_wsgi computes it.
fn mpm_traits() -> ServerTraits {
    let query = mpm_query;
    let threads = threads_per_child() as c_int;
    // The configured maximum of processes (not how many run now: that changes).
    let processes = if query(AP_MPMQ_IS_FORKED) != AP_MPMQ_NOT_SUPPORTED as c_int {
        query(AP_MPMQ_MAX_DAEMONS)
    } else {
        1
    };
    ServerTraits {
        multithread: threads.max(1) != 1,
        multiprocess: processes.max(1) != 1,
    }
}

/// The app spec for a script, the same for preloading and for requests so that the
/// engine's cache finds a preloaded script.
pub fn spec(script: PathBuf, settings: &Effective, conf: &ServerConfig) -> AppSpec {
    AppSpec {
        target: AppTarget::Script(script),
        callable: settings.callable.clone(),
        python_path: conf.python_path.clone(),
        reload_on_change: settings.script_reloading,
    }
}

/// # Safety
/// Called by httpd's child_init with the main server (heading the list of servers).
pub unsafe fn child_init(pool: *mut apr_pool_t, s: *mut server_rec) {
    // SAFETY: s is the live main server; its config lives in the config pool and is
    // read-only from now on.
    let Some(main) = (unsafe { config::server(s) }) else {
        return;
    };
    // SAFETY: s is the live main server, pool the child's, once per child (the contract).
    unsafe { crate::status::child_init(pool, s, main.stuck_after) };
    if !crate::daemon_groups::current().python {
        let _ = READY.set(None);
        let why = if main.restrict_embedded {
            "WSGIRestrictEmbedded On"
        } else {
            "every application runs in a daemon process group"
        };
        let message = format!(
            "Python is not started in process {} ({why})",
            std::process::id()
        );
        // SAFETY: s is live.
        unsafe { log::server(s, Level::Info, &message) };
        return;
    }
    let home = main.python_home.as_deref();
    match Runtime::start(home, mpm_traits()) {
        Ok(runtime) => {
            let _ = READY.set(Some(runtime));
            let message = format!(
                "Python initialized in process {}{}",
                std::process::id(),
                home.map(|h| format!(" (WSGIPythonHome {})", h.display()))
                    .unwrap_or_default()
            );
            // SAFETY: s is live.
            unsafe { log::server(s, Level::Info, &message) };
            // SAFETY: s heads httpd's server list (the contract).
            unsafe { preload(s, runtime) };
        }
        Err(e) => {
            let _ = READY.set(None);
            let message = format!("cannot start Python: {e}; WSGI requests will fail with 500");
            // SAFETY: s is live.
            unsafe { log::server(s, Level::Error, &message) };
        }
    }
}

/// Loads WSGIImportScript files, and scripts of WSGIScriptAlias lines that name both a
/// process and an application group (mod_wsgi preloads those too).
///
/// # Safety
/// `s` heads httpd's server list.
unsafe fn preload(s: *mut server_rec, runtime: Runtime) {
    // (spec, Some(application group) for WSGIImportScript, Some(mount) for an alias)
    let mut scripts: Vec<(AppSpec, Option<String>, Option<String>)> = Vec::new();
    let mut server = s as *const server_rec;
    while !server.is_null() {
        // SAFETY: server is a live server_rec of httpd's list; its configs live in the
        // config pool and are read-only now.
        let (conf, defaults) =
            unsafe { (config::server(server), config::server_dir_defaults(server)) };
        if let Some(conf) = conf {
            for import in conf.imports.iter().filter(|i| i.process_group.is_none()) {
                // SAFETY: the directory defaults' strings are NULL or config-pool copies
                // made by their directives.
                let settings = unsafe { Effective::resolve(&defaults, None) };
                let group = Some(import.application_group.clone());
                let script = spec(PathBuf::from(&import.path), &settings, conf);
                scripts.push((script, group, None));
            }
            // Preloaded where they run: those in a daemon process group by their group.
            let embedded =
                |a: &&config::Alias| a.options.process_group.as_deref() == Some(config::EMBEDDED);
            for alias in conf
                .aliases
                .iter()
                .filter(|a| a.options.preload)
                .filter(embedded)
            {
                // SAFETY: as above.
                let settings = unsafe { Effective::resolve(&defaults, Some(&alias.options)) };
                let mount = match &alias.pattern {
                    config::Pattern::Prefix(p) => match p.trim_end_matches('/') {
                        "" => Some("/".to_string()),
                        m => Some(m.to_string()),
                    },
                    config::Pattern::Regex(_) => None,
                };
                let script = spec(PathBuf::from(&alias.target), &settings, conf);
                scripts.push((script, None, mount));
            }
        }
        // SAFETY: as above; next is NULL or the next live server_rec.
        server = unsafe { (*server).next };
    }
    let mut seen: Vec<&AppSpec> = Vec::new();
    for (spec, import_group, mount) in &scripts {
        if seen.contains(&spec) {
            continue;
        }
        seen.push(spec);
        let outcome = runtime.preload(spec);
        let path = match &spec.target {
            AppTarget::Script(p) => p.display().to_string(),
            AppTarget::Module(m) => m.clone(),
        };
        // An alias's lines name its mount; an import script's, the process.
        let label = match mount {
            Some(mount) => LogLabel::app(mount),
            None => LogLabel::process(),
        };
        match outcome {
            Ok(()) => log::main_server(Level::Info, &label, &format!("preloaded {path}")),
            // An import script need not define a WSGI callable: it ran, which is the point.
            Err(e) if e.no_callable && import_group.is_some() => log::main_server(
                Level::Info,
                &label,
                &format!(
                    "ran import script {path} for application group {} (it defines no '{}')",
                    import_group.as_deref().unwrap_or_default(),
                    spec.callable
                ),
            ),
            Err(e) => {
                if let Some(app) = mount.as_deref().and_then(crate::status::app_metrics) {
                    app.import_failed();
                }
                log::main_server(Level::Error, &label, &format!("failed to load {path}:"));
                for line in e.traceback.lines() {
                    log::main_server(Level::Error, &label, line);
                }
            }
        }
    }
}
