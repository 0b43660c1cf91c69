//! The binary encoding of pseudo-gradients (and of published model
//! updates), as they cross the network.
//!
//! Value encodings: `f32` (exact, 4 bytes a value); `int8` (blockwise
//! absolute-max quantisation: a 4-byte scale per 256 values and one signed
//! byte per value, about 4x smaller); `q4` and `q2` (a 4-byte scale per 64
//! values and 4 or 2 bits per value). Optionally before them, chunked top-k
//! (`topk:DENSITY+VALUES`): of every 256 values only the largest few in
//! magnitude are kept, each with its one-byte position in its chunk, and
//! the kept values are stored with the value encoding. `topk:0.02+q4` is
//! about 130x smaller than f32.
//!
//! Everything is deterministic, so a decoded update is the same on every
//! machine and an auditor re-encoding a replayed update gets the committed
//! bytes: rounding is ties-to-even, scales are computed in `f32`, and top-k
//! breaks ties between equal magnitudes by position.
//!
//! What an encoding loses, the worker keeps and adds to its next update
//! (error feedback, [`encode_with_feedback`]) for the codecs that lose
//! much (top-k, q4, q2: [`Codec::error_feedback`]).
//!
//! Decoding treats its input as hostile: the header, the exact length,
//! the value count and every scale are checked before anything is used,
//! and only the bytes an encoder writes are accepted (positions strictly
//! increasing within their chunk, no unused level, zero padding), so that
//! an update has exactly one encoding.

pub use crowdtrain_recipe::{Codec, TOPK_CHUNK, TopK, Values};

const MAGIC: [u8; 4] = *b"CTPG";
const VERSION: u8 = 1;
/// Bytes before the values (or int8 scales): magic, version, codec, count.
pub const HEADER_BYTES: usize = 4 + 1 + 1 + 8;
/// What a top-k update adds to the header: its density (u32, in
/// millionths) and its value encoding's tag.
pub const TOPK_HEADER_BYTES: usize = 4 + 1;
/// Values per int8 block (one scale each).
pub const INT8_BLOCK: usize = 256;
/// Values per q4 or q2 block (one scale each): smaller than int8's, since
/// with 15 or 4 levels one large value would flatten more of its block.
pub const QUANT_BLOCK: usize = 64;

/// The codec tag of a value encoding (and the value tag of top-k).
fn values_tag(values: Values) -> u8 {
    match values {
        Values::F32 => 0,
        Values::Int8 => 1,
        Values::Q4 => 2,
        Values::Q2 => 3,
    }
}

fn values_of_tag(tag: u8) -> Option<Values> {
    [Values::F32, Values::Int8, Values::Q4, Values::Q2].into_iter().find(|&values| values_tag(values) == tag)
}

const TOPK_TAG: u8 = 4;

/// The encoder of a [`Codec`].
pub trait Encode {
    /// Encoded size of `values` values, header included.
    fn encoded_len(self, values: usize) -> usize;

    /// Encodes `values`, which must all be finite.
    fn encode(self, values: &[f32]) -> Result<Vec<u8>, CodecError>;
}

impl Encode for Codec {
    fn encoded_len(self, count: usize) -> usize {
        match self.topk {
            None => HEADER_BYTES + values_len(self.values, count),
            Some(topk) => {
                let kept = topk.kept(count);
                HEADER_BYTES + TOPK_HEADER_BYTES + kept + values_len(self.values, kept)
            }
        }
    }

    fn encode(self, values: &[f32]) -> Result<Vec<u8>, CodecError> {
        if let Some(index) = values.iter().position(|value| !value.is_finite()) {
            return Err(CodecError::NonFinite { index });
        }
        let mut bytes = Vec::with_capacity(self.encoded_len(values.len()));
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION);
        bytes.push(self.topk.map_or(values_tag(self.values), |_| TOPK_TAG));
        bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
        match self.topk {
            None => write_values(self.values, values, &mut bytes),
            Some(topk) => {
                bytes.extend_from_slice(&topk.density_ppm.to_le_bytes());
                bytes.push(values_tag(self.values));
                let positions = select_top_k(topk, values);
                let kept: Vec<f32> = positions.iter().map(|&index| values[index]).collect();
                // Chunks start at multiples of the chunk size, and the
                // positions are ascending: each chunk's come in order.
                bytes.extend(positions.iter().map(|&index| (index % TOPK_CHUNK) as u8));
                write_values(self.values, &kept, &mut bytes);
            }
        }
        debug_assert_eq!(bytes.len(), self.encoded_len(values.len()));
        Ok(bytes)
    }
}

/// Encodes `update` plus the worker's `feedback` (what earlier encodings
/// lost; empty means none yet) and leaves in `feedback` what this encoding
/// lost: `feedback = (update + feedback) - decode(encoded)`. For codecs
/// without error feedback it encodes `update` and leaves `feedback` empty.
/// Deterministic, so an auditor that replays the round recomputes both.
pub fn encode_with_feedback(
    codec: Codec,
    update: &[f32],
    feedback: &mut Vec<f32>,
) -> Result<Vec<u8>, CodecError> {
    if !codec.error_feedback() {
        feedback.clear();
        return codec.encode(update);
    }
    if feedback.is_empty() {
        feedback.resize(update.len(), 0.0);
    }
    if feedback.len() != update.len() {
        return Err(CodecError::WrongCount { declared: feedback.len() as u64, expected: update.len() });
    }
    let corrected: Vec<f32> = update.iter().zip(feedback.iter()).map(|(u, e)| u + e).collect();
    let bytes = codec.encode(&corrected)?;
    let (_, decoded) = decode(&bytes, corrected.len())?;
    for ((kept, corrected), decoded) in feedback.iter_mut().zip(&corrected).zip(&decoded) {
        *kept = corrected - decoded;
    }
    Ok(bytes)
}

/// The start of each top-k chunk of `count` values.
fn chunk_starts(count: usize) -> impl Iterator<Item = usize> {
    (0..count).step_by(TOPK_CHUNK)
}

/// The kept positions of `values`, ascending: in each chunk, the largest
/// magnitudes, equal magnitudes by position (a strict total order, so the
/// set is unique).
fn select_top_k(topk: TopK, values: &[f32]) -> Vec<usize> {
    let mut positions = Vec::with_capacity(topk.kept(values.len()));
    let mut order: Vec<usize> = Vec::with_capacity(TOPK_CHUNK);
    for start in chunk_starts(values.len()) {
        let end = (start + TOPK_CHUNK).min(values.len());
        let kept = topk.kept_of(end - start);
        order.clear();
        order.extend(start..end);
        // Magnitudes compare by their bits: for non-negative finite floats
        // the order of the bits is the order of the values.
        let rank = |&index: &usize| (std::cmp::Reverse(values[index].abs().to_bits()), index);
        if kept < order.len() {
            order.select_nth_unstable_by_key(kept, rank);
            order.truncate(kept);
        }
        order.sort_unstable();
        positions.extend_from_slice(&order);
    }
    positions
}

/// Bytes of `count` values stored as `values` (no header).
fn values_len(values: Values, count: usize) -> usize {
    match values {
        Values::F32 => count * 4,
        Values::Int8 => count.div_ceil(INT8_BLOCK) * 4 + count,
        Values::Q4 | Values::Q2 => {
            let bits = quant_bits(values);
            let whole = count / QUANT_BLOCK;
            let rest = count % QUANT_BLOCK;
            whole * (4 + QUANT_BLOCK * bits / 8) + if rest > 0 { 4 + (rest * bits).div_ceil(8) } else { 0 }
        }
    }
}

fn quant_bits(values: Values) -> usize {
    match values {
        Values::Q4 => 4,
        Values::Q2 => 2,
        _ => unreachable!("only q4 and q2 pack bits"),
    }
}

/// The largest level of a blockwise quantiser (levels are multiples of
/// the block's scale).
fn top_level(values: Values) -> f32 {
    match values {
        Values::Int8 => 127.0,
        Values::Q4 => 7.0,
        Values::Q2 => 3.0,
        Values::F32 => unreachable!("f32 has no levels"),
    }
}

/// The block's scale: its absolute maximum over the top level, kept below
/// the value whose top level would overflow to infinity (near `f32::MAX`
/// the division rounds up).
fn block_scale(block: &[f32], values: Values) -> f32 {
    let top = top_level(values);
    let scale = block.iter().fold(0.0f32, |max, value| max.max(value.abs())) / top;
    if (scale * top).is_infinite() { scale.next_down() } else { scale }
}

/// q2's four levels, by code: -3, -1, 1, 3 (times the scale).
fn q2_level(code: u8) -> f32 {
    f32::from(2 * code) - 3.0
}

fn write_values(values: Values, xs: &[f32], bytes: &mut Vec<u8>) {
    match values {
        Values::F32 => xs.iter().for_each(|value| bytes.extend_from_slice(&value.to_le_bytes())),
        Values::Int8 => {
            for block in xs.chunks(INT8_BLOCK) {
                let scale = block_scale(block, values);
                bytes.extend_from_slice(&scale.to_le_bytes());
                for &value in block {
                    let level = if scale > 0.0 { (value / scale).round_ties_even() } else { 0.0 };
                    bytes.push(level.clamp(-127.0, 127.0) as i8 as u8);
                }
            }
        }
        Values::Q4 | Values::Q2 => {
            let bits = quant_bits(values);
            let per_byte = 8 / bits;
            for block in xs.chunks(QUANT_BLOCK) {
                let scale = block_scale(block, values);
                bytes.extend_from_slice(&scale.to_le_bytes());
                for group in block.chunks(per_byte) {
                    let mut byte = 0u8;
                    for (slot, &value) in group.iter().enumerate() {
                        let ratio = if scale > 0.0 { value / scale } else { 0.0 };
                        let code = if values == Values::Q4 {
                            (ratio.round_ties_even().clamp(-7.0, 7.0) as i8 as u8) & 0x0f
                        } else {
                            // The nearest of -3, -1, 1, 3: code (ratio + 3) / 2.
                            ((ratio + 3.0) / 2.0).round_ties_even().clamp(0.0, 3.0) as u8
                        };
                        byte |= code << (slot * bits);
                    }
                    bytes.push(byte);
                }
            }
        }
    }
}

/// Reads `count` values stored as `values` from exactly `body`.
fn read_values(values: Values, body: &[u8], count: usize) -> Result<Vec<f32>, CodecError> {
    debug_assert_eq!(body.len(), values_len(values, count));
    let mut out = Vec::with_capacity(count);
    let scale_at = |bytes: &[u8], block: usize| -> Result<f32, CodecError> {
        let scale = f32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if scale.is_finite() && scale >= 0.0 { Ok(scale) } else { Err(CodecError::BadScale { block }) }
    };
    match values {
        Values::F32 => {
            out.extend(body.chunks_exact(4).map(|word| f32::from_le_bytes(word.try_into().expect("4 bytes"))))
        }
        Values::Int8 => {
            let mut rest = body;
            while out.len() < count {
                let len = INT8_BLOCK.min(count - out.len());
                let scale = scale_at(rest, out.len() / INT8_BLOCK)?;
                out.extend(rest[4..4 + len].iter().map(|&byte| f32::from(byte as i8) * scale));
                rest = &rest[4 + len..];
            }
        }
        Values::Q4 | Values::Q2 => {
            let bits = quant_bits(values);
            let mut rest = body;
            while out.len() < count {
                let block = out.len() / QUANT_BLOCK;
                let len = QUANT_BLOCK.min(count - out.len());
                let scale = scale_at(rest, block)?;
                let packed = &rest[4..4 + (len * bits).div_ceil(8)];
                for index in 0..packed.len() * 8 / bits {
                    let code = (packed[index * bits / 8] >> ((index * bits) % 8)) & ((1 << bits) - 1);
                    if index >= len {
                        if code != 0 {
                            return Err(CodecError::NonCanonical { block, reason: "padding bits are set" });
                        }
                        continue;
                    }
                    let level = if values == Values::Q4 {
                        if code == 0x08 {
                            return Err(CodecError::NonCanonical {
                                block,
                                reason: "q4 level -8 is not used",
                            });
                        }
                        f32::from(((code << 4) as i8) >> 4)
                    } else {
                        q2_level(code)
                    };
                    out.push(level * scale);
                }
                rest = &rest[4 + packed.len()..];
            }
        }
    }
    Ok(out)
}

/// Decodes an update that must hold exactly `expected_values` values.
/// Returns the codec it was encoded with, and the values (dense: zeros
/// where top-k kept nothing).
pub fn decode(bytes: &[u8], expected_values: usize) -> Result<(Codec, Vec<f32>), CodecError> {
    if bytes.len() < HEADER_BYTES || bytes[..4] != MAGIC {
        return Err(CodecError::NotAnUpdate);
    }
    if bytes[4] != VERSION {
        return Err(CodecError::Version(bytes[4]));
    }
    let declared = u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes"));
    if declared != expected_values as u64 {
        return Err(CodecError::WrongCount { declared, expected: expected_values });
    }
    let codec = match (bytes[5], values_of_tag(bytes[5])) {
        (_, Some(values)) => Codec::dense(values),
        (TOPK_TAG, None) => {
            if bytes.len() < HEADER_BYTES + TOPK_HEADER_BYTES {
                return Err(CodecError::WrongLength {
                    found: bytes.len(),
                    expected: HEADER_BYTES + TOPK_HEADER_BYTES,
                });
            }
            let density_ppm = u32::from_le_bytes(bytes[14..18].try_into().expect("4 bytes"));
            let values = values_of_tag(bytes[18]).ok_or(CodecError::UnknownCodec(bytes[18]))?;
            let codec = Codec { topk: Some(TopK { density_ppm }), values };
            codec.validate().map_err(|_| CodecError::BadDensity(density_ppm))?;
            codec
        }
        (other, None) => return Err(CodecError::UnknownCodec(other)),
    };
    let expected_len = codec.encoded_len(expected_values);
    if bytes.len() != expected_len {
        return Err(CodecError::WrongLength { found: bytes.len(), expected: expected_len });
    }
    let values = match codec.topk {
        None => read_values(codec.values, &bytes[HEADER_BYTES..], expected_values)?,
        Some(topk) => {
            let kept = topk.kept(expected_values);
            let positions = &bytes[HEADER_BYTES + TOPK_HEADER_BYTES..][..kept];
            let kept_values =
                read_values(codec.values, &bytes[expected_len - values_len(codec.values, kept)..], kept)?;
            let mut values = vec![0.0f32; expected_values];
            let mut next = 0;
            for (chunk, start) in chunk_starts(expected_values).enumerate() {
                let len = (expected_values - start).min(TOPK_CHUNK);
                let here = &positions[next..next + topk.kept_of(len)];
                if here.windows(2).any(|pair| pair[0] >= pair[1])
                    || here.last().is_some_and(|&last| usize::from(last) >= len)
                {
                    return Err(CodecError::BadPositions { chunk });
                }
                for (&position, &value) in here.iter().zip(&kept_values[next..]) {
                    values[start + usize::from(position)] = value;
                }
                next += here.len();
            }
            values
        }
    };
    if let Some(index) = values.iter().position(|value| !value.is_finite()) {
        return Err(CodecError::NonFinite { index });
    }
    Ok((codec, values))
}

/// Why an encoded update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("not a crowdtrain update (bad header)")]
    NotAnUpdate,
    #[error("update format version {0} is not supported (expected {VERSION})")]
    Version(u8),
    #[error("unknown codec tag {0}")]
    UnknownCodec(u8),
    #[error("update holds {declared} values, the model has {expected}")]
    WrongCount { declared: u64, expected: usize },
    #[error("update is {found} bytes, its header implies {expected}")]
    WrongLength { found: usize, expected: usize },
    #[error("value {index} is not finite")]
    NonFinite { index: usize },
    #[error("block {block} has a negative or non-finite scale")]
    BadScale { block: usize },
    #[error("top-k density of {0} millionths is not one a codec has")]
    BadDensity(u32),
    #[error("top-k chunk {chunk}: positions must increase and lie within the chunk")]
    BadPositions { chunk: usize },
    #[error("block {block}: {reason} (no encoder writes it)")]
    NonCanonical { block: usize, reason: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i as f32) * 0.731).sin() * (1.0 + (i % 7) as f32)).collect()
    }

    fn codec(text: &str) -> Codec {
        text.parse().unwrap()
    }

    const ALL: [&str; 10] = [
        "f32",
        "int8",
        "q4",
        "q2",
        "topk:0.02",
        "topk:0.02+int8",
        "topk:0.02+q4",
        "topk:0.02+q2",
        "topk:0.5+q4",
        "topk:0.0001+q2",
    ];

    #[test]
    fn f32_round_trips_exactly() {
        let original = values(1000);
        let (codec, decoded) = decode(&Codec::F32.encode(&original).unwrap(), 1000).unwrap();
        assert_eq!(codec, Codec::F32);
        assert_eq!(decoded, original);
    }

    #[test]
    fn every_codec_round_trips_its_own_bytes_and_declares_its_length() {
        for text in ALL {
            for len in [0, 1, 63, 64, 65, 255, 256, 257, 1000, 3 * 256 + 17] {
                let original = values(len);
                let bytes = codec(text).encode(&original).unwrap();
                assert_eq!(bytes.len(), codec(text).encoded_len(len), "{text} {len}");
                let (found, decoded) = decode(&bytes, len).unwrap();
                assert_eq!(found, codec(text), "{text}");
                assert_eq!(decoded.len(), len);
                // Decoding and encoding again gives the same bytes: one
                // encoding per update.
                assert_eq!(codec(text).encode(&decoded).unwrap(), bytes, "{text} {len}");
            }
        }
    }

    #[test]
    fn quantisers_stay_within_half_a_level_of_their_block() {
        let original = values(1000);
        for (text, block, top) in [("int8", INT8_BLOCK, 127.0), ("q4", QUANT_BLOCK, 7.0)] {
            let (_, decoded) = decode(&codec(text).encode(&original).unwrap(), 1000).unwrap();
            for (ours, theirs) in original.chunks(block).zip(decoded.chunks(block)) {
                let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs())) / top;
                for (a, b) in ours.iter().zip(theirs) {
                    assert!((a - b).abs() <= scale * 0.5 * (1.0 + 1e-6), "{text}: {a} vs {b}");
                }
            }
        }
        // q2 has no zero: every value becomes +-1 or +-3 scales, the nearest.
        let (_, decoded) =
            decode(&codec("q2").encode(&[3.0, 2.1, 1.9, 0.5, -0.1, -3.0]).unwrap(), 6).unwrap();
        assert_eq!(decoded, [3.0, 3.0, 1.0, 1.0, -1.0, -3.0]);
        // All-zero blocks survive.
        for text in ["int8", "q4", "q2"] {
            let (_, zeros) = decode(&codec(text).encode(&[0.0; 300]).unwrap(), 300).unwrap();
            assert_eq!(zeros, vec![0.0; 300], "{text}");
        }
    }

    #[test]
    fn top_k_keeps_the_largest_of_each_chunk_with_ties_to_the_first() {
        let mut input = vec![0.5f32; 300];
        input[3] = -9.0;
        input[200] = 4.0;
        input[260] = 7.0;
        let sparse = codec("topk:0.008"); // 2 of each chunk of 256
        let (_, decoded) = decode(&sparse.encode(&input).unwrap(), 300).unwrap();
        let kept: Vec<(usize, f32)> =
            decoded.iter().copied().enumerate().filter(|&(_, value)| value != 0.0).collect();
        // Chunk 0: -9 and 4; chunk 1 (44 values): 7 and the first 0.5.
        assert_eq!(kept, [(3, -9.0), (200, 4.0), (256, 0.5), (260, 7.0)]);
        let bytes = codec("topk:0.02+q4").encode(&values(204_000)).unwrap();
        let ratio = Codec::F32.encoded_len(204_000) as f64 / bytes.len() as f64;
        assert!(ratio > 120.0, "topk:0.02+q4 is {ratio:.0}x smaller than f32");
    }

    #[test]
    fn error_feedback_keeps_what_the_encoding_lost_and_sends_it_later() {
        let sparse = codec("topk:0.02+q4");
        let update = values(1024);
        let mut feedback = Vec::new();
        let first = encode_with_feedback(sparse, &update, &mut feedback).unwrap();
        let (_, sent) = decode(&first, 1024).unwrap();
        for ((u, s), e) in update.iter().zip(&sent).zip(&feedback) {
            assert_eq!(u - s, *e, "the feedback is exactly what was not sent");
        }
        // What was held back is sent over the next rounds: with zero new
        // updates, the feedback drains.
        let norm = |values: &[f32]| values.iter().map(|v| v * v).sum::<f32>().sqrt();
        let before = norm(&feedback);
        for _ in 0..60 {
            encode_with_feedback(sparse, &vec![0.0; 1024], &mut feedback).unwrap();
        }
        assert!(norm(&feedback) < before * 0.05, "{} of {before} left", norm(&feedback));
        // Codecs without error feedback keep none.
        let mut none = vec![1.0; 3];
        let bytes = encode_with_feedback(Codec::INT8, &[1.0, 2.0, 3.0], &mut none).unwrap();
        assert!(none.is_empty());
        assert_eq!(bytes, Codec::INT8.encode(&[1.0, 2.0, 3.0]).unwrap());
        assert!(encode_with_feedback(sparse, &[1.0; 4], &mut vec![0.0; 3]).is_err());
    }

    #[test]
    fn int8_encodes_the_largest_finite_values_decodably() {
        // The scale max / 127 rounds up for max = f32::MAX, and 127 levels
        // of it overflowed: the encoder wrote an update no decoder accepts.
        for text in ["int8", "q4", "q2", "topk:0.5+q4"] {
            for values in [vec![f32::MAX, 1.0], vec![-f32::MAX], vec![f32::MAX * 0.9999999, -2.0]] {
                let (_, decoded) = decode(&codec(text).encode(&values).unwrap(), values.len()).unwrap();
                assert!(decoded.iter().all(|value| value.is_finite()), "{text}");
            }
        }
    }

    fn header(tag: u8, count: u64) -> Vec<u8> {
        let mut bytes = b"CTPG".to_vec();
        bytes.push(1);
        bytes.push(tag);
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes
    }

    #[test]
    fn every_codec_writes_its_documented_bytes() {
        // int8: tag 1, one scale a 256 values, one signed byte each. The
        // bytes runs have always written.
        let mut int8 = header(1, 3);
        int8.extend_from_slice(&(2.54f32 / 127.0).to_le_bytes());
        int8.extend_from_slice(&[127, 0x81, 50]);
        assert_eq!(codec("int8").encode(&[2.54, -2.54, 1.0]).unwrap(), int8);
        // q4: tag 2, one scale a 64 values (max / 7), two's-complement
        // nibbles, the first value in the low nibble; ties to even (0.5 is 0).
        let mut q4 = header(2, 5);
        q4.extend_from_slice(&1.0f32.to_le_bytes());
        q4.extend_from_slice(&[0xd7, 0x00, 0x02]);
        assert_eq!(codec("q4").encode(&[7.0, -3.0, 0.5, 0.0, 1.5]).unwrap(), q4);
        // q2: tag 3, scale max / 3, codes 0..=3 for -3, -1, 1, 3 levels,
        // the first value in the lowest bits; 2.0 is a tie (1 or 3): to 1.
        let mut q2 = header(3, 6);
        q2.extend_from_slice(&1.0f32.to_le_bytes());
        q2.extend_from_slice(&[0b01_10_00_11, 0b00_00_10_10]);
        assert_eq!(codec("q2").encode(&[3.0, -3.0, 1.0, -1.0, 2.0, 0.0]).unwrap(), q2);
        // top-k: tag 4, the density in millionths (u32), the values' tag,
        // one byte a kept value for its position in its chunk of 256, then
        // the kept values as that value encoding writes them.
        let mut sparse = header(4, 260);
        sparse.extend_from_slice(&4_000u32.to_le_bytes());
        sparse.push(2);
        sparse.extend_from_slice(&[1, 3]);
        sparse.extend_from_slice(&(2.0f32 / 7.0).to_le_bytes());
        sparse.push(0x79);
        let mut input = vec![0.25f32; 260];
        input[1] = -2.0;
        input[259] = 2.0;
        assert_eq!(codec("topk:0.004+q4").encode(&input).unwrap(), sparse);
        let (_, decoded) = decode(&sparse, 260).unwrap();
        let mut expected = vec![0.0f32; 260];
        expected[1] = -2.0 / 7.0 * 7.0;
        expected[259] = 7.0 * (2.0f32 / 7.0);
        assert_eq!(
            decoded.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn hostile_input_is_refused_with_a_reason() {
        let good = Codec::INT8.encode(&values(300)).unwrap();
        assert_eq!(decode(b"junk", 300), Err(CodecError::NotAnUpdate));
        assert!(matches!(decode(&good, 301), Err(CodecError::WrongCount { .. })));
        assert!(matches!(decode(&good[..good.len() - 1], 300), Err(CodecError::WrongLength { .. })));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode(&long, 300), Err(CodecError::WrongLength { .. })));
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert_eq!(decode(&bad_version, 300), Err(CodecError::Version(9)));
        let mut bad_codec = good.clone();
        bad_codec[5] = 7;
        assert_eq!(decode(&bad_codec, 300), Err(CodecError::UnknownCodec(7)));
        let mut bad_scale = good.clone();
        bad_scale[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(decode(&bad_scale, 300), Err(CodecError::BadScale { block: 0 }));
        let mut infinite = Codec::F32.encode(&[1.0, 2.0]).unwrap();
        infinite[HEADER_BYTES + 4..].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(decode(&infinite, 2), Err(CodecError::NonFinite { index: 1 }));
        assert_eq!(Codec::F32.encode(&[f32::NAN]), Err(CodecError::NonFinite { index: 0 }));
    }

    #[test]
    fn hostile_sparse_and_packed_input_is_refused() {
        let sparse = codec("topk:0.008+q4");
        let good = sparse.encode(&values(300)).unwrap();
        let positions = HEADER_BYTES + TOPK_HEADER_BYTES;
        let mut unordered = good.clone();
        unordered.swap(positions, positions + 1);
        assert_eq!(decode(&unordered, 300), Err(CodecError::BadPositions { chunk: 0 }));
        let mut outside = good.clone();
        outside[positions + 3] = 200; // the second chunk holds 44 values
        assert_eq!(decode(&outside, 300), Err(CodecError::BadPositions { chunk: 1 }));
        let mut density = good.clone();
        density[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&density, 300), Err(CodecError::BadDensity(0)));
        let mut huge = good.clone();
        huge[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, 300), Err(CodecError::BadDensity(u32::MAX)));
        let mut inner = good.clone();
        inner[HEADER_BYTES + 4] = TOPK_TAG;
        assert_eq!(decode(&inner, 300), Err(CodecError::UnknownCodec(TOPK_TAG)));
        assert!(matches!(decode(&good[..HEADER_BYTES + 2], 300), Err(CodecError::WrongLength { .. })));
        // q4's unused level and set padding bits are not an encoder's.
        let mut minus_eight = codec("q4").encode(&[1.0, 1.0, 1.0]).unwrap();
        minus_eight[HEADER_BYTES + 4] = 0x08;
        assert!(matches!(decode(&minus_eight, 3), Err(CodecError::NonCanonical { .. })));
        let mut padding = codec("q4").encode(&[1.0, 1.0, 1.0]).unwrap();
        padding[HEADER_BYTES + 5] |= 0x30;
        assert!(matches!(decode(&padding, 3), Err(CodecError::NonCanonical { .. })));
        let mut q2_padding = codec("q2").encode(&[1.0]).unwrap();
        q2_padding[HEADER_BYTES + 4] |= 0x04;
        assert!(matches!(decode(&q2_padding, 1), Err(CodecError::NonCanonical { .. })));
    }
}
