//! Starting the supervisor from a server's master process. The program is run with
//! `supervise --detach`: it forks at once, and the child it leaves calls `setsid`, so the
//! supervisor is neither a child of the server's master (nginx's master reaps every child
//! and logs an "unknown process"), nor in its process group (a signal to the server's
//! group does not reach the apps). The master waits only for the short-lived first
//! process; the supervisor's own errors go to the server's error log through stderr.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `program supervise --dir DIR --detach` and waits for its first process to leave.
pub fn start_supervisor(dir: &Path, program: &Path) -> Result<(), String> {
    check_program(program)?;
    let mut child = Command::new(program)
        .arg("supervise")
        .arg("--dir")
        .arg(dir)
        .arg("--detach")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run the rwsgi supervisor {}: {e}", program.display()))?;
    match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "the rwsgi supervisor {} failed to start ({status}); its reason is logged above",
            program.display()
        )),
        // The server's SIGCHLD handler may have reaped it first (ECHILD): the supervisor
        // then says for itself whether it runs, by answering on its socket or not.
        Err(_) => Ok(()),
    }
}

/// The supervisor runs as root: its program must be a root-owned file that no one else
/// may change, or any local user who could write it would get root.
pub fn check_program(program: &Path) -> Result<(), String> {
    if !program.is_absolute() {
        return Err(format!(
            "the rwsgi supervisor program must be an absolute path, not {}",
            program.display()
        ));
    }
    let meta = std::fs::metadata(program).map_err(|e| {
        format!(
            "the rwsgi supervisor program {} cannot be used: {e}",
            program.display()
        )
    })?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
        return Err(format!(
            "the rwsgi supervisor program {} must be owned by root and writable by root \
             alone (it runs as root)",
            program.display()
        ));
    }
    if meta.mode() & 0o111 == 0 || !meta.is_file() {
        return Err(format!(
            "the rwsgi supervisor program {} is not an executable file",
            program.display()
        ));
    }
    Ok(())
}

/// Where the supervisor program is when the configuration does not say: `rwsgi-daemon`
/// in the directory of the module this engine is linked into (`make build` and the
/// packages put it there).
pub fn default_program() -> Option<std::path::PathBuf> {
    // SAFETY: Dl_info is plain data (all-zero is valid); dladdr only fills it, and the
    // address is a function of this shared object. dli_fname, when set, is a
    // NUL-terminated path owned by the dynamic loader for as long as the object stays
    // loaded, and it is copied before returning.
    let module = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let here = default_program as *const libc::c_void;
        if libc::dladdr(here, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(info.dli_fname).to_owned()
    };
    use std::os::unix::ffi::OsStrExt;
    let module = std::path::Path::new(std::ffi::OsStr::from_bytes(module.to_bytes()));
    Some(module.parent()?.join("rwsgi-daemon"))
}
