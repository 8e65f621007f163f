//! The byte examples in docs/protocol.md are exactly what the
//! implementation reads and writes.

use warden_proto::{FrameDecoder, Message, DEFAULT_MAX_FRAME_LEN};

fn blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    let mut pending_json: Option<String> = None;
    while let Some(line) = lines.next() {
        let lang = match line.trim().strip_prefix("```") {
            Some(l) if !l.is_empty() => l.to_owned(),
            _ => continue,
        };
        let mut body = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            body.push(l);
        }
        match lang.as_str() {
            "json" => pending_json = Some(body.join("\n")),
            "hex" => {
                if let Some(j) = pending_json.take() {
                    out.push((j, body.join(" ")));
                }
            }
            _ => pending_json = None,
        }
    }
    out
}

#[test]
fn protocol_doc_examples_decode_and_reencode_byte_for_byte() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let examples = blocks(&doc);
    assert!(
        examples.len() >= 6,
        "only {} examples found",
        examples.len()
    );
    let mut kinds = Vec::new();
    for (json, hex) in &examples {
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|e| panic!("bad hex {h:?}: {e}")))
            .collect();
        let body = json.as_bytes();
        assert_eq!(
            &bytes[..4],
            &(body.len() as u32).to_be_bytes(),
            "length prefix of {json}"
        );
        assert_eq!(
            &bytes[4..],
            body,
            "hex body differs from the JSON of {json}"
        );
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        d.push(&bytes);
        let frame = d
            .next_frame()
            .unwrap_or_else(|e| panic!("{json}: {e}"))
            .unwrap_or_else(|| panic!("{json}: incomplete frame"));
        let msg = Message::decode(&frame).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(msg.encode(), body, "re-encoding {json}");
        // Identities list their groups as the kernel does: ascending.
        let ident = match &msg {
            Message::Welcome(w) => Some(&w.identity),
            Message::Call { caller, .. } => caller.as_ref(),
            Message::Event { publisher, .. } => publisher.as_ref(),
            _ => None,
        };
        if let Some(i) = ident {
            assert!(
                i.groups.windows(2).all(|w| w[0] <= w[1]),
                "groups not in ascending order in {json}"
            );
        }
        kinds.push(msg.kind());
    }
    for k in [
        "hello", "welcome", "call", "reply", "error", "event", "lagged",
    ] {
        assert!(kinds.contains(&k), "no {k} example");
    }
}
