//! `run.toml`: everything that defines a training run.
//!
//! The file is parsed strictly (unknown fields are errors, so a typo cannot
//! silently fall back to a default) and then validated; every error names
//! the field, as `round.quorum`, so the operator knows what to fix.
//!
//! ```toml
//! rounds = 20       # aggregated rounds to run
//!
//! [training]        # what every worker computes each round
//! seed = 0          # initialisation, shards and batches derive from it
//! model = "mlp"     # or "cnn"
//! inner_steps = 50
//! batch_size = 64
//! codec = "int8"    # pseudo-gradient encoding: "int8", "f32", "q4", "q2" or "topk:DENSITY+VALUES" (e.g. "topk:0.02+q4")
//! sharding = "iid"  # or "dirichlet:0.5"
//! validation_fraction = 0.05  # held out of every shard; updates are scored on it
//!
//! [training.optimizer]  # the inner AdamW, fresh every round
//! lr = 0.001
//!
//! [outer]           # the coordinator's Nesterov step
//! lr = 0.7
//! momentum = 0.9
//! broadcast = "full"  # or "int8": workers holding the previous model download
//!                     # the encoded change (the coordinator keeps the exact
//!                     # model and carries what the codec lost into later rounds)
//! delay = 0           # 1: round r + 1 trains from the model before round r's
//!                     # outer step, so workers never wait for the network; d
//!                     # (up to 4): round r + d does, for links slower than d
//!                     # rounds' training; each round of delay keeps one more
//!                     # round live and wants a gentler outer step (not with
//!                     # an error-feedback codec; `eager` in sim only)
//! warmup = 0          # outer steps over which the outer lr ramps up linearly
//!
//! [data]            # optional
//! dir = "/usr/share/datasets/fashion-mnist"
//!
//! [round]
//! deadline_ms = 60000  # training: commitments are due by then (a round opened
//!                      # ahead of k others under `[outer] delay`: k + 1 times it)
//! reveal_ms = 30000     # then reveals and audit answers
//! min_workers = 1       # the run starts once this many workers are active
//! quorum = 1            # submissions needed to aggregate
//! extension_ms = 30000  # without quorum at the deadline: extend ...
//! max_extensions = 2    # ... this many times, then the round fails and is retried
//! worker_timeout_ms = 120000
//!
//! [audit]           # proof-of-training
//! probability = 0.1 # chance a submission's segment is replayed
//! segments = 4
//! stake = 32000     # > inner_steps * batch_size / probability (audit::minimum_stake)
//! auditors = "coordinator"  # or "workers": delegate replays to workers
//! replay = "segment"  # or "from-start": the auditor rebuilds the segment's
//!                     # start itself, replaying the round from its base and
//!                     # checking every boundary on the way; the audited
//!                     # worker uploads nothing (for models whose replay is
//!                     # cheaper than their state; coordinator auditors and
//!                     # codecs without error feedback only)
//! vesting_rounds = 4  # credits vest once this many later rounds are scored
//! bond = 0            # per worker, with [admission] mode = "bond" (>= stake)
//!
//! [checks]          # on every submission, before aggregation
//! norm_factor = 3.0        # refuse norms above this x the round's median
//! duplicate_cosine = 0.99  # refuse near-copies of another worker's update
//!
//! [aggregation]
//! rule = "centered-clip"   # or "mean", "trimmed-mean" (trim = 0.2), "median"
//! momentum = 0.9           # worker momentum (centered-clip only)
//! iterations = 3           # clipping iterations (centered-clip only)
//!
//! [quality]         # held-out scoring and the pay gate (docs/PAY.md)
//! eval_examples = 1500  # fresh from the validation split each round
//! score = "linear"      # one backward pass a round, a dot product per update; or "exact"
//! shift = 1.0
//! clamp = 3.0
//! threshold = 10.0
//! min_updates = 4
//! min_eval_examples = 256
//! spread_floor = 0.5    # a round's spread: at least half the median of ...
//! spread_rounds = 10    # ... the last 10 rounds' spreads
//!
//! [limits]
//! max_workers = 1024
//! max_upload_bytes = 67108864
//!
//! [storage]         # optional: models, deltas and updates through a bucket
//! url = "s3://bucket/prefix"   # credentials and endpoint from each party's AWS_* environment
//!
//! [admission]       # who may register (local to this coordinator)
//! mode = "token"    # or "allow-list" (with allow_list = "FILE"), "bond", or "open"
//!
//! [server]          # this coordinator's connection limits (local)
//! max_connections = 2048
//! max_connections_per_address = 64
//! reserved_connections = 256
//! connections_per_second_per_address = 32
//! header_timeout_ms = 10000
//! body_timeout_ms = 10000
//! requests_per_second_per_address = 200
//! requests_per_second_per_key = 50
//! uploads_in_flight = 32
//! uploads_in_flight_per_key = 2
//! ```
//!
//! `[admission]` and `[server]` are the coordinator's own business: they are
//! not published to workers nor part of the run's identity, so they may
//! change between restarts of the same run. `[storage]` is published (workers
//! must know the bucket) and part of the run's identity; a run without it
//! keeps the identity it had before `[storage]` existed.

use std::path::PathBuf;

use crowdtrain_recipe::defense::{DEFAULT_ITERATIONS, DEFAULT_MOMENTUM, DEFAULT_TRIM};
use crowdtrain_recipe::{Aggregator, CheckConfig, DefenseConfig, Nesterov, QualityConfig, TrainingRecipe};
use serde::{Deserialize, Serialize};

use crate::contract::ContractSection;

/// `audit.vesting_rounds` by default: the pay gate's escrow at its default
/// threshold.
pub const DEFAULT_VESTING_ROUNDS: u64 = 4;

/// A `run.toml` larger than this is not a configuration.
pub const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is {size} bytes; a run configuration is at most {CONFIG_BYTES_MAX}")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0}")]
    Parse(String),
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

/// The whole run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub rounds: u64,
    /// What every worker computes each round.
    pub training: TrainingRecipe,
    /// The coordinator's outer step.
    #[serde(default)]
    pub outer: Nesterov,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub round: RoundSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub checks: CheckConfig,
    #[serde(default)]
    pub aggregation: AggregationSection,
    #[serde(default)]
    pub quality: QualityConfig,
    #[serde(default)]
    pub limits: LimitsSection,
    /// Who may register (never serialised: local to the coordinator).
    #[serde(default, skip_serializing)]
    pub admission: AdmissionSection,
    /// Connection limits (never serialised: local to the coordinator).
    #[serde(default, skip_serializing)]
    pub server: ServerSection,
    /// The optimal contract the run offers (see [`crate::contract`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractSection>,
    /// Where models, deltas and workers' updates are exchanged when not
    /// through the coordinator (`[storage] url = "s3://bucket/prefix"`).
    /// Published to workers, who fetch and upload there; absent: today's
    /// behaviour, every byte through the coordinator (and run ids of runs
    /// without it unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSection>,
}

/// `[storage]`: an S3-compatible bucket the run's blobs go through.
/// Credentials, the endpoint and the region are each party's own, from
/// its environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_ENDPOINT_URL`, `AWS_REGION`), never in the signed configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
}

/// A storage URL is at most this long (S3 keys are at most 1024 bytes,
/// and ours add about 150 to the prefix).
pub const STORAGE_URL_BYTES_MAX: usize = 512;

impl StorageSection {
    /// The bucket and the key prefix (without slashes at either end; empty
    /// for none) of an `s3://` URL, or why it is not one.
    pub fn bucket_and_prefix(&self) -> Result<(&str, &str), String> {
        if self.url.len() > STORAGE_URL_BYTES_MAX {
            return Err(format!("is longer than {STORAGE_URL_BYTES_MAX} bytes"));
        }
        let rest = self.url.strip_prefix("s3://").ok_or("must start with s3:// (an S3-compatible bucket)")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b".-".contains(&byte));
        if !bucket_ok {
            return Err(format!(
                "names bucket {bucket:?}: a bucket name is 3-63 lowercase letters, digits, dots and hyphens"
            ));
        }
        let prefix_ok = prefix.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte))
        });
        if !prefix.is_empty() && !prefix_ok {
            return Err(format!(
                "has prefix {prefix:?}: use letters, digits, '-', '_' and '.' between slashes"
            ));
        }
        Ok((bucket, prefix))
    }
}

/// How workers are admitted (see [`crate::admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AdmissionMode {
    /// Anyone may register: for trusted networks and tests.
    Open,
    /// Workers present an operator-issued token once, at registration.
    #[default]
    Token,
    /// Only the public keys listed in `admission.allow_list`.
    AllowList,
    /// By token, as `Token`, where each token is the operator's receipt
    /// for a bond of `audit.bond` work units collected before issuing it:
    /// registering records the bond as deposited, slashes draw on it
    /// (after the worker's escrowed credits), and a worker whose bond
    /// cannot cover another stake is refused work.
    Bond,
}

impl AdmissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Token => "token",
            Self::AllowList => "allow-list",
            Self::Bond => "bond",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    #[serde(default)]
    pub mode: AdmissionMode,
    /// The allow-list file: one worker public key (hex) per line, `#`
    /// comments. Re-read when it changes.
    pub allow_list: Option<PathBuf>,
}

/// The coordinator's connection discipline: what any party on the network
/// can make it hold. Local to the coordinator (not part of the run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Connections held at once (also capped by the file descriptors the
    /// process may open, less a reserve for its own files). At the cap, a
    /// new connection closes the one idle longest.
    pub max_connections: u32,
    /// Connections held at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_address: u32,
    /// Of `max_connections`, the connections only addresses a participant
    /// authenticated from lately may take (at most half the total): an
    /// attacker holding every other slot cannot keep the workers out.
    pub reserved_connections: u32,
    /// New connections per second from one address (bursts of twice as
    /// many); over it, a connection is closed as soon as it is accepted,
    /// before any HTTP state is made for it.
    pub connections_per_second_per_address: u32,
    /// The time a client has to send a request's headers, and the longest
    /// a connection may sit idle between requests.
    pub header_timeout_ms: u64,
    /// The longest an upload may pause; an upload must also keep up at
    /// least 64 KiB/s on average (after this grace).
    pub body_timeout_ms: u64,
    /// Requests per second from one address (bursts of twice as many).
    pub requests_per_second_per_address: u32,
    /// Requests per second signed by one key (bursts of twice as many).
    pub requests_per_second_per_key: u32,
    /// Uploads (commitments, reveals, audit answers and reports) being
    /// received at once, in all.
    pub uploads_in_flight: u32,
    /// Uploads being received at once from one key.
    pub uploads_in_flight_per_key: u32,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            max_connections: 2048,
            max_connections_per_address: 64,
            reserved_connections: 256,
            connections_per_second_per_address: 32,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            requests_per_second_per_address: 200,
            requests_per_second_per_key: 50,
            uploads_in_flight: 32,
            uploads_in_flight_per_key: 2,
        }
    }
}

/// The aggregation rule, with only the parameters that rule takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AggregationRule {
    Mean,
    TrimmedMean,
    Median,
    #[default]
    CenteredClip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AggregationSection {
    #[serde(default)]
    pub rule: AggregationRule,
    /// Trimmed mean: the fraction cut from each end, per coordinate.
    pub trim: Option<f64>,
    /// Centered clipping: the weight of a worker's momentum (match
    /// `outer.momentum`, so the outer step's own momentum follows it).
    pub momentum: Option<f32>,
    /// Centered clipping: clipping iterations per round.
    pub iterations: Option<u32>,
}

impl AggregationSection {
    pub fn aggregator(&self) -> Aggregator {
        match self.rule {
            AggregationRule::Mean => Aggregator::Mean,
            AggregationRule::Median => Aggregator::Median,
            AggregationRule::TrimmedMean => {
                Aggregator::TrimmedMean { trim: self.trim.unwrap_or(DEFAULT_TRIM) }
            }
            AggregationRule::CenteredClip => Aggregator::CenteredClip {
                momentum: self.momentum.unwrap_or(DEFAULT_MOMENTUM),
                iterations: self.iterations.unwrap_or(DEFAULT_ITERATIONS),
            },
        }
    }
}

/// Where the coordinator reads its data: its own business, never
/// published (workers find the same data by its fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Where the coordinator reads its data (for evaluation, scoring and
    /// the data fingerprint): Fashion-MNIST for the image models, a UTF-8
    /// text file or directory for the GPT; default as for every command.
    pub dir: Option<PathBuf>,
    /// How text is tokenised for the GPT: `char`, or the path of a
    /// `tokenizer.json` (`crowdtrain tokenizer train`). Workers pass the
    /// same with `--tokenizer`; the data fingerprint covers it.
    pub tokenizer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundSection {
    /// Training time: commitments must arrive before it ends.
    pub deadline_ms: u64,
    /// After the commit phase: reveals and audit answers.
    pub reveal_ms: u64,
    pub min_workers: u32,
    pub quorum: u32,
    pub extension_ms: u64,
    pub max_extensions: u32,
    pub worker_timeout_ms: u64,
}

impl Default for RoundSection {
    fn default() -> Self {
        Self {
            deadline_ms: 60_000,
            reveal_ms: 30_000,
            min_workers: 1,
            quorum: 1,
            extension_ms: 30_000,
            max_extensions: 2,
            worker_timeout_ms: 120_000,
        }
    }
}

/// Proof-of-training: how often submissions are replayed, in how many
/// segments, and what a worker caught cheating loses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Chance that a submission is audited (0 turns audits off).
    pub probability: f64,
    /// Segments a worker's inner steps are cut into; an audit replays one.
    pub segments: u32,
    /// Work units a worker loses when caught (a failed audit, a reveal that
    /// does not match its commitment, an unanswered audit). Must be more
    /// than the work of a submission divided by `probability`
    /// ([`crate::audit::minimum_stake`]), so that skipping any set of steps
    /// has negative expected value at any pay multiplier.
    pub stake: u64,
    /// Who replays a drawn segment: the coordinator, or another worker of
    /// the round of the same determinism class, with the coordinator
    /// replaying it itself when that worker's report disagrees with the
    /// commitment (and then slashing whichever of the two was wrong).
    pub auditors: Auditors,
    /// Where an audit's replay starts ([`AuditReplay`]). Left out of the
    /// run's description at its default, so the ids of runs that do not
    /// set it stay what they were.
    #[serde(skip_serializing_if = "AuditReplay::is_segment")]
    pub replay: AuditReplay,
    /// Rounds a round's credits stay escrowed (a slash takes escrowed
    /// credits first): they vest once this many later rounds are scored.
    /// At least the pay gate's escrow (`quality`: 4 rounds by default).
    pub vesting_rounds: u64,
    /// Work units of bond each worker registers with (`[admission] mode =
    /// "bond"` only; at least `stake`). Slashes draw on it once its
    /// escrowed credits are gone; a worker whose bond is below `stake` is
    /// refused work.
    pub bond: u64,
}

/// Who replays audited segments (`audit.auditors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Auditors {
    #[default]
    Coordinator,
    Workers,
}

/// Where an audit's replay starts (`audit.replay`).
///
/// `Segment` replays the drawn segment from the start state the audited
/// worker uploads (its answer: parameters and both optimizer moments, 2.4 MB
/// for the MLP), so an audit costs a segment's training (1/S of a round).
/// `FromStart` rebuilds that state instead: it replays the round from its
/// public start (the base model, a fresh optimizer, the worker's seeded
/// batches) through the drawn segment, checking every boundary it passes
/// against the leaves the worker's commitment carries. The worker uploads
/// nothing and the audit can start with the commitment, at a cost of k/S of
/// a round for segment k ((S + 1) / 2S on average): the better choice when
/// uploading the state takes longer than replaying a round, as for the MLP
/// over a home uplink, and the worse one when training dominates (the GPT's
/// audit-cost target needs `Segment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuditReplay {
    #[default]
    Segment,
    FromStart,
}

impl AuditReplay {
    fn is_segment(&self) -> bool {
        *self == Self::Segment
    }
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            probability: 0.1,
            segments: 4,
            stake: 32_000,
            auditors: Auditors::Coordinator,
            replay: AuditReplay::Segment,
            vesting_rounds: DEFAULT_VESTING_ROUNDS,
            bond: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_workers: u32,
    pub max_upload_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self { max_workers: 1024, max_upload_bytes: 64 * 1024 * 1024 }
    }
}

/// The shape of `[contract]`; the numbers are the solver's to judge (the
/// coordinator solves the menu before it starts the run, naming the field).
fn validate_contract(contract: &ContractSection) -> Result<(), ConfigError> {
    if contract.scenario.is_some() {
        return check(
            "contract.scenario",
            !contract.has_inline_scenario(),
            "give a scenario file or the scenario inline (participants, accuracy, valuation, types), not both",
        );
    }
    check(
        "contract.participants",
        contract.participants.is_some_and(|n| n >= 1),
        "must be given, at least 1",
    )?;
    check(
        "contract.accuracy",
        contract.accuracy.is_some(),
        "missing: add [contract.accuracy] or `scenario = FILE`",
    )?;
    check("contract.valuation", contract.valuation.is_some(), "missing: add [contract.valuation]")?;
    check("contract.types", !contract.types.is_empty(), "missing: add at least one [[contract.types]]")?;
    if let Some((field, value)) = contract.numbers().into_iter().find(|(_, value)| !value.is_finite()) {
        return Err(ConfigError::Invalid { field, reason: format!("must be a finite number, got {value}") });
    }
    check("contract.types", contract.types.len() <= CONTRACT_TYPES_MAX, "a menu has at most 64 types")?;
    contract.metric.validate().map_err(|error| ConfigError::Invalid {
        field: format!("contract.metric.{}", error.field),
        reason: error.reason,
    })
}

/// Most types a run's menu may have (the solver's own limit).
pub const CONTRACT_TYPES_MAX: usize = 64;

impl RunConfig {
    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every constraint the run relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check("rounds", (1..=1_000_000).contains(&self.rounds), "must be between 1 and 1000000")?;
        if let Some(contract) = &self.contract {
            validate_contract(contract)?;
        }
        if let Some(storage) = &self.storage {
            storage.bucket_and_prefix().map_err(|reason| invalid("storage.url", &reason))?;
        }
        let training = &self.training;
        training.validate().map_err(|error| ConfigError::Invalid {
            field: format!("training.{}", error.field),
            reason: error.reason,
        })?;
        // Text holds out its own validation split (its last tenth), which
        // updates are scored on; images need a share of the training set.
        check(
            "training.validation_fraction",
            training.model.is_language_model() || training.validation_fraction > 0.0,
            "must be in (0, 0.5): updates are scored on this share of the training set, held out of every shard",
        )?;
        self.outer
            .validate()
            .map_err(|error| ConfigError::Invalid { field: error.field.into(), reason: error.reason })?;
        // A delayed round's base is a published model, so commitments and
        // audits need nothing new; an eager base is private to its worker
        // (`own`) or a model nobody publishes (`trend`), which the network
        // does not carry yet (docs/EAGER-OWN.md designs `own`).
        check(
            "outer.eager",
            self.outer.eager.is_none(),
            "a networked run takes \"none\" for now: eager delayed updates run in sim diloco --eager",
        )?;
        // Round r + 1 commits before round r's verdicts: an error-feedback
        // residual carried on from a round whose audit then fails would
        // count, which the coordinator's residual chain rules out only
        // without a delay.
        check(
            "outer.delay",
            self.outer.delay == 0 || !self.training.codec.error_feedback(),
            "a networked run with an error-feedback codec (top-k, q4, q2) takes 0: round r + 1 would carry round r's \
             residual before round r's audit",
        )?;
        let round = &self.round;
        let day_ms = 24 * 60 * 60 * 1000;
        check(
            "round.deadline_ms",
            (100..=day_ms).contains(&round.deadline_ms),
            "must be between 100 and 86400000",
        )?;
        check(
            "round.reveal_ms",
            (100..=day_ms).contains(&round.reveal_ms),
            "must be between 100 and 86400000",
        )?;
        check("round.min_workers", round.min_workers >= 1, "must be at least 1")?;
        check("round.quorum", round.quorum >= 1, "must be at least 1")?;
        check(
            "round.extension_ms",
            round.max_extensions == 0 || (100..=day_ms).contains(&round.extension_ms),
            "must be between 100 and 86400000 when round.max_extensions > 0",
        )?;
        check("round.max_extensions", round.max_extensions <= 1000, "must be at most 1000")?;
        // A worker waiting for the next round sits in a long poll of up to
        // LONG_POLL_MS_MAX without being seen; it must not time out meanwhile.
        let timeout_min = 2 * crate::wire::LONG_POLL_MS_MAX;
        check(
            "round.worker_timeout_ms",
            (timeout_min..=7 * day_ms).contains(&round.worker_timeout_ms),
            &format!("must be between {timeout_min} (twice the longest long poll) and 604800000"),
        )?;
        let audit = &self.audit;
        check("audit.probability", (0.0..=1.0).contains(&audit.probability), "must be between 0 and 1")?;
        check(
            "audit.segments",
            audit.segments >= 1 && u64::from(audit.segments) <= training.inner_steps,
            "must be between 1 and training.inner_steps",
        )?;
        if audit.replay == AuditReplay::FromStart {
            // A delegated auditor reports only where its replay ended, and
            // the last segment under error feedback needs the residual the
            // worker started from, which only its answer carries.
            check(
                "audit.replay",
                audit.auditors == Auditors::Coordinator,
                "\"from-start\" takes audit.auditors = \"coordinator\" for now",
            )?;
            check(
                "audit.replay",
                !training.codec.error_feedback(),
                "\"from-start\" takes a codec without error feedback (none, int8): the last segment's replay \
                 needs the residual the worker started from, which only its answer carries",
            )?;
        }
        if audit.probability > 0.0 {
            // The stake rule (`audit::minimum_stake`): skipping any set of
            // steps must lose in expectation, at any pay multiplier.
            let work = training.work_units();
            let Some(minimum) = crate::audit::minimum_stake(work, audit.probability) else {
                return Err(invalid(
                    "audit.probability",
                    "is too small for any stake to make skipping work lose: use 0 (no audits) or a larger value",
                ));
            };
            check(
                "audit.stake",
                audit.stake >= minimum,
                &format!(
                    "must be at least {minimum}: more than the work of a submission ({work} units: \
                     training.inner_steps x training.batch_size) divided by audit.probability ({}); \
                     with less, skipping work does not lose in expectation",
                    audit.probability
                ),
            )?;
        }
        let checks = &self.checks;
        check(
            "checks.norm_factor",
            checks.norm_factor.is_finite() && checks.norm_factor >= 1.0,
            "must be a finite number of at least 1 (a multiple of the round's median norm)",
        )?;
        check(
            "checks.duplicate_cosine",
            checks.duplicate_cosine > 0.0 && checks.duplicate_cosine <= 1.0,
            "must be in (0, 1]",
        )?;
        let aggregation = &self.aggregation;
        let rule = aggregation.rule;
        if aggregation.trim.is_some() && rule != AggregationRule::TrimmedMean {
            return Err(invalid("aggregation.trim", "only applies with aggregation.rule = \"trimmed-mean\""));
        }
        for (field, given) in [
            ("aggregation.momentum", aggregation.momentum.is_some()),
            ("aggregation.iterations", aggregation.iterations.is_some()),
        ] {
            if given && rule != AggregationRule::CenteredClip {
                return Err(invalid(field, "only applies with aggregation.rule = \"centered-clip\""));
            }
        }
        aggregation.aggregator().validate().map_err(|(parameter, reason)| ConfigError::Invalid {
            field: format!("aggregation.{parameter}"),
            reason: reason.to_owned(),
        })?;
        self.quality.validate().map_err(|(parameter, reason)| ConfigError::Invalid {
            field: format!("quality.{parameter}"),
            reason: reason.to_owned(),
        })?;
        let escrow = self.quality.escrow_rounds();
        check(
            "audit.vesting_rounds",
            (escrow..=1_000_000).contains(&self.audit.vesting_rounds),
            &format!(
                "must be between the pay gate's escrow ({escrow} rounds: credits it may take back must not have \
                 vested) and 1000000"
            ),
        )?;
        let bonded = self.admission.mode == AdmissionMode::Bond;
        if bonded {
            check(
                "audit.bond",
                self.audit.bond >= self.audit.stake.max(1),
                &format!(
                    "must be at least audit.stake ({}) with admission.mode = \"bond\": a worker's bond must cover \
                     a slash",
                    self.audit.stake
                ),
            )?;
        } else {
            check("audit.bond", self.audit.bond == 0, "only applies with admission.mode = \"bond\"")?;
        }
        let limits = &self.limits;
        check(
            "limits.max_workers",
            (1..=100_000).contains(&limits.max_workers),
            "must be between 1 and 100000",
        )?;
        check(
            "round.min_workers",
            round.min_workers <= limits.max_workers,
            "cannot exceed limits.max_workers",
        )?;
        check("round.quorum", round.quorum <= limits.max_workers, "cannot exceed limits.max_workers")?;
        check(
            "limits.max_upload_bytes",
            (1024..=4 * 1024 * 1024 * 1024).contains(&limits.max_upload_bytes),
            "must be between 1024 and 4294967296",
        )?;
        let admission = &self.admission;
        match (admission.mode, &admission.allow_list) {
            (AdmissionMode::AllowList, None) => {
                return Err(invalid(
                    "admission.allow_list",
                    "is required with admission.mode = \"allow-list\"",
                ));
            }
            (AdmissionMode::Open | AdmissionMode::Token | AdmissionMode::Bond, Some(_)) => {
                return Err(invalid(
                    "admission.allow_list",
                    "only applies with admission.mode = \"allow-list\"",
                ));
            }
            _ => {}
        }
        let server = &self.server;
        check(
            "server.max_connections",
            (16..=1_000_000).contains(&server.max_connections),
            "must be between 16 and 1000000",
        )?;
        check(
            "server.max_connections_per_address",
            (1..=server.max_connections).contains(&server.max_connections_per_address),
            "must be between 1 and server.max_connections",
        )?;
        check(
            "server.reserved_connections",
            server.reserved_connections <= server.max_connections / 2,
            "must be at most half of server.max_connections",
        )?;
        for (field, value) in [
            ("server.header_timeout_ms", server.header_timeout_ms),
            ("server.body_timeout_ms", server.body_timeout_ms),
        ] {
            check(field, (100..=600_000).contains(&value), "must be between 100 and 600000")?;
        }
        for (field, value) in [
            ("server.connections_per_second_per_address", server.connections_per_second_per_address),
            ("server.requests_per_second_per_address", server.requests_per_second_per_address),
            ("server.requests_per_second_per_key", server.requests_per_second_per_key),
            ("server.uploads_in_flight", server.uploads_in_flight),
            ("server.uploads_in_flight_per_key", server.uploads_in_flight_per_key),
        ] {
            check(field, (1..=1_000_000).contains(&value), "must be between 1 and 1000000")?;
        }
        Ok(())
    }

    /// Work units of one submission: the samples its inner steps process.
    pub fn work_units(&self) -> u64 {
        self.training.work_units()
    }

    pub fn defense(&self) -> DefenseConfig {
        DefenseConfig {
            checks: self.checks,
            aggregator: self.aggregation.aggregator(),
            quality: self.quality,
        }
    }
}

fn invalid(field: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid { field: field.to_owned(), reason: reason.to_owned() }
}

fn check(field: &'static str, ok: bool, reason: &str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(invalid(field, reason)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_url_names_a_bucket_and_a_prefix_and_runs_without_one_keep_their_identity() {
        let text = "rounds = 1\n[training]\nseed = 1\n";
        let plain = RunConfig::parse(text).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("storage"), "absent, not null");
        let config =
            RunConfig::parse(&format!("{text}[storage]\nurl = \"s3://my-bucket/runs/a/\"\n")).unwrap();
        assert_eq!(config.storage.unwrap().bucket_and_prefix(), Ok(("my-bucket", "runs/a")));
        let bare = StorageSection { url: "s3://my-bucket".into() };
        assert_eq!(bare.bucket_and_prefix(), Ok(("my-bucket", "")));
    }
    use crowdtrain_recipe::{AdamW, Codec, ModelKind, Sharding};

    const MINIMAL: &str = "rounds = 5\n[training]\nseed = 3\n";

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let config = RunConfig::parse(MINIMAL).unwrap();
        assert_eq!(config.training, TrainingRecipe::with_seed(3));
        assert_eq!(config.training.model, ModelKind::Mlp);
        assert_eq!(config.training.inner_steps, 50);
        assert_eq!(config.training.codec, Codec::INT8);
        assert_eq!(config.training.optimizer, AdamW::default());
        assert_eq!(config.training.sharding, Sharding::Iid);
        assert_eq!(config.outer, Nesterov::default());
        assert_eq!(config.defense(), DefenseConfig::default());
    }

    #[test]
    fn a_codec_is_written_as_a_string_and_a_bad_one_says_why() {
        let toml = |codec: &str| format!("rounds = 5\n[training]\nseed = 3\ncodec = \"{codec}\"\n");
        assert_eq!(RunConfig::parse(&toml("f32")).unwrap().training.codec, Codec::F32);
        for (bad, reason) in [("topk:2+q4", "below 1"), ("q3", "expected f32, int8, q4, q2")] {
            let error = RunConfig::parse(&toml(bad)).unwrap_err().to_string();
            assert!(error.contains(reason), "{bad}: {error}");
        }
        // The lossy codecs too: commitments and audits carry their
        // error-feedback residual.
        for lossy in ["topk:0.02+q4", "q4", "q2"] {
            assert_eq!(
                RunConfig::parse(&toml(lossy)).unwrap().training.codec,
                lossy.parse::<Codec>().unwrap()
            );
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let example: String = include_str!("config.rs")
            .lines()
            .skip_while(|line| !line.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|line| !line.starts_with("//! ```"))
            .map(|line| line.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let config = RunConfig::parse(&example).unwrap();
        assert_eq!(config.rounds, 20);
        assert_eq!(config.round.deadline_ms, 60_000);
    }

    #[test]
    fn the_language_model_example_is_valid_and_refuses_image_only_settings() {
        let text = include_str!("../../../examples/run-gpt.toml");
        let config = RunConfig::parse(text).unwrap();
        let crowdtrain_recipe::ModelKind::Gpt(gpt) = config.training.model else {
            panic!("the example trains a gpt")
        };
        assert_eq!((gpt.layers, gpt.heads, gpt.width, gpt.context), (4, 4, 128, 64));
        assert_eq!(config.training.schedule, crowdtrain_recipe::Schedule::nanogpt(2000));
        assert_eq!(config.data.tokenizer.as_deref(), Some("char"));
        // The re-warming the example describes in a comment, taken up as it says.
        let rewarmed = text
            .replace("[training.schedule.warmup-cosine]", "[training.schedule.warmup-cosine-rewarm]")
            .replace("# round_warmup_steps = 20 #", "round_warmup_steps = 20 #");
        let rewarmed = RunConfig::parse(&rewarmed).unwrap();
        assert_eq!(rewarmed.training.schedule, crowdtrain_recipe::Schedule::nanogpt_rewarm(2000, 20));
        let held_out = text.replace("validation_fraction = 0.0", "validation_fraction = 0.05");
        let error = RunConfig::parse(&held_out).unwrap_err().to_string();
        assert!(error.contains("validation_fraction") && error.contains("gpt"), "{error}");
        let skewed =
            text.replace("[training.model.gpt]", "sharding = \"dirichlet:0.5\"\n[training.model.gpt]");
        assert!(RunConfig::parse(&skewed).unwrap_err().to_string().contains("sharding"));
    }

    #[test]
    fn the_example_file_spells_out_exactly_the_defaults() {
        let mut example = RunConfig::parse(include_str!("../../../examples/run.toml")).unwrap();
        let defaults = RunConfig::parse("rounds = 20\n[training]\nseed = 0\n").unwrap();
        // The example names the rule's parameters; the defaults leave them out.
        assert_eq!(example.aggregation.aggregator(), defaults.aggregation.aggregator());
        example.aggregation = defaults.aggregation.clone();
        assert_eq!(example, defaults);
    }

    #[test]
    fn the_broadcast_defaults_to_full_and_leaves_older_configurations_as_they_were() {
        use crowdtrain_recipe::{Broadcast, Codec};
        let defaults = RunConfig::parse("rounds = 2\n[training]\nseed = 0\n").unwrap();
        assert_eq!(defaults.outer.broadcast, Broadcast::Full);
        // Run ids and stored configurations from before the option: the
        // default is not written out.
        assert!(!serde_json::to_string(&defaults).unwrap().contains("broadcast"));
        let int8 =
            RunConfig::parse("rounds = 2\n[training]\nseed = 0\n[outer]\nbroadcast = \"int8\"\n").unwrap();
        assert_eq!(int8.outer.broadcast, Broadcast::Delta(Codec::INT8));
        let json = serde_json::to_string(&int8).unwrap();
        assert_eq!(serde_json::from_str::<RunConfig>(&json).unwrap(), int8);
        for bad in ["f32", "zip"] {
            let text = format!("rounds = 2\n[training]\nseed = 0\n[outer]\nbroadcast = \"{bad}\"\n");
            assert!(RunConfig::parse(&text).unwrap_err().to_string().contains("broadcast"), "{bad}");
        }
    }

    #[test]
    fn audits_replay_from_the_start_only_when_asked_and_only_where_they_can() {
        let defaults = RunConfig::parse("rounds = 2\n[training]\nseed = 0\n").unwrap();
        assert_eq!(defaults.audit.replay, AuditReplay::Segment);
        let json = serde_json::to_string(&defaults).unwrap();
        assert!(!json.contains("replay"), "left out of the run's description at its default: {json}");
        let from_start = "rounds = 2\n[training]\nseed = 0\n[audit]\nreplay = \"from-start\"\n";
        let parsed = RunConfig::parse(from_start).unwrap();
        assert!(crate::coordinator::Settings::from_config(&parsed).replay_from_start);
        assert!(serde_json::to_string(&parsed).unwrap().contains("\"replay\":\"from-start\""));
        for (refused, why) in [
            ("[audit]\nreplay = \"from-start\"\nauditors = \"workers\"\n", "coordinator"),
            ("codec = \"topk:0.02+q4\"\n[audit]\nreplay = \"from-start\"\n", "error feedback"),
            ("[audit]\nreplay = \"anywhere\"\n", "anywhere"),
        ] {
            let error = RunConfig::parse(&format!("rounds = 2\n[training]\nseed = 0\n{refused}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn a_networked_run_takes_a_plain_delayed_outer_update_and_refuses_what_it_cannot_run() {
        let defaults = RunConfig::parse("rounds = 2\n[training]\nseed = 0\n").unwrap();
        assert_eq!(defaults.outer.delay, 0);
        // Run ids and stored configurations from before the option: the
        // default is not written out.
        let json = serde_json::to_string(&defaults).unwrap();
        assert!(!json.contains("delay") && !json.contains("eager"), "{json}");
        let delayed = RunConfig::parse("rounds = 2\n[training]\nseed = 0\n[outer]\ndelay = 1\n").unwrap();
        assert_eq!(crate::coordinator::Settings::from_config(&delayed).outer_delay, 1);
        let eager = "rounds = 2\n[training]\nseed = 0\n[outer]\ndelay = 1\neager = \"own\"\n";
        let error = RunConfig::parse(eager).unwrap_err().to_string();
        assert!(error.contains("outer.eager") && error.contains("sim diloco --eager"), "{error}");
        let topk = "rounds = 2\n[training]\nseed = 0\ncodec = \"topk:0.02+q4\"\n[outer]\ndelay = 1\n";
        let error = RunConfig::parse(topk).unwrap_err().to_string();
        assert!(error.contains("outer.delay") && error.contains("error-feedback"), "{error}");
        // Delays up to four run as in the simulation (the coordinator keeps
        // `delay + 1` live rounds); a deeper one is refused, saying how deep
        // a run may go.
        for delay in [2, 3, crowdtrain_recipe::MAX_OUTER_DELAY] {
            let deeper = format!("rounds = 2\n[training]\nseed = 0\n[outer]\ndelay = {delay}\n");
            let deeper = RunConfig::parse(&deeper).unwrap();
            assert_eq!(crate::coordinator::Settings::from_config(&deeper).outer_delay, delay);
        }
        assert_eq!(crowdtrain_recipe::MAX_OUTER_DELAY, 4);
        let deepest = "rounds = 2\n[training]\nseed = 0\n[outer]\ndelay = 5\n";
        let error = RunConfig::parse(deepest).unwrap_err().to_string();
        assert!(error.contains("outer.delay") && error.contains("at most 4"), "{error}");
    }

    fn error_field(text: &str) -> String {
        match RunConfig::parse(text).unwrap_err() {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Parse(message) => message,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn every_invalid_value_names_its_field() {
        let cases = [
            ("rounds = 0\n[training]\nseed = 1\n", "rounds"),
            ("rounds = 1\n[training]\nseed = 1\ninner_steps = 0\n", "training.inner_steps"),
            ("rounds = 1\n[training]\nseed = 1\nbatch_size = 0\n", "training.batch_size"),
            ("rounds = 1\n[training]\nseed = 1\n[training.optimizer]\nlr = -1.0\n", "training.optimizer.lr"),
            ("rounds = 1\n[training]\nseed = 1\n[training.optimizer]\nlr = nan\n", "training.optimizer.lr"),
            (
                "rounds = 1\n[training]\nseed = 1\n[training.optimizer]\nbeta1 = 1.0\n",
                "training.optimizer.beta1",
            ),
            ("rounds = 1\n[training]\nseed = 1\nvalidation_fraction = 0.0\n", "training.validation_fraction"),
            ("rounds = 1\n[training]\nseed = 1\nsharding = \"dirichlet:-2\"\n", "training.sharding"),
            ("rounds = 1\n[training]\nseed = 1\n[outer]\nmomentum = 1.5\n", "outer.momentum"),
            ("rounds = 1\n[training]\nseed = 1\n[outer]\nlr = 0.0\n", "outer.lr"),
            ("rounds = 1\n[training]\nseed = 1\n[outer]\ndelay = 5\n", "outer.delay"),
            ("rounds = 1\n[training]\nseed = 1\n[outer]\neager = \"trend\"\n", "outer.eager"),
            ("rounds = 1\n[training]\nseed = 1\n[round]\nquorum = 0\n", "round.quorum"),
            ("rounds = 1\n[training]\nseed = 1\n[round]\ndeadline_ms = 5\n", "round.deadline_ms"),
            (
                "rounds = 1\n[training]\nseed = 1\n[round]\nmin_workers = 9\n[limits]\nmax_workers = 4\n",
                "round.min_workers",
            ),
            (
                "rounds = 1\n[training]\nseed = 1\n[limits]\nmax_upload_bytes = 10\n",
                "limits.max_upload_bytes",
            ),
            (
                "rounds = 1\n[training]\nseed = 1\n[round]\nworker_timeout_ms = 5000\n",
                "round.worker_timeout_ms",
            ),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nprobability = 1.5\n", "audit.probability"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nsegments = 51\n", "audit.segments"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nstake = 31999\n", "audit.stake"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nprobability = 0.5\nstake = 6399\n", "audit.stake"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nprobability = 0.5\nstake = 6400\n", "audit.stake"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nprobability = 1e-30\n", "audit.probability"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nvesting_rounds = 3\n", "audit.vesting_rounds"),
            ("rounds = 1\n[training]\nseed = 1\n[audit]\nbond = 40000\n", "audit.bond"),
            (
                "rounds = 1\n[training]\nseed = 1\n[audit]\nbond = 31999\n[admission]\nmode = \"bond\"\n",
                "audit.bond",
            ),
            ("rounds = 1\n[training]\nseed = 1\n[checks]\nnorm_factor = 0.5\n", "checks.norm_factor"),
            (
                "rounds = 1\n[training]\nseed = 1\n[checks]\nduplicate_cosine = 1.5\n",
                "checks.duplicate_cosine",
            ),
            ("rounds = 1\n[training]\nseed = 1\n[aggregation]\ntrim = 0.1\n", "aggregation.trim"),
            (
                "rounds = 1\n[training]\nseed = 1\n[aggregation]\nrule = \"trimmed-mean\"\ntrim = 0.6\n",
                "aggregation.trim",
            ),
            (
                "rounds = 1\n[training]\nseed = 1\n[aggregation]\nrule = \"mean\"\nmomentum = 0.5\n",
                "aggregation.momentum",
            ),
            ("rounds = 1\n[training]\nseed = 1\n[aggregation]\nmomentum = 1.0\n", "aggregation.momentum"),
            ("rounds = 1\n[training]\nseed = 1\n[aggregation]\niterations = 0\n", "aggregation.iterations"),
            ("rounds = 1\n[training]\nseed = 1\n[quality]\neval_examples = 0\n", "quality.eval_examples"),
            ("rounds = 1\n[training]\nseed = 1\n[quality]\nshift = 0.0\n", "quality.shift"),
            ("rounds = 1\n[training]\nseed = 1\n[quality]\nclamp = 0.4\n", "quality.clamp"),
            ("rounds = 1\n[training]\nseed = 1\n[quality]\nmin_updates = 2\n", "quality.min_updates"),
            (
                "rounds = 1\n[training]\nseed = 1\n[admission]\nmode = \"allow-list\"\n",
                "admission.allow_list",
            ),
            (
                "rounds = 1\n[training]\nseed = 1\n[admission]\nallow_list = \"keys\"\n",
                "admission.allow_list",
            ),
            ("rounds = 1\n[training]\nseed = 1\n[server]\nmax_connections = 2\n", "server.max_connections"),
            (
                "rounds = 1\n[training]\nseed = 1\n[server]\nmax_connections_per_address = 0\n",
                "server.max_connections_per_address",
            ),
            (
                "rounds = 1\n[training]\nseed = 1\n[server]\nheader_timeout_ms = 0\n",
                "server.header_timeout_ms",
            ),
            (
                "rounds = 1\n[training]\nseed = 1\n[server]\nuploads_in_flight = 0\n",
                "server.uploads_in_flight",
            ),
            ("rounds = 1\n[training]\nseed = 1\n[storage]\nurl = \"https://bucket/runs\"\n", "storage.url"),
            ("rounds = 1\n[training]\nseed = 1\n[storage]\nurl = \"s3://Bucket/runs\"\n", "storage.url"),
            ("rounds = 1\n[training]\nseed = 1\n[storage]\nurl = \"s3://bucket/../up\"\n", "storage.url"),
        ];
        for (text, field) in cases {
            assert_eq!(error_field(text), field, "{text}");
        }
    }

    #[test]
    fn unknown_fields_and_kinds_are_parse_errors_that_name_them() {
        let message = error_field("rounds = 1\n[training]\nseed = 1\n[round]\nqorum = 2\n");
        assert!(message.contains("qorum"), "{message}");
        let message = error_field("rounds = 1\n[training]\nseed = 1\nmodel = \"transformer\"\n");
        assert!(message.contains("transformer"), "{message}");
        let message = error_field("rounds = 1\n[training]\ninner_steps = 3\n");
        assert!(message.contains("seed"), "{message}");
        let message = error_field("rounds = 1\n");
        assert!(message.contains("training"), "{message}");
        let message = error_field("rounds = 1\n[training]\nseed = 1\n[aggregation]\nrule = \"krum\"\n");
        assert!(message.contains("krum"), "{message}");
        let message = error_field("rounds = 1\n[training]\nseed = 1\n[quality]\nsmoothness = 0.1\n");
        assert!(message.contains("smoothness"), "{message}");
        let message = error_field("rounds = 1\n[training]\nseed = 1\n[quality]\nvalidation_fraction = 0.1\n");
        assert!(message.contains("validation_fraction"), "moved to [training]: {message}");
        let message = error_field("rounds = 1\n[training]\nseed = 1\n[quality]\nscore = \"quadratic\"\n");
        assert!(message.contains("quadratic") && message.contains("linear"), "{message}");
    }

    #[test]
    fn the_score_rule_is_chosen_in_quality() {
        let config =
            RunConfig::parse("rounds = 1\n[training]\nseed = 1\n[quality]\nscore = \"exact\"\n").unwrap();
        assert_eq!(config.quality.score, crowdtrain_recipe::ScoreMethod::Exact);
        let config = RunConfig::parse("rounds = 1\n[training]\nseed = 1\n").unwrap();
        assert_eq!(config.quality.score, crowdtrain_recipe::ScoreMethod::Linear, "the default");
        assert_eq!(config.quality.eval_examples, 1500);
    }
}
