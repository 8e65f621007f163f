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

/// Bytes a decoder allocates at first, and shrinks back to when it is
/// empty after holding a large frame: an idle connection costs this much.
pub const DECODER_SMALL: usize = 4 * 1024;
/// Bytes one read asks for at most, once a connection's traffic has grown
/// its buffer (a larger frame grows it to that frame's size).
pub const DECODER_READ_MAX: usize = 64 * 1024;

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// The buffer is allocated on first use ([`DECODER_SMALL`] bytes), grows
/// when a read fills it (doubling, up to [`DECODER_READ_MAX`]) or when a
/// frame larger than it is announced (to that frame's size, never past
/// the limit), and shrinks back once it is empty after holding more than
/// [`DECODER_READ_MAX`]. Bytes can be read straight into it
/// ([`FrameDecoder::read_space`] then [`FrameDecoder::filled`]): no copy,
/// and no zeroing except when it grows.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Always initialized up to its length; `start..end` holds data.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that accepts bodies up to `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = self.read_space();
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            self.filled(n);
            rest = &rest[n..];
        }
    }

    /// Room to read the next bytes of the stream into (never empty); call
    /// [`FrameDecoder::filled`] with how many were read.
    pub fn read_space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > DECODER_READ_MAX {
                // Done with a large frame: give the memory back.
                self.buf = vec![0; DECODER_SMALL];
            }
        }
        if self.end == self.buf.len() && self.start > 0 {
            // Room at the front: move the partial frame there.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Full of one partial frame (or empty): grow by doubling, up
            // to what the frame needs once its header is in, else up to
            // the read size. Growing step by step, not straight to the
            // announced size, keeps a peer that announces a large frame
            // and sends nothing from costing more than it sent.
            let need = self.buf.get(..FRAME_HEADER_LEN).map(|h| {
                (FRAME_HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
                    .min(FRAME_HEADER_LEN + self.max)
            });
            let cap = need.unwrap_or(DECODER_READ_MAX).max(DECODER_READ_MAX);
            let grown = (self.buf.len() * 2)
                .clamp(DECODER_SMALL, cap)
                .max(self.buf.len() + 1);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`FrameDecoder::read_space`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes the decoder holds allocated (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// True if a partial frame is buffered (used for the half-sent-frame
    /// deadline).
    pub fn is_mid_frame(&self) -> bool {
        self.buffered() > 0
    }

    /// The next complete frame body, if any.
    ///
    /// # Errors
    /// [`FrameError`] if the next frame's header is invalid; the stream is
    /// then unusable.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        Ok(self.next_frame_ref()?.map(<[u8]>::to_vec))
    }

    /// Like [`FrameDecoder::next_frame`], borrowing the body from the
    /// decoder's buffer instead of copying it.
    ///
    /// # Errors
    /// As [`FrameDecoder::next_frame`].
    pub fn next_frame_ref(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_LEN {
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
            return Ok(None);
        }
        let begin = self.start + FRAME_HEADER_LEN;
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
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

    #[test]
    fn the_buffer_starts_small_grows_for_a_large_frame_and_shrinks_after() {
        let mut d = FrameDecoder::new(1 << 20);
        assert_eq!(d.capacity(), 0, "nothing allocated before the first read");
        let small = encode_frame(b"{}", 1 << 20).unwrap_or_default();
        d.push(&small);
        assert!(d.capacity() <= DECODER_SMALL);
        assert_eq!(d.next_frame(), Ok(Some(b"{}".to_vec())));
        let body = vec![b'x'; 300_000];
        let big = encode_frame(&body, 1 << 20).unwrap_or_default();
        // Read straight into the decoder, in pieces.
        let mut fed = 0;
        while fed < big.len() {
            let space = d.read_space();
            let n = space.len().min(big.len() - fed).min(10_000);
            space[..n].copy_from_slice(&big[fed..fed + n]);
            d.filled(n);
            fed += n;
        }
        assert!(d.capacity() >= big.len() && d.capacity() < 2 * big.len());
        assert_eq!(
            d.next_frame().map(|f| f.map(|f| f.len())),
            Ok(Some(300_000))
        );
        // Empty again: the next read gives the large buffer back.
        d.push(&small);
        assert!(d.capacity() <= DECODER_SMALL, "kept {}", d.capacity());
        assert_eq!(d.next_frame(), Ok(Some(b"{}".to_vec())));
    }

    #[test]
    fn an_announced_frame_costs_only_what_was_sent() {
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&[0, 0x0f, 0, 0]); // announces ~1 MiB
        d.push(&[b'x'; 100]);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.capacity() <= DECODER_SMALL, "allocated {}", d.capacity());
    }
}
