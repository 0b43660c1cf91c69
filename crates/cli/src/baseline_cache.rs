//! `sim diloco --baseline-cache DIR`: the synchronous baseline kept on disk,
//! so experiments that vary only DiLoCo's side (the outer step, the inner
//! state, the delay, the codec) train it once. At the GPT's budget the
//! baseline is half of a run's CPU.
//!
//! An entry is named by [`diloco::baseline_key`], which covers the data,
//! everything in the configuration the baseline reads, and this executable's
//! hash: a baseline is bits, and a rebuilt binary may compute other bits, so
//! it never reuses another build's. A file is read as untrusted input: one
//! that does not decode, names another key or has the wrong shape is
//! reported and trained again, never believed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use crowdtrain_train::diloco::{self, BaselineRun, DilocoConfig};
use serde::{Deserialize, Serialize};

/// A directory of baselines, for this executable.
pub struct BaselineCache {
    dir: PathBuf,
    build: [u8; 32],
}

/// What one file holds: the key it answers, and the baseline.
#[derive(Serialize, Deserialize)]
struct Entry {
    key: [u8; 32],
    run: BaselineRun,
}

/// Where a run's baseline came from, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct CacheUse {
    /// The entry's file.
    pub path: PathBuf,
    /// Whether the baseline was read from it (else trained and written).
    pub reused: bool,
}

impl BaselineCache {
    /// The cache in `dir` (created on first write), keyed by this
    /// executable's hash.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let exe =
            std::env::current_exe().context("could not find this executable to key the baseline cache")?;
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(
                std::fs::File::open(&exe).with_context(|| format!("could not read {}", exe.display()))?,
            )
            .with_context(|| format!("could not read {}", exe.display()))?;
        Ok(Self { dir: dir.to_owned(), build: *hasher.finalize().as_bytes() })
    }

    /// The key and file of `config`'s baseline on data with
    /// `data_fingerprint`.
    pub fn entry(&self, config: &DilocoConfig, data_fingerprint: [u8; 32]) -> ([u8; 32], PathBuf) {
        let key = diloco::baseline_key(config, data_fingerprint, self.build);
        let name = format!("baseline-{}.postcard", &blake3::Hash::from_bytes(key).to_hex()[..32]);
        (key, self.dir.join(name))
    }

    /// The baseline stored for `key`, if a usable one is: a missing file is
    /// `None`; an unreadable or foreign one is `None` with a warning on
    /// stderr (the run then trains the baseline and replaces the file).
    /// [`diloco::simulate_with`] checks its shape against the run.
    pub fn load(&self, key: [u8; 32], path: &Path) -> Option<BaselineRun> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                eprintln!(
                    "warning: could not read the cached baseline {}: {error}; training it",
                    path.display()
                );
                return None;
            }
        };
        match postcard::from_bytes::<Entry>(&bytes) {
            Ok(entry) if entry.key == key => Some(entry.run),
            Ok(_) => {
                eprintln!("warning: {} is the baseline of another run; training this one's", path.display());
                None
            }
            Err(error) => {
                eprintln!("warning: {} is not a cached baseline ({error}); training it", path.display());
                None
            }
        }
    }

    /// Writes `run` as `key`'s baseline, atomically (a temporary file
    /// renamed into place), so a reader never sees half an entry.
    pub fn store(&self, key: [u8; 32], path: &Path, run: BaselineRun) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("could not create {}", self.dir.display()))?;
        let bytes = postcard::to_allocvec(&Entry { key, run }).context("could not encode the baseline")?;
        let temporary = path.with_extension(format!("{}.partial", std::process::id()));
        std::fs::write(&temporary, bytes)
            .with_context(|| format!("could not write {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| format!("could not write {}", path.display()))
    }
}
