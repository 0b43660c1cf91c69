//! The files a node reads and writes besides its state: key files and the
//! run configuration. The protocol crate parses and signs; reading files,
//! checking their permissions and drawing fresh keys from the operating
//! system happen here, at the edge.
//!
//! A key file is two lines of text, a header and the 32-byte secret seed in
//! hex, created with mode 0600 and refused if anyone but its owner can
//! read it (as ssh does): a leaked worker key lets anyone submit in its
//! name.

use std::io::Write;
use std::path::{Path, PathBuf};

use crowdtrain_contract::scenario::SCENARIO_BYTES_MAX;
use crowdtrain_protocol::config::{CONFIG_BYTES_MAX, ConfigError};
use crowdtrain_protocol::{Identity, RunConfig};

const KEY_FILE_HEADER: &str = "crowdtrain ed25519 secret key v1";

/// A key file larger than this is not a key file.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// Why a key could not be created, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("could not write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("could not read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a crowdtrain key file: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("{path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the operating system's random number generator failed: {0}")]
    Entropy(String),
}

/// A fresh key from the operating system's randomness.
pub fn generate_identity() -> Result<Identity, KeyFileError> {
    Ok(Identity::from_seed(random_bytes()?))
}

/// 32 bytes from the operating system's randomness.
pub fn random_bytes() -> Result<[u8; 32], KeyFileError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| KeyFileError::Entropy(error.to_string()))?;
    Ok(bytes)
}

/// Writes `identity` to a new file with mode 0600; never overwrites.
pub fn save_identity(identity: &Identity, path: &Path) -> Result<(), KeyFileError> {
    let write_error = |source| KeyFileError::Write { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.to_owned() },
        _ => write_error(source),
    })?;
    writeln!(file, "{KEY_FILE_HEADER}\n{}", hex::encode(identity.seed())).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// Reads a key file written by [`save_identity`].
pub fn load_identity(path: &Path) -> Result<Identity, KeyFileError> {
    let read_error = |source| KeyFileError::Read { path: path.to_owned(), source };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path: path.to_owned(), mode });
        }
    }
    let malformed = |reason| KeyFileError::Malformed { path: path.to_owned(), reason };
    if metadata.len() > KEY_FILE_BYTES_MAX {
        return Err(malformed("too large"));
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let mut lines = text.lines();
    if lines.next() != Some(KEY_FILE_HEADER) {
        return Err(malformed("missing header line"));
    }
    let mut seed = [0u8; 32];
    let body = lines.next().ok_or_else(|| malformed("missing key line"))?;
    hex::decode_to_slice(body.trim(), &mut seed)
        .map_err(|_| malformed("the key line is not 64 hex digits"))?;
    Ok(Identity::from_seed(seed))
}

/// Reads, parses and validates a `run.toml`; a file over
/// [`CONFIG_BYTES_MAX`] is refused before it is read.
pub fn load_config(path: &Path) -> Result<RunConfig, ConfigError> {
    let read_error = |source| ConfigError::Read { path: path.to_owned(), source };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > CONFIG_BYTES_MAX {
        return Err(ConfigError::TooLarge { path: path.to_owned(), size });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let mut config = RunConfig::parse(&text).map_err(|error| match error {
        ConfigError::Parse(message) => ConfigError::Parse(format!("{}: {message}", path.display())),
        other => other,
    })?;
    if let Some(contract) = &config.contract
        && let Some(scenario) = &contract.scenario
    {
        let scenario = path.parent().unwrap_or(Path::new(".")).join(scenario);
        let read_error = |source| ConfigError::Read { path: scenario.clone(), source };
        let size = std::fs::metadata(&scenario).map_err(read_error)?.len();
        if size > SCENARIO_BYTES_MAX {
            return Err(ConfigError::Invalid {
                field: "contract.scenario".into(),
                reason: format!(
                    "{} is {size} bytes; a scenario is at most {SCENARIO_BYTES_MAX}",
                    scenario.display()
                ),
            });
        }
        let text = std::fs::read_to_string(&scenario).map_err(read_error)?;
        let inline = contract.with_scenario_text(&text).map_err(|reason| ConfigError::Invalid {
            field: "contract.scenario".into(),
            reason: format!("{}: {reason}", scenario.display()),
        })?;
        config.contract = Some(inline);
        config.validate()?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_with_private_permissions_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.key");
        let identity = generate_identity().unwrap();
        save_identity(&identity, &path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(load_identity(&path).unwrap().public_key(), identity.public_key());
        let other = generate_identity().unwrap();
        assert!(matches!(save_identity(&other, &path), Err(KeyFileError::Exists { .. })));
        assert_eq!(load_identity(&path).unwrap().public_key(), identity.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn readable_or_malformed_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.key");
        save_identity(&generate_identity().unwrap(), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_identity(&path), Err(KeyFileError::Permissions { mode: 0o644, .. })));
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load_identity(&path), Err(KeyFileError::Malformed { .. })));
    }

    #[test]
    fn oversized_or_missing_configurations_are_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, " ".repeat(CONFIG_BYTES_MAX as usize + 1)).unwrap();
        assert!(matches!(load_config(&path), Err(ConfigError::TooLarge { .. })));
        let error = load_config(&dir.path().join("missing.toml")).unwrap_err();
        assert!(error.to_string().contains("missing.toml"), "{error}");
    }
}
