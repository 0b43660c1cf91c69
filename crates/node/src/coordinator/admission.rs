//! Admission on the coordinator's side: the token secret in the state
//! directory, the allow-list file, and the check a registration of a new
//! key passes before the state machine sees it (the machine then binds a
//! token to the one key that used it). See `crowdtrain_protocol::admission`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crowdtrain_protocol::PublicKey;
use crowdtrain_protocol::admission::{AdmissionToken, TokenId, parse_allow_list};
use crowdtrain_protocol::config::{AdmissionMode, AdmissionSection};
use crowdtrain_protocol::wire::ErrorCode;

use super::{Failure, load_or_create_secret};
use crate::NodeError;

/// The admission secret's file in the state directory.
pub const SECRET_FILE: &str = "admission.secret";

/// An allow-list file too large to be one is refused.
const ALLOW_LIST_BYTES_MAX: u64 = 64 * 1024 * 1024;

pub struct Admission {
    mode: AdmissionMode,
    secret: [u8; 32],
    allow_list: Option<AllowList>,
}

/// The allow-list file and the keys read from it, re-read when it changes.
struct AllowList {
    path: PathBuf,
    read: Mutex<Listed>,
}

/// The keys of an allow-list, as of the file's modification time.
type Listed = (Option<SystemTime>, BTreeSet<PublicKey>);

impl Admission {
    pub fn open(config: &AdmissionSection, state_dir: &Path) -> Result<Self, NodeError> {
        let secret = load_or_create_secret(&state_dir.join(SECRET_FILE))?;
        let allow_list = config
            .allow_list
            .as_ref()
            .map(|path| AllowList { path: path.clone(), read: Mutex::new((None, BTreeSet::new())) });
        let admission = Self { mode: config.mode, secret, allow_list };
        if let Some(list) = &admission.allow_list {
            // A missing or malformed list is an operator's mistake: say so
            // at start rather than refuse every worker.
            drop(list.read().map_err(|reason| NodeError::io(reason, std::io::Error::other("allow-list")))?);
        }
        Ok(admission)
    }

    pub fn mode(&self) -> AdmissionMode {
        self.mode
    }

    /// Whether a *new* key may register with `token`: the token's id to
    /// bind to it, if the run admits by token.
    pub fn check(&self, key: &PublicKey, token: Option<&str>) -> Result<Option<TokenId>, Failure> {
        match self.mode {
            AdmissionMode::Open => Ok(None),
            // In a bonded run a token is the operator's receipt for a bond.
            AdmissionMode::Token | AdmissionMode::Bond => {
                let text = token.ok_or_else(|| {
                    let what = if self.mode == AdmissionMode::Bond {
                        "by bond: post the run's bond with its operator, who issues a token for it"
                    } else {
                        "by token: ask its operator for one"
                    };
                    Failure::new(
                        ErrorCode::NotAdmitted,
                        format!(
                            "this run admits workers {what} (`crowdtrain admission token`), and start the worker \
                             with --admission-token"
                        ),
                    )
                })?;
                let token = AdmissionToken::parse(text).map_err(|reason| {
                    Failure::new(
                        ErrorCode::NotAdmitted,
                        format!("the admission token is malformed: {reason}"),
                    )
                })?;
                if !token.verify(&self.secret) {
                    return Err(Failure::new(
                        ErrorCode::NotAdmitted,
                        "the admission token was not issued for this run",
                    ));
                }
                Ok(Some(token.id))
            }
            AdmissionMode::AllowList => {
                let list = self.allow_list.as_ref().expect("validated: allow-list mode names a file");
                if list.read().map_err(Failure::internal)?.1.contains(key) {
                    Ok(None)
                } else {
                    Err(Failure::new(
                        ErrorCode::NotAdmitted,
                        format!(
                            "key {key} is not on this run's allow-list (yet); ask its operator to add it"
                        ),
                    ))
                }
            }
        }
    }
}

impl AllowList {
    /// The keys in the file, read again if it changed since.
    fn read(&self) -> Result<std::sync::MutexGuard<'_, Listed>, String> {
        let describe = |error: std::io::Error| format!("allow-list {}: {error}", self.path.display());
        let metadata = std::fs::metadata(&self.path).map_err(describe)?;
        if metadata.len() > ALLOW_LIST_BYTES_MAX {
            return Err(format!(
                "allow-list {} is larger than {ALLOW_LIST_BYTES_MAX} bytes",
                self.path.display()
            ));
        }
        let modified = metadata.modified().ok();
        let mut read = self.read.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if read.0.is_none() || read.0 != modified {
            let text = std::fs::read_to_string(&self.path).map_err(describe)?;
            let keys = parse_allow_list(&text)
                .map_err(|reason| format!("allow-list {}: {reason}", self.path.display()))?;
            *read = (modified, keys);
        }
        Ok(read)
    }
}

/// Issues `count` admission tokens for the run in `state_dir` (creating
/// its admission secret if the coordinator has not yet).
pub fn issue_tokens(state_dir: &Path, count: usize) -> Result<Vec<AdmissionToken>, NodeError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|error| NodeError::io(format!("could not create {}", state_dir.display()), error))?;
    let secret = load_or_create_secret(&state_dir.join(SECRET_FILE))?;
    (0..count)
        .map(|_| {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).map_err(|error| {
                NodeError::io(
                    "the operating system's random number generator",
                    std::io::Error::other(error.to_string()),
                )
            })?;
            Ok(AdmissionToken::issue(&secret, TokenId(id)))
        })
        .collect()
}
