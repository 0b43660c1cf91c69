//! The worker's error-feedback residual, kept on disk beside its model
//! cache: under a lossy codec (top-k, q4, q2) what the encoder has not sent
//! yet is training state that every commitment names
//! ([`crowdtrain_protocol::Commitment::residual_out`]), so a restarted
//! worker continues its chain instead of dropping it.
//!
//! The file is the residual's little-endian `f32` values followed by its
//! [`residual_digest`], written to a temporary file and renamed over the
//! old one, so it is whole or absent. One that is missing, damaged or of
//! another model's size reads as the zero residual: a fresh start, which
//! the coordinator always accepts (it only drops what was not sent yet).
//! A file that is whole but older than the coordinator's chain (the
//! worker stopped after a commitment was accepted and before it wrote)
//! gets the commitment refused with `residual-chain`, and the worker
//! starts again from zero.

use std::path::{Path, PathBuf};

use crowdtrain_protocol::audit::residual_digest;
use crowdtrain_protocol::{Digest, WorkerId};

use crate::NodeError;

/// Where one worker keeps its residual in one run.
#[derive(Debug, Clone)]
pub struct ResidualFile {
    path: PathBuf,
    parameters: usize,
}

impl ResidualFile {
    /// The residual file of `worker` in `run` under `dir` (the worker's
    /// cache), for a model of `parameters` values.
    pub fn new(dir: &Path, run: &Digest, worker: WorkerId, parameters: usize) -> Self {
        Self { path: dir.join(format!("residual-{}-{}.f32", run.to_hex(), worker.0)), parameters }
    }

    /// The residual saved last; empty (zero) if there is none, or none
    /// whole and of the model's size.
    pub fn load(&self) -> Vec<f32> {
        let Ok(bytes) = std::fs::read(&self.path) else { return Vec::new() };
        if bytes.len() != self.parameters * 4 + 32 {
            return Vec::new();
        }
        let (values, digest) = bytes.split_at(self.parameters * 4);
        let residual: Vec<f32> = values
            .chunks_exact(4)
            .map(|value| f32::from_le_bytes(value.try_into().expect("4 bytes")))
            .collect();
        if residual_digest(&residual).0.as_slice() != digest {
            return Vec::new();
        }
        residual
    }

    /// Makes `residual` the one [`load`](Self::load) returns; the empty
    /// residual removes the file.
    pub fn save(&self, residual: &[f32]) -> Result<(), NodeError> {
        if residual.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(NodeError::io(format!("could not remove {}", self.path.display()), error))
                }
                _ => Ok(()),
            };
        }
        let mut bytes = Vec::with_capacity(residual.len() * 4 + 32);
        for value in residual {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&residual_digest(residual).0);
        let partial = self.path.with_extension("partial");
        std::fs::write(&partial, &bytes)
            .and_then(|()| std::fs::rename(&partial, &self.path))
            .map_err(|error| NodeError::io(format!("could not write {}", self.path.display()), error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_residual_loads_bit_for_bit_and_anything_else_loads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let run = Digest::of(b"run");
        let file = ResidualFile::new(dir.path(), &run, WorkerId(3), 3);
        assert!(file.load().is_empty(), "none yet: zero");
        let residual = [0.25f32, -0.0, 1e-30];
        file.save(&residual).unwrap();
        let loaded = file.load();
        assert_eq!(
            loaded.iter().map(|value| value.to_bits()).collect::<Vec<_>>(),
            residual.iter().map(|value| value.to_bits()).collect::<Vec<_>>()
        );
        assert!(ResidualFile::new(dir.path(), &run, WorkerId(4), 3).load().is_empty(), "another worker's");
        assert!(ResidualFile::new(dir.path(), &run, WorkerId(3), 4).load().is_empty(), "another model size");

        let path = dir.path().join(format!("residual-{}-3.f32", run.to_hex()));
        let mut damaged = std::fs::read(&path).unwrap();
        damaged[1] ^= 1;
        std::fs::write(&path, damaged).unwrap();
        assert!(file.load().is_empty(), "a damaged file is a fresh start");

        file.save(&residual).unwrap();
        file.save(&[]).unwrap();
        assert!(file.load().is_empty() && !path.exists(), "saving zero removes it");
        file.save(&[]).unwrap();
    }
}
