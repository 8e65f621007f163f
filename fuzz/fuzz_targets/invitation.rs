//! Arbitrary text as an invitation token: the parser never panics, every
//! refusal is a "malformed invitation" message (its error type carries
//! only numbers, so no message can echo the input), and every token it
//! accepts is printed back exactly as given (one spelling per token).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proto::invitation::Token;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Token::parse(text) {
        Ok(t) => {
            let again = t.expose();
            assert_eq!(
                again.as_str(),
                text.trim_matches(|c: char| c.is_ascii_whitespace())
            );
            let back = Token::parse(&again).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back.id, t.id);
            assert!(back.secret.ct_eq(&t.secret));
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("malformed invitation"), "{m}");
        }
    }
});
