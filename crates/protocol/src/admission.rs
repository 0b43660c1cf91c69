//! Who may become a worker of a run (`[admission]` in `run.toml`).
//!
//! Registering costs a worker nothing, so on the open internet anyone could
//! register thousands of keys and have the run wait for them. A run
//! therefore admits workers one of three ways:
//!
//! - `token` (the default): the operator issues admission tokens
//!   (`crowdtrain admission token --state DIR`) and hands one to each
//!   worker. A token is an id with a keyed BLAKE3 MAC of it under a secret
//!   that never leaves the coordinator's state directory, so the
//!   coordinator checks a token without having stored it; what it stores
//!   is which key used it, so that a token admits one key only.
//! - `allow-list`: a file of worker public keys, one per line (re-read when
//!   it changes, so keys can be added while the run goes on).
//! - `open`: anyone (for runs on a trusted network, and tests).
//!
//! - `bond`: by token, where the operator issues a token only against a
//!   bond of `audit.bond` work units collected off the run (money, a
//!   deposit in whatever the run pays in). Registering with it records the
//!   bond as deposited in the ledger (`bond-deposited`); slashes draw on it
//!   once the worker's escrowed credits are gone, and a worker whose bond
//!   cannot cover another stake gets no work (`crate::collateral`).
//!
//! The parsers here take untrusted text and only return values or errors.

use std::collections::BTreeSet;
use std::fmt;

use crate::identity::PublicKey;

/// What a token's MAC is keyed by, beside the run's secret.
const TOKEN_CONTEXT: &str = "crowdtrain 2026-12 admission token v1";
/// The prefix of a token's text, so a token is recognisable as one.
const TOKEN_PREFIX: &str = "ctadm1";

/// A token's id: 16 random bytes, chosen by the operator's tool.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TokenId(pub [u8; 16]);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl std::str::FromStr for TokenId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| "a token id is 32 hex digits".to_owned())?;
        Ok(Self(bytes))
    }
}

/// An admission token: `ctadm1.<id hex>.<MAC hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdmissionToken {
    pub id: TokenId,
    mac: blake3::Hash,
}

impl fmt::Debug for AdmissionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The MAC is the secret part: never in logs.
        write!(f, "AdmissionToken({})", self.id)
    }
}

impl fmt::Display for AdmissionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.id, self.mac.to_hex())
    }
}

impl AdmissionToken {
    /// The token with id `id` under the run's admission `secret`.
    pub fn issue(secret: &[u8; 32], id: TokenId) -> Self {
        Self { id, mac: mac(secret, &id) }
    }

    /// Parses a token's text (untrusted: any string).
    pub fn parse(text: &str) -> Result<Self, String> {
        let malformed = || format!("an admission token is {TOKEN_PREFIX}.<32 hex digits>.<64 hex digits>");
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(id), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let id = id.parse().map_err(|_| malformed())?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| malformed())?;
        Ok(Self { id, mac })
    }

    /// Whether the run's admission `secret` issued this token (in constant
    /// time: `blake3::Hash` compares so).
    pub fn verify(&self, secret: &[u8; 32]) -> bool {
        mac(secret, &self.id) == self.mac
    }
}

fn mac(secret: &[u8; 32], id: &TokenId) -> blake3::Hash {
    let key = blake3::derive_key(TOKEN_CONTEXT, secret);
    blake3::keyed_hash(&key, &id.0)
}

/// The public keys of an allow-list file: one hex key per line; blank
/// lines and text after `#` are ignored. Names the first bad line.
pub fn parse_allow_list(text: &str) -> Result<BTreeSet<PublicKey>, String> {
    let mut keys = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let key = line.parse().map_err(|reason| format!("line {}: {reason}", index + 1))?;
        keys.insert(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn tokens_verify_only_under_the_secret_that_issued_them_and_survive_text() {
        let secret = [7; 32];
        let token = AdmissionToken::issue(&secret, TokenId([1; 16]));
        assert!(token.verify(&secret));
        assert!(!token.verify(&[8; 32]), "another run's secret");
        let parsed = AdmissionToken::parse(&token.to_string()).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.verify(&secret));
        let forged = AdmissionToken { id: TokenId([2; 16]), ..token.clone() };
        assert!(!forged.verify(&secret), "a MAC is for its id only");
        assert!(!format!("{token:?}").contains(&token.mac.to_hex().to_string()), "the MAC is never logged");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = AdmissionToken::issue(&[7; 32], TokenId([1; 16])).to_string();
        for text in
            ["", "ctadm1", "ctadm1..", &good.replace("ctadm1", "ctadm2"), &format!("{good}.x"), &good[..50]]
        {
            assert!(AdmissionToken::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn allow_lists_take_keys_and_comments_and_name_a_bad_line() {
        let (a, b) = (Identity::from_seed([1; 32]).public_key(), Identity::from_seed([2; 32]).public_key());
        let text = format!("# workers\n{a}\n\n  {b}  # lab B\n");
        assert_eq!(parse_allow_list(&text).unwrap(), [a, b].into_iter().collect());
        let error = parse_allow_list(&format!("{a}\nnot a key\n")).unwrap_err();
        assert!(error.starts_with("line 2"), "{error}");
    }
}
