//! Generates Rust bindings for the httpd 2.4 and APR headers the module uses. The include
//! directories and defines come from the installed httpd/APR (`apxs`, `apr-1-config`,
//! `apu-1-config`), so the bindings always match the server the module is loaded into.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Runs a configuration query tool and returns its trimmed stdout.
fn query(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{tool} {}` ({e}): install apache2-dev (httpd and APR headers)",
            args.join(" ")
        )
    });
    if !out.status.success() {
        panic!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=APXS");
    let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".to_string());

    let mut clang_args = vec![format!("-I{}", query(&apxs, &["-q", "INCLUDEDIR"]))];
    for flags in [
        query("apr-1-config", &["--includes"]),
        query("apu-1-config", &["--includes"]),
    ] {
        clang_args.extend(flags.split_whitespace().map(str::to_string));
    }
    // `apxs -q EXTRA_CPPFLAGS` is "-DLINUX -D_REENTRANT -D_GNU_SOURCE" on Debian; these
    // change struct layouts (large files, pthreads), so they must match httpd's build.
    for define in ["-DLINUX", "-D_REENTRANT", "-D_GNU_SOURCE"] {
        clang_args.push(define.to_string());
    }
    clang_args.extend(
        query(&apxs, &["-q", "EXTRA_CPPFLAGS"])
            .split_whitespace()
            .map(str::to_string),
    );
    clang_args.dedup();

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("ap_.*|apr_.*")
        .allowlist_type(
            "request_rec|conn_rec|server_rec|module|module_struct|command_rec|cmd_parms|cmd_how|\
             core_dir_config|ap_filter_t|ap_filter_rec_t|ap_bucket_error|ap_version_t|ap_regex_t|\
             ap_regmatch_t|apr_table_entry_t|apr_array_header_t|apr_bucket|apr_bucket_brigade",
        )
        .allowlist_var(
            "MODULE_MAGIC_.*|APLOG_.*|OK|DECLINED|DONE|HTTP_.*|M_GET|RSRC_CONF|ACCESS_CONF|OR_.*|\
             GLOBAL_ONLY|NOT_IN_.*|OPT_EXECCGI|AP_MODULE_FLAG_.*|AP_MPMQ_.*|AP_MAX_REG_MATCH|AP_REG_.*|\
             AP_FILTER_ERROR|AP_REQ_.*|ENABLE_SENDFILE_.*|APR_SUCCESS|APR_HOOK_.*|APR_FOPEN_READ|\
             APR_FOPEN_SENDFILE_ENABLED|APR_FOPEN_LARGEFILE|apr_bucket_type_.*|ap_bucket_type_error|\
             ap_server_conf|ap_top_module|ap_unixd_config|AP_SQ_.*",
        )
        .rustified_enum("cmd_how")
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(false)
        .generate()
        .expect("bindgen failed on the httpd/APR headers");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
