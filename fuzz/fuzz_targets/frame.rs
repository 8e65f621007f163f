//! The frame decoder (`warden_proto::frame::FrameDecoder`) against a
//! reference model, fed in arbitrary pieces.
//!
//! Input: byte 0 picks the frame limit, byte 1 the feeding style and how
//! many chunk-size bytes follow; those bytes give the chunk sizes (cycled);
//! the rest is the byte stream. With the "synthesize" bit, the stream is
//! instead built from a little program (literal bytes, and frames whose
//! bodies are one byte repeated, up to 140000 bytes), so frames larger than the
//! decoder's read size (64 KiB) and its grow/shrink paths are reached from
//! small inputs.
//!
//! Checked, for every input:
//! - the frames (and the one framing error, if any) the decoder yields,
//!   fed in those chunks (through `push`, at most 4 KiB at a time as the
//!   client does, or through `read_space` + `filled` as the broker does,
//!   draining with `next_frame` or `next_frame_ref` after each), are
//!   exactly what a one-shot decode of the whole stream yields (streams up
//!   to 64 KiB) and exactly what a reference parser of the documented
//!   format yields
//!   (big-endian u32 length, then the body; length 0 is `Empty`, length
//!   over the limit is `TooLarge { len, max }` as soon as the 4 header
//!   bytes are in, nothing else is an error);
//! - every body re-encodes (`encode_frame`) to the exact bytes it came
//!   from;
//! - `buffered()` is the number of bytes not yet returned, and
//!   `is_mid_frame()` is `buffered() > 0`;
//! - memory: read through `read_space`, the decoder never holds more than
//!   twice the larger of its read size and one maximal frame; either way
//!   never more than 4 times what the peer has sent (or its small initial
//!   buffer): a peer that announces a large frame and sends little costs
//!   little.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proto::frame::{DECODER_READ_MAX, DECODER_SMALL};
use warden_proto::{encode_frame, FrameDecoder, FrameError, FRAME_HEADER_LEN};

/// The largest piece given to `push` (what `warden-client` reads at once).
const PUSH_MAX: usize = 4096;

/// What a decode of a stream produces: the bodies, then the error that
/// ended it (if one did).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    error: Option<FrameError>,
    /// Bytes left over (an incomplete frame), when no error ended it.
    rest: usize,
}

/// The format as documented, with no buffering at all.
fn reference(stream: &[u8], max: usize) -> Outcome {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let Some(h) = stream.get(at..at + FRAME_HEADER_LEN) else {
            return Outcome {
                frames,
                error: None,
                rest: stream.len() - at,
            };
        };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let error = if len == 0 {
            Some(FrameError::Empty)
        } else if len > max {
            Some(FrameError::TooLarge { len, max })
        } else {
            None
        };
        if error.is_some() {
            return Outcome {
                frames,
                error,
                rest: 0,
            };
        }
        let Some(body) = stream.get(at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len) else {
            return Outcome {
                frames,
                error: None,
                rest: stream.len() - at,
            };
        };
        frames.push(body.to_vec());
        at += FRAME_HEADER_LEN + len;
    }
}

/// A little byte reader over the input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Builds a stream from a program: `0 n bytes…` appends n literal bytes;
/// `1 a b c fill` appends a frame header of length `a b c` (24 bits,
/// big-endian, modulo 140000) and that many bytes of `fill`; `2 a b c d` appends a raw
/// 4-byte header with no body; anything else appends the op byte itself.
/// The stream is capped at 384 KiB, a frame body at 140000 bytes.
fn synthesize(mut p: Input<'_>) -> Vec<u8> {
    const CAP: usize = 384 * 1024;
    let mut out = Vec::new();
    while let Some(op) = p.byte() {
        if out.len() >= CAP {
            break;
        }
        match op {
            0 => {
                let n = usize::from(p.byte().unwrap_or(0));
                out.extend_from_slice(p.take(n));
            }
            1 => {
                let b = p.take(3);
                let len = b.iter().fold(0usize, |acc, &x| acc << 8 | usize::from(x)) % 140_000;
                let fill = p.byte().unwrap_or(b'x');
                out.extend_from_slice(&(len as u32).to_be_bytes());
                let len = len.min(CAP.saturating_sub(out.len()));
                out.resize(out.len() + len, fill);
            }
            2 => out.extend_from_slice(p.take(4)),
            b => out.push(b),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(limit), Some(style)) = (input.byte(), input.byte()) else {
        return;
    };
    // Small limits reach TooLarge easily; the larger ones are the
    // broker's default (1 MiB) and ones around the read size.
    let max = match limit % 8 {
        0 => 1 << 20,
        1 => DECODER_READ_MAX,
        2 => DECODER_READ_MAX + 1,
        3 => DECODER_SMALL,
        4 => 200_000,
        _ => usize::from(limit / 8) + 1,
    };
    let n_sizes = usize::from(style & 0x0f);
    let use_read_space = style & 0x10 != 0;
    let use_ref = style & 0x20 != 0;
    let synth = style & 0x40 != 0;
    let big_chunks = style & 0x80 != 0;
    let sizes: Vec<usize> = input
        .take(n_sizes)
        .iter()
        .map(|&b| {
            let s = usize::from(b) + 1;
            if big_chunks {
                s * 1024
            } else {
                s
            }
        })
        .collect();
    let stream = if synth {
        synthesize(input)
    } else {
        input.0.to_vec()
    };
    // Large (synthesized) streams go in at most a few hundred pieces, so
    // one input stays cheap; small ones as the sizes say, down to bytes.
    let floor = stream.len() / 256;

    let want = reference(&stream, max);

    // One shot. (Only up to the read size: past it, `push` of a chunk that
    // holds several complete frames grows the buffer a byte per step,
    // which is correct but slow, and no caller does that; see README.md.)
    if stream.len() <= DECODER_READ_MAX {
        let mut one = FrameDecoder::new(max);
        one.push(&stream);
        let got = drain_all(&mut one, !use_ref, stream.len());
        assert_eq!(got, want, "one-shot decode differs from the reference");
    }

    // In pieces.
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut error = None;
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut i = 0usize;
    'feed: while fed < stream.len() {
        let want_n = if sizes.is_empty() {
            stream.len()
        } else {
            sizes[i % sizes.len()].max(floor)
        };
        i += 1;
        let n = if use_read_space {
            // As the connection reads: at most what the space holds.
            let space = d.read_space();
            assert!(!space.is_empty(), "read_space is never empty");
            let n = space.len().min(want_n).min(stream.len() - fed);
            space[..n].copy_from_slice(&stream[fed..fed + n]);
            d.filled(n);
            n
        } else {
            // As the client reads: pieces of at most 4 KiB, drained after
            // each.
            let n = want_n.min(PUSH_MAX).min(stream.len() - fed);
            d.push(&stream[fed..fed + n]);
            n
        };
        fed += n;
        check_memory(&d, max, fed, use_read_space);
        loop {
            match next_frame(&mut d, use_ref) {
                Ok(Some(body)) => {
                    consumed += FRAME_HEADER_LEN + body.len();
                    frames.push(body);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        assert_eq!(
            d.buffered(),
            fed - consumed,
            "buffered() is what was not returned"
        );
        assert_eq!(d.is_mid_frame(), d.buffered() > 0);
        check_memory(&d, max, fed, use_read_space);
    }
    let rest = if error.is_some() { 0 } else { d.buffered() };
    let got = Outcome {
        frames,
        error,
        rest,
    };
    assert_eq!(got, want, "decoding in pieces differs from the reference");

    // Each body is exactly the bytes it came from.
    let mut at = 0;
    for body in &want.frames {
        let enc = encode_frame(body, max).expect("a decoded body fits its limit");
        assert_eq!(&stream[at..at + enc.len()], &enc[..]);
        at += enc.len();
    }
});

/// The next frame, through `next_frame_ref` (the borrowed body, copied)
/// or `next_frame` (the input picks which, so both are exercised).
fn next_frame(d: &mut FrameDecoder, use_ref: bool) -> Result<Option<Vec<u8>>, FrameError> {
    if use_ref {
        d.next_frame_ref().map(|f| f.map(<[u8]>::to_vec))
    } else {
        d.next_frame()
    }
}

fn drain_all(d: &mut FrameDecoder, use_ref: bool, len: usize) -> Outcome {
    let mut frames = Vec::new();
    loop {
        match next_frame(d, use_ref) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                let consumed: usize = frames.iter().map(|f| f.len() + FRAME_HEADER_LEN).sum();
                assert_eq!(d.buffered(), len - consumed);
                return Outcome {
                    frames,
                    error: None,
                    rest: d.buffered(),
                };
            }
            Err(e) => {
                return Outcome {
                    frames,
                    error: Some(e),
                    rest: 0,
                }
            }
        }
    }
}

fn check_memory(d: &FrameDecoder, max: usize, fed: usize, reading: bool) {
    let cap = d.capacity();
    // `push` buffers whatever it is given (a caller that pushes many
    // frames at once holds them all); the connection reads through
    // `read_space`, which bounds each read, and that is the path with an
    // absolute bound.
    if reading {
        let absolute = 2 * (FRAME_HEADER_LEN + max).max(DECODER_READ_MAX);
        assert!(cap <= absolute, "decoder holds {cap} bytes, limit {max}");
    }
    let by_cost = (4 * fed).max(DECODER_SMALL);
    assert!(cap <= by_cost, "decoder holds {cap} bytes after {fed} sent");
}
