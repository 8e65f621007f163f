//! Length-prefixed framing.
//!
//! A frame is `u32` big-endian body length, then the body. The decoder checks
//! the length against the limit as soon as the 4 header bytes are in, so an
//! attacker cannot make the broker buffer more than one frame limit per
//! connection, and a zero-length frame is an error (an envelope is never
//! empty).

use crate::limits::FRAME_HEADER_LEN;

/// A framing error. Both are fatal for the connection: after them the byte
/// stream has no trustworthy frame boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit.
    #[error("frame too large ({len} bytes, max {max})")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The length prefix is zero.
    #[error("empty frame (length prefix 0); every frame carries a JSON object")]
    Empty,
}

/// Encodes `body` as one frame. Returns `None` if the body exceeds `max`.
pub fn encode_frame(body: &[u8], max: usize) -> Option<Vec<u8>> {
    if body.len() > max || body.is_empty() {
        return None;
    }
    let len = u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that accepts bodies up to `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True if a frame has begun but is not complete.
    pub fn is_mid_frame(&self) -> bool {
        self.buffered() > 0
    }

    /// Returns the next complete frame body, `Ok(None)` if more bytes are
    /// needed, or an error if the next frame is invalid.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as a header announces more than the
    /// limit; [`FrameError::Empty`] for a zero length.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        Ok(self.next_frame_ref()?.map(<[u8]>::to_vec))
    }

    /// Like [`FrameDecoder::next_frame`], without copying: the body is
    /// borrowed from the decoder's buffer until the next call.
    ///
    /// # Errors
    /// As [`FrameDecoder::next_frame`].
    pub fn next_frame_ref(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < FRAME_HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if avail.len() < FRAME_HEADER_LEN + len {
            self.compact();
            return Ok(None);
        }
        let begin = self.start + FRAME_HEADER_LEN;
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_byte_by_byte() {
        let a = encode_frame(b"{\"a\":1}", 64).unwrap_or_default();
        let b = encode_frame(b"{}", 64).unwrap_or_default();
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut d = FrameDecoder::new(64);
        let mut got = Vec::new();
        for byte in stream {
            d.push(&[byte]);
            while let Ok(Some(f)) = d.next_frame() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{}".to_vec()]);
        assert!(!d.is_mid_frame());
    }

    #[test]
    fn rejects_oversized_from_header_alone() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 17]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let mut d = FrameDecoder::new(16);
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn rejects_empty_frame() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn partial_frame_is_mid_frame() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 5, b'{']);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.is_mid_frame());
    }

    #[test]
    fn encode_refuses_oversized_body() {
        assert!(encode_frame(b"12345", 4).is_none());
        assert!(encode_frame(b"", 4).is_none());
    }
}
