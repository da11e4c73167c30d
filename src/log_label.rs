//! How every line rwsgi writes to a server's error log says where it comes from, the same
//! on every server: `rwsgi[app=/mount req=ID]: message` for a request's lines,
//! `rwsgi[app=/mount]: message` for an app's (an import at start-up), `rwsgi: message`
//! for the process's. The request id is the one the server's access log can print
//! (nginx `$request_id`, Apache `UNIQUE_ID` or `%L`), so that an operator can go from a
//! traceback to its access-log line and back.
//!
//! The server modules label lines where they write them (one place per server), never
//! the engine: lines an app process sends over its socket in daemon mode reach the server
//! unlabelled and get the label of the request they belong to there.

use std::fmt;

/// Where a log line comes from. Cheap to share (an `Arc` per request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogLabel {
    app: Option<String>,
    request: Option<String>,
}

impl LogLabel {
    /// A line of the process, not of one app.
    pub fn process() -> LogLabel {
        LogLabel::default()
    }

    /// A line of the app mounted at `app`.
    pub fn app(app: &str) -> LogLabel {
        LogLabel {
            app: Some(clean(app)),
            request: None,
        }
    }

    /// A line of request `id` to the app mounted at `app`.
    pub fn request(app: &str, id: &str) -> LogLabel {
        LogLabel {
            app: Some(clean(app)),
            request: Some(clean(id)),
        }
    }

    /// The request id, as shown in the label.
    pub fn request_id(&self) -> Option<&str> {
        self.request.as_deref()
    }

    /// `message` with this label in front.
    pub fn line(&self, message: &str) -> String {
        self.labelled(message).to_string()
    }

    /// `message` with this label in front, to be formatted where it is written (without
    /// a String of its own).
    pub fn labelled<M: fmt::Display>(&self, message: M) -> Labelled<'_, M> {
        Labelled {
            label: self,
            message,
        }
    }
}

/// A message with its label (see [`LogLabel::labelled`]).
pub struct Labelled<'a, M> {
    label: &'a LogLabel,
    message: M,
}

impl<M: fmt::Display> fmt::Display for Labelled<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.label, self.message)
    }
}

impl fmt::Display for LogLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.app, &self.request) {
            (None, _) => f.write_str("rwsgi"),
            (Some(app), None) => write!(f, "rwsgi[app={app}]"),
            (Some(app), Some(id)) => write!(f, "rwsgi[app={app} req={id}]"),
        }
    }
}

/// The label must stay one token per field whatever a config or a request put in it: a
/// byte outside printable ASCII, a space, `]` or `\` is written as `\xNN`.
fn clean(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_graphic() && b != b']' && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(LogLabel::process().line("up"), "rwsgi: up");
        assert_eq!(LogLabel::app("/shop").line("x"), "rwsgi[app=/shop]: x");
        assert_eq!(
            LogLabel::request("/shop", "ab12").line("boom"),
            "rwsgi[app=/shop req=ab12]: boom"
        );
    }

    #[test]
    fn a_label_stays_one_token_per_field() {
        let l = LogLabel::request("/a b]", "x\ny\\");
        assert_eq!(l.to_string(), "rwsgi[app=/a\\x20b\\x5d req=x\\x0ay\\x5c]");
        assert_eq!(LogLabel::request("", "").to_string(), "rwsgi[app=- req=-]");
        assert_eq!(
            LogLabel::app("/caf\u{e9}").to_string(),
            "rwsgi[app=/caf\\xc3\\xa9]"
        );
    }
}
