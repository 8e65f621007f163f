//! The envelope decoder (`warden_proto::Message::decode`) on arbitrary frame
//! bodies.
//!
//! Input: byte 0 picks a chunk size (1 ..= 64); the rest is a byte stream,
//! cut into frames by the frame decoder (fed in those chunks, limit 64 KiB);
//! each frame body, and the whole rest as one body, is decoded.
//!
//! Checked, for every body:
//! - decoding never panics;
//! - a decoded message re-encodes to JSON that decodes to the same message,
//!   and that JSON is canonical (encoding the decoded copy gives the same
//!   bytes); `to_frame` is that JSON behind its big-endian length, and
//!   refuses a limit one byte too small;
//! - the request id a decoded message carries, and the id a decode error
//!   names, are both exactly what the fast pre-parse scan
//!   (`envelope::top_level_id`, used to name the failed request when the
//!   body cannot be parsed) reads: the serde path and the scan agree;
//! - a decoded body is a JSON object, and so is each `error`, `caller`,
//!   `publisher`, `identity` and `limits` in it (one spelling: serde's
//!   derived structs would also take an array of the fields in order);
//! - every decode error is `bad_request` with a reason of at most
//!   `MAX_TEXT_LEN` bytes;
//! - what a decoded message holds is within the documented limits: text
//!   fields (`client`, `server`, `role`, `invitation`) at most
//!   `MAX_TEXT_LEN` bytes, identities at most `MAX_GROUPS` groups, a
//!   `provide` description at most `MAX_DESCRIPTION_LEN` bytes without
//!   control characters, a call target's session id 1 ..= 64 printable
//!   ASCII characters, names valid, and every payload one the encoding
//!   side (`Payload::from_raw_json`) accepts as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proto::envelope::top_level_id;
use warden_proto::name::validate_name;
use warden_proto::{
    CallTarget, ErrorCode, FrameDecoder, Identity, Message, Payload, MAX_DESCRIPTION_LEN,
    MAX_GROUPS, MAX_SESSION_ID_LEN, MAX_TEXT_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split % 64) + 1;
    let mut decoder = FrameDecoder::new(64 * 1024);
    'stream: for piece in rest.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => check_body(&body),
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }
    // The same bytes as one frame body.
    check_body(rest);
});

fn check_body(body: &[u8]) {
    match Message::decode(body) {
        Ok(msg) => {
            check_objects(body);
            let bytes = msg.encode();
            let again = Message::decode(&bytes);
            assert_eq!(
                again.as_ref(),
                Ok(&msg),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            if let Ok(again) = again {
                assert_eq!(again.encode(), bytes, "encoding is not canonical");
            }
            let frame = msg.to_frame(usize::MAX).expect("no limit");
            assert_eq!(frame[..4], (bytes.len() as u32).to_be_bytes());
            assert_eq!(frame[4..], bytes[..]);
            assert_eq!(msg.to_frame(bytes.len()), Some(frame));
            assert_eq!(msg.to_frame(bytes.len() - 1), None);
            assert_eq!(
                msg.id(),
                top_level_id(body),
                "the id scan and serde disagree"
            );
            check_limits(&msg);
        }
        Err(e) => {
            assert_eq!(
                e.id,
                top_level_id(body),
                "{}: the id scan and the decoder disagree",
                e
            );
            assert!(e.reason.len() <= MAX_TEXT_LEN);
            assert_eq!(e.to_wire().code, ErrorCode::BadRequest);
        }
    }
}

/// The envelope, and each identity, error and limits in it, is a JSON
/// object: serde's derived structs also take an array of their fields in
/// order, which is not the protocol.
fn check_objects(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a decoded body is JSON");
    let map = v.as_object().expect("an envelope is a JSON object");
    for key in ["error", "caller", "publisher", "identity", "limits"] {
        if let Some(field) = map.get(key) {
            assert!(field.is_object() || field.is_null(), "{key} is {field}");
        }
    }
}

fn check_text(t: Option<&str>) {
    if let Some(t) = t {
        assert!(t.len() <= MAX_TEXT_LEN, "text field of {} bytes", t.len());
    }
}

fn check_identity(i: Option<&Identity>) {
    if let Some(i) = i {
        assert!(i.groups.len() <= MAX_GROUPS);
    }
}

fn check_payload(p: &Payload) {
    assert_eq!(
        Payload::from_raw_json(p.get()).as_ref(),
        Ok(p),
        "payload {}",
        p.get()
    );
}

fn check_limits(msg: &Message) {
    match msg {
        Message::Hello(h) => {
            check_text(h.client.as_deref());
            check_text(h.invitation.as_ref().map(|t| t.expose()));
        }
        Message::Welcome(w) => {
            check_text(Some(&w.server));
            check_text(w.role.as_deref());
            check_identity(Some(&w.identity));
        }
        Message::Call {
            method,
            params,
            caller,
            target,
            ..
        } => {
            assert!(validate_name(method.as_str()).is_ok());
            check_payload(params);
            check_identity(caller.as_ref());
            if let Some(CallTarget::Session(s)) = target {
                assert!((1..=MAX_SESSION_ID_LEN).contains(&s.len()));
                assert!(s.bytes().all(|b| b.is_ascii_graphic()), "{s:?}");
            }
        }
        Message::Reply { result, .. } => check_payload(result),
        // Enforced since this target found it unchecked (regression test:
        // warden-proto `an_error_message_over_the_text_limit_is_refused`).
        Message::Error { error, .. } => check_text(Some(&error.message)),
        Message::Event {
            topic,
            data,
            publisher,
            ..
        } => {
            assert!(validate_name(topic.as_str()).is_ok());
            check_payload(data);
            check_identity(publisher.as_ref());
        }
        Message::Publish { topic, data, .. } => {
            assert!(validate_name(topic.as_str()).is_ok());
            check_payload(data);
        }
        Message::Subscribe { topic, .. } | Message::Unsubscribe { topic, .. } => {
            assert!(validate_name(topic.as_str()).is_ok());
        }
        Message::Provide {
            method,
            description,
            ..
        } => {
            assert!(validate_name(method.as_str()).is_ok());
            if let Some(d) = description {
                assert!(d.len() <= MAX_DESCRIPTION_LEN);
                assert!(!d.chars().any(char::is_control), "{d:?}");
            }
        }
        Message::Unprovide { method, .. } => assert!(validate_name(method.as_str()).is_ok()),
        Message::Lagged { .. } | Message::Cancel { .. } => {}
    }
}
