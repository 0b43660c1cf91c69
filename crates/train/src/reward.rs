//! Model rewards: a model of a chosen quality, made from a run's checkpoints.
//!
//! "Paid with Models" pays participant i with a model of value r_i(n) <=
//! a(n·m), the value of the model the run trained. This module makes such
//! a model: given the run's trajectory of checkpoints θ_0 (the initial
//! model) .. θ_R (the final one) with their measured values v_j, and a
//! target r <= v_R, it takes the first consecutive pair with v_j <= r <=
//! v_j+1 ([`bracket`]) and the point θ(α) = θ_j + α (θ_j+1 - θ_j) on the
//! segment between them whose measured value is r ([`calibrate`]).
//!
//! Why interpolation between consecutive checkpoints, and not the
//! alternatives (`docs/CONTRACT.md` has the full argument):
//!
//! * **An earlier checkpoint alone** cannot hit r: early rounds move the
//!   accuracy by several points at a time.
//! * **Calibrated noise** (θ_R + σ ε, as in Sim et al., ICML 2020) is off
//!   the training trajectory: its loss, calibration and behaviour are those
//!   of a damaged model, not of a smaller run's. And a recipe anyone can
//!   check must publish the seed, which lets the recipient subtract the
//!   noise and recover the final model exactly.
//! * **Interpolating between consecutive checkpoints** stays on the path
//!   training took, so the reward behaves like the run's own model at the
//!   moment it had reached r: what "a model trained on less contribution"
//!   means. Along one round's step the value is close to linear in α, so
//!   a few evaluations find r. What a recipient can learn from its reward
//!   and the published coefficient is bounded too: with θ_j it recovers
//!   θ_j+1, one round's progress past its reward, never the final model
//!   (unless r falls in the last round's step).
//!
//! Everything is deterministic: the arithmetic is element-wise in f32
//! (Rust never fuses it into an FMA), the coefficient is a multiple of
//! 2^-24 (exact in f32 and in every serialisation), and the search's
//! decisions depend only on measured values, which the deterministic
//! evaluation makes bit-identical on every CPU and thread count. So the
//! same inputs give the same model, bit for bit, and anyone with the
//! checkpoints can rebuild it from (θ_j, θ_j+1, α).
//!
//! Nothing here knows what a model is or how it is measured: `measure` is
//! any metric evaluated on a held-out set ([`Metric`] turns an
//! evaluation into a value), so the same code serves the MLP's test
//! accuracy and a language model's held-out loss.

pub use crowdtrain_recipe::Metric;

use crate::TrainError;
#[cfg(test)]
use crate::model::Evaluation;

/// Coefficients are multiples of 2^-COEFFICIENT_BITS: exact in f32, and
/// fine enough (6e-8 of a round's step) for any accuracy target.
pub const COEFFICIENT_BITS: u32 = 24;

/// Most evaluations one calibration spends before giving up.
pub const EVALUATIONS_MAX: u32 = 40;

/// Why no reward model could be made.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Metric(#[from] crowdtrain_recipe::RecipeError),
    #[error(
        "the target {target} is below the initial model's value {initial}: no model of the run is that poor"
    )]
    BelowInitial { target: f64, initial: f64 },
    #[error(
        "the target {target} is above the final model's value {ceiling}: a reward never beats the trained model"
    )]
    AboveFinal { target: f64, ceiling: f64 },
    #[error(
        "after {evaluations} evaluations the closest model found is worth {best} against a target of {target} \
         (tolerance {tolerance})"
    )]
    NotReached { target: f64, tolerance: f64, best: f64, evaluations: u32 },
    #[error("measuring a candidate failed: {0}")]
    Measure(#[from] TrainError),
}

/// The model on the segment from `lower` to `upper` at `coefficient`:
/// lower + coefficient (upper - lower), element by element in f32.
pub fn interpolate(lower: &[f32], upper: &[f32], coefficient: f32) -> Vec<f32> {
    assert_eq!(lower.len(), upper.len(), "both ends have the model's parameter count");
    lower.iter().zip(upper).map(|(&a, &b)| a + coefficient * (b - a)).collect()
}

/// The first j with value(j) <= target <= value(j + 1) among `count`
/// checkpoints: the pair of consecutive checkpoints to interpolate
/// between. The earliest crossing is the model the run had when it first
/// reached the target, the closest thing to "trained on less".
///
/// `value` is asked only for what the answer needs (a checkpoint's value
/// may cost an evaluation): value(j) only where value(j + 1) >= target,
/// the final value first. Errors if the target is outside [value(0),
/// value(count - 1)].
pub fn bracket<E: From<RewardError>>(
    count: usize,
    target: f64,
    mut value: impl FnMut(usize) -> Result<f64, E>,
) -> Result<usize, E> {
    if count < 2 {
        return Err(
            RewardError::Invalid("a reward needs the initial model and at least one round's".into()).into()
        );
    }
    if !target.is_finite() {
        return Err(RewardError::Invalid(format!("the target must be finite, got {target}")).into());
    }
    let ceiling = value(count - 1)?;
    if target > ceiling {
        return Err(RewardError::AboveFinal { target, ceiling }.into());
    }
    for j in 0..count - 1 {
        if value(j + 1)? >= target && value(j)? <= target {
            return Ok(j);
        }
    }
    // value(last) >= target, so a sequence that never crosses the target
    // starts above it.
    Err(RewardError::BelowInitial { target, initial: value(0)? }.into())
}

/// What a calibration aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The value the reward should have.
    pub value: f64,
    /// How far from it the delivered model may be (the 0.5 points:
    /// 0.005).
    pub tolerance: f64,
    /// Stop searching once this close (at most `tolerance`).
    pub precision: f64,
    /// The final model's value: the reward is never worth more.
    pub ceiling: f64,
}

impl Target {
    fn accepts(&self, measured: f64) -> bool {
        (measured - self.value).abs() <= self.tolerance && measured <= self.ceiling
    }
}

/// A model found on a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibrated {
    /// α, a multiple of 2^-[`COEFFICIENT_BITS`].
    pub coefficient: f32,
    pub params: Vec<f32>,
    /// Its measured value.
    pub measured: f64,
    /// Models measured to find it.
    pub evaluations: u32,
}

fn quantize(alpha: f64) -> f32 {
    let scale = f64::from(1u32 << COEFFICIENT_BITS);
    ((alpha.clamp(0.0, 1.0) * scale).round() / scale) as f32
}

/// Finds α in [0, 1] with |measure(θ(α)) - target| <= precision and
/// measure(θ(α)) <= ceiling, where θ(α) = interpolate(lower, upper, α) and
/// `lower_value` <= target <= `upper_value` are the ends' values (hints:
/// only candidates' measurements decide).
///
/// The search is regula falsi with the Illinois modification on
/// measure(θ(α)) - target: it keeps a bracket, so it converges even where
/// the measured value is a step function (a finite test set), and along a
/// round's step it is near linear, so it usually stops after one to three
/// evaluations. If no candidate comes within `precision`, the closest one
/// within `tolerance` is returned.
pub fn calibrate(
    lower: &[f32],
    lower_value: f64,
    upper: &[f32],
    upper_value: f64,
    target: &Target,
    mut measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
) -> Result<Calibrated, RewardError> {
    if !(target.precision > 0.0 && target.precision <= target.tolerance) {
        return Err(RewardError::Invalid(format!(
            "the precision {} must be positive and at most the tolerance {}",
            target.precision, target.tolerance
        )));
    }
    // The bracket: f(α) = value - target, f(lo) <= 0 <= f(hi).
    let (mut alpha_lo, mut f_lo) = (0.0f64, (lower_value - target.value).min(0.0));
    let (mut alpha_hi, mut f_hi) = (1.0f64, (upper_value - target.value).max(0.0));
    // Start at the end nearer the target when one is within precision.
    let mut next = if f_lo.abs() <= target.precision {
        0.0
    } else if f_hi <= target.precision && upper_value <= target.ceiling {
        1.0
    } else {
        f64::NAN
    };
    let mut best: Option<Calibrated> = None;
    let mut closest = f64::NAN;
    let mut side = 0i8; // which end moved last (-1 lo, +1 hi), for Illinois
    let mut measured_alphas: Vec<f32> = Vec::new();
    for evaluation in 1..=EVALUATIONS_MAX {
        let alpha = if next.is_nan() {
            let falsi =
                if f_hi > f_lo { alpha_lo - f_lo * (alpha_hi - alpha_lo) / (f_hi - f_lo) } else { 0.5 };
            // Stay strictly inside, away from the ends by 1% of the width.
            let width = alpha_hi - alpha_lo;
            falsi.clamp(alpha_lo + 0.01 * width, alpha_hi - 0.01 * width)
        } else {
            next
        };
        next = f64::NAN;
        let coefficient = quantize(alpha);
        if measured_alphas.contains(&coefficient) {
            break; // the bracket is narrower than the coefficient grid
        }
        measured_alphas.push(coefficient);
        let params = interpolate(lower, upper, coefficient);
        let measured = measure(&params)?;
        if !measured.is_finite() {
            return Err(RewardError::Invalid(format!("a candidate measured {measured}")));
        }
        let candidate = Calibrated { coefficient, params, measured, evaluations: evaluation };
        let error = measured - target.value;
        if error.abs() <= target.precision && measured <= target.ceiling {
            return Ok(candidate);
        }
        if closest.is_nan() || error.abs() < (closest - target.value).abs() {
            closest = measured;
        }
        if target.accepts(measured)
            && best.as_ref().is_none_or(|b| error.abs() < (b.measured - target.value).abs())
        {
            best = Some(candidate);
        }
        let alpha = f64::from(coefficient);
        if error > 0.0 || measured > target.ceiling {
            (alpha_hi, f_hi) = (alpha, error.max(0.0));
            if side == 1 {
                f_lo *= 0.5;
            }
            side = 1;
        } else {
            (alpha_lo, f_lo) = (alpha, error);
            if side == -1 {
                f_hi *= 0.5;
            }
            side = -1;
        }
        if alpha_hi - alpha_lo <= f64::powi(0.5, COEFFICIENT_BITS as i32) {
            break;
        }
    }
    let evaluations = measured_alphas.len() as u32;
    match best {
        Some(mut found) => {
            found.evaluations = evaluations;
            Ok(found)
        }
        None => Err(RewardError::NotReached {
            target: target.value,
            tolerance: target.tolerance,
            best: closest,
            evaluations,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in metric: the mean parameter, rounded to 1e-4 like a test
    /// set of 10,000 examples.
    fn mean(params: &[f32]) -> Result<f64, TrainError> {
        let sum: f64 = params.iter().map(|&p| f64::from(p)).sum();
        Ok((sum / params.len() as f64 * 1e4).round() / 1e4)
    }

    fn target(value: f64, ceiling: f64) -> Target {
        Target { value, tolerance: 0.005, precision: 0.001, ceiling }
    }

    #[test]
    fn interpolation_is_exact_at_zero_and_element_wise() {
        let (a, b) = (vec![1.0f32, -2.0, 0.5], vec![3.0f32, 2.0, 0.5]);
        assert_eq!(interpolate(&a, &b, 0.0), a);
        assert_eq!(interpolate(&a, &b, 0.5), vec![2.0, 0.0, 0.5]);
        assert_eq!(
            quantize(0.3) as f64 * f64::from(1u32 << COEFFICIENT_BITS),
            (0.3f64 * 16_777_216.0).round()
        );
    }

    #[test]
    fn the_first_crossing_is_chosen_measuring_only_what_it_needs() {
        let values = [0.1, 0.7, 0.8, 0.78, 0.85, 0.83];
        let first = |target: f64| {
            let mut asked = Vec::new();
            let j = bracket::<RewardError>(values.len(), target, |j| {
                asked.push(j);
                Ok(values[j])
            });
            (j, asked)
        };
        assert_eq!(first(0.75).0.unwrap(), 1);
        assert_eq!(first(0.79).0.unwrap(), 1, "0.8 is reached in round 2 first");
        assert_eq!(first(0.82).0.unwrap(), 3);
        assert_eq!(first(0.83).0.unwrap(), 3);
        assert_eq!(first(0.1).0.unwrap(), 0);
        // The initial model's value is not needed above the first round's.
        assert!(!first(0.75).1.contains(&0), "{:?}", first(0.75).1);
        assert!(matches!(first(0.84).0, Err(RewardError::AboveFinal { .. })));
        assert!(matches!(first(0.05).0, Err(RewardError::BelowInitial { .. })));
        assert!(bracket::<RewardError>(1, 0.5, |_| Ok(0.5)).is_err());
    }

    #[test]
    fn calibration_hits_the_target_in_a_few_evaluations() {
        let lower = vec![0.70f32; 1000];
        let mut upper = vec![0.90f32; 1000];
        upper[0] = 0.5; // not exactly linear
        for goal in [0.71, 0.75, 0.8, 0.85, 0.899] {
            let found =
                calibrate(&lower, 0.7, &upper, mean(&upper).unwrap(), &target(goal, 0.9), mean).unwrap();
            assert!((found.measured - goal).abs() <= 0.001, "{goal}: {}", found.measured);
            assert_eq!(mean(&interpolate(&lower, &upper, found.coefficient)).unwrap(), found.measured);
            assert!(found.evaluations <= 3, "{goal}: {} evaluations", found.evaluations);
        }
    }

    #[test]
    fn a_reward_is_never_worth_more_than_the_ceiling() {
        // The upper end is worth more than the final model; the target is
        // the final model's value itself.
        let lower = vec![0.80f32; 100];
        let upper = vec![0.90f32; 100];
        let found = calibrate(&lower, 0.8, &upper, 0.9, &target(0.85, 0.85), mean).unwrap();
        assert!(found.measured <= 0.85 && found.measured >= 0.845, "{}", found.measured);
    }

    #[test]
    fn a_step_function_is_searched_within_tolerance_or_refused() {
        // Coarse steps of 0.02: 0.804 is within tolerance of 0.80.
        let coarse = |params: &[f32]| mean(params).map(|v| (v * 50.0).floor() / 50.0);
        let (lower, upper) = (vec![0.7f32; 10], vec![0.9f32; 10]);
        let found = calibrate(&lower, 0.7, &upper, 0.9, &target(0.804, 0.9), coarse).unwrap();
        assert!((found.measured - 0.804).abs() <= 0.005, "{}", found.measured);
        // Steps of 0.1 cannot come within 0.5 points of 0.85.
        let coarser = |params: &[f32]| mean(params).map(|v| (v * 10.0).floor() / 10.0);
        let error = calibrate(&lower, 0.7, &upper, 0.9, &target(0.85, 0.9), coarser).unwrap_err();
        assert!(matches!(error, RewardError::NotReached { .. }), "{error}");
    }

    #[test]
    fn metrics_turn_evaluations_into_values() {
        let evaluation = Evaluation { loss: 0.5, accuracy: 0.87 };
        assert_eq!(Metric::Accuracy.value(evaluation.accuracy, evaluation.loss), 0.87);
        let neg_loss = Metric::NegLoss { reference_loss: 2.0 };
        assert_eq!(neg_loss.value(evaluation.accuracy, evaluation.loss), 0.75);
        assert!(Metric::NegLoss { reference_loss: 0.0 }.validate().is_err());
        let json = serde_json::to_string(&neg_loss).unwrap();
        assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), neg_loss);
    }
}
