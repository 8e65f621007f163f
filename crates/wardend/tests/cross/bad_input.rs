//! Hostile bytes: each gets the documented error or a clean close, the
//! broker stays up, and another client's calls keep working throughout.

use std::io::IoSlice;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_testkit::{config_text, BrokerProcess, RawConn, TestDir};

use crate::RULES;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A bystander that must keep getting answers.
struct Bystander {
    conn: RawConn,
    next: u64,
}

impl Bystander {
    fn check(&mut self) {
        self.next += 1;
        let r = self
            .conn
            .call(self.next, "warden.echo", json!({"n": self.next}))
            .unwrap_or_else(|e| panic!("bystander call failed: {e:#}"));
        assert_eq!(r["result"]["n"], self.next, "{r}");
    }
}

fn error_of(v: &Value) -> (String, Value) {
    assert_eq!(v["kind"], "error", "{v}");
    (
        v["error"]["code"].as_str().unwrap_or("").to_owned(),
        v["id"].clone(),
    )
}

#[test]
fn hostile_frames_get_documented_errors_and_bystanders_are_unaffected() -> anyhow::Result<()> {
    let dir = TestDir::new("bad")?;
    let limits = "[limits]\nframe_timeout_ms = 400\nhello_timeout_ms = 400\n";
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{limits}{RULES}")))?;
    let mut by = Bystander {
        conn: RawConn::connect(broker.socket())?,
        next: 0,
    };
    by.conn.hello()?;
    by.check();

    // Oversized length prefix: too_large, then close.
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_bytes(&(64u32 * 1024 * 1024).to_be_bytes())?;
    let (code, id) = error_of(&c.recv_some()?);
    assert_eq!((code.as_str(), id), ("too_large", Value::Null));
    assert!(c.closed());
    by.check();

    // Garbage bytes (read as a huge length): too_large, close.
    let mut c = RawConn::connect(broker.socket())?;
    c.send_bytes(b"GET / HTTP/1.1\r\n\r\n")?;
    assert_eq!(error_of(&c.recv_some()?).0, "too_large");
    assert!(c.closed());
    by.check();

    // Zero-length frame: bad_request, close.
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_bytes(&[0, 0, 0, 0])?;
    assert_eq!(error_of(&c.recv_some()?).0, "bad_request");
    assert!(c.closed());

    // Garbage JSON in a valid frame: bad_request, connection stays.
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_bytes(&frame(b"\x00\xffnot json"))?;
    assert_eq!(error_of(&c.recv_some()?).0, "bad_request");
    // Unknown kind, with the id echoed.
    c.send_json(&json!({"kind": "launch", "id": 7}))?;
    let (code, id) = error_of(&c.recv_some()?);
    assert_eq!((code.as_str(), id), ("bad_request", json!(7)));
    // Invalid method name.
    c.send_json(&json!({"kind": "call", "id": 8, "method": "../etc/passwd"}))?;
    let v = c.recv_some()?;
    assert_eq!(error_of(&v), ("bad_request".to_owned(), json!(8)));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid method name"),
        "{v}"
    );
    // Deep nesting.
    let deep = format!(
        r#"{{"kind":"call","id":9,"method":"warden.echo","params":{}0{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    c.send_bytes(&frame(deep.as_bytes()))?;
    let v = c.recv_some()?;
    assert_eq!(error_of(&v).0, "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nested"),
        "{v}"
    );
    // Unknown field.
    c.send_json(&json!({"kind": "call", "id": 10, "method": "warden.ping", "sudo": true}))?;
    assert_eq!(
        error_of(&c.recv_some()?),
        ("bad_request".to_owned(), json!(10))
    );
    // Still usable.
    let r = c.call(11, "warden.ping", json!(null))?;
    assert_eq!(r["result"]["pong"], true, "{r}");
    by.check();

    // Call before hello: bad_request and close.
    let mut c = RawConn::connect(broker.socket())?;
    c.send_json(&json!({"kind": "call", "id": 1, "method": "warden.ping"}))?;
    let v = c.recv_some()?;
    assert_eq!(error_of(&v), ("bad_request".to_owned(), json!(1)));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("hello"),
        "{v}"
    );
    assert!(c.closed());
    by.check();

    // Unsupported version, and a malformed invitation.
    let mut c = RawConn::connect(broker.socket())?;
    c.send_json(&json!({"kind": "hello", "version": 0}))?;
    assert_eq!(error_of(&c.recv_some()?).0, "bad_request");
    assert!(c.closed());
    let mut c = RawConn::connect(broker.socket())?;
    c.send_json(&json!({"kind": "hello", "version": 1, "invitation": "x"}))?;
    let v = c.recv_some()?;
    assert_eq!(error_of(&v).0, "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("malformed invitation"),
        "{v}"
    );
    assert!(c.closed());

    // Truncated frame (slow-loris): closed after frame_timeout_ms.
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_bytes(&[0, 0, 0, 100, b'{'])?;
    let t = Instant::now();
    let v = c.recv_some()?;
    assert_eq!(error_of(&v).0, "timeout", "{v}");
    assert!(c.closed());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "closed in {:?}",
        t.elapsed()
    );
    by.check();

    // No hello at all: closed after hello_timeout_ms.
    let mut c = RawConn::connect(broker.socket())?;
    assert_eq!(error_of(&c.recv_some()?).0, "timeout");
    assert!(c.closed());
    by.check();
    Ok(())
}

#[test]
fn file_descriptors_are_closed_and_the_frame_refused() -> anyhow::Result<()> {
    let dir = TestDir::new("fds")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let passed_path = dir.path().join("passed-descriptor");
    std::fs::write(&passed_path, "x")?;
    // How many of the broker's descriptors point at the file we pass.
    let held = || -> anyhow::Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))? {
            if std::fs::read_link(e?.path()).is_ok_and(|t| t == passed_path) {
                n += 1;
            }
        }
        Ok(n)
    };
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    let body = serde_json::to_vec(&json!({"kind":"call","id":5,"method":"warden.ping"}))?;
    let f = frame(&body);
    let passed = std::fs::File::open(&passed_path)?;
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&passed)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&c.stream.as_fd()),
        &[IoSlice::new(&f)],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )?;
    let v = c.recv_some()?;
    assert_eq!(error_of(&v), ("bad_request".to_owned(), json!(5)));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("SCM_RIGHTS"),
        "{v}"
    );
    assert_eq!(
        held()?,
        0,
        "the passed descriptor must not stay open in the broker"
    );
    let r = c.call(6, "warden.ping", json!(null))?;
    assert_eq!(r["result"]["pong"], true);
    Ok(())
}
