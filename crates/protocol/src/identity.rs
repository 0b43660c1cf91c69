//! Ed25519 identities: keys, signatures, and the domain separation that
//! keeps a signature for one purpose from being valid for another. Key
//! files are the node's (`crowdtrain_node::files`).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

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
        self.verifier()?.verify(domain, message, signature)
    }

    /// The key decompressed once, for checking many signatures by it (a
    /// ledger's entries): decompressing the curve point is a good part of
    /// each check.
    pub fn verifier(&self) -> Result<Verifier, BadSignature> {
        VerifyingKey::from_bytes(&self.0).map(Verifier).map_err(|_| BadSignature)
    }
}

/// A [`PublicKey`] ready to check signatures ([`PublicKey::verifier`]).
#[derive(Debug, Clone)]
pub struct Verifier(VerifyingKey);

impl Verifier {
    /// As [`PublicKey::verify`].
    pub fn verify(
        &self,
        domain: &str,
        message: &[u8],
        signature: &SignatureBytes,
    ) -> Result<(), BadSignature> {
        let signature = Signature::from_bytes(&signature.0);
        self.0.verify_strict(&domain_message(domain, message), &signature).map_err(|_| BadSignature)
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
    /// The key of a 32-byte secret seed. Where the seed comes from (the
    /// OS's randomness for a real key, a constant in tests and
    /// simulations) is the caller's business: this crate does no I/O.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&seed) }
    }

    /// The secret seed, for writing the key to its file.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` in `domain`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> SignatureBytes {
        SignatureBytes(self.key.sign(&domain_message(domain, message)).to_bytes())
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
    fn public_keys_parse_from_hex_and_reject_junk() {
        let key = Identity::from_seed([9; 32]).public_key();
        assert_eq!(key.to_hex().parse::<PublicKey>().unwrap(), key);
        assert!("zz".parse::<PublicKey>().is_err());
        assert!("00".repeat(31).parse::<PublicKey>().is_err());
    }
}
