//! The published model deltas (`[outer] broadcast`): the newest few, by
//! the model they make, in memory for serving and in content-addressed
//! files so a restarted coordinator serves them again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crowdtrain_protocol::Digest;
use crowdtrain_store::delta::ModelDelta;
use crowdtrain_store::{CheckpointError, Checkpoints};

/// Deltas kept: a worker more rounds behind than this downloads the full
/// model (it would download more than a model's worth of deltas anyway
/// well before it were this far behind, for a 4x codec).
pub const DELTAS_KEPT: usize = 4;

/// By target model: the round it was published in, and the delta's bytes.
type Kept = BTreeMap<Digest, (u64, Arc<Vec<u8>>)>;

/// Delta files and the newest [`DELTAS_KEPT`] deltas, by target model.
#[derive(Debug, Clone)]
pub struct Deltas {
    files: Checkpoints,
    kept: Arc<Mutex<Kept>>,
}

impl Deltas {
    /// The delta files in `dir`, the newest kept (any others, and any that
    /// do not parse, deleted).
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let files = Checkpoints::open_with_extension(dir, "delta")?;
        let deltas = Self { files, kept: Default::default() };
        let entries =
            std::fs::read_dir(dir).map_err(|source| CheckpointError::Io { path: dir.to_owned(), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(digest) = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .filter(|_| path.extension().is_some_and(|extension| extension == "delta"))
                .and_then(|stem| stem.parse::<Digest>().ok())
            else {
                continue;
            };
            match deltas
                .files
                .get(&digest)
                .ok()
                .and_then(|bytes| Some((ModelDelta::decode(&bytes).ok()?, bytes)))
            {
                Some((delta, bytes)) => deltas.insert(delta.round, delta.target, Arc::new(bytes)),
                None => deltas.files.remove(&digest)?,
            }
        }
        Ok(deltas)
    }

    /// Keeps `bytes`, the delta to `target` published after `round` outer
    /// steps, deleting the oldest delta (and its file) beyond the limit.
    pub fn insert(&self, round: u64, target: Digest, bytes: Arc<Vec<u8>>) {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.insert(target, (round, bytes));
        while kept.len() > DELTAS_KEPT {
            let oldest = *kept.iter().min_by_key(|(_, (round, _))| *round).expect("not empty").0;
            if let Some((_, bytes)) = kept.remove(&oldest)
                && let Err(error) = self.files.remove(&Digest::of(&bytes))
            {
                tracing::warn!(%error, "could not delete an old model delta");
            }
        }
    }

    /// Writes a delta's file, durably.
    pub fn write(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.files.put(bytes).map(drop)
    }

    /// The delta that makes model `target`, if it is among the newest.
    pub fn get(&self, target: &Digest) -> Option<Arc<Vec<u8>>> {
        let kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.get(target).map(|(_, bytes)| Arc::clone(bytes))
    }
}
