//! Training state and its hash: the fingerprint that determinism tests,
//! commitments and replay audits compare.
//!
//! The hash is BLAKE3 (in derive-key mode, so it cannot collide with any
//! other hash in the protocol) over a canonical little-endian serialisation:
//! a length-prefixed model name, the parameter count, the parameters, both
//! AdamW moments and the step counter. Every bit of the state is in it;
//! nothing else is.

use serde::{Deserialize, Serialize};

use crate::optim::AdamWMoments;

const TRAIN_STATE_CONTEXT: &str = "crowdtrain 2026-11 train-state v1";
const OUTER_STATE_CONTEXT: &str = "crowdtrain 2026-11 outer-state v1";
const PARAMS_CONTEXT: &str = "crowdtrain 2026-11 params v1";

/// A 32-byte BLAKE3 digest, printed as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct StateHash(pub [u8; 32]);

impl StateHash {
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl std::fmt::Display for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateHash({})", self.to_hex())
    }
}

impl From<StateHash> for String {
    fn from(hash: StateHash) -> Self {
        hash.to_hex()
    }
}

impl TryFrom<String> for StateHash {
    type Error = String;

    fn try_from(hex: String) -> Result<Self, Self::Error> {
        hex.parse()
    }
}

impl std::str::FromStr for StateHash {
    type Err = String;

    fn from_str(hex: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(hex)
            .map(|hash| Self(*hash.as_bytes()))
            .map_err(|error| format!("not a 64-digit hex hash: {error}"))
    }
}

/// What a worker's inner loop carries from step to step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Identifies the architecture (see [`crate::Model::name`]).
    pub model: String,
    pub params: Vec<f32>,
    pub moments: AdamWMoments,
    /// Optimizer steps taken so far.
    pub step: u64,
}

impl TrainState {
    /// A fresh state at step 0 with zero moments.
    pub fn new(model: String, params: Vec<f32>) -> Self {
        let moments = AdamWMoments::zeros(params.len());
        Self { model, params, moments, step: 0 }
    }

    pub fn hash(&self) -> StateHash {
        let mut hasher = model_hasher(TRAIN_STATE_CONTEXT, &self.model, &self.params);
        update_f32s(&mut hasher, &self.moments.first);
        update_f32s(&mut hasher, &self.moments.second);
        hasher.update(&self.step.to_le_bytes());
        StateHash(*hasher.finalize().as_bytes())
    }

    /// The hash of state bytes from [`TrainState::to_bytes`], without
    /// parsing them.
    pub fn hash_bytes(bytes: &[u8]) -> StateHash {
        let mut hasher = blake3::Hasher::new_derive_key(TRAIN_STATE_CONTEXT);
        hasher.update(bytes);
        StateHash(*hasher.finalize().as_bytes())
    }

    /// The canonical serialisation: exactly the bytes [`TrainState::hash`]
    /// hashes, so a receiver hashes what it parsed and compares.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(24 + self.model.len() + self.params.len() * 12);
        bytes.extend_from_slice(&(self.model.len() as u64).to_le_bytes());
        bytes.extend_from_slice(self.model.as_bytes());
        bytes.extend_from_slice(&(self.params.len() as u64).to_le_bytes());
        for values in [&self.params, &self.moments.first, &self.moments.second] {
            bytes.extend(values.iter().flat_map(|value| value.to_le_bytes()));
        }
        bytes.extend_from_slice(&self.step.to_le_bytes());
        bytes
    }

    /// Parses [`TrainState::to_bytes`] for `model` with `parameters`
    /// parameters, refusing any other size, model, or a non-finite value.
    pub fn from_bytes(bytes: &[u8], model: &str, parameters: usize) -> Result<Self, StateError> {
        let expected = 8 + model.len() + 8 + parameters * 12 + 8;
        if bytes.len() != expected {
            return Err(StateError::Size { found: bytes.len(), expected });
        }
        let word = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        if word(0) != model.len() as u64 || &bytes[8..8 + model.len()] != model.as_bytes() {
            return Err(StateError::Model(model.to_owned()));
        }
        let mut offset = 8 + model.len();
        if word(offset) != parameters as u64 {
            return Err(StateError::Size { found: word(offset) as usize, expected: parameters });
        }
        offset += 8;
        let read = |offset: &mut usize| -> Result<Vec<f32>, StateError> {
            let values: Vec<f32> = bytes[*offset..*offset + parameters * 4]
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
                .collect();
            *offset += parameters * 4;
            match values.iter().position(|value| !value.is_finite()) {
                Some(index) => Err(StateError::NonFinite(index)),
                None => Ok(values),
            }
        };
        let params = read(&mut offset)?;
        let first = read(&mut offset)?;
        let second = read(&mut offset)?;
        let step = word(offset);
        Ok(Self { model: model.to_owned(), params, moments: AdamWMoments { first, second }, step })
    }
}

/// Why serialised state bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state is {found} bytes (or values), expected {expected}")]
    Size { found: usize, expected: usize },
    #[error("state is not for model {0}")]
    Model(String),
    #[error("state value {0} is not finite")]
    NonFinite(usize),
}

/// What the coordinator carries from round to round.
#[derive(Debug, Clone, PartialEq)]
pub struct OuterState {
    pub model: String,
    pub params: Vec<f32>,
    /// The outer Nesterov momentum buffer.
    pub momentum: Vec<f32>,
    /// Rounds applied so far.
    pub round: u64,
    /// Under a compressed broadcast (`[outer] broadcast`), the outer
    /// optimizer's exact parameters, kept by the coordinator alone; `params`
    /// is then the published model workers train from. `None` when the
    /// published model is the exact one (full broadcast, or no step yet).
    pub exact: Option<Vec<f32>>,
}

impl OuterState {
    pub fn new(model: String, params: Vec<f32>) -> Self {
        let momentum = vec![0.0; params.len()];
        Self { model, params, momentum, round: 0, exact: None }
    }

    /// The parameters the outer optimizer steps: the exact ones.
    pub fn exact_params(&self) -> &[f32] {
        self.exact.as_deref().unwrap_or(&self.params)
    }

    /// Over the published parameters, the momentum, the round and (only
    /// when held apart) the exact parameters: a full-broadcast state hashes
    /// as it always has.
    pub fn hash(&self) -> StateHash {
        let mut hasher = model_hasher(OUTER_STATE_CONTEXT, &self.model, &self.params);
        update_f32s(&mut hasher, &self.momentum);
        hasher.update(&self.round.to_le_bytes());
        if let Some(exact) = &self.exact {
            update_f32s(&mut hasher, exact);
        }
        StateHash(*hasher.finalize().as_bytes())
    }
}

/// The hash of a bare parameter vector: what names a model on the wire.
pub fn params_hash(model: &str, params: &[f32]) -> StateHash {
    StateHash(*model_hasher(PARAMS_CONTEXT, model, params).finalize().as_bytes())
}

/// A hasher for `context` that has absorbed the model's name (length
/// prefixed), the parameter count and the parameters: the common prefix of
/// every hash here.
fn model_hasher(context: &str, model: &str, params: &[f32]) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    hasher.update(&(model.len() as u64).to_le_bytes());
    hasher.update(model.as_bytes());
    hasher.update(&(params.len() as u64).to_le_bytes());
    update_f32s(&mut hasher, params);
    hasher
}

/// Feeds `values` as little-endian IEEE-754 bits, on any host. On a
/// little-endian host that is the memory itself, handed to BLAKE3 in one
/// piece so it can hash many chunks at once (4x faster than feeding it
/// small converted buffers).
pub(crate) fn update_f32s(hasher: &mut blake3::Hasher, values: &[f32]) {
    if cfg!(target_endian = "little") {
        hasher.update(bytemuck::cast_slice(values));
    } else {
        let mut buffer = vec![0u8; 1 << 16];
        for chunk in values.chunks(buffer.len() / 4) {
            for (bytes, value) in buffer.chunks_exact_mut(4).zip(chunk) {
                bytes.copy_from_slice(&value.to_le_bytes());
            }
            hasher.update(&buffer[..chunk.len() * 4]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_state() -> TrainState {
        let mut state = TrainState::new("mlp-test".into(), (0..1000).map(|i| i as f32 * 0.001).collect());
        state.moments.first.iter_mut().enumerate().for_each(|(i, m)| *m = i as f32 * 1e-4);
        state.moments.second.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 * 1e-7);
        state.step = 17;
        state
    }

    fn flip(value: &mut f32, bit: u32) {
        *value = f32::from_bits(value.to_bits() ^ (1 << bit));
    }

    #[test]
    fn flipping_any_single_bit_of_the_state_changes_the_hash() {
        let original = sample_state();
        let reference = original.hash();
        assert_eq!(reference, original.clone().hash(), "hashing is a pure function");
        // Every bit of a few elements of each component, including the
        // sign, exponent and lowest mantissa bits.
        for index in [0, 1, 499, 999] {
            for bit in 0..32 {
                for component in 0..3 {
                    let mut state = original.clone();
                    let target = match component {
                        0 => &mut state.params[index],
                        1 => &mut state.moments.first[index],
                        _ => &mut state.moments.second[index],
                    };
                    flip(target, bit);
                    assert_ne!(state.hash(), reference, "component {component}, index {index}, bit {bit}");
                }
            }
        }
        for bit in 0..64 {
            let mut state = original.clone();
            state.step ^= 1 << bit;
            assert_ne!(state.hash(), reference, "step bit {bit}");
        }
        let mut state = original.clone();
        state.model.push('x');
        assert_ne!(state.hash(), reference, "model name");
    }

    #[test]
    fn bytes_round_trip_and_hash_like_the_state() {
        let state = sample_state();
        let bytes = state.to_bytes();
        let parsed = TrainState::from_bytes(&bytes, "mlp-test", 1000).unwrap();
        assert_eq!(parsed, state);
        assert_eq!(TrainState::hash_bytes(&bytes), state.hash(), "the hash is the hash of the bytes");
        assert!(matches!(TrainState::from_bytes(&bytes, "mlp-tess", 1000), Err(StateError::Model(_))));
        assert!(matches!(
            TrainState::from_bytes(&bytes[1..], "mlp-test", 1000),
            Err(StateError::Size { .. })
        ));
        assert!(matches!(TrainState::from_bytes(&bytes, "mlp-test", 999), Err(StateError::Size { .. })));
        let mut poisoned = state.clone();
        poisoned.moments.second[3] = f32::INFINITY;
        assert!(matches!(
            TrainState::from_bytes(&poisoned.to_bytes(), "mlp-test", 1000),
            Err(StateError::NonFinite(3))
        ));
    }

    #[test]
    fn the_hash_sees_negative_zero() {
        let mut a = TrainState::new("m".into(), vec![0.0]);
        let b = a.clone();
        a.params[0] = -0.0;
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn outer_state_hash_covers_momentum_and_round() {
        let state = OuterState::new("m".into(), vec![1.0, 2.0]);
        let mut moved = state.clone();
        moved.momentum[1] = 1e-30;
        assert_ne!(moved.hash(), state.hash());
        let mut later = state.clone();
        later.round = 1;
        assert_ne!(later.hash(), state.hash());
        let mut apart = state.clone();
        apart.exact = Some(vec![1.0, 2.5]);
        assert_ne!(apart.hash(), state.hash());
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let hash = sample_state().hash();
        assert_eq!(hash.to_hex().parse::<StateHash>().unwrap(), hash);
        assert!("xyz".parse::<StateHash>().is_err());
    }
}
