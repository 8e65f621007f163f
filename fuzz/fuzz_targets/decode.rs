//! Arbitrary bytes through the frame decoder, in chunkings derived from the
//! input, then through the envelope decoder; every message that decodes
//! must re-encode to something that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proto::{FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split % 64) + 1;
    let mut decoder = FrameDecoder::new(64 * 1024);
    for piece in rest.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    if let Ok(msg) = Message::decode(&body) {
                        let again = Message::decode(&msg.encode());
                        assert_eq!(again.as_ref(), Ok(&msg));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // The same bytes as one frame body.
    if let Ok(msg) = Message::decode(rest) {
        assert_eq!(Message::decode(&msg.encode()), Ok(msg));
    }
});
