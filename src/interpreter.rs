//! Starting CPython inside a server's worker process: once per process, after fork,
//! without Python's signal handlers (the server owns signals), then releasing the GIL so
//! the server's own threads never hold it.

use pyo3::ffi;
use std::ffi::CString;
use std::path::Path;
use std::sync::OnceLock;

static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

/// Initializes the interpreter. `home` is a virtualenv (a directory with pyvenv.cfg,
/// used through its bin/python3) or a Python prefix (PYTHONHOME). Later calls return
/// the first call's result.
pub fn initialize(home: Option<&Path>) -> Result<(), String> {
    STARTED.get_or_init(|| start(home)).clone()
}

/// Runs once per process (STARTED), before any other Python call, on a thread that holds
/// no Python state. Leaves the GIL released.
fn start(home: Option<&Path>) -> Result<(), String> {
    // SAFETY: Py_IsInitialized may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // Someone else (another module) already owns the interpreter.
        return Err(
            "Python is already initialized in this process (is mod_wsgi loaded too?)".into(),
        );
    }
    let mut config = Config::new();
    config.0.install_signal_handlers = 0;
    config.0.parse_argv = 0;
    if let Some(home) = home {
        configure_home(&mut config, home)?;
    }
    // SAFETY: config is initialized (Config::new) and Python is not running yet.
    let status = unsafe { ffi::Py_InitializeFromConfig(&config.0) };
    drop(config);
    if let Some(message) = failure(&status) {
        return Err(format!("Python failed to start: {message}"));
    }
    // SAFETY: Py_InitializeFromConfig succeeded and left this thread holding the GIL;
    // hand it back so the server's threads never hold it.
    unsafe { ffi::PyEval_SaveThread() };
    Ok(())
}

/// A PyConfig initialized for an embedding application, cleared when dropped.
struct Config(ffi::PyConfig);

impl Config {
    fn new() -> Config {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        // SAFETY: PyConfig_InitPythonConfig fully initializes the struct it is given, and
        // may be called before Python starts.
        unsafe {
            ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
            Config(config.assume_init())
        }
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialized by PyConfig_InitPythonConfig; clearing it frees
        // the strings it owns, once.
        unsafe { ffi::PyConfig_Clear(&mut self.0) };
    }
}

/// The error message of a failed PyStatus, None for success.
fn failure(status: &ffi::PyStatus) -> Option<String> {
    // SAFETY: PyStatus_Exception only reads the status it is given (a copy).
    if unsafe { ffi::PyStatus_Exception(*status) } == 0 {
        return None;
    }
    Some(if status.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: a failed status carries a static NUL-terminated message.
        unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Refuses a home made for another Python: its modules (and a venv's compiled packages)
/// would not load, and CPython would fail later with a far less helpful message.
fn check_home_version(home: &Path, is_venv: bool) -> Result<(), String> {
    let built = crate::runtime::PYTHON_VERSION;
    let found = if is_venv {
        // pyvenv.cfg: "version = 3.11.2" (or version_info on newer venvs).
        std::fs::read_to_string(home.join("pyvenv.cfg"))
            .ok()
            .and_then(|cfg| {
                cfg.lines().find_map(|line| {
                    let (key, value) = line.split_once('=')?;
                    matches!(key.trim(), "version" | "version_info").then(|| {
                        value
                            .trim()
                            .split('.')
                            .take(2)
                            .collect::<Vec<_>>()
                            .join(".")
                    })
                })
            })
    } else {
        // A prefix holds lib/pythonX.Y; the one we were built for must be there.
        (!home.join("lib").join(format!("python{built}")).is_dir()).then(|| {
            std::fs::read_dir(home.join("lib"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("python").map(str::to_string))
                })
                .next()
                .unwrap_or_else(|| "no Python".to_string())
        })
    };
    match found {
        Some(version) if version != built => Err(format!(
            "Python home {} is for Python {version}, but this module was built for Python \
             {built}: use a virtualenv made with Python {built}, or a module built for {version}",
            home.display()
        )),
        _ => Ok(()),
    }
}

fn configure_home(config: &mut Config, home: &Path) -> Result<(), String> {
    if !home.is_dir() {
        return Err(format!("Python home {} is not a directory", home.display()));
    }
    let is_venv = home.join("pyvenv.cfg").is_file();
    check_home_version(home, is_venv)?;
    let (field, value) = if is_venv {
        // A venv is found through its interpreter: getpath reads pyvenv.cfg next to it.
        (
            &raw mut config.0.program_name,
            home.join("bin").join("python3"),
        )
    } else {
        (&raw mut config.0.home, home.to_path_buf())
    };
    let value = CString::new(value.to_string_lossy().into_owned())
        .map_err(|_| "Python home contains a NUL byte".to_string())?;
    // SAFETY: field points into the initialized config; PyConfig_SetBytesString copies
    // the NUL-terminated value into it (freeing what was there).
    let status = unsafe { ffi::PyConfig_SetBytesString(&mut config.0, field, value.as_ptr()) };
    if failure(&status).is_some() {
        return Err(format!("cannot use Python home {}", home.display()));
    }
    Ok(())
}

/// Gives back the thread state [`adopt_current_thread`] created, for a thread about to
/// exit (a pool thread retiring): CPython would otherwise keep it, with its frame stack,
/// for the life of the process.
pub fn release_current_thread() {
    if !ADOPTED.get() {
        return;
    }
    // SAFETY: this thread was adopted: it owns a thread state from PyGILState_Ensure (use
    // count 1) and does not hold the GIL (every attach since was balanced). Restoring that
    // state takes the GIL; the matching PyGILState_Release drops the count to zero, which
    // deletes the state and releases the GIL.
    unsafe {
        let tstate = ffi::PyGILState_GetThisThreadState();
        if tstate.is_null() {
            return;
        }
        ffi::PyEval_RestoreThread(tstate);
        ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_UNLOCKED);
    }
    ADOPTED.set(false);
}

thread_local! {
    static ADOPTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives the calling thread a Python thread state for the rest of its life.
///
/// Without it, every attach on a thread Python does not know creates a thread state and
/// every detach destroys it again (with its 16 KiB frame stack: an mmap/munmap pair), which
/// costs more than a small request. mod_wsgi keeps one per thread for the same reason.
/// Does nothing if the thread holds the GIL right now or was adopted already.
pub fn adopt_current_thread() {
    if ADOPTED.get() {
        return;
    }
    // SAFETY: the interpreter is initialized (STARTED) and this thread does not hold the
    // GIL (PyGILState_Check), so Ensure takes it with a new thread state whose use count
    // we never give back, and SaveThread releases the GIL while keeping that state.
    unsafe {
        if STARTED.get().is_none_or(|r| r.is_err()) || ffi::PyGILState_Check() != 0 {
            return;
        }
        let _ = ffi::PyGILState_Ensure();
        ffi::PyEval_SaveThread();
    }
    ADOPTED.set(true);
}
