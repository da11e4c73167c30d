//! `rwsgi-daemon`: daemon mode's one program, in two roles (docs/daemon-internals.md).
//!
//! - `rwsgi-daemon supervise --dir DIR [--detach] [--standalone]`: the supervisor, as
//!   root. It owns the groups' sockets and starts, watches and recycles app processes.
//! - `rwsgi-daemon app`: an app process, exec'd by the supervisor after it dropped to the
//!   group's user; the engine's third front end, serving requests from its socket.

mod app_config;
mod app_process;
mod connection;
mod lifecycle;
mod socket_body;
mod socket_sink;
mod supervisor;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("app") => app_process::main(),
        Some("supervise") => supervisor::main(&args[1..]),
        Some("--version") => {
            println!("rwsgi-daemon {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!(
                "usage: rwsgi-daemon supervise --dir DIR [--detach] [--standalone [--config FILE]]\n       \
                 (app processes are started by the supervisor: rwsgi-daemon app)"
            );
            2
        }
    };
    std::process::exit(code);
}
