//! Validated method and topic names.
//!
//! A name is one to [`MAX_SEGMENTS`](crate::MAX_NAME_SEGMENTS) dot-separated
//! segments, each made of ASCII letters, digits, `_` and `-`, at most
//! [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes in all. Names are
//! case-sensitive. A raw string never reaches the router: it becomes a
//! [`MethodName`] or [`TopicName`] at the decoder, or the frame is refused.
//!
//! ```
//! use warden_proto::MethodName;
//! assert!(MethodName::try_from("net.vpn.connect").is_ok());
//! assert!(MethodName::try_from("net..connect").is_err()); // empty segment
//! assert!(MethodName::try_from("net.*").is_err());        // globs belong to policy
//! assert!(MethodName::try_from("").is_err());
//! ```

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

use crate::limits::{MAX_NAME_LEN, MAX_NAME_SEGMENTS};

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("name too long ({len} bytes, max {max})")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name has too many segments.
    #[error("name has too many segments ({count}, max {max})")]
    TooManySegments {
        /// Number of segments.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A segment is empty (leading, trailing or doubled dot).
    #[error("name has an empty segment (leading, trailing or doubled '.')")]
    EmptySegment,
    /// A character outside `[A-Za-z0-9_-]` appears in a segment.
    #[error("name contains {found:?} at byte {at}; allowed: ASCII letters, digits, '_', '-', and '.' between segments")]
    BadChar {
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Checks `s` against the name grammar.
pub fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: s.len(),
            max: MAX_NAME_LEN,
        });
    }
    let mut segments = 0usize;
    let mut segment_len = 0usize;
    for (at, c) in s.char_indices() {
        if c == '.' {
            if segment_len == 0 {
                return Err(NameError::EmptySegment);
            }
            segments += 1;
            segment_len = 0;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            segment_len += 1;
        } else {
            return Err(NameError::BadChar { found: c, at });
        }
    }
    if segment_len == 0 {
        return Err(NameError::EmptySegment);
    }
    segments += 1;
    if segments > MAX_NAME_SEGMENTS {
        return Err(NameError::TooManySegments {
            count: segments,
            max: MAX_NAME_SEGMENTS,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// True if the name lies in the reserved `warden.` namespace of
            /// built-in methods and broker topics.
            pub fn is_reserved(&self) -> bool {
                self.0 == "warden" || self.0.starts_with("warden.")
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                validate_name(s)?;
                Ok($ty(s.to_owned()))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                validate_name(&s)?;
                Ok($ty(s))
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $ty::try_from(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $ty::try_from(s).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hashes and compares like the string (derived on the one field),
        // so maps keyed by names can be looked up with a `&str`.
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The name of a method, e.g. `warden.ping` or `net.vpn.connect`.
    MethodName
);
name_type!(
    /// The name of a pub/sub topic, e.g. `net.vpn.state`.
    TopicName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotted_names() {
        for ok in ["a", "warden.ping", "A-b_c.d9", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(".a"), Err(NameError::EmptySegment));
        assert_eq!(validate_name("a."), Err(NameError::EmptySegment));
        assert_eq!(validate_name("a..b"), Err(NameError::EmptySegment));
        assert_eq!(
            validate_name("a b"),
            Err(NameError::BadChar { found: ' ', at: 1 })
        );
        assert!(matches!(
            validate_name("a/é"),
            Err(NameError::BadChar { .. })
        ));
        assert!(matches!(
            validate_name(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong { .. })
        ));
        let many = vec!["a"; MAX_NAME_SEGMENTS + 1].join(".");
        assert!(matches!(
            validate_name(&many),
            Err(NameError::TooManySegments { .. })
        ));
    }

    #[test]
    fn reserved_namespace() {
        let m = MethodName::try_from("warden.ping").unwrap_or_else(|_| unreachable!());
        assert!(m.is_reserved());
        let m = MethodName::try_from("wardenx.ping").unwrap_or_else(|_| unreachable!());
        assert!(!m.is_reserved());
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<TopicName>("\"a.b\"").is_ok());
        assert!(serde_json::from_str::<TopicName>("\"a..b\"").is_err());
    }
}
