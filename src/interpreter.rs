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
    STARTED.get_or_init(|| unsafe { start(home) }).clone()
}

/// SAFETY: must run once per process (guarded by STARTED), on a thread that holds no
/// Python state, before any other Python call. Leaves the GIL released.
unsafe fn start(home: Option<&Path>) -> Result<(), String> {
    if ffi::Py_IsInitialized() != 0 {
        // Someone else (another module) already owns the interpreter.
        return Err(
            "Python is already initialized in this process (is mod_wsgi loaded too?)".into(),
        );
    }
    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
    ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
    let mut config = config.assume_init();
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    let status = match home {
        Some(home) => configure_home(&mut config, home),
        None => Ok(()),
    };
    if let Err(e) = status {
        ffi::PyConfig_Clear(&mut config);
        return Err(e);
    }
    let status = ffi::Py_InitializeFromConfig(&config);
    ffi::PyConfig_Clear(&mut config);
    if ffi::PyStatus_Exception(status) != 0 {
        let msg = if status.err_msg.is_null() {
            "unknown error".to_string()
        } else {
            std::ffi::CStr::from_ptr(status.err_msg)
                .to_string_lossy()
                .into_owned()
        };
        return Err(format!("Python failed to start: {msg}"));
    }
    // Py_InitializeFromConfig leaves this thread holding the GIL; hand it back.
    ffi::PyEval_SaveThread();
    Ok(())
}

/// SAFETY: `config` was initialized by PyConfig_InitPythonConfig and not yet used.
unsafe fn configure_home(config: &mut ffi::PyConfig, home: &Path) -> Result<(), String> {
    if !home.is_dir() {
        return Err(format!("Python home {} is not a directory", home.display()));
    }
    let is_venv = home.join("pyvenv.cfg").is_file();
    let (field, value) = if is_venv {
        // A venv is found through its interpreter: getpath reads pyvenv.cfg next to it.
        (
            &raw mut config.program_name,
            home.join("bin").join("python3"),
        )
    } else {
        (&raw mut config.home, home.to_path_buf())
    };
    let value = CString::new(value.to_string_lossy().into_owned())
        .map_err(|_| "Python home contains a NUL byte".to_string())?;
    let status = ffi::PyConfig_SetBytesString(config, field, value.as_ptr());
    if ffi::PyStatus_Exception(status) != 0 {
        return Err(format!("cannot use Python home {}", home.display()));
    }
    Ok(())
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
