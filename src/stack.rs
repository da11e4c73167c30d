//! Where another thread is in Python, as text. A server uses it to show what holds a
//! request it is about to give up on: nginx logs it for each request still in the app
//! when worker_shutdown_timeout closes it, and a "stuck request" log can use it too.
//! faulthandler would dump every thread to a file descriptor; a log line needs one
//! thread's frames as a string, which sys._current_frames() and traceback give.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The Python stack of the thread whose `threading.get_ident()` is `ident` (its
/// pthread_self() on Unix), outermost frame first and every frame with its source line,
/// as `traceback.format_stack` writes it; None when that thread runs no Python code.
pub fn thread_stack(py: Python<'_>, ident: u64) -> PyResult<Option<String>> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let Some(frame) = frames.cast::<PyDict>()?.get_item(ident)? else {
        return Ok(None);
    };
    let lines: Vec<String> = py
        .import("traceback")?
        .call_method1("format_stack", (frame,))?
        .extract()?;
    Ok(Some(lines.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::sync::mpsc;

    #[test]
    fn shows_where_another_thread_waits() {
        crate::interpreter::initialize(None).expect("Python starts");
        let (ready_tx, ready_rx) = mpsc::channel();
        let code = "import threading, time\n\
                    def stuck_here(ready):\n    \
                        ready(threading.get_ident())\n    \
                        time.sleep(0.5)\n";
        // A real file, so traceback finds the source lines as it does for an app.
        let path = std::env::temp_dir().join(format!("rwsgi_stack_{}.py", std::process::id()));
        std::fs::write(&path, code).unwrap();
        let code = CString::new(code).unwrap();
        let file = CString::new(path.to_str().unwrap()).unwrap();
        let sleeper = std::thread::spawn(move || {
            Python::attach(|py| {
                let module = PyModule::from_code(py, &code, &file, c"stuck").unwrap();
                let ready = pyo3::types::PyCFunction::new_closure(
                    py,
                    None,
                    None,
                    move |args, _| -> PyResult<()> {
                        let _ = ready_tx.send(args.get_item(0)?.extract::<u64>()?);
                        Ok(())
                    },
                )
                .unwrap();
                module
                    .getattr("stuck_here")
                    .unwrap()
                    .call1((ready,))
                    .unwrap();
            })
        });
        let ident = ready_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100)); // into time.sleep
        let stack = Python::attach(|py| thread_stack(py, ident)).unwrap();
        sleeper.join().unwrap();
        let _ = std::fs::remove_file(&path);
        let stack = stack.expect("the sleeping thread has frames");
        assert!(stack.contains("in stuck_here"), "{stack}");
        assert!(stack.contains("time.sleep(0.5)"), "{stack}");
        let none = Python::attach(|py| thread_stack(py, 1)).unwrap();
        assert!(none.is_none());
    }
}
