//! Ed25519 identities: key files, signatures, and the domain separation
//! that keeps a signature for one purpose from being valid for another.
//!
//! A key file is two lines of text, a header and the 32-byte secret seed in
//! hex, created with mode 0600 and refused if anyone but its owner can
//! read it (as ssh does): a leaked worker key lets anyone submit in its name.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const KEY_FILE_HEADER: &str = "crowdtrain ed25519 secret key v1";

/// Why a key could not be created, read or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
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

/// A public key, shown and parsed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Checks `signature` over `message` in `domain`, strictly (no
    /// malleable or small-order forms).
    pub fn verify(
        &self,
        domain: &str,
        message: &[u8],
        signature: &SignatureBytes,
    ) -> Result<(), BadSignature> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| BadSignature)?;
        let signature = Signature::from_bytes(&signature.0);
        key.verify_strict(&domain_message(domain, message), &signature).map_err(|_| BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl From<PublicKey> for String {
    fn from(key: PublicKey) -> Self {
        key.to_hex()
    }
}

impl TryFrom<String> for PublicKey {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| "a public key is 64 hex digits".to_owned())?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_owned())?;
        Ok(Self(bytes))
    }
}

/// A signature, shown and parsed as 128 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

impl From<SignatureBytes> for String {
    fn from(signature: SignatureBytes) -> Self {
        hex::encode(signature.0)
    }
}

impl TryFrom<String> for SignatureBytes {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::str::FromStr for SignatureBytes {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| "a signature is 128 hex digits".to_owned())?;
        Ok(Self(bytes))
    }
}

/// A signature that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad signature")]
pub struct BadSignature;

/// A signing identity.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public_key())
    }
}

impl Identity {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| IdentityError::Entropy(error.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// A key from a known seed (for tests and simulations only).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&seed) }
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` in `domain`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> SignatureBytes {
        SignatureBytes(self.key.sign(&domain_message(domain, message)).to_bytes())
    }

    /// Writes the key to a new file with mode 0600; never overwrites.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let write_error = |source| IdentityError::Write { path: path.to_owned(), source };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists { path: path.to_owned() },
            _ => write_error(source),
        })?;
        writeln!(file, "{KEY_FILE_HEADER}\n{}", hex::encode(self.key.to_bytes())).map_err(write_error)?;
        file.sync_all().map_err(write_error)
    }

    /// Reads a key file written by [`Identity::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let read_error = |source| IdentityError::Read { path: path.to_owned(), source };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path: path.to_owned(), mode });
            }
        }
        let malformed = |reason| IdentityError::Malformed { path: path.to_owned(), reason };
        if metadata.len() > 4096 {
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
        Ok(Self::from_seed(seed))
    }
}

/// The bytes actually signed: a length-prefixed domain, then the message.
fn domain_message(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + domain.len() + message.len());
    bytes.extend_from_slice(&(domain.len() as u64).to_le_bytes());
    bytes.extend_from_slice(domain.as_bytes());
    bytes.extend_from_slice(message);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_key_domain_and_message() {
        let alice = Identity::from_seed([1; 32]);
        let bob = Identity::from_seed([2; 32]);
        let signature = alice.sign("greeting", b"hello");
        assert_eq!(alice.public_key().verify("greeting", b"hello", &signature), Ok(()));
        assert_eq!(bob.public_key().verify("greeting", b"hello", &signature), Err(BadSignature));
        assert_eq!(alice.public_key().verify("farewell", b"hello", &signature), Err(BadSignature));
        assert_eq!(alice.public_key().verify("greeting", b"hellO", &signature), Err(BadSignature));
        let mut flipped = signature;
        flipped.0[10] ^= 1;
        assert_eq!(alice.public_key().verify("greeting", b"hello", &flipped), Err(BadSignature));
    }

    #[test]
    fn key_files_round_trip_with_private_permissions_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.key");
        let identity = Identity::generate().unwrap();
        identity.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(Identity::load(&path).unwrap().public_key(), identity.public_key());
        assert!(matches!(Identity::generate().unwrap().save(&path), Err(IdentityError::Exists { .. })));
        assert_eq!(Identity::load(&path).unwrap().public_key(), identity.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn readable_or_malformed_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.key");
        Identity::generate().unwrap().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Identity::load(&path), Err(IdentityError::Permissions { mode: 0o644, .. })));
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Identity::load(&path), Err(IdentityError::Malformed { .. })));
    }

    #[test]
    fn public_keys_parse_from_hex_and_reject_junk() {
        let key = Identity::from_seed([9; 32]).public_key();
        assert_eq!(key.to_hex().parse::<PublicKey>().unwrap(), key);
        assert!("zz".parse::<PublicKey>().is_err());
        assert!("00".repeat(31).parse::<PublicKey>().is_err());
    }
}
