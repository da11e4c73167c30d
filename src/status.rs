//! Validation of what the app hands to `start_response`: the status line and the header
//! list. Pure Rust (no Python) so it can be property-tested; the rules are PEP 3333's plus
//! the ones that keep response splitting off the wire.

use std::fmt;

/// Why a status or header was refused. The text goes to the app as the exception message
/// and to the server's error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidResponse(pub String);

impl fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed `"200 OK"`: the numeric code and the whole line as the app gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub line: String,
}

/// Accepts `"NNN reason"`: three digits 200..=999, a space, then a reason of visible
/// latin-1 characters and spaces (it may be empty, as in `"200 "`). A 1xx code is refused:
/// the status an app gives is the final one, and an interim response followed by the
/// app's headers and body would put a second, app-shaped response on the connection.
pub fn parse_status(line: &str) -> Result<Status, InvalidResponse> {
    let bad = |why: &str| Err(InvalidResponse(format!("invalid status {line:?}: {why}")));
    let bytes = line.as_bytes();
    if bytes.len() < 4 || !bytes[..3].iter().all(u8::is_ascii_digit) || bytes[3] != b' ' {
        return bad("must be three digits, a space and a reason phrase");
    }
    if bytes[0] < b'2' {
        return bad("code must be 200..=999 (a 1xx status is not a final response)");
    }
    if let Some(c) = line[4..].chars().find(|&c| !is_text_char(c)) {
        return bad(&format!("reason contains {c:?}"));
    }
    let code = line[..3].parse().expect("three ascii digits");
    Ok(Status {
        code,
        line: line.to_string(),
    })
}

/// Statuses after which no body bytes may follow the head (RFC 9110 6.4.1): a body sent
/// anyway would be read by the client as the start of the next response.
pub fn forbids_body(code: u16) -> bool {
    code == 204 || code == 304
}

/// A header name must be an RFC 9110 token: anything else (space, colon, CR, LF, non-ASCII)
/// could split or smuggle a response.
pub fn check_header_name(name: &str) -> Result<(), InvalidResponse> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(InvalidResponse(format!("invalid header name {name:?}")));
    }
    Ok(())
}

/// A header value may hold visible latin-1 characters, spaces and tabs; never CR, LF, NUL
/// or a character above U+00FF (PEP 3333: header values are latin-1 native strings).
pub fn check_header_value(name: &str, value: &str) -> Result<(), InvalidResponse> {
    match value.chars().find(|&c| !(is_text_char(c) || c == '\t')) {
        None => Ok(()),
        Some(c) => Err(InvalidResponse(format!(
            "invalid character {c:?} in the value of header {name:?}"
        ))),
    }
}

/// Hop-by-hop headers belong to the server's connection, not to the app (PEP 3333).
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Checks a head that arrives already encoded, from a process that may not be trusted (a
/// daemon-mode app process runs the tenant's code): the same rules as for an app's
/// `start_response`, on the latin-1 bytes, so that no head reaches a server that the
/// engine itself would have refused.
pub fn check_encoded_head(
    status: u16,
    status_line: &[u8],
    headers: &[(Vec<u8>, Vec<u8>)],
    content_length: Option<u64>,
) -> Result<(), InvalidResponse> {
    let latin1 = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
    let parsed = parse_status(&latin1(status_line))?;
    if parsed.code != status {
        return Err(InvalidResponse(format!(
            "status {status} does not match its line {:?}",
            parsed.line
        )));
    }
    for (name, value) in headers {
        let name = latin1(name);
        check_header_name(&name)?;
        check_header_value(&name, &latin1(value))?;
        if is_hop_by_hop(&name) || name.eq_ignore_ascii_case("content-length") {
            return Err(InvalidResponse(format!(
                "header {name:?} is the server's to set"
            )));
        }
    }
    if status == 204 && content_length.is_some() {
        return Err(InvalidResponse(
            "a 204 response has no Content-Length".into(),
        ));
    }
    Ok(())
}

fn is_text_char(c: char) -> bool {
    let n = c as u32;
    (0x20..0x7f).contains(&n) || (0xa0..=0xff).contains(&n)
}

fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

/// RFC 9110 tchar, as a table: every response header name goes through it.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_bytes_are_rfc_9110_tchar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_byte(b), tchar, "byte {b:#04x}");
        }
    }

    #[test]
    fn accepts_common_statuses() {
        assert_eq!(parse_status("200 OK").unwrap().code, 200);
        assert_eq!(parse_status("418 I'm a teapot").unwrap().code, 418);
        assert_eq!(parse_status("200 ").unwrap().code, 200);
    }

    #[test]
    fn refuses_broken_statuses() {
        for s in [
            "200",
            "20 OK",
            "2000 OK",
            "abc OK",
            "200\r\nX: y",
            "200 OK\n",
            "099 x",
            "100 Continue",
            "101 Switching Protocols",
            "103 Early Hints",
            "199 x",
            "",
        ] {
            assert!(parse_status(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn header_rules() {
        assert!(check_header_name("X-Ok").is_ok());
        assert!(check_header_name("X Bad").is_err());
        assert!(check_header_name("X:Bad").is_err());
        assert!(check_header_name("").is_err());
        assert!(check_header_value("a", "caf\u{e9}").is_ok());
        assert!(check_header_value("a", "x\r\nSet-Cookie: y").is_err());
        assert!(check_header_value("a", "\u{20ac}").is_err());
        assert!(is_hop_by_hop("Transfer-Encoding"));
        assert!(!is_hop_by_hop("Content-Length"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever the app passes, an accepted status or header never carries a line break
        /// onto the wire, and parsing never panics.
        #[test]
        fn accepted_status_is_one_safe_line(s in "\\PC*|[0-9]{3} .*|.*") {
            if let Ok(st) = parse_status(&s) {
                prop_assert!(!st.line.contains(['\r', '\n', '\0']));
                prop_assert!((200..=999).contains(&st.code));
                prop_assert_eq!(&st.line[..3], &st.code.to_string());
            }
        }

        #[test]
        fn accepted_header_is_safe(name in ".*", value in ".*") {
            if check_header_name(&name).is_ok() && check_header_value(&name, &value).is_ok() {
                let line = format!("{name}: {value}");
                prop_assert!(!line.contains(['\r', '\n', '\0']));
                prop_assert!(value.chars().all(|c| (c as u32) < 256));
                prop_assert!(name.is_ascii() && !name.contains(':'));
            }
        }
    }
}
