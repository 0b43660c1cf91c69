//! The binary encoding of pseudo-gradients, as they cross the network.
//!
//! Two codecs: `f32` (exact, 4 bytes a value) and `int8` (blockwise
//! absolute-max quantisation: a 4-byte scale per 256 values and one signed
//! byte per value, about 4x smaller). Rounding is ties-to-even and scales
//! are computed in `f32`, so encoding is deterministic and a decoded update
//! is the same on every machine.
//!
//! Decoding treats its input as hostile: the header, the exact length,
//! the value count and every scale are checked before anything is used.

pub use crowdtrain_recipe::Codec;

const MAGIC: [u8; 4] = *b"CTPG";
const VERSION: u8 = 1;
/// Bytes before the values (or int8 scales): magic, version, codec, count.
pub const HEADER_BYTES: usize = 4 + 1 + 1 + 8;
/// Values per int8 block (one scale each).
pub const INT8_BLOCK: usize = 256;

/// The encoder of a [`Codec`].
pub trait Encode {
    /// Encoded size of `values` values, header included.
    fn encoded_len(self, values: usize) -> usize;

    /// Encodes `values`, which must all be finite.
    fn encode(self, values: &[f32]) -> Result<Vec<u8>, CodecError>;
}

fn tag(codec: Codec) -> u8 {
    match codec {
        Codec::F32 => 0,
        Codec::Int8 => 1,
    }
}

impl Encode for Codec {
    fn encoded_len(self, values: usize) -> usize {
        HEADER_BYTES
            + match self {
                Self::F32 => values * 4,
                Self::Int8 => values.div_ceil(INT8_BLOCK) * 4 + values,
            }
    }

    fn encode(self, values: &[f32]) -> Result<Vec<u8>, CodecError> {
        if let Some(index) = values.iter().position(|value| !value.is_finite()) {
            return Err(CodecError::NonFinite { index });
        }
        let mut bytes = Vec::with_capacity(self.encoded_len(values.len()));
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION);
        bytes.push(tag(self));
        bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
        match self {
            Self::F32 => values.iter().for_each(|value| bytes.extend_from_slice(&value.to_le_bytes())),
            Self::Int8 => {
                for block in values.chunks(INT8_BLOCK) {
                    let mut scale = block.iter().fold(0.0f32, |max, value| max.max(value.abs())) / 127.0;
                    if (scale * 127.0).is_infinite() {
                        // Rounded up near f32::MAX, the top level would
                        // decode to infinity: the update would not decode.
                        scale = scale.next_down();
                    }
                    bytes.extend_from_slice(&scale.to_le_bytes());
                    for &value in block {
                        let level = if scale > 0.0 { (value / scale).round_ties_even() } else { 0.0 };
                        bytes.push(level.clamp(-127.0, 127.0) as i8 as u8);
                    }
                }
            }
        }
        debug_assert_eq!(bytes.len(), self.encoded_len(values.len()));
        Ok(bytes)
    }
}

/// Decodes an update that must hold exactly `expected_values` values.
/// Returns the codec it was encoded with, and the values.
pub fn decode(bytes: &[u8], expected_values: usize) -> Result<(Codec, Vec<f32>), CodecError> {
    if bytes.len() < HEADER_BYTES || bytes[..4] != MAGIC {
        return Err(CodecError::NotAnUpdate);
    }
    if bytes[4] != VERSION {
        return Err(CodecError::Version(bytes[4]));
    }
    let codec = match bytes[5] {
        0 => Codec::F32,
        1 => Codec::Int8,
        other => return Err(CodecError::UnknownCodec(other)),
    };
    let declared = u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes"));
    if declared != expected_values as u64 {
        return Err(CodecError::WrongCount { declared, expected: expected_values });
    }
    let expected_len = codec.encoded_len(expected_values);
    if bytes.len() != expected_len {
        return Err(CodecError::WrongLength { found: bytes.len(), expected: expected_len });
    }
    let body = &bytes[HEADER_BYTES..];
    let values = match codec {
        Codec::F32 => body
            .chunks_exact(4)
            .map(|word| f32::from_le_bytes(word.try_into().expect("4 bytes")))
            .collect::<Vec<_>>(),
        Codec::Int8 => {
            let mut values = Vec::with_capacity(expected_values);
            let mut rest = body;
            while values.len() < expected_values {
                let count = INT8_BLOCK.min(expected_values - values.len());
                let scale = f32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
                if !(scale.is_finite() && scale >= 0.0) {
                    return Err(CodecError::BadScale { block: values.len() / INT8_BLOCK });
                }
                values.extend(rest[4..4 + count].iter().map(|&byte| f32::from(byte as i8) * scale));
                rest = &rest[4 + count..];
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
    #[error("int8 block {block} has a negative or non-finite scale")]
    BadScale { block: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i as f32) * 0.731).sin() * (1.0 + (i % 7) as f32)).collect()
    }

    #[test]
    fn f32_round_trips_exactly() {
        let original = values(1000);
        let (codec, decoded) = decode(&Codec::F32.encode(&original).unwrap(), 1000).unwrap();
        assert_eq!(codec, Codec::F32);
        assert_eq!(decoded, original);
    }

    #[test]
    fn int8_is_four_times_smaller_and_within_half_a_level() {
        let original = values(1000);
        let bytes = Codec::Int8.encode(&original).unwrap();
        assert!(bytes.len() * 3 < Codec::F32.encoded_len(1000), "{} bytes", bytes.len());
        let (_, decoded) = decode(&bytes, 1000).unwrap();
        for (block, (ours, theirs)) in original.chunks(INT8_BLOCK).zip(decoded.chunks(INT8_BLOCK)).enumerate()
        {
            let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in ours.iter().zip(theirs) {
                assert!((a - b).abs() <= scale * 0.5 + 1e-6, "block {block}: {a} vs {b}");
            }
        }
        // All-zero blocks survive.
        let (_, zeros) = decode(&Codec::Int8.encode(&[0.0; 300]).unwrap(), 300).unwrap();
        assert_eq!(zeros, vec![0.0; 300]);
    }

    #[test]
    fn int8_encodes_the_largest_finite_values_decodably() {
        // The scale max / 127 rounds up for max = f32::MAX, and 127 levels
        // of it overflowed: the encoder wrote an update no decoder accepts.
        for values in [vec![f32::MAX, 1.0], vec![-f32::MAX], vec![f32::MAX * 0.9999999, -2.0]] {
            let (_, decoded) = decode(&Codec::Int8.encode(&values).unwrap(), values.len()).unwrap();
            let scale = f32::MAX / 127.0;
            for (a, b) in values.iter().zip(&decoded) {
                assert!((a - b).abs() <= scale, "{a} became {b}");
            }
        }
    }

    #[test]
    fn hostile_input_is_refused_with_a_reason() {
        let good = Codec::Int8.encode(&values(300)).unwrap();
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
}
