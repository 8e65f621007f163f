//! Every limit of the wire format, as a named constant.
//!
//! The broker may configure a smaller frame limit; it never accepts a larger
//! one than [`ABSOLUTE_MAX_FRAME_LEN`].

/// The protocol version this crate speaks. A hello may ask for any version
/// from 1 to 2^64-1; the welcome answers with the lower of that and this
/// one. Version 0 is refused with `bad_request`.
pub const PROTOCOL_VERSION: u64 = 1;

/// Bytes in the length prefix of every frame (big-endian `u32`).
pub const FRAME_HEADER_LEN: usize = 4;

/// Default maximum size of a frame body (the JSON envelope), in bytes: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// Upper bound for a configured frame limit: 16 MiB.
pub const ABSOLUTE_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Maximum length of a method or topic name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Maximum number of dot-separated segments in a name.
pub const MAX_NAME_SEGMENTS: usize = 16;

/// Maximum nesting depth of arrays and objects in an envelope, counting the
/// envelope object itself as depth 1.
pub const MAX_NESTING_DEPTH: usize = 32;

/// Largest request id: ids must be exactly representable as an IEEE double,
/// so clients in JavaScript or Lua can carry them (2^53 - 1).
pub const MAX_REQUEST_ID: u64 = (1 << 53) - 1;

/// Maximum length of the free-text `message` of an error, and of the
/// `client`/`server` software names in the handshake, in bytes. Longer text
/// is truncated on encode and rejected on decode.
pub const MAX_TEXT_LEN: usize = 4096;

/// The longest `description` a `provide` may carry, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// Maximum number of supplementary groups carried in an identity.
pub const MAX_GROUPS: usize = 65536;
