//! The supervisor's command line: `rwsgi-daemon supervise --dir DIR [--detach]
//! [--standalone [--config FILE]]`.

use std::path::PathBuf;

pub const USAGE: &str =
    "usage: rwsgi-daemon supervise --dir DIR [--detach] [--standalone [--config FILE]]";

#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// The socket directory (control.sock, supervisor.lock, one socket per group).
    pub dir: PathBuf,
    /// Started by a server's master: fork, let the first process exit, `setsid`.
    pub detach: bool,
    /// Run without a server (systemd): closing lifelines does not stop the groups.
    pub standalone: bool,
    /// One `Apply` JSON object: the groups to start at once (with --standalone).
    pub config: Option<PathBuf>,
}

pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut dir = None;
    let mut config = None;
    let (mut detach, mut standalone) = (false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = Some(path_value(arg, args.next())?),
            "--config" => config = Some(path_value(arg, args.next())?),
            "--detach" => detach = true,
            "--standalone" => standalone = true,
            other => return Err(format!("unknown argument \"{other}\"")),
        }
    }
    let dir = dir.ok_or("--dir is required")?;
    if config.is_some() && !standalone {
        // Without --standalone the groups stop when the last server goes, and a server
        // sends its own groups: a boot configuration would serve no one.
        return Err("--config needs --standalone".into());
    }
    Ok(Options {
        dir,
        detach,
        standalone,
        config,
    })
}

fn path_value(flag: &str, value: Option<&String>) -> Result<PathBuf, String> {
    match value {
        Some(v) if v.starts_with('/') => Ok(PathBuf::from(v)),
        Some(v) => Err(format!("{flag} needs an absolute path, not \"{v}\"")),
        None => Err(format!("{flag} needs a value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_the_flags() {
        let o = parse(&args(&["--dir", "/run/x", "--detach"])).unwrap();
        assert_eq!(
            (o.dir, o.detach, o.standalone),
            ("/run/x".into(), true, false)
        );
        let o = parse(&args(&[
            "--standalone",
            "--dir",
            "/run/x",
            "--config",
            "/etc/x.json",
        ]))
        .unwrap();
        assert_eq!(o.config, Some("/etc/x.json".into()));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (a, words) in [
            (&["--detach"][..], "--dir is required"),
            (&["--dir", "rel"][..], "absolute path"),
            (&["--dir"][..], "needs a value"),
            (&["--dir", "/x", "--frob"][..], "unknown argument"),
            (&["--dir", "/x", "--config", "/c"][..], "needs --standalone"),
        ] {
            let err = parse(&args(a)).unwrap_err();
            assert!(err.contains(words), "{a:?}: {err}");
        }
    }
}
