//! Records which Python the engine is built against, for the runtime to compare with the
//! virtualenv it is given (see runtime::PYTHON_VERSION): pyo3 resolves the interpreter
//! (PYO3_PYTHON) the same way for its own build.

fn main() {
    let version = pyo3_build_config::get().version();
    println!(
        "cargo:rustc-env=RWSGI_PYTHON_VERSION={}.{}",
        version.major, version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
