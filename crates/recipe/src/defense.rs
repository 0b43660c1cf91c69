//! The settings of the coordinator's defence: the cheap checks, the
//! robust aggregation rule and held-out quality scoring. The computation
//! lives in `crowdtrain-defense`; the run configuration, the simulation
//! and the battery share these settings.

use serde::{Deserialize, Serialize};

/// Everything that configures the defence.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DefenseConfig {
    pub checks: CheckConfig,
    pub aggregator: Aggregator,
    pub quality: QualityConfig,
}

/// Thresholds of the checks (`[checks]` in `run.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// An update longer than this times the round's median norm is refused.
    pub norm_factor: f64,
    /// An update more alike than this (cosine) to an earlier one of another
    /// worker in the same round is refused.
    pub duplicate_cosine: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self { norm_factor: 3.0, duplicate_cosine: 0.99 }
    }
}

/// The aggregation rule (`[aggregation]` in `run.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Aggregator {
    Mean,
    TrimmedMean {
        /// Fraction dropped from each end, per coordinate.
        trim: f64,
    },
    Median,
    CenteredClip {
        /// Weight of a worker's previous momentum (0: no momentum).
        momentum: f32,
        /// Clipping iterations per round.
        iterations: u32,
    },
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::CenteredClip { momentum: DEFAULT_MOMENTUM, iterations: DEFAULT_ITERATIONS }
    }
}

/// Defaults of the rules' parameters, also used when a name is parsed
/// without one.
pub const DEFAULT_TRIM: f64 = 0.2;
pub const DEFAULT_MOMENTUM: f32 = 0.9;
pub const DEFAULT_ITERATIONS: u32 = 3;

impl Aggregator {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::TrimmedMean { .. } => "trimmed-mean",
            Self::Median => "median",
            Self::CenteredClip { .. } => "centered-clip",
        }
    }

    /// Checks the rule's parameters: `Err((parameter, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        match *self {
            Self::TrimmedMean { trim } if !(0.0..0.5).contains(&trim) => Err(("trim", "must be in [0, 0.5)")),
            Self::CenteredClip { momentum, .. } if !(0.0..1.0).contains(&momentum) => {
                Err(("momentum", "must be in [0, 1)"))
            }
            Self::CenteredClip { iterations, .. } if !(1..=100).contains(&iterations) => {
                Err(("iterations", "must be between 1 and 100"))
            }
            _ => Ok(()),
        }
    }

    /// Whether the rule carries state from round to round.
    pub fn is_stateful(&self) -> bool {
        matches!(self, Self::CenteredClip { .. })
    }
}

impl std::fmt::Display for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TrimmedMean { trim } => write!(f, "trimmed-mean:{trim}"),
            Self::CenteredClip { momentum, iterations } => write!(f, "centered-clip:{momentum}:{iterations}"),
            other => f.write_str(other.name()),
        }
    }
}

impl std::str::FromStr for Aggregator {
    type Err = String;

    /// `mean`, `trimmed-mean[:TRIM]`, `median`,
    /// `centered-clip[:MOMENTUM[:ITERATIONS]]`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, parameter) = match text.split_once(':') {
            Some((name, parameter)) => (name, Some(parameter)),
            None => (text, None),
        };
        let number = |default: f64| -> Result<f64, String> {
            parameter
                .map_or(Ok(default), |value| value.parse().map_err(|_| format!("{value:?} is not a number")))
        };
        let aggregator = match name {
            "mean" => Self::Mean,
            "median" => Self::Median,
            "trimmed-mean" => Self::TrimmedMean { trim: number(DEFAULT_TRIM)? },
            "centered-clip" => {
                let (momentum, iterations) = match parameter.and_then(|rest| rest.split_once(':')) {
                    Some((momentum, iterations)) => (
                        momentum.parse::<f32>().map_err(|_| format!("{momentum:?} is not a number"))?,
                        iterations.parse::<u32>().map_err(|_| format!("{iterations:?} is not a count"))?,
                    ),
                    None => (number(f64::from(DEFAULT_MOMENTUM))? as f32, DEFAULT_ITERATIONS),
                };
                Self::CenteredClip { momentum, iterations }
            }
            other => {
                return Err(format!(
                    "unknown aggregator {other:?}; expected mean, trimmed-mean[:TRIM], median or centered-clip[:MOMENTUM]"
                ));
            }
        };
        if (matches!(aggregator, Self::Mean | Self::Median)) && parameter.is_some() {
            return Err(format!("{name} takes no parameter"));
        }
        aggregator.validate().map_err(|(parameter, reason)| format!("{name}: {parameter} {reason}"))?;
        Ok(aggregator)
    }
}

/// Settings of quality scoring and the pay gate (`[quality]` in
/// `run.toml`; `docs/PAY.md` says how the defaults were measured).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Examples in each round's evaluation batch (1,500 by default: the
    /// size at which evaluation noise stops dominating the honest spread,
    /// `docs/PAY.md`).
    pub eval_examples: usize,
    /// How an update's score is computed: by forward passes (`exact`) or
    /// from one gradient of the held-out loss (`linear`).
    pub score: ScoreMethod,
    /// The shift, in spreads of the round's scores, of a worker whose
    /// updates the gate is built to catch: the alternative hypothesis.
    pub shift: f64,
    /// A round's standardised deviation counts for at most this many
    /// spreads either way: one freak round cannot deny pay.
    pub clamp: f64,
    /// Evidence (nats) at which the gate denies pay.
    pub threshold: f64,
    /// A round with fewer scored updates than this tells nothing (no power).
    pub min_updates: usize,
    /// Nor does one scored on fewer held-out examples than this.
    pub min_eval_examples: usize,
    /// A round's spread counts as at least this fraction of the median
    /// spread of the last `spread_rounds` rounds with power: a round whose
    /// handful of scores happen to cluster has a spread far below the
    /// usual, which would read an honest worker's ordinary shortfall as
    /// many spreads (0 turns the floor off; `docs/PAY.md`, "The test").
    /// Not written out at its default, so configurations (and run ids)
    /// from before the floor serialise as they did.
    #[serde(skip_serializing_if = "is_default_spread_floor")]
    pub spread_floor: f64,
    /// Rounds whose spreads the floor takes its median from.
    #[serde(skip_serializing_if = "is_default_spread_rounds")]
    pub spread_rounds: usize,
}

fn is_default_spread_floor(value: &f64) -> bool {
    *value == QualityConfig::default().spread_floor
}

fn is_default_spread_rounds(value: &usize) -> bool {
    *value == QualityConfig::default().spread_rounds
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            eval_examples: 1500,
            score: ScoreMethod::Linear,
            shift: 1.0,
            clamp: 3.0,
            threshold: 10.0,
            min_updates: 4,
            min_eval_examples: 256,
            spread_floor: 0.5,
            spread_rounds: 10,
        }
    }
}

impl QualityConfig {
    /// The most evidence one round can add.
    pub fn max_evidence(&self) -> f64 {
        self.shift * self.clamp - self.shift * self.shift / 2.0
    }

    /// Rounds a worker's credits stay in escrow: the fewest rounds in which
    /// the gate can reach its threshold, so that a worker harmful from its
    /// first round is denied every credit.
    pub fn escrow_rounds(&self) -> u64 {
        (self.threshold / self.max_evidence()).ceil().max(1.0) as u64
    }

    /// Evidence at or above which a worker's escrowed credits do not vest,
    /// whatever their age: half the threshold. The escrow window is the
    /// soonest the gate can decide; a harmful worker whose rounds each add
    /// less than the most evidence a round can add takes longer, and its
    /// pay must not vest while the test is still deciding. An honest
    /// worker's evidence rarely leaves 0 (`docs/PAY.md`), so its pay vests
    /// on time.
    pub fn suspicion(&self) -> f64 {
        self.threshold / 2.0
    }

    /// Checks the settings: `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let checks: [(&'static str, bool, &'static str); 8] = [
            ("eval_examples", (1..=1_000_000).contains(&self.eval_examples), "must be between 1 and 1000000"),
            ("shift", self.shift.is_finite() && self.shift > 0.0, "must be a positive number of spreads"),
            (
                "clamp",
                self.clamp.is_finite() && self.clamp > self.shift / 2.0,
                "must be finite and above half the shift (else no round adds evidence)",
            ),
            (
                "threshold",
                self.threshold.is_finite()
                    && self.threshold > 0.0
                    && self.threshold / self.max_evidence() <= 1000.0,
                "must be positive and reachable within 1000 rounds",
            ),
            ("min_updates", (3..=1_000_000).contains(&self.min_updates), "must be at least 3"),
            ("min_eval_examples", self.min_eval_examples <= 1_000_000, "must be at most 1000000"),
            ("spread_floor", (0.0..=1.0).contains(&self.spread_floor), "must be between 0 and 1"),
            ("spread_rounds", (1..=1000).contains(&self.spread_rounds), "must be between 1 and 1000"),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((field, _, reason)) => Err((field, reason)),
            None => Ok(()),
        }
    }
}

/// How each update's quality score is computed (`[quality] score`;
/// `docs/PAY.md`, "The evaluation batch and the score").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreMethod {
    /// The relative held-out loss drop with the update alone applied:
    /// one forward pass over the batch for the global model and one per
    /// update.
    Exact,
    /// Its first-order approximation: one forward and backward pass at the
    /// global model gives the held-out gradient `g`, and each update's
    /// score is `step * g . u / L(g)`, one dot product per update. Blind to
    /// curvature, so an update that only adds noise scores about zero
    /// rather than below it. The default: as good at telling attacks from
    /// honest work, for an eighth of the cost (`docs/PAY.md`).
    #[default]
    Linear,
}

impl ScoreMethod {
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Linear => "linear",
        }
    }
}

impl std::str::FromStr for ScoreMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "exact" => Ok(Self::Exact),
            "linear" => Ok(Self::Linear),
            other => Err(format!("unknown score {other:?}; expected exact or linear")),
        }
    }
}

impl std::fmt::Display for ScoreMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the pay gate says of a worker after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayGate {
    /// No round of its has been one the test could judge (too few updates
    /// or held-out examples): its verified work is paid, and audits and
    /// checks are all that defend the pay.
    NoPower,
    /// The test has judged it and not found it worse: paid in full.
    Pass,
    /// Its updates are worse than the majority's beyond the threshold: its
    /// work earns nothing until the evidence falls back.
    Deny,
}

impl PayGate {
    pub fn name(&self) -> &'static str {
        match self {
            Self::NoPower => "no-power",
            Self::Pass => "pass",
            Self::Deny => "deny",
        }
    }
}
