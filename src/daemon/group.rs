//! A daemon process group as configured: mod_wsgi's `WSGIDaemonProcess NAME key=value ...`
//! and nginx's `wsgi_daemon NAME key=value ...` are read here, once, with the same option
//! names, defaults and refusals on both servers. The result travels to the supervisor as
//! JSON (control.rs), which is why it is plain serializable data.

use crate::app::AppSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Options mod_wsgi knows that rwsgi does not implement: refused by name, so that a config
/// that relies on one fails `apache2 -t` instead of running without it.
const NOT_SUPPORTED: &[&str] = &[
    "supplementary-groups",
    "root",
    "python-eggs",
    "deadlock-timeout",
    "eviction-timeout",
    "startup-timeout",
    "header-timeout",
    "header-buffer-size",
    "response-buffer-size",
    "response-socket-timeout",
    "send-buffer-size",
    "receive-buffer-size",
    "socket-user",
    "cpu-priority",
    "virtual-memory-limit",
    "stack-size",
    "mount-point",
    "server-metrics",
    "script-user",
    "script-group",
    "chroot",
    "maximum-requests-per-process",
];

/// One daemon process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub processes: u32,
    /// `processes=` was given (even as 1): wsgi.multiprocess is then True, as mod_wsgi
    /// documents; without it, False.
    #[serde(default)]
    pub processes_given: bool,
    pub threads: u32,
    /// Account the processes run as; None: the server's worker user.
    pub user: Option<String>,
    /// Primary group; None: the user's own.
    pub group: Option<String>,
    pub umask: Option<u32>,
    /// Working directory; None: the user's home directory.
    pub home: Option<PathBuf>,
    pub python_home: Option<PathBuf>,
    pub python_path: Vec<String>,
    /// The processes' name in `ps` (`%{GROUP}` stands for the group's name).
    pub display_name: Option<String>,
    /// Recycle a process after this many requests (0: never).
    pub maximum_requests: u64,
    /// Recycle a process this many seconds after it started (0: never).
    pub restart_interval: u64,
    /// Recycle a process that has served nothing for this many seconds (0: never).
    pub inactivity_timeout: u64,
    /// Answer 504, log the app's stack and recycle once drained, for a request running
    /// longer than this (0: never).
    pub request_timeout: u64,
    /// How long a recycled process may finish its requests before it is stopped.
    pub graceful_timeout: u64,
    /// How long a stopping process may take before it is killed.
    pub shutdown_timeout: u64,
    pub listen_backlog: u32,
    /// Answer 504 for a request that waited longer than this for a process (0: never).
    pub queue_timeout: u64,
    /// How long a server worker tries to connect before it answers 503.
    pub connect_timeout: u64,
    /// How long a server worker waits on a silent app process before it gives up.
    pub socket_timeout: u64,
    pub lang: Option<String>,
    pub locale: Option<String>,
    /// RLIMIT_DATA in bytes (as mod_wsgi).
    pub memory_limit: Option<u64>,
    /// RLIMIT_CPU in seconds: a process past it is recycled.
    pub cpu_time_limit: Option<u64>,
    /// The apps locations run in this group; filled in once the whole config is read.
    pub apps: Vec<AppSpec>,
}

impl GroupSpec {
    /// mod_wsgi's defaults.
    pub fn new(name: &str) -> GroupSpec {
        GroupSpec {
            name: name.to_string(),
            processes: 1,
            processes_given: false,
            threads: 15,
            user: None,
            group: None,
            umask: None,
            home: None,
            python_home: None,
            python_path: Vec::new(),
            display_name: None,
            maximum_requests: 0,
            restart_interval: 0,
            inactivity_timeout: 0,
            request_timeout: 0,
            graceful_timeout: 15,
            shutdown_timeout: 5,
            listen_backlog: 100,
            queue_timeout: 0,
            connect_timeout: 15,
            socket_timeout: 300,
            lang: None,
            locale: None,
            memory_limit: None,
            cpu_time_limit: None,
            apps: Vec::new(),
        }
    }

    /// Reads the group's name and its `key=value` options as written in the config.
    pub fn parse(name: &str, options: &[&str]) -> Result<GroupSpec, String> {
        check_group_name(name)?;
        let mut g = GroupSpec::new(name);
        let mut seen: Vec<&str> = Vec::new();
        for opt in options {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(format!("option \"{opt}\" is not key=value"));
            };
            if seen.contains(&key) {
                return Err(format!("option \"{key}\" is given twice"));
            }
            seen.push(key);
            g.set(key, value)?;
        }
        Ok(g)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let text = || -> Result<String, String> {
            if value.is_empty() || value.contains('\0') {
                Err(format!("option \"{key}\" needs a value"))
            } else {
                Ok(value.to_string())
            }
        };
        match key {
            "processes" => {
                self.processes = count(key, value, 1, 1024)? as u32;
                self.processes_given = true;
            }
            "threads" => self.threads = count(key, value, 1, 4096)? as u32,
            "user" => {
                let user = text()?;
                if user == "root" || user == "0" || user == "#0" {
                    return Err("user=root is refused: an app must not run as root".into());
                }
                self.user = Some(user);
            }
            "group" => self.group = Some(text()?),
            "umask" => {
                let mask = u32::from_str_radix(value.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("umask=\"{value}\" is not an octal mask like 0022"))?;
                self.umask = Some(mask);
            }
            "home" => self.home = Some(absolute(key, value)?),
            "python-home" => self.python_home = Some(absolute(key, value)?),
            "python-path" => self.python_path = split_python_path(value),
            "display-name" => self.display_name = Some(text()?),
            "maximum-requests" => self.maximum_requests = count(key, value, 0, u64::MAX)?,
            "restart-interval" => self.restart_interval = count(key, value, 0, u64::MAX)?,
            "inactivity-timeout" => self.inactivity_timeout = count(key, value, 0, u64::MAX)?,
            "request-timeout" => self.request_timeout = count(key, value, 0, u64::MAX)?,
            "graceful-timeout" => self.graceful_timeout = count(key, value, 0, 86_400)?,
            "shutdown-timeout" => self.shutdown_timeout = count(key, value, 0, 86_400)?,
            "listen-backlog" => self.listen_backlog = count(key, value, 1, 65_535)? as u32,
            "queue-timeout" => self.queue_timeout = count(key, value, 0, u64::MAX)?,
            "connect-timeout" => self.connect_timeout = count(key, value, 1, 86_400)?,
            "socket-timeout" => self.socket_timeout = count(key, value, 1, 86_400)?,
            "lang" => self.lang = Some(text()?),
            "locale" => self.locale = Some(text()?),
            "memory-limit" => self.memory_limit = Some(count(key, value, 1, u64::MAX)?),
            "cpu-time-limit" => self.cpu_time_limit = Some(count(key, value, 1, u64::MAX)?),
            _ if NOT_SUPPORTED.contains(&key) => {
                return Err(format!(
                    "option \"{key}\" is not supported by rwsgi (see docs/daemon-mode.md)"
                ))
            }
            _ => return Err(format!("unknown option \"{key}\"")),
        }
        Ok(())
    }

    /// The accounts `user=` and `group=` name exist and are not root's. Each server
    /// module calls this while it reads the config, so that a misspelt name fails its
    /// config test; the supervisor looks them up again, the same way, when it applies
    /// the group (accounts.rs). A group without `user=` runs as the server's worker
    /// account, which only the apply can check.
    pub fn check_accounts(&self) -> Result<(), String> {
        super::accounts::check(self)
    }

    /// The name the processes show in `ps`.
    pub fn process_title(&self) -> String {
        match &self.display_name {
            Some(d) => d.replace("%{GROUP}", &format!("(wsgi:{})", self.name)),
            None => format!("rwsgi-app ({})", self.name),
        }
    }

    /// Two specs run the same processes: a reload that leaves a group like this keeps them.
    pub fn same_processes(&self, other: &GroupSpec) -> bool {
        self == other
    }
}

/// A group's name becomes a socket file name: letters, digits, `_`, `-`, `.` only, not
/// starting with a dot, at most 64 characters.
pub fn check_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "process group name \"{name}\": use letters, digits, '_', '-' and '.' (at most 64)"
        ))
    }
}

/// A python-path (`python-path=`, Apache's WSGIPythonPath): colon-separated
/// directories, empty parts ignored.
pub fn split_python_path(value: &str) -> Vec<String> {
    value
        .split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn count(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "option \"{key}\" must be a whole number from {min} to {max}, not \"{value}\""
        )),
    }
}

fn absolute(key: &str, value: &str) -> Result<PathBuf, String> {
    if value.starts_with('/') && !value.contains('\0') {
        Ok(PathBuf::from(value))
    } else {
        Err(format!(
            "option \"{key}\" must be an absolute path, not \"{value}\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_typical_mod_wsgi_line() {
        let g = GroupSpec::parse(
            "site1",
            &[
                "processes=2",
                "threads=15",
                "user=www-data",
                "display-name=%{GROUP}",
                "python-path=/srv/a:/srv/b",
                "maximum-requests=1000",
                "umask=0027",
            ],
        )
        .unwrap();
        assert_eq!((g.processes, g.threads, g.maximum_requests), (2, 15, 1000));
        assert_eq!(g.python_path, ["/srv/a", "/srv/b"]);
        assert_eq!(split_python_path("/a::/b:"), ["/a", "/b"]);
        assert_eq!(g.umask, Some(0o027));
        assert_eq!(g.process_title(), "(wsgi:site1)");
    }

    #[test]
    fn processes_given_even_as_one_is_remembered() {
        assert!(!GroupSpec::parse("a", &[]).unwrap().processes_given);
        let g = GroupSpec::parse("a", &["processes=1"]).unwrap();
        assert!(g.processes_given && g.processes == 1);
    }

    #[test]
    fn refusals_name_the_option() {
        for (opt, words) in [
            ("user=root", "user=root is refused"),
            ("threads=0", "\"threads\" must be"),
            ("stack-size=524288", "\"stack-size\" is not supported"),
            ("frobnicate=1", "unknown option \"frobnicate\""),
            ("home=relative", "\"home\" must be an absolute path"),
            ("umask=999", "umask=\"999\""),
            ("processes", "\"processes\" is not key=value"),
        ] {
            let err = GroupSpec::parse("g", &[opt]).unwrap_err();
            assert!(err.contains(words), "{opt}: {err}");
        }
        let err = GroupSpec::parse("g", &["threads=2", "threads=3"]).unwrap_err();
        assert!(err.contains("given twice"), "{err}");
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(GroupSpec::parse(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
