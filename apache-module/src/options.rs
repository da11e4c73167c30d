//! Pure parsing and checking of directive arguments (no httpd calls), so every rule that
//! rejects a configuration value is unit-tested.

/// Splits a directive's raw arguments into words like httpd's `ap_getword_conf`:
/// whitespace separates words, `"..."` / `'...'` quote (also in the middle of a word,
/// as in `application-group="%{GLOBAL}"`), and `\` escapes a quote inside quotes.
pub fn split_words(args: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '"' || c == '\'' {
                let mut closed = false;
                while let Some(q) = chars.next() {
                    if q == '\\' && chars.peek().is_some_and(|&n| n == c || n == '\\') {
                        word.push(chars.next().unwrap_or(q));
                    } else if q == c {
                        closed = true;
                        break;
                    } else {
                        word.push(q);
                    }
                }
                if !closed {
                    return Err(format!("unterminated quote in {args:?}"));
                }
            } else {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// `name=value` options after the positional arguments (mod_wsgi's option syntax).
pub fn parse_options<'a>(
    words: &'a [String],
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "unexpected argument \"{word}\": expected one of {}",
                option_list(allowed)
            ));
        };
        if !allowed.contains(&name) {
            return Err(format!(
                "unknown option \"{name}\": expected one of {}",
                option_list(allowed)
            ));
        }
        if value.is_empty() {
            return Err(format!("option \"{name}\" needs a value"));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("option \"{name}\" given twice"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn option_list(allowed: &[&str]) -> String {
    allowed
        .iter()
        .map(|o| format!("{o}=..."))
        .collect::<Vec<_>>()
        .join(", ")
}

/// On/Off as httpd's FLAG directives spell it.
pub fn parse_flag(name: &str, value: &str) -> Result<bool, String> {
    if value.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(format!("{name} must be On or Off, not \"{value}\""))
    }
}

/// A process group as written: `%{GLOBAL}` (embedded mode) or the name of a
/// WSGIDaemonProcess group (whether one is defined is checked once the whole
/// configuration is read). mod_wsgi's computed names (`%{ENV:...}`, `%{RESOURCE}`...) are
/// refused: the apps a group may run are fixed when Apache starts.
pub fn check_process_group(value: &str) -> Result<(), String> {
    if value == "%{GLOBAL}" {
        return Ok(());
    }
    if value.starts_with("%{") {
        return Err(format!(
            "process group \"{value}\": computed process group names are not supported by \
             mod_rwsgi yet; name a WSGIDaemonProcess group or use %{{GLOBAL}}"
        ));
    }
    rwsgi::daemon::group::check_group_name(value)
}

/// An application group: a literal name or one of mod_wsgi's `%{...}` forms.
pub fn check_application_group(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("an empty application group name is not valid (use %{GLOBAL})".into());
    }
    if let Some(rest) = value.strip_prefix("%{") {
        let known = matches!(rest, "GLOBAL}" | "RESOURCE}" | "SERVER}" | "HOST}")
            || (rest.starts_with("ENV:") && rest.len() > 5 && rest.ends_with('}'));
        if !known {
            return Err(format!(
                "unknown application group \"{value}\": expected a name, %{{GLOBAL}}, %{{RESOURCE}}, \
                 %{{SERVER}}, %{{HOST}} or %{{ENV:variable}}"
            ));
        }
    }
    Ok(())
}

/// WSGIMapHEADToGET's three values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapHead {
    Off,
    On,
    Auto,
}

pub fn parse_map_head(value: &str) -> Result<MapHead, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" => Ok(MapHead::Off),
        "on" => Ok(MapHead::On),
        "auto" => Ok(MapHead::Auto),
        _ => Err(format!(
            "WSGIMapHEADToGET must be one of Off, On, Auto, not \"{value}\""
        )),
    }
}

/// The highest `$N` reference in an ap_pregsub template (`&` and `$0` are the whole
/// match; `\x` escapes).
pub fn max_group_reference(template: &str) -> usize {
    let bytes = template.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'$' if i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() => {
                max = max.max((bytes[i + 1] - b'0') as usize);
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    max
}

/// WSGIPythonPath: colon-separated directories, empty parts ignored.
pub fn split_python_path(value: &str) -> Vec<String> {
    value
        .split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        assert_eq!(
            split_words("/app /srv/a.wsgi").unwrap(),
            ["/app", "/srv/a.wsgi"]
        );
        assert_eq!(
            split_words("  \"/my app\"  'x y'  application-group=\"%{GLOBAL}\" ").unwrap(),
            ["/my app", "x y", "application-group=%{GLOBAL}"]
        );
        assert_eq!(split_words(r#""a\"b""#).unwrap(), [r#"a"b"#]);
        assert!(split_words("\"open").is_err());
        assert!(split_words("").unwrap().is_empty());
    }

    #[test]
    fn options() {
        let words: Vec<String> = vec!["callable-object=app".into(), "pass-authorization=On".into()];
        let got = parse_options(&words, &["callable-object", "pass-authorization"]).unwrap();
        assert_eq!(
            got,
            [("callable-object", "app"), ("pass-authorization", "On")]
        );
        let bad: Vec<String> = vec!["threads=5".into()];
        assert!(parse_options(&bad, &["callable-object"])
            .unwrap_err()
            .contains("unknown option \"threads\""));
        let bare: Vec<String> = vec!["extra".into()];
        assert!(parse_options(&bare, &["callable-object"]).is_err());
        let empty: Vec<String> = vec!["callable-object=".into()];
        assert!(parse_options(&empty, &["callable-object"]).is_err());
        let twice: Vec<String> = vec!["callable-object=a".into(), "callable-object=b".into()];
        assert!(parse_options(&twice, &["callable-object"]).is_err());
    }

    #[test]
    fn values() {
        assert!(parse_flag("X", "on").unwrap());
        assert!(!parse_flag("X", "OFF").unwrap());
        assert!(parse_flag("X", "yes").is_err());
        assert!(check_process_group("%{GLOBAL}").is_ok());
        assert!(check_process_group("site-1.example").is_ok());
        assert!(check_process_group("%{ENV:GROUP}")
            .unwrap_err()
            .contains("computed process group names are not supported"));
        assert!(check_process_group("a/b").is_err());
        for ok in [
            "%{GLOBAL}",
            "%{RESOURCE}",
            "%{SERVER}",
            "%{HOST}",
            "%{ENV:APP_GROUP}",
            "site1",
        ] {
            assert!(check_application_group(ok).is_ok(), "{ok}");
        }
        for bad in ["", "%{FOO}", "%{ENV:}", "%{GLOBAL"] {
            assert!(check_application_group(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_map_head("Auto").unwrap(), MapHead::Auto);
        assert!(parse_map_head("maybe").is_err());
    }

    #[test]
    fn templates_and_paths() {
        assert_eq!(max_group_reference("/srv/$1/$2.wsgi"), 2);
        assert_eq!(max_group_reference("/srv/app.wsgi"), 0);
        assert_eq!(max_group_reference(r"/srv/\$3.wsgi"), 0);
        assert_eq!(max_group_reference("/srv/$"), 0);
        assert_eq!(split_python_path("/a::/b:"), ["/a", "/b"]);
    }
}
