//! Which app to run and loading it: a script file defining `application` (mod_wsgi's
//! WSGIScriptAlias, nginx's `wsgi_app /path/app.py`) or `module:callable`. Apps are
//! imported once per process and cached; a script can be reloaded when its mtime changes.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

pub const DEFAULT_CALLABLE: &str = "application";

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AppTarget {
    Script(PathBuf),
    Module(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AppSpec {
    pub target: AppTarget,
    pub callable: String,
    /// Directories put in front of sys.path before loading.
    pub python_path: Vec<String>,
    /// Reload a script when its modification time changes (mod_wsgi's default).
    pub reload_on_change: bool,
}

impl AppSpec {
    /// Reads `FILE` or `module:callable`. A value with a `/` or ending in .py/.wsgi is a
    /// file; `module:callable` names both; a bare dotted name is a module.
    pub fn parse(value: &str, callable: Option<&str>) -> Result<AppSpec, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty WSGI application".into());
        }
        let is_file = value.contains('/') || value.ends_with(".py") || value.ends_with(".wsgi");
        let (target, from_value) = if is_file {
            (AppTarget::Script(PathBuf::from(value)), None)
        } else {
            let (module, attr) = match value.split_once(':') {
                Some((m, a)) => (m, Some(a)),
                None => (value, None),
            };
            let valid = crate::config_names::is_python_name;
            if !valid(module) || attr.is_some_and(|a| !valid(a)) {
                return Err(format!(
                    "\"{value}\" is neither a file path nor module:callable"
                ));
            }
            (AppTarget::Module(module.to_string()), attr)
        };
        let callable = from_value.or(callable).unwrap_or(DEFAULT_CALLABLE);
        Ok(AppSpec {
            target,
            callable: callable.to_string(),
            python_path: Vec::new(),
            reload_on_change: false,
        })
    }

    pub fn describe(&self) -> String {
        match &self.target {
            AppTarget::Script(p) => format!("{}::{}", p.display(), self.callable),
            AppTarget::Module(m) => format!("{m}:{}", self.callable),
        }
    }
}

struct Loaded {
    app: Py<PyAny>,
    mtime: Option<SystemTime>,
}

static APPS: Mutex<Option<HashMap<AppSpec, Loaded>>> = Mutex::new(None);
/// Counts loads into APPS: a thread's remembered app (LAST) is current while it matches.
static LOADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The app this thread ran last, with its mtime and the LOADS count it was found at.
    /// Most threads run one app over and over: equal specs compare in a few instructions,
    /// where finding one in APPS hashes its path byte by byte under a lock every thread
    /// takes.
    static LAST: RefCell<Option<Remembered>> = const { RefCell::new(None) };
}

/// A spec, its script's mtime, the LOADS count, and the callable found for them.
type Remembered = (AppSpec, Option<SystemTime>, u64, Py<PyAny>);
static LOADER: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The Python helper module (loader.py).
pub fn loader(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    LOADER
        .get_or_try_init(py, || {
            PyModule::from_code(
                py,
                pyo3::ffi::c_str!(include_str!("loader.py")),
                c"rwsgi/loader.py",
                c"_rwsgi_loader",
            )
            .map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The app's callable, importing it on first use (or when its script changed).
/// A failed load is not cached: the next request tries again, as mod_wsgi does.
pub fn get_app<'py>(py: Python<'py>, spec: &AppSpec) -> PyResult<Bound<'py, PyAny>> {
    let current_mtime = match (&spec.target, spec.reload_on_change) {
        (AppTarget::Script(p), true) => mtime(p),
        _ => None,
    };
    let loads = LOADS.load(Ordering::Acquire);
    let remembered = LAST.with_borrow(|last| match last {
        Some((s, mtime, n, app)) if *n == loads && *mtime == current_mtime && s == spec => {
            Some(app.bind(py).clone())
        }
        _ => None,
    });
    if let Some(app) = remembered {
        return Ok(app);
    }
    let app = find_or_load(py, spec, current_mtime)?;
    LAST.set(Some((
        spec.clone(),
        current_mtime,
        loads,
        app.clone().unbind(),
    )));
    Ok(app)
}

fn find_or_load<'py>(
    py: Python<'py>,
    spec: &AppSpec,
    current_mtime: Option<SystemTime>,
) -> PyResult<Bound<'py, PyAny>> {
    {
        let apps = APPS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = apps.as_ref().and_then(|m| m.get(spec)) {
            if !spec.reload_on_change || found.mtime == current_mtime {
                return Ok(found.app.bind(py).clone());
            }
        }
    }
    // Never hold APPS while Python runs: importing can release the GIL.
    let app = load(py, spec)?;
    let mut apps = APPS.lock().unwrap_or_else(|e| e.into_inner());
    apps.get_or_insert_with(HashMap::new).insert(
        spec.clone(),
        Loaded {
            app: app.clone().unbind(),
            mtime: current_mtime,
        },
    );
    LOADS.fetch_add(1, Ordering::AcqRel);
    Ok(app)
}

fn load<'py>(py: Python<'py>, spec: &AppSpec) -> PyResult<Bound<'py, PyAny>> {
    let loader = loader(py)?;
    if !spec.python_path.is_empty() {
        loader.call_method1("add_path", (spec.python_path.clone(),))?;
    }
    match &spec.target {
        AppTarget::Script(path) => {
            let path = path.to_string_lossy();
            loader.call_method1("load_script", (path.as_ref(), spec.callable.as_str()))
        }
        AppTarget::Module(module) => {
            loader.call_method1("load_module", (module.as_str(), spec.callable.as_str()))
        }
    }
}

/// An exception with its traceback, as one block of text for the error log.
pub fn format_error(py: Python<'_>, err: &PyErr) -> String {
    let formatted = loader(py).and_then(|l| {
        l.call_method1("format_exception", (err.value(py), err.traceback(py)))?
            .extract::<String>()
    });
    formatted.unwrap_or_else(|_| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let s = AppSpec::parse("/srv/site/app.py", None).unwrap();
        assert_eq!(s.target, AppTarget::Script("/srv/site/app.py".into()));
        assert_eq!(s.callable, "application");
        let m = AppSpec::parse("myproject.wsgi:application", None).unwrap();
        assert_eq!(m.target, AppTarget::Module("myproject.wsgi".into()));
        let c = AppSpec::parse("pkg.mod:make.app", Some("x")).unwrap();
        assert_eq!(c.callable, "make.app");
        let d = AppSpec::parse("pkg.mod", Some("app")).unwrap();
        assert_eq!(d.callable, "app");
        assert!(AppSpec::parse("not a module", None).is_err());
        assert!(AppSpec::parse("pkg:", None).is_err());
        assert!(AppSpec::parse("", None).is_err());
    }
}
