//! Glob patterns over dotted names.
//!
//! A pattern is a dotted name whose segments may also be `*` (exactly one
//! segment) or, as the last segment only, `**` (one or more segments).
//!
//! | pattern        | matches                         | does not match        |
//! |----------------|---------------------------------|-----------------------|
//! | `net.vpn.up`   | `net.vpn.up`                    | `net.vpn.up.x`        |
//! | `net.*.up`     | `net.vpn.up`, `net.wifi.up`     | `net.up`              |
//! | `net.**`       | `net.vpn`, `net.vpn.up`         | `net`                 |
//! | `**`           | every name                      |                       |

use std::fmt;

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `**` somewhere other than the last segment.
    #[error("'**' may only be the last segment of a pattern")]
    DoubleStarNotLast,
    /// A segment mixes `*` with other characters, or is otherwise invalid.
    #[error("invalid pattern segment {0:?}: use a name segment, '*' or a final '**'")]
    BadSegment(String),
}

/// One segment of a pattern. Containment (`containment.rs`) walks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Exactly this name segment.
    Literal(String),
    /// `*`: any one segment.
    One,
    /// `**` (last only): one or more segments.
    Rest,
}

/// A validated name pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    segments: Vec<Segment>,
}

impl NamePattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// [`PatternError`] if a segment is not a name segment, `*` or a final `**`.
    pub fn parse(text: &str) -> Result<NamePattern, PatternError> {
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "*" => Segment::One,
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(PatternError::DoubleStarNotLast),
                lit => {
                    if warden_proto::name::validate_name(lit).is_err() {
                        return Err(PatternError::BadSegment(lit.to_owned()));
                    }
                    Segment::Literal(lit.to_owned())
                }
            };
            segments.push(seg);
        }
        Ok(NamePattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// True if `name` (a validated dotted name) matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The parsed segments.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamePattern({:?})", self.text)
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NamePattern {
        NamePattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn table_from_the_docs() {
        assert!(p("net.vpn.up").matches("net.vpn.up"));
        assert!(!p("net.vpn.up").matches("net.vpn.up.x"));
        assert!(!p("net.vpn.up").matches("net.vpn"));
        assert!(p("net.*.up").matches("net.wifi.up"));
        assert!(!p("net.*.up").matches("net.up"));
        assert!(p("net.**").matches("net.vpn"));
        assert!(p("net.**").matches("net.vpn.up"));
        assert!(!p("net.**").matches("net"));
        assert!(!p("net.**").matches("network.x"));
        assert!(p("**").matches("a"));
        assert!(p("**").matches("a.b.c"));
        assert!(p("*").matches("a"));
        assert!(!p("*").matches("a.b"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(
            NamePattern::parse("**.x"),
            Err(PatternError::DoubleStarNotLast)
        );
        assert!(NamePattern::parse("net.vpn*").is_err());
        assert!(NamePattern::parse("net..x").is_err());
        assert!(NamePattern::parse("").is_err());
    }
}
