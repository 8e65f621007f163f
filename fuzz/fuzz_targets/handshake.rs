//! Arbitrary bytes as a handshake frame body: a hello or welcome that
//! decodes must round-trip exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proto::Message;

fuzz_target!(|data: &[u8]| {
    match Message::decode(data) {
        Ok(m @ (Message::Hello(_) | Message::Welcome(_))) => {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes), Ok(m));
        }
        _ => {}
    }
});
