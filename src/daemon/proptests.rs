//! Property tests of the daemon-mode wire protocol:
//!
//! - Every frame a side can send comes back equal on the other side, whether the bytes
//!   arrive at once through [`read_frame`] or in arbitrary pieces through a
//!   [`FrameBuffer`], and body data longer than one frame arrives whole and in order.
//! - Arbitrary bytes (a hostile peer, a cut connection) never panic the decoder, and a
//!   head it accepts passes the engine's own `start_response` rules; CR, LF or NUL put
//!   anywhere in a head gets it refused.

use super::frame::{read_frame, Frame, FrameBuffer, DATA_FRAME};
use super::messages::{encode_event, AppRef, FromApp, RequestFrame, ToApp};
use crate::app::AppTarget;
use crate::server::{ExtraValue, LogLevel, OutputEvent, Request, ResponseHead, Stage};
use crate::Chunk;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::PathBuf;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    vec((bytes(12), bytes(40)), 0..8)
}

fn extra_value() -> impl Strategy<Value = ExtraValue> {
    prop_oneof![
        bytes(20).prop_map(ExtraValue::Str),
        vec(any::<i64>(), 0..4).prop_map(ExtraValue::IntTuple),
    ]
}

prop_compose! {
    fn request()(
        method in "[A-Z]{1,8}", script_name in bytes(20), path_info in bytes(40),
        query_string in bytes(40), protocol in "HTTP/1\\.[01]", server_name in bytes(20),
        server_port in "[0-9]{1,5}", remote_addr in "[0-9.:a-f]{3,20}",
        remote_port in "[0-9]{1,5}", https in any::<bool>(), headers in pairs(),
        content_length in proptest::option::of(any::<u64>()), request_uri in bytes(60),
        server_software in ".{0,30}",
        extra in vec(("[A-Za-z_.]{1,20}", extra_value()), 0..4),
        params in vec(("[A-Z_]{1,12}", bytes(20)), 0..4),
    ) -> Request {
        Request {
            method, script_name, path_info, query_string, protocol, server_name,
            server_port, remote_addr, remote_port, https, headers, content_length,
            request_uri, server_software: Cow::Owned(server_software),
            extra: extra.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect(),
            params,
        }
    }
}

fn app_ref() -> impl Strategy<Value = AppRef> {
    (
        prop_oneof![
            "/[a-z/]{1,30}\\.wsgi".prop_map(|p| AppTarget::Script(PathBuf::from(p))),
            "[a-z_][a-z0-9_.]{0,20}".prop_map(AppTarget::Module),
        ],
        "[a-z_]{1,12}",
    )
        .prop_map(|(target, callable)| AppRef { target, callable })
}

fn to_app() -> impl Strategy<Value = ToApp> {
    prop_oneof![
        (
            any::<[u8; 32]>(),
            any::<(bool, bool)>(),
            any::<u64>(),
            app_ref(),
            request()
        )
            .prop_map(
                |(secret, (accepts_files, accepts_stages), connected_at_us, app, request)| {
                    ToApp::Request(Box::new(RequestFrame {
                        secret,
                        accepts_files,
                        accepts_stages,
                        connected_at_us,
                        app,
                        request,
                    }))
                }
            ),
        bytes(300).prop_map(ToApp::Body),
    ]
}

/// A head the engine's start_response would produce (latin-1 text, token names).
fn head() -> impl Strategy<Value = ResponseHead> {
    (
        200u16..1000,
        "[ -~\u{a0}-\u{ff}]{0,20}",
        vec(("[A-Za-z0-9-]{1,12}", "[ -~\u{a0}-\u{ff}\t]{0,30}"), 0..6),
        proptest::option::of(any::<u64>()),
    )
        .prop_filter("no server headers", |(_, _, h, _)| {
            h.iter().all(|(n, _)| {
                !crate::status::is_hop_by_hop(n) && !n.eq_ignore_ascii_case("content-length")
            })
        })
        .prop_map(|(status, reason, headers, content_length)| {
            let latin1 = |s: &str| s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>();
            ResponseHead {
                status,
                status_line: latin1(&format!("{status} {reason}")),
                headers: headers
                    .iter()
                    .map(|(n, v)| (latin1(n), latin1(v)))
                    .collect(),
                content_length: if status == 204 { None } else { content_length },
            }
        })
}

/// App-to-server messages without files (the descriptor half is tested in the servers).
#[derive(Debug, Clone)]
enum Sent {
    Read(u32),
    Head(ResponseHead),
    Data(Vec<u8>),
    End,
    Abort,
    Fail(u16),
    Log(u8, String),
    Stage(bool),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        any::<u32>().prop_map(Sent::Read),
        head().prop_map(Sent::Head),
        bytes(200).prop_map(Sent::Data),
        // Now and then a body longer than one frame.
        (1usize..3).prop_map(|n| Sent::Data(vec![7u8; n * DATA_FRAME + 13])),
        Just(Sent::End),
        Just(Sent::Abort),
        (500u16..600).prop_map(Sent::Fail),
        (0u8..3, ".{0,40}").prop_map(|(l, m)| Sent::Log(l, m)),
        any::<bool>().prop_map(Sent::Stage),
    ]
}

fn stage(loaded: bool) -> Stage {
    if loaded {
        Stage::Running
    } else {
        Stage::LoadFailed
    }
}

fn level(code: u8) -> LogLevel {
    [LogLevel::Error, LogLevel::Warn, LogLevel::Info][code as usize]
}

fn encode_sent(s: &Sent, out: &mut Vec<u8>) {
    match s {
        Sent::Read(n) => FromApp::Read(*n).encode(out),
        Sent::Head(h) => encode_event(&OutputEvent::Head(h.clone()), out),
        Sent::Data(d) => encode_event(&OutputEvent::Data(Chunk::copied(d)), out),
        Sent::End => encode_event(&OutputEvent::End, out),
        Sent::Abort => encode_event(&OutputEvent::Abort, out),
        Sent::Fail(s) => encode_event(&OutputEvent::Fail(*s), out),
        Sent::Log(l, m) => FromApp::Log(level(*l), m.clone()).encode(out),
        Sent::Stage(loaded) => FromApp::Stage(stage(*loaded)).encode(out),
    }
}

/// Decoded messages, with consecutive DATA frames joined (a long body is split).
fn received(frames: &[Frame]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    for f in frames {
        let msg = FromApp::decode(f, &mut VecDeque::new()).expect("decodes");
        if let FromApp::Event(OutputEvent::Data(chunk)) = &msg {
            data.get_or_insert_with(Vec::new).extend_from_slice(chunk);
            continue;
        }
        if let Some(d) = data.take() {
            out.push(format!("Data({d:?})"));
        }
        out.push(describe(&msg));
    }
    if let Some(d) = data.take() {
        out.push(format!("Data({d:?})"));
    }
    out
}

fn describe(m: &FromApp) -> String {
    match m {
        FromApp::Read(n) => format!("Read({n})"),
        FromApp::Log(l, s) => format!("Log({l:?}, {s:?})"),
        FromApp::Stage(s) => format!("Stage({s:?})"),
        FromApp::Event(OutputEvent::Head(h)) => format!(
            "Head({}, {:?}, {:?}, {:?})",
            h.status, h.status_line, h.headers, h.content_length
        ),
        FromApp::Event(e) => format!("{e:?}"),
    }
}

fn expected(sent: &[Sent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sent {
        let text = match s {
            Sent::Read(n) => format!("Read({n})"),
            Sent::Log(l, m) => format!("Log({:?}, {m:?})", level(*l)),
            Sent::Stage(loaded) => format!("Stage({:?})", stage(*loaded)),
            Sent::Head(h) => format!(
                "Head({}, {:?}, {:?}, {:?})",
                h.status, h.status_line, h.headers, h.content_length
            ),
            Sent::Data(d) if d.is_empty() => continue,
            Sent::Data(d) => {
                // Consecutive data joins, as the receiver sees it.
                if let Some(last) = out.last_mut().filter(|l| l.starts_with("Data(")) {
                    let mut joined: Vec<u8> = parse_data(last);
                    joined.extend_from_slice(d);
                    *last = format!("Data({joined:?})");
                    continue;
                }
                format!("Data({d:?})")
            }
            Sent::End => "End".into(),
            Sent::Abort => "Abort".into(),
            Sent::Fail(s) => format!("Fail({s})"),
        };
        out.push(text);
    }
    out
}

fn parse_data(text: &str) -> Vec<u8> {
    let inner = &text["Data([".len()..text.len() - 2];
    if inner.is_empty() {
        return Vec::new();
    }
    inner.split(", ").map(|n| n.parse().unwrap()).collect()
}

/// Cuts `bytes` at the given points and feeds the pieces to a FrameBuffer.
fn frames_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut buf = FrameBuffer::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for p in points {
        buf.extend(&bytes[at..p]);
        at = p;
        while let Some(f) = buf.next_frame().expect("valid frames") {
            frames.push(f);
        }
    }
    assert_eq!(buf.buffered(), 0, "bytes left over");
    frames
}

fn frames_read(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = read_frame(&mut bytes).expect("valid frames") {
        frames.push(f);
    }
    frames
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn server_frames_round_trip(msgs in vec(to_app(), 1..6), cuts in vec(any::<usize>(), 0..12)) {
        let mut wire = Vec::new();
        for m in &msgs {
            m.encode(&mut wire);
        }
        for frames in [frames_read(&wire), frames_in_pieces(&wire, &cuts)] {
            let back: Vec<ToApp> =
                frames.iter().map(|f| ToApp::decode(f).expect("decodes")).collect();
            prop_assert_eq!(&back, &msgs);
        }
    }

    #[test]
    fn garbage_never_panics(noise in bytes(400), kind in any::<u8>()) {
        // As a frame stream...
        let mut buf = FrameBuffer::new();
        buf.extend(&noise);
        while let Ok(Some(f)) = buf.next_frame() {
            let _ = ToApp::decode(&f);
            let _ = FromApp::decode(&f, &mut VecDeque::new());
        }
        let _ = read_frame(&mut noise.as_slice());
        // ... and as the payload of every frame type.
        let frame = Frame { kind, payload: noise.clone() };
        let _ = ToApp::decode(&frame);
        if let Ok(FromApp::Event(OutputEvent::Head(h))) =
            FromApp::decode(&frame, &mut VecDeque::new())
        {
            prop_assert!(crate::status::check_encoded_head(
                h.status, &h.status_line, &h.headers, h.content_length).is_ok());
        }
    }

    #[test]
    fn head_with_unsafe_bytes_is_refused(mut h in head(), at in any::<usize>(), bad in prop_oneof![Just(b'\r'), Just(b'\n'), Just(0u8)]) {
        // Put CR, LF or NUL somewhere in the head a hostile app process sends.
        let spots = h.headers.len() * 2 + 1;
        match at % spots {
            0 => h.status_line.push(bad),
            i => {
                let (n, v) = &mut h.headers[(i - 1) / 2];
                if i % 2 == 1 { n.push(bad) } else { v.push(bad) }
            }
        }
        let mut wire = Vec::new();
        encode_event(&OutputEvent::Head(h), &mut wire);
        let frame = read_frame(&mut wire.as_slice()).unwrap().unwrap();
        prop_assert!(FromApp::decode(&frame, &mut VecDeque::new()).is_err());
    }
}

proptest! {
    // Fewer cases: a body longer than one frame is compared byte by byte.
    #![proptest_config(config(300))]

    #[test]
    fn app_frames_round_trip(msgs in vec(sent(), 1..8), cuts in vec(any::<usize>(), 0..12)) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode_sent(m, &mut wire);
        }
        for frames in [frames_read(&wire), frames_in_pieces(&wire, &cuts)] {
            prop_assert!(frames.iter().all(|f| f.payload.len() <= DATA_FRAME + 64 * 1024));
            prop_assert_eq!(received(&frames), expected(&msgs));
        }
    }
}

#[test]
fn oversized_and_empty_frames_are_refused() {
    let mut buf = FrameBuffer::new();
    buf.extend(&(super::MAX_FRAME as u32 + 1).to_be_bytes());
    buf.extend(&[1]);
    assert!(buf.next_frame().is_err());
    let mut buf = FrameBuffer::new();
    buf.extend(&[0, 0, 0, 0]);
    buf.extend(&[1]);
    assert!(buf.next_frame().is_err());
    // A count the payload cannot hold is refused before anything is allocated.
    let frame = Frame {
        kind: 17,
        payload: [&200u16.to_be_bytes()[..], &[0, 0, 0, 0], &[0xff; 4]].concat(),
    };
    assert!(FromApp::decode(&frame, &mut VecDeque::new()).is_err());
}

#[test]
fn a_stage_frame_holds_one_known_stage() {
    let frame = |payload: &[u8]| Frame {
        kind: 24,
        payload: payload.to_vec(),
    };
    let decode = |f: &Frame| FromApp::decode(f, &mut VecDeque::new());
    assert!(matches!(
        decode(&frame(&[1])),
        Ok(FromApp::Stage(Stage::LoadFailed))
    ));
    assert!(decode(&frame(&[2])).is_err());
    assert!(decode(&frame(&[])).is_err());
    assert!(decode(&frame(&[0, 0])).is_err());
}

#[test]
fn a_file_frame_needs_its_descriptor() {
    let mut wire = Vec::new();
    let file = std::fs::File::open("/dev/null").unwrap();
    encode_event(
        &OutputEvent::File {
            file,
            offset: 3,
            len: 9,
        },
        &mut wire,
    );
    let frame = read_frame(&mut wire.as_slice()).unwrap().unwrap();
    assert!(FromApp::decode(&frame, &mut VecDeque::new()).is_err());
    let mut fds = VecDeque::from([std::fs::File::open("/dev/null").unwrap()]);
    match FromApp::decode(&frame, &mut fds).unwrap() {
        FromApp::Event(OutputEvent::File {
            offset: 3, len: 9, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_file_travels_as_a_descriptor() {
    use super::fd_passing::{recv_with_files, send_with_file};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut tmp = std::fs::File::from(tempfile_fd());
    tmp.write_all(b"hello from a file").unwrap();
    let sent = send_with_file(a.as_raw_fd(), b"frame", &tmp).unwrap();
    assert_eq!(sent, 5);
    let mut buf = [0u8; 16];
    let mut files = VecDeque::new();
    let n = recv_with_files(b.as_raw_fd(), &mut buf, &mut files, 0).unwrap();
    assert_eq!(&buf[..n], b"frame");
    let got = files.pop_front().expect("a descriptor");
    let mut text = String::new();
    use std::io::{Read, Seek};
    let mut got = got;
    got.rewind().unwrap();
    got.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello from a file");
}

/// An anonymous temporary file (O_TMPFILE in the system's temp directory).
fn tempfile_fd() -> std::os::fd::OwnedFd {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .unwrap()
        .into()
}
