//! Checkpoints: safetensors files named by the BLAKE3 hash of their bytes.
//!
//! Naming a file by its content makes it its own integrity check: a worker
//! that downloads `<hash>.safetensors` verifies the hash and knows it has
//! exactly the model the signed round view named. The encoding is
//! deterministic (tensors sorted by name, one metadata entry), so the same
//! parameters always give the same file and the same name.
//!
//! Decoding treats the file as hostile: size cap, the expected kind and
//! model, exactly the layout's tensors with their shapes, and finite values.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crowdtrain_defense::AggregatorState;
use crowdtrain_protocol::Digest;
use crowdtrain_train::ParamLayout;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Checkpoints larger than this are refused unread (the MLP's is 0.8 MB).
pub const CHECKPOINT_BYTES_MAX: u64 = 1 << 30;

const METADATA_KEY: &str = "crowdtrain";

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Model parameters: what workers download.
    Params,
    /// The outer optimizer's momentum: the coordinator's own state.
    OuterMomentum,
    /// The robust aggregator's state: its centre and each worker's
    /// momentum (see [`encode_aggregator`]).
    Aggregator,
    /// The outer optimizer's state under a compressed broadcast: its
    /// momentum and its exact parameters, which are never published (see
    /// [`encode_outer`]).
    OuterExact,
}

impl CheckpointKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Params => "params",
            Self::OuterMomentum => "outer-momentum",
            Self::Aggregator => "aggregator",
            Self::OuterExact => "outer-exact",
        }
    }
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no checkpoint {0} in the store")]
    Missing(Digest),
    #[error("checkpoint is {0} bytes, above the limit of {CHECKPOINT_BYTES_MAX}")]
    TooLarge(u64),
    #[error("checkpoint content hashes to {found}, not {expected}")]
    HashMismatch { expected: Digest, found: Digest },
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
}

/// Encodes `values` (in `layout` order) as a safetensors file.
pub fn encode(kind: CheckpointKind, model_name: &str, layout: &ParamLayout, values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len(), layout.len(), "values follow the layout");
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = layout
        .iter()
        .map(|(spec, range)| {
            let data = values[range].iter().flat_map(|value| value.to_le_bytes()).collect();
            (spec.name.clone(), spec.shape.clone(), data)
        })
        .collect();
    let views = bytes.iter().map(|(name, shape, data)| {
        (name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data"))
    });
    let metadata = HashMap::from([(METADATA_KEY.to_owned(), metadata_value(kind, model_name))]);
    safetensors::serialize(views, Some(metadata)).expect("f32 tensors always serialize")
}

/// Decodes a checkpoint that must be of `kind` for `model_name` with
/// `layout`; returns the values in layout order.
pub fn decode(
    bytes: &[u8],
    kind: CheckpointKind,
    model_name: &str,
    layout: &ParamLayout,
) -> Result<Vec<f32>, CheckpointError> {
    if bytes.len() as u64 > CHECKPOINT_BYTES_MAX {
        return Err(CheckpointError::TooLarge(bytes.len() as u64));
    }
    let malformed = |message: String| CheckpointError::Malformed(message);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|error| malformed(error.to_string()))?;
    let expected = metadata_value(kind, model_name);
    let found = header.metadata().as_ref().and_then(|metadata| metadata.get(METADATA_KEY));
    if found != Some(&expected) {
        return Err(malformed(format!(
            "expected {expected}, found {}",
            found.map_or("no crowdtrain metadata", |v| v)
        )));
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|error| malformed(error.to_string()))?;
    if tensors.len() != layout.iter().count() {
        return Err(malformed(format!("{} tensors, the model has {}", tensors.len(), layout.iter().count())));
    }
    crowdtrain_train::model_file::params_from_safetensors(&tensors, layout).map_err(malformed)
}

const OUTER_MOMENTUM: &str = "momentum";
const OUTER_EXACT: &str = "exact";

/// The outer optimizer's private state: its momentum, as an
/// [`CheckpointKind::OuterMomentum`] checkpoint (the bytes a full broadcast
/// has always written) when the published parameters are the exact ones,
/// or an [`CheckpointKind::OuterExact`] one holding the momentum and the
/// exact parameters as two flat tensors.
pub fn encode_outer(
    model_name: &str,
    layout: &ParamLayout,
    momentum: &[f32],
    exact: Option<&[f32]>,
) -> Vec<u8> {
    let Some(exact) = exact else {
        return encode(CheckpointKind::OuterMomentum, model_name, layout, momentum);
    };
    assert!(momentum.len() == layout.len() && exact.len() == layout.len(), "values follow the layout");
    let tensors =
        [(OUTER_EXACT.to_owned(), le_bytes(exact)), (OUTER_MOMENTUM.to_owned(), le_bytes(momentum))];
    encode_flat(CheckpointKind::OuterExact, model_name, &tensors)
}

/// A checkpoint of flat f32 tensors (name, little-endian bytes).
fn encode_flat(kind: CheckpointKind, model_name: &str, tensors: &[(String, Vec<u8>)]) -> Vec<u8> {
    let views = tensors.iter().map(|(name, data)| {
        let view = TensorView::new(Dtype::F32, vec![data.len() / 4], data).expect("shape matches data");
        (name.as_str(), view)
    });
    let metadata = HashMap::from([(METADATA_KEY.to_owned(), metadata_value(kind, model_name))]);
    safetensors::serialize(views, Some(metadata)).expect("f32 tensors always serialize")
}

/// Decodes [`encode_outer`]'s file: the momentum, and the exact parameters
/// if it holds them.
pub fn decode_outer(
    bytes: &[u8],
    model_name: &str,
    layout: &ParamLayout,
) -> Result<(Vec<f32>, Option<Vec<f32>>), CheckpointError> {
    if let Ok(momentum) = decode(bytes, CheckpointKind::OuterMomentum, model_name, layout) {
        return Ok((momentum, None));
    }
    if bytes.len() as u64 > CHECKPOINT_BYTES_MAX {
        return Err(CheckpointError::TooLarge(bytes.len() as u64));
    }
    let malformed = |message: String| CheckpointError::Malformed(message);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|error| malformed(error.to_string()))?;
    let expected = metadata_value(CheckpointKind::OuterExact, model_name);
    if header.metadata().as_ref().and_then(|metadata| metadata.get(METADATA_KEY)) != Some(&expected) {
        return Err(malformed(format!("expected outer momentum or {expected}")));
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|error| malformed(error.to_string()))?;
    let read = |name: &str| -> Result<Vec<f32>, CheckpointError> {
        let tensor = tensors.tensor(name).map_err(|_| malformed(format!("no {name} tensor")))?;
        if tensor.dtype() != Dtype::F32 || tensor.shape() != [layout.len()] {
            return Err(malformed(format!("{name} is not F32 [{}]", layout.len())));
        }
        let values: Vec<f32> = tensor
            .data()
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        match values.iter().all(|value| value.is_finite()) {
            true => Ok(values),
            false => Err(malformed(format!("{name} holds a non-finite value"))),
        }
    };
    if tensors.len() != 2 {
        return Err(malformed(format!(
            "{} tensors, expected {OUTER_EXACT} and {OUTER_MOMENTUM}",
            tensors.len()
        )));
    }
    Ok((read(OUTER_MOMENTUM)?, Some(read(OUTER_EXACT)?)))
}

const CENTER: &str = "center";
const MOMENTUM_PREFIX: &str = "momentum.";

/// Encodes an aggregator's state as flat tensors: `center`, and
/// `momentum.<worker id>` for each worker (names sort in a fixed order, so
/// the same state gives the same file).
pub fn encode_aggregator(model_name: &str, state: &AggregatorState) -> Vec<u8> {
    let mut tensors: Vec<(String, Vec<u8>)> = vec![(CENTER.to_owned(), le_bytes(&state.center))];
    tensors.extend(
        state
            .momenta
            .iter()
            .map(|(worker, momentum)| (format!("{MOMENTUM_PREFIX}{worker}"), le_bytes(momentum))),
    );
    encode_flat(CheckpointKind::Aggregator, model_name, &tensors)
}

/// Decodes an aggregator state for `model_name`, whose vectors must all
/// hold `parameters` finite values.
pub fn decode_aggregator(
    bytes: &[u8],
    model_name: &str,
    parameters: usize,
) -> Result<AggregatorState, CheckpointError> {
    if bytes.len() as u64 > CHECKPOINT_BYTES_MAX {
        return Err(CheckpointError::TooLarge(bytes.len() as u64));
    }
    let malformed = |message: String| CheckpointError::Malformed(message);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|error| malformed(error.to_string()))?;
    let expected = metadata_value(CheckpointKind::Aggregator, model_name);
    if header.metadata().as_ref().and_then(|metadata| metadata.get(METADATA_KEY)) != Some(&expected) {
        return Err(malformed(format!("expected {expected}")));
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|error| malformed(error.to_string()))?;
    let mut state = AggregatorState::default();
    for (name, tensor) in tensors.tensors() {
        if tensor.dtype() != Dtype::F32 || tensor.shape() != [parameters] {
            return Err(malformed(format!(
                "{name} is {:?} {:?}, expected F32 [{parameters}]",
                tensor.dtype(),
                tensor.shape()
            )));
        }
        let values: Vec<f32> = tensor
            .data()
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        if values.iter().any(|value| !value.is_finite()) {
            return Err(malformed(format!("{name} holds a non-finite value")));
        }
        if name == CENTER {
            state.center = values;
        } else {
            let worker = name
                .strip_prefix(MOMENTUM_PREFIX)
                .and_then(|id| id.parse::<u64>().ok())
                .ok_or_else(|| malformed(format!("unexpected tensor {name}")))?;
            state.momenta.insert(worker, values);
        }
    }
    if state.center.is_empty() {
        return Err(malformed("no center tensor".into()));
    }
    Ok(state)
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|value| value.to_le_bytes()).collect()
}

fn metadata_value(kind: CheckpointKind, model_name: &str) -> String {
    format!(
        "{{\"format\":\"crowdtrain-checkpoint-v1\",\"kind\":\"{}\",\"model\":\"{model_name}\"}}",
        kind.as_str()
    )
}

/// A directory of content-addressed files: checkpoints, and the audit
/// answers kept until their verdicts (too large to write into the database
/// on the path that closes a round; a synced file costs a fraction).
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    extension: &'static str,
}

impl Checkpoints {
    /// Safetensors checkpoints in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        Self::open_with_extension(dir, "safetensors")
    }

    /// Content-addressed files named `<hash>.<extension>` in `dir`.
    pub fn open_with_extension(dir: &Path, extension: &'static str) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| CheckpointError::Io { path: dir.to_owned(), source })?;
        Ok(Self { dir: dir.to_owned(), extension })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.{}", digest.to_hex(), self.extension))
    }

    /// Stores `bytes` under their hash and returns it, durably: the file
    /// and its name are synced before this returns. The file appears
    /// atomically (written aside, synced, renamed), so a reader never sees
    /// half a checkpoint.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, CheckpointError> {
        let digest = Digest::of(bytes);
        let path = self.path(&digest);
        // Already there, whole (a damaged copy is replaced).
        if std::fs::metadata(&path).is_ok_and(|metadata| metadata.len() == bytes.len() as u64)
            && self.get(&digest).is_ok()
        {
            return Ok(digest);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Io { path, source }
        };
        let temporary = self.dir.join(format!(".{}.partial", digest.to_hex()));
        let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(bytes).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(io(&self.dir))?;
        Ok(digest)
    }

    /// Deletes file `digest` if it is there (an audit answer once its
    /// verdict is durable and it is no longer evidence).
    pub fn remove(&self, digest: &Digest) -> Result<(), CheckpointError> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(CheckpointError::Io { path, source })
            }
            _ => Ok(()),
        }
    }

    /// The bytes of checkpoint `digest`, verified against their name.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, CheckpointError> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => CheckpointError::Missing(*digest),
            _ => CheckpointError::Io { path: path.clone(), source },
        })?;
        let found = Digest::of(&bytes);
        if found != *digest {
            return Err(CheckpointError::HashMismatch { expected: *digest, found });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use crowdtrain_train::ModelKind;

    use super::*;

    fn mlp() -> (String, ParamLayout, Vec<f32>) {
        let model = crowdtrain_train::build_model(ModelKind::Mlp);
        let params = model.layout().initialize(4);
        (model.name(), model.layout().clone(), params)
    }

    #[test]
    fn the_outer_state_round_trips_with_and_without_the_exact_model() {
        let (name, layout, params) = mlp();
        let momentum: Vec<f32> = params.iter().map(|value| value * 0.5).collect();
        let plain = encode_outer(&name, &layout, &momentum, None);
        assert_eq!(
            plain,
            encode(CheckpointKind::OuterMomentum, &name, &layout, &momentum),
            "as it always was"
        );
        assert_eq!(decode_outer(&plain, &name, &layout).unwrap(), (momentum.clone(), None));
        let apart = encode_outer(&name, &layout, &momentum, Some(&params));
        assert_eq!(decode_outer(&apart, &name, &layout).unwrap(), (momentum.clone(), Some(params.clone())));
        assert!(decode_outer(&apart, "another", &layout).is_err());
        assert!(
            decode_outer(&encode(CheckpointKind::Params, &name, &layout, &params), &name, &layout).is_err()
        );
    }

    #[test]
    fn encoding_is_deterministic_and_round_trips() {
        let (name, layout, params) = mlp();
        let bytes = encode(CheckpointKind::Params, &name, &layout, &params);
        assert_eq!(bytes, encode(CheckpointKind::Params, &name, &layout, &params));
        assert_eq!(decode(&bytes, CheckpointKind::Params, &name, &layout).unwrap(), params);
    }

    #[test]
    fn the_wrong_kind_model_shape_or_values_are_refused() {
        let (name, layout, mut params) = mlp();
        let bytes = encode(CheckpointKind::Params, &name, &layout, &params);
        assert!(decode(&bytes, CheckpointKind::OuterMomentum, &name, &layout).is_err());
        assert!(decode(&bytes, CheckpointKind::Params, "cnn-16-32-10", &layout).is_err());
        let cnn = crowdtrain_train::build_model(ModelKind::Cnn);
        assert!(decode(&bytes, CheckpointKind::Params, &name, cnn.layout()).is_err());
        assert!(decode(&bytes[..bytes.len() - 1], CheckpointKind::Params, &name, &layout).is_err());
        assert!(decode(b"garbage", CheckpointKind::Params, &name, &layout).is_err());
        params[17] = f32::NAN;
        let poisoned = encode(CheckpointKind::Params, &name, &layout, &params);
        let error = decode(&poisoned, CheckpointKind::Params, &name, &layout).unwrap_err();
        assert!(error.to_string().contains("value 17"), "{error}");
    }

    #[test]
    fn aggregator_states_round_trip_and_bad_ones_are_refused() {
        let mut state = AggregatorState { center: vec![1.0, 2.0, 3.0], ..AggregatorState::default() };
        state.momenta.insert(4, vec![0.5, 0.25, -1.0]);
        state.momenta.insert(12, vec![7.0, 8.0, 9.0]);
        let bytes = encode_aggregator("mlp", &state);
        assert_eq!(bytes, encode_aggregator("mlp", &state), "deterministic");
        assert_eq!(decode_aggregator(&bytes, "mlp", 3).unwrap(), state);
        assert!(decode_aggregator(&bytes, "cnn", 3).is_err(), "another model's");
        assert!(decode_aggregator(&bytes, "mlp", 4).is_err(), "another size");
        let (name, layout, params) = mlp();
        let params_file = encode(CheckpointKind::Params, &name, &layout, &params);
        assert!(decode_aggregator(&params_file, &name, params.len()).is_err(), "another kind");
        state.center[1] = f32::INFINITY;
        assert!(decode_aggregator(&encode_aggregator("mlp", &state), "mlp", 3).is_err());
    }

    #[test]
    fn files_are_named_by_content_and_verified_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::open(dir.path()).unwrap();
        let digest = store.put(b"some checkpoint bytes").unwrap();
        assert_eq!(digest, Digest::of(b"some checkpoint bytes"));
        assert_eq!(store.get(&digest).unwrap(), b"some checkpoint bytes");
        assert!(matches!(store.get(&Digest::of(b"other")), Err(CheckpointError::Missing(_))));
        std::fs::write(store.path(&digest), b"tampered bytes here!!").unwrap();
        assert!(matches!(store.get(&digest), Err(CheckpointError::HashMismatch { .. })));
        // Damaged with its length intact: writing the bytes again repairs it.
        std::fs::write(store.path(&digest), b"some checkpoint bytez").unwrap();
        assert_eq!(store.put(b"some checkpoint bytes").unwrap(), digest);
        assert_eq!(store.get(&digest).unwrap(), b"some checkpoint bytes");
    }
}
