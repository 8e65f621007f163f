//! A nesting-depth check that runs before JSON parsing.
//!
//! A parser that recurses per nesting level can be driven into deep recursion
//! by `[[[[...`; serde_json stops at 128 levels, but Warden's documented limit
//! is [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) and is enforced here with
//! a single linear scan that allocates nothing.

/// Returns the maximum nesting depth of arrays and objects in `json`, or
/// `None` as soon as it exceeds `max`. Brackets inside strings are ignored.
/// The scan does not validate the JSON; the parser does that afterwards.
///
/// Strings (most of a payload's bytes) are skipped with a vectorized
/// search for the next quote or backslash.
pub fn nesting_depth(json: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0usize;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // Skip the string: find its closing quote, stepping over
                // escapes.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &json[i.min(json.len())..]) {
                        None => return Some(deepest),
                        Some(off) => {
                            let at = i + off;
                            if json[at] == b'\\' {
                                i = at + 2;
                            } else {
                                i = at + 1;
                                break;
                            }
                        }
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return None;
                }
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Some(deepest)
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn counts_depth() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":2}]}"#, 32), Some(3));
        assert_eq!(nesting_depth(b"1", 32), Some(0));
    }

    #[test]
    fn ignores_brackets_in_strings_and_escapes() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[\"{{{{"}"#, 2), Some(1));
    }

    #[test]
    fn escapes_at_the_end_and_unterminated_strings() {
        assert_eq!(nesting_depth(br#"["a\\"]"#, 4), Some(1));
        assert_eq!(nesting_depth(br#"["a\"#, 4), Some(1));
        assert_eq!(nesting_depth(br#"["abc"#, 4), Some(1));
        assert_eq!(nesting_depth(br#"["\"[[[[["]"#, 2), Some(1));
    }

    #[test]
    fn stops_past_the_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(nesting_depth(deep.as_bytes(), 32), None);
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(nesting_depth(ok.as_bytes(), 32), Some(32));
    }
}
