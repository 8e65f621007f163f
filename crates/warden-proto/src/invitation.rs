//! Invitation tokens: the string an already-running process presents in
//! `hello.invitation` to join the broker with a role.
//!
//! # Format
//! ```text
//! wdn_inv_ 1 ab3de7fg <52 chars: 256-bit secret> <7 chars: CRC-32>
//! prefix   version id (40 bits)                  checksum
//! ```
//! One string of [`TOKEN_LEN`] characters, all from `a-z`, `2-7` and the
//! prefix's `_`: URL-safe, one double-click selects it, and a fixed prefix
//! lets secret scanners find leaked tokens. Fields are RFC 4648 base32
//! (lowercase, no padding); unused trailing bits must be zero, so every
//! token has exactly one spelling. The checksum is CRC-32 (IEEE) over the
//! ASCII text before it: a mistyped or truncated token is refused by the
//! client library before anything is sent, and by the broker without
//! consulting its store. It is not a security measure: the secret is.
//!
//! # Secrets
//! The secret is [`Secret`]: compared in constant time, printed as
//! `[REDACTED]` by `Debug` and `Display`, zeroized on drop. Neither the
//! parser's errors nor any `Debug` output here contains token text. The
//! whole token is available only through [`Token::expose`], whose name
//! says what it does.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "wdn_inv_";
/// The format version this crate writes and reads.
pub const TOKEN_VERSION: u8 = b'1';
/// Bytes of the public id.
pub const ID_BYTES: usize = 5;
/// Bytes of the secret (256 bits).
pub const SECRET_BYTES: usize = 32;
/// Characters of the public id (base32 of [`ID_BYTES`]).
pub const ID_CHARS: usize = 8;
const SECRET_CHARS: usize = 52;
const CHECKSUM_CHARS: usize = 7;
/// Length of a token in characters (bytes: it is ASCII).
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 1 + ID_CHARS + SECRET_CHARS + CHECKSUM_CHARS;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a string is not a well-formed token. The messages never contain
/// the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// It does not start with [`TOKEN_PREFIX`].
    #[error("malformed invitation: it does not start with {TOKEN_PREFIX}")]
    Prefix,
    /// Its length is not [`TOKEN_LEN`].
    #[error("malformed invitation: it has {0} characters, a token has {TOKEN_LEN}; copy it whole")]
    Length(usize),
    /// A character outside the alphabet, or a field with non-zero unused
    /// bits.
    #[error("malformed invitation: character {0} is not part of a token (a-z, 2-7)")]
    Character(usize),
    /// A version this broker or library does not know.
    #[error("malformed invitation: unknown token version; this software reads version 1")]
    Version,
    /// The checksum does not match: a mistyped or altered token.
    #[error("malformed invitation: the checksum does not match (a mistyped or altered token)")]
    Checksum,
}

/// The public half of a token: names the invitation in `invite list`,
/// `invite revoke` and events. Knowing it grants nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvitationId([u8; ID_BYTES]);

impl InvitationId {
    /// An id from its bytes.
    pub fn from_bytes(b: [u8; ID_BYTES]) -> InvitationId {
        InvitationId(b)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }
}

impl fmt::Display for InvitationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; ID_CHARS];
        encode(&self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for InvitationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InvitationId({self})")
    }
}

impl std::str::FromStr for InvitationId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "{s:?} is not an invitation id: an id is {ID_CHARS} characters from a-z and 2-7 (see `wardenctl invite list`)"
            )
        };
        if s.len() != ID_CHARS {
            return Err(usage());
        }
        let mut b = [0u8; ID_BYTES];
        decode(s.as_bytes(), &mut b).map_err(|_| usage())?;
        Ok(InvitationId(b))
    }
}

impl Serialize for InvitationId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InvitationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The secret half of a token. Never printed, compared in constant time,
/// zeroized when dropped.
pub struct Secret([u8; SECRET_BYTES]);

impl Secret {
    /// A secret from its bytes (which the caller got from the OS CSPRNG).
    pub fn from_bytes(b: [u8; SECRET_BYTES]) -> Secret {
        Secret(b)
    }

    /// Its bytes, for hashing.
    pub fn as_bytes(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Secret) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A parsed token: its public id and its secret.
#[derive(Debug)]
pub struct Token {
    /// The public id.
    pub id: InvitationId,
    /// The secret.
    pub secret: Secret,
}

impl Token {
    /// A token from its parts.
    pub fn new(id: InvitationId, secret: Secret) -> Token {
        Token { id, secret }
    }

    /// Parses a token. Surrounding whitespace (a trailing newline from a
    /// file) is ignored; anything else that is not exactly one token is an
    /// error.
    ///
    /// # Errors
    /// [`TokenError`], checked in this order: prefix, length, characters,
    /// version, checksum. No error contains the input.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let t = text
            .trim_matches(|c: char| c.is_ascii_whitespace())
            .as_bytes();
        if !t.starts_with(TOKEN_PREFIX.as_bytes()) {
            return Err(TokenError::Prefix);
        }
        if t.len() != TOKEN_LEN {
            return Err(TokenError::Length(
                String::from_utf8_lossy(t).chars().count(),
            ));
        }
        let body = &t[TOKEN_PREFIX.len()..];
        if let Some(at) = body[1..].iter().position(|&c| value(c).is_none()) {
            return Err(TokenError::Character(TOKEN_PREFIX.len() + 1 + at));
        }
        if body[0] != TOKEN_VERSION {
            return Err(TokenError::Version);
        }
        let (id_text, rest) = body[1..].split_at(ID_CHARS);
        let (secret_text, sum_text) = rest.split_at(SECRET_CHARS);
        let at = |base: usize| move |i: usize| TokenError::Character(base + i);
        let id_at = TOKEN_PREFIX.len() + 1;
        let mut id = [0u8; ID_BYTES];
        decode(id_text, &mut id).map_err(at(id_at))?;
        let mut secret = Secret([0u8; SECRET_BYTES]);
        decode(secret_text, &mut secret.0).map_err(at(id_at + ID_CHARS))?;
        let mut sum = [0u8; 4];
        decode(sum_text, &mut sum).map_err(at(id_at + ID_CHARS + SECRET_CHARS))?;
        let covered = &t[..TOKEN_LEN - CHECKSUM_CHARS];
        if u32::from_be_bytes(sum) != crc32(covered) {
            return Err(TokenError::Checksum);
        }
        Ok(Token {
            id: InvitationId(id),
            secret,
        })
    }

    /// The token as text, for the one place it is shown: the output of
    /// `invite create`. Zeroized when dropped.
    pub fn expose(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(vec![0u8; TOKEN_LEN]);
        let p = TOKEN_PREFIX.len();
        out[..p].copy_from_slice(TOKEN_PREFIX.as_bytes());
        out[p] = TOKEN_VERSION;
        encode(&self.id.0, &mut out[p + 1..p + 1 + ID_CHARS]);
        let s = p + 1 + ID_CHARS;
        encode(&self.secret.0, &mut out[s..s + SECRET_CHARS]);
        let sum = crc32(&out[..TOKEN_LEN - CHECKSUM_CHARS]).to_be_bytes();
        encode(&sum, &mut out[TOKEN_LEN - CHECKSUM_CHARS..]);
        // Every byte is ASCII from the prefix or the alphabet.
        let text: String = out.iter().map(|&b| char::from(b)).collect();
        Zeroizing::new(text)
    }
}

/// The invitation text of a `hello`, as it crossed the wire: not parsed
/// (the broker parses it, to answer a malformed one with `bad_request`),
/// printed as `[REDACTED]`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct InvitationText(Zeroizing<String>);

impl InvitationText {
    /// Wraps a token's text.
    pub fn new(text: String) -> InvitationText {
        InvitationText(Zeroizing::new(text))
    }

    /// The text, to parse or to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InvitationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for InvitationText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InvitationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(InvitationText::new)
    }
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// Base32-encodes `bytes` into exactly `out.len()` characters (the
/// caller sizes `out` as `ceil(8 * len / 5)`).
fn encode(bytes: &[u8], out: &mut [u8]) {
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut o = 0;
    for &b in bytes {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if let Some(slot) = out.get_mut(o) {
                *slot = ALPHABET[((acc >> bits) & 31) as usize];
            }
            o += 1;
        }
    }
    if bits > 0 {
        if let Some(slot) = out.get_mut(o) {
            *slot = ALPHABET[((acc << (5 - bits)) & 31) as usize];
        }
    }
}

/// Base32-decodes `text` into exactly `out.len()` bytes; the error is the
/// index of the first bad character (outside the alphabet, or carrying
/// non-zero unused bits at the end).
fn decode(text: &[u8], out: &mut [u8]) -> Result<(), usize> {
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut o = 0;
    for (i, &c) in text.iter().enumerate() {
        let v = value(c).ok_or(i)?;
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            let slot = out.get_mut(o).ok_or(i)?;
            *slot = (acc >> bits) as u8;
            o += 1;
        }
        acc &= (1 << bits) - 1;
    }
    if o != out.len() || acc != 0 {
        return Err(text.len().saturating_sub(1));
    }
    Ok(())
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Token {
        let mut s = [0u8; SECRET_BYTES];
        for (i, b) in s.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        Token::new(
            InvitationId::from_bytes([1, 2, 3, 4, 250]),
            Secret::from_bytes(s),
        )
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_token_round_trips_and_has_the_documented_shape() {
        let t = sample();
        let text = t.expose();
        assert_eq!(text.len(), TOKEN_LEN);
        assert_eq!(TOKEN_LEN, 76);
        assert!(text.starts_with("wdn_inv_1"), "{}", *text);
        assert!(text[9..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)));
        let back = Token::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.id, t.id);
        assert!(back.secret.ct_eq(&t.secret));
        assert_eq!(back.id.to_string(), text[9..17]);
        assert_eq!(back.id.to_string().parse::<InvitationId>(), Ok(t.id));
        // A trailing newline (from a file) is fine.
        assert!(Token::parse(&format!("{}\n", *text)).is_ok());
    }

    #[test]
    fn malformed_tokens_are_refused_in_order_and_never_echoed() {
        let good = sample().expose().to_string();
        let mut cases: Vec<(String, TokenError)> = vec![
            ("".into(), TokenError::Prefix),
            (good.replacen("wdn_inv_", "wdn_ivn_", 1), TokenError::Prefix),
            (good[..TOKEN_LEN - 1].into(), TokenError::Length(75)),
            (format!("{good}a"), TokenError::Length(77)),
            (
                good.replacen("wdn_inv_1", "wdn_inv_2", 1),
                TokenError::Version,
            ),
        ];
        // A bad character at position 20.
        let mut bad = good.clone().into_bytes();
        bad[20] = b'1';
        cases.push((
            String::from_utf8_lossy(&bad).into(),
            TokenError::Character(20),
        ));
        bad[20] = b'A';
        cases.push((
            String::from_utf8_lossy(&bad).into(),
            TokenError::Character(20),
        ));
        // One changed secret character: the checksum catches it.
        let mut typo = good.clone().into_bytes();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        cases.push((String::from_utf8_lossy(&typo).into(), TokenError::Checksum));
        // Non-zero unused bits in the id's last character.
        let mut pad = good.clone().into_bytes();
        let last_id = TOKEN_PREFIX.len() + ID_CHARS;
        pad[last_id] = b'7';
        let e = Token::parse(&String::from_utf8_lossy(&pad));
        assert!(
            matches!(e, Err(TokenError::Character(_)) | Err(TokenError::Checksum)),
            "{e:?}"
        );
        for (text, want) in cases {
            let got = Token::parse(&text).err();
            assert_eq!(got, Some(want), "{text:?}");
            let msg = want.to_string();
            assert!(msg.starts_with("malformed invitation"), "{msg}");
            assert!(!msg.contains(&good[17..40]), "{msg}");
        }
    }

    #[test]
    fn secrets_are_never_printed() {
        let t = sample();
        let text = t.expose().to_string();
        let dbg = format!("{t:?} {} {:?}", t.secret, t.secret);
        assert!(!dbg.contains(&text[17..69]), "{dbg}");
        assert!(dbg.contains("[REDACTED]"), "{dbg}");
        let wire = InvitationText::new(text.clone());
        assert_eq!(format!("{wire:?}"), "[REDACTED]");
        assert_eq!(wire.expose(), text);
    }

    #[test]
    fn the_documented_example_token_is_a_token() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let example = doc
            .lines()
            .find(|l| l.starts_with("wdn_inv_"))
            .unwrap_or_else(|| panic!("no example token in {path}"));
        let t = Token::parse(example).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.id.to_string(), "dr7fka5j");
        let want: Vec<u8> = (0x20..0x40).collect();
        assert_eq!(&t.secret.as_bytes()[..], &want[..]);
        assert_eq!(t.id.as_bytes(), &[0x1c, 0x7e, 0x55, 0x03, 0xa9]);
    }

    #[test]
    fn unused_bits_must_be_zero() {
        // Base32 of 5 bytes uses every bit; of 32 bytes and 4 bytes not.
        let mut out = [0u8; 4];
        assert_eq!(decode(b"aaaaaab", &mut out), Err(6));
        assert_eq!(decode(b"aaaaaaa", &mut out), Ok(()));
        let mut id = [0u8; 5];
        assert_eq!(decode(b"77777777", &mut id), Ok(()));
        assert_eq!(id, [255; 5]);
    }
}
