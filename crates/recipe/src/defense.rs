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

/// Settings of quality scoring (`[quality]` in `run.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Examples in each round's evaluation batch.
    pub eval_examples: usize,
    /// Weight of a round's score in a worker's smoothed quality (its first
    /// `1 / smoothing` rounds weigh equally).
    pub smoothing: f64,
    /// A smoothed quality at or below this (in typical updates) earns no
    /// credit ...
    pub zero_credit_at: f64,
    /// ... and at or above this, full credit; linear in between.
    pub full_credit_at: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self { eval_examples: 512, smoothing: 0.05, zero_credit_at: 0.15, full_credit_at: 0.4 }
    }
}

impl QualityConfig {
    /// The credit multiplier of a smoothed quality.
    pub fn multiplier(&self, smoothed: f64) -> f64 {
        ((smoothed - self.zero_credit_at) / (self.full_credit_at - self.zero_credit_at)).clamp(0.0, 1.0)
    }
}
