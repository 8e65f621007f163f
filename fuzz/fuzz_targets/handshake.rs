//! Arbitrary bytes as the first frame body of a connection: the handshake
//! as the broker and a client run it, with the envelope decoder and the
//! invitation parser, up to the answer frame (no I/O).
//!
//! Checked, for every body:
//! - a `hello` or `welcome` that decodes round-trips exactly (encode, then
//!   decode, is the same message);
//! - a hello's invitation never shows in its `Debug` output (what a log
//!   line of a hello would print): the output is the same whatever the
//!   token;
//! - the invitation in a hello, parsed as the broker parses it, either is a
//!   token that prints back as the text given (trimmed), or is refused with
//!   a "malformed invitation" message (the `invitation` target checks the
//!   parser itself in depth);
//! - the broker's answer (a welcome with the negotiated version, the lower
//!   of the hello's and `PROTOCOL_VERSION`; for version 0 or any other
//!   first frame, an error naming the request's id, if any) encodes as one
//!   frame within the default limit that the frame decoder and the
//!   envelope decoder turn back into the same message, and a welcome's
//!   version is never above what the hello asked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proto::invitation::{InvitationText, Token};
use warden_proto::{
    ErrorCode, FrameDecoder, Hello, Identity, Message, Welcome, WelcomeLimits,
    DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};

fuzz_target!(|data: &[u8]| {
    let decoded = Message::decode(data);
    if let Ok(m @ (Message::Hello(_) | Message::Welcome(_))) = &decoded {
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes).as_ref(), Ok(m));
    }
    let answer = match decoded {
        Ok(Message::Hello(hello)) => {
            check_redaction(&hello);
            if let Some(text) = &hello.invitation {
                check_invitation(text.expose());
            }
            if hello.version < 1 {
                Message::error(
                    None,
                    ErrorCode::BadRequest,
                    format!(
                        "unsupported protocol version {}; this broker speaks {PROTOCOL_VERSION}",
                        hello.version
                    ),
                )
            } else {
                let version = hello.version.min(PROTOCOL_VERSION);
                assert!(version <= hello.version);
                Message::Welcome(Welcome {
                    version,
                    server: "wardend/0.1.0".to_owned(),
                    identity: Identity {
                        uid: 1001,
                        gid: 1001,
                        groups: vec![1001, 27],
                        pid: 5150,
                        host: None,
                        session: None,
                    },
                    limits: WelcomeLimits {
                        max_frame: DEFAULT_MAX_FRAME_LEN as u64,
                        max_in_flight: 64,
                        call_timeout_ms: 30_000,
                    },
                    role: hello.invitation.as_ref().map(|_| "vpn-helper".to_owned()),
                })
            }
        }
        Ok(other) => Message::error(
            other.id(),
            ErrorCode::BadRequest,
            format!("the first frame must be a hello, not {:?}", other.kind()),
        ),
        Err(e) => Message::Error {
            id: e.id,
            error: e.to_wire(),
        },
    };
    let frame = answer
        .to_frame(DEFAULT_MAX_FRAME_LEN)
        .expect("the answer fits the default frame limit");
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    d.push(&frame);
    let body = d.next_frame().expect("one valid frame").expect("complete");
    assert_eq!(d.buffered(), 0);
    assert_eq!(Message::decode(&body), Ok(answer));
});

fn check_redaction(hello: &Hello) {
    let shown = format!("{hello:?}");
    let other = Hello {
        invitation: hello
            .invitation
            .as_ref()
            .map(|_| InvitationText::new("another token".to_owned())),
        ..hello.clone()
    };
    assert_eq!(
        format!("{other:?}"),
        shown,
        "the Debug output depends on the token"
    );
}

fn check_invitation(text: &str) {
    match Token::parse(text) {
        Ok(token) => {
            let again = token.expose();
            assert_eq!(
                again.as_str(),
                text.trim_matches(|c: char| c.is_ascii_whitespace())
            );
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("malformed invitation"), "{m}");
        }
    }
}
