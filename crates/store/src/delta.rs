//! Model deltas: a published model as the change from the one before it,
//! what workers download under a compressed broadcast (`[outer]
//! broadcast`).
//!
//! A delta file names the round whose model it makes, the model it applies
//! to (`base`) and the model it makes (`target`), both by their checkpoint
//! digests, then carries the encoded change (a pseudo-gradient encoding,
//! `crowdtrain_train::codec`). A worker holding `base` rebuilds `target`
//! with [`ModelDelta::rebuild`], which checks the result's checkpoint
//! digest: a delta can make `target` or nothing. The coordinator stores
//! deltas content-addressed, as it does checkpoints.
//!
//! Decoding treats the bytes as hostile: size cap, header, exact lengths
//! and every check of the codec.

use crowdtrain_protocol::Digest;
use crowdtrain_train::ParamLayout;

use crate::checkpoint::{self, CHECKPOINT_BYTES_MAX, CheckpointKind};

const MAGIC: [u8; 4] = *b"CTMD";
const VERSION: u8 = 1;
/// Bytes before the encoded change: magic, version, round, base, target.
pub const HEADER_BYTES: usize = 4 + 1 + 8 + 32 + 32;
/// Deltas larger than this are refused unread (a model's checkpoint is
/// the most anyone downloads).
pub const DELTA_BYTES_MAX: u64 = CHECKPOINT_BYTES_MAX;

/// The change from model `base` to model `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDelta {
    /// The outer steps taken when `target` was published (its round count).
    pub round: u64,
    pub base: Digest,
    pub target: Digest,
    /// The encoded change (`crowdtrain_train::codec`).
    pub change: Vec<u8>,
}

/// Why a delta was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta is {0} bytes, above the limit of {DELTA_BYTES_MAX}")]
    TooLarge(u64),
    #[error("not a crowdtrain model delta (bad header)")]
    NotADelta,
    #[error("model delta format version {0} is not supported (expected {VERSION})")]
    Version(u8),
    #[error("the delta applies to model {found}, not {expected}")]
    WrongBase { expected: Digest, found: Digest },
    #[error("the delta's change does not decode: {0}")]
    Change(#[from] crowdtrain_train::CodecError),
    #[error("the rebuilt model hashes to {found}, not the delta's target {expected}")]
    Mismatch { expected: Digest, found: Digest },
}

impl ModelDelta {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.change.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.round.to_le_bytes());
        bytes.extend_from_slice(&self.base.0);
        bytes.extend_from_slice(&self.target.0);
        bytes.extend_from_slice(&self.change);
        bytes
    }

    /// Parses the header; the change is checked when it is applied.
    pub fn decode(bytes: &[u8]) -> Result<Self, DeltaError> {
        if bytes.len() as u64 > DELTA_BYTES_MAX {
            return Err(DeltaError::TooLarge(bytes.len() as u64));
        }
        if bytes.len() < HEADER_BYTES || bytes[..4] != MAGIC {
            return Err(DeltaError::NotADelta);
        }
        if bytes[4] != VERSION {
            return Err(DeltaError::Version(bytes[4]));
        }
        let digest = |offset: usize| Digest(bytes[offset..offset + 32].try_into().expect("32 bytes"));
        Ok(Self {
            round: u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes")),
            base: digest(13),
            target: digest(45),
            change: bytes[HEADER_BYTES..].to_vec(),
        })
    }

    /// Rebuilds `target` from the parameters of `base` (whose checkpoint
    /// digest is `base_digest`): the parameters and their checkpoint bytes,
    /// which hash to `target` or this fails.
    pub fn rebuild(
        &self,
        base_digest: &Digest,
        base: &[f32],
        model_name: &str,
        layout: &ParamLayout,
    ) -> Result<(Vec<f32>, Vec<u8>), DeltaError> {
        if self.base != *base_digest {
            return Err(DeltaError::WrongBase { expected: *base_digest, found: self.base });
        }
        let params = crowdtrain_train::diloco::apply_broadcast(base, &self.change)?;
        let bytes = checkpoint::encode(CheckpointKind::Params, model_name, layout, &params);
        let found = Digest::of(&bytes);
        if found != self.target {
            return Err(DeltaError::Mismatch { expected: self.target, found });
        }
        Ok((params, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdtrain_train::{Codec, Encode, ParamLayout, ParamSpec};

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![ParamSpec::new("w", &[300], 300)])
    }

    #[test]
    fn a_delta_rebuilds_its_target_or_nothing() {
        let layout = layout();
        let base: Vec<f32> = (0..300).map(|i| (i as f32 * 0.1).sin()).collect();
        let exact: Vec<f32> =
            base.iter().enumerate().map(|(i, b)| b + (i as f32 * 0.37).cos() * 0.01).collect();
        let change: Vec<f32> = exact.iter().zip(&base).map(|(e, b)| e - b).collect();
        let change = Codec::INT8.encode(&change).unwrap();
        let target_params = crowdtrain_train::diloco::apply_broadcast(&base, &change).unwrap();
        let encode = |params: &[f32]| checkpoint::encode(CheckpointKind::Params, "m", &layout, params);
        let (base_digest, target) = (Digest::of(&encode(&base)), Digest::of(&encode(&target_params)));
        let delta = ModelDelta { round: 3, base: base_digest, target, change };
        let bytes = delta.encode();
        let parsed = ModelDelta::decode(&bytes).unwrap();
        assert_eq!(parsed, delta);
        let (params, checkpoint) = parsed.rebuild(&base_digest, &base, "m", &layout).unwrap();
        assert_eq!(params, target_params);
        assert_eq!(Digest::of(&checkpoint), target);
        // Applied to another model, or rebuilding something else: refused.
        assert!(matches!(parsed.rebuild(&target, &base, "m", &layout), Err(DeltaError::WrongBase { .. })));
        let mut other = base.clone();
        other[0] += 1.0;
        assert!(matches!(
            parsed.rebuild(&base_digest, &other, "m", &layout),
            Err(DeltaError::Mismatch { .. })
        ));
        // Hostile bytes.
        assert!(matches!(ModelDelta::decode(b"CTMD"), Err(DeltaError::NotADelta)));
        let mut version = bytes.clone();
        version[4] = 7;
        assert!(matches!(ModelDelta::decode(&version), Err(DeltaError::Version(7))));
        let mut cut = bytes.clone();
        cut.pop();
        let cut = ModelDelta::decode(&cut).unwrap();
        assert!(matches!(cut.rebuild(&base_digest, &base, "m", &layout), Err(DeltaError::Change(_))));
    }
}
