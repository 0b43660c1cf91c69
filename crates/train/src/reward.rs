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
    /// Models measured to find it (with `measure`, the full evaluation).
    pub evaluations: u32,
    /// Models screened to find it (with the cheap `screen` of
    /// [`calibrate_screened`]; 0 for [`calibrate`]).
    pub screened: u32,
}

fn quantize(alpha: f64) -> f32 {
    let scale = f64::from(1u32 << COEFFICIENT_BITS);
    ((alpha.clamp(0.0, 1.0) * scale).round() / scale) as f32
}

/// A search's bracket on the segment: f(α) = value(α) - target, with
/// f(lo) <= 0 <= f(hi) (the ends' f are hints until measured).
#[derive(Debug, Clone, Copy)]
struct Bracket {
    lo: f64,
    f_lo: f64,
    hi: f64,
    f_hi: f64,
    /// Which end moved last (-1 lo, +1 hi), for the Illinois step.
    side: i8,
}

impl Bracket {
    /// The whole segment, with the ends' values as hints.
    fn segment(lower_value: f64, upper_value: f64, target: f64) -> Self {
        Self {
            lo: 0.0,
            f_lo: (lower_value - target).min(0.0),
            hi: 1.0,
            f_hi: (upper_value - target).max(0.0),
            side: 0,
        }
    }

    /// The regula falsi point, kept strictly inside (1% of the width from
    /// either end).
    fn next(&self) -> f64 {
        let falsi = if self.f_hi > self.f_lo {
            self.lo - self.f_lo * (self.hi - self.lo) / (self.f_hi - self.f_lo)
        } else {
            0.5 * (self.lo + self.hi)
        };
        let width = self.hi - self.lo;
        falsi.clamp(self.lo + 0.01 * width, self.hi - 0.01 * width)
    }

    /// Narrows to `alpha`, where f is `error`; `high` says it is above the
    /// target (or the ceiling). Illinois: an end that stays twice in a row
    /// has its f halved, so the falsi point moves off it. (Anderson-Björck's
    /// scaling, tried on a demo's rewards, took as many evaluations.)
    fn narrow(&mut self, alpha: f64, error: f64, high: bool) {
        if high {
            (self.hi, self.f_hi) = (alpha, error.max(0.0));
            if self.side == 1 {
                self.f_lo *= 0.5;
            }
            self.side = 1;
        } else {
            (self.lo, self.f_lo) = (alpha, error.min(0.0));
            if self.side == -1 {
                self.f_hi *= 0.5;
            }
            self.side = -1;
        }
    }

    fn exhausted(&self) -> bool {
        self.hi - self.lo <= f64::powi(0.5, COEFFICIENT_BITS as i32)
    }
}

/// What one search found.
struct Search {
    /// A candidate within `precision` of the target and not above the ceiling.
    hit: Option<Calibrated>,
    /// Else the candidate closest to the target among those `accepts` takes.
    best: Option<Calibrated>,
    /// The candidate closest to the target, whatever the ceiling: (α, value).
    closest: Option<(f32, f64)>,
}

/// The model at `coefficient`, measured, unless `measured` (which it
/// extends) already has that coefficient: `None`.
fn measure_candidate(
    lower: &[f32],
    upper: &[f32],
    coefficient: f32,
    measured: &mut Vec<f32>,
    measure: &mut dyn FnMut(&[f32]) -> Result<f64, TrainError>,
) -> Result<Option<Calibrated>, RewardError> {
    if measured.contains(&coefficient) {
        return Ok(None);
    }
    measured.push(coefficient);
    let params = interpolate(lower, upper, coefficient);
    let value = measure(&params)?;
    if !value.is_finite() {
        return Err(RewardError::Invalid(format!("a candidate measured {value}")));
    }
    Ok(Some(Calibrated { coefficient, params, measured: value, evaluations: 0, screened: 0 }))
}

/// Regula falsi with the Illinois modification on measure(θ(α)) - target
/// inside `bracket`, measuring `first` first if it is a number, never a
/// coefficient already in `measured` (which it extends), at most `budget`
/// times.
#[allow(clippy::too_many_arguments)]
fn search(
    lower: &[f32],
    upper: &[f32],
    bracket: &mut Bracket,
    mut first: f64,
    target: &Target,
    measured: &mut Vec<f32>,
    budget: u32,
    measure: &mut dyn FnMut(&[f32]) -> Result<f64, TrainError>,
) -> Result<Search, RewardError> {
    let mut found = Search { hit: None, best: None, closest: None };
    for _ in 0..budget {
        let alpha = if first.is_nan() { bracket.next() } else { first };
        first = f64::NAN;
        let coefficient = quantize(alpha);
        // None: the bracket is narrower than the coefficient grid.
        let Some(candidate) = measure_candidate(lower, upper, coefficient, measured, measure)? else { break };
        let (value, error) = (candidate.measured, candidate.measured - target.value);
        if found.closest.is_none_or(|(_, closest)| error.abs() < (closest - target.value).abs()) {
            found.closest = Some((coefficient, value));
        }
        if error.abs() <= target.precision && value <= target.ceiling {
            found.hit = Some(candidate);
            return Ok(found);
        }
        if target.accepts(value)
            && found.best.as_ref().is_none_or(|b| error.abs() < (b.measured - target.value).abs())
        {
            found.best = Some(candidate);
        }
        bracket.narrow(f64::from(coefficient), error, error > 0.0 || value > target.ceiling);
        if bracket.exhausted() {
            break;
        }
    }
    Ok(found)
}

fn check_precision(target: &Target) -> Result<(), RewardError> {
    if target.precision > 0.0 && target.precision <= target.tolerance {
        Ok(())
    } else {
        Err(RewardError::Invalid(format!(
            "the precision {} must be positive and at most the tolerance {}",
            target.precision, target.tolerance
        )))
    }
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
/// evaluations (on the first round's step, from the initial model, the
/// value is far from linear in α and it takes seven to ten: see
/// [`calibrate_screened`]). If no candidate comes within `precision`, the
/// closest one within `tolerance` is returned.
pub fn calibrate(
    lower: &[f32],
    lower_value: f64,
    upper: &[f32],
    upper_value: f64,
    target: &Target,
    mut measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
) -> Result<Calibrated, RewardError> {
    check_precision(target)?;
    let mut bracket = Bracket::segment(lower_value, upper_value, target.value);
    let first = start(&bracket, upper_value, target);
    let mut measured = Vec::new();
    let found =
        search(lower, upper, &mut bracket, first, target, &mut measured, EVALUATIONS_MAX, &mut measure)?;
    finish(found, target, measured.len() as u32, 0)
}

/// Where a search starts: at an end within precision of the target (the
/// upper one only if not above the ceiling), else (NaN) at the falsi point.
fn start(bracket: &Bracket, upper_value: f64, target: &Target) -> f64 {
    if bracket.f_lo.abs() <= target.precision {
        0.0
    } else if bracket.f_hi <= target.precision && upper_value <= target.ceiling {
        1.0
    } else {
        bracket.next()
    }
}

fn finish(
    found: Search,
    target: &Target,
    evaluations: u32,
    screened: u32,
) -> Result<Calibrated, RewardError> {
    match found.hit.or(found.best) {
        Some(found) => Ok(Calibrated { evaluations, screened, ..found }),
        None => Err(RewardError::NotReached {
            target: target.value,
            tolerance: target.tolerance,
            best: found.closest.map_or(f64::NAN, |(_, value)| value),
            evaluations,
        }),
    }
}

/// Most full evaluations [`calibrate_screened`] spends on screened
/// candidates before it searches on the full evaluation alone.
pub const SCREENED_ROUNDS: u32 = 4;

/// [`calibrate`], with most of the search on `screen`, a cheap estimate of
/// `measure` (the same metric on a fixed part of the evaluation set), and
/// `measure` only to decide.
///
/// Each round searches the screen for the coefficient whose screened value
/// is the target less `offset`, inside the bracket that full evaluations
/// have established, then measures that one candidate in full. A hit
/// (within `precision`, never above the ceiling) ends the search: the
/// guarantee is the full measurement's, as in [`calibrate`]. A miss narrows
/// the full bracket and sets `offset` to the full value less the screened
/// one at that candidate: a screen is off from the full set by an amount
/// that changes slowly along the segment, so the next round lands closer.
/// After [`SCREENED_ROUNDS`] misses the search goes on in full inside the
/// bracket, as [`calibrate`] would. Deterministic like it: every decision
/// is a measured value.
///
/// Where the value is near linear in α (most rounds' steps) this costs what
/// [`calibrate`] does, one or two full evaluations; on the first round's
/// step, where [`calibrate`] takes seven to ten, it takes one or two full
/// evaluations and a handful of screened ones.
pub fn calibrate_screened(
    lower: &[f32],
    lower_value: f64,
    upper: &[f32],
    upper_value: f64,
    target: &Target,
    mut screen: impl FnMut(&[f32]) -> Result<f64, TrainError>,
    mut measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
) -> Result<Calibrated, RewardError> {
    check_precision(target)?;
    let mut bracket = Bracket::segment(lower_value, upper_value, target.value);
    let mut measured = Vec::new();
    let mut screened = 0u32;
    let mut offset = 0.0;
    let mut best: Option<Calibrated> = None;
    let mut closest: Option<(f32, f64)> = None;
    // The first candidate is calibrate's: an end within precision, else the
    // linear guess from the ends' values (near linear steps end here).
    let mut first = start(&bracket, upper_value, target);
    for _ in 0..SCREENED_ROUNDS {
        let (coefficient, screen_value) = if !first.is_nan() {
            (quantize(std::mem::replace(&mut first, f64::NAN)), None)
        } else {
            // The screen's search: aim for the target less the offset, to
            // the precision, with no ceiling (the full measurement checks
            // it), inside the bracket the full measurements established.
            let aim = Target {
                value: target.value - offset,
                tolerance: f64::INFINITY,
                precision: target.precision,
                ceiling: f64::INFINITY,
            };
            let mut inside = Bracket { side: 0, ..bracket };
            let mut tried = Vec::new();
            let found =
                search(lower, upper, &mut inside, f64::NAN, &aim, &mut tried, EVALUATIONS_MAX, &mut screen)?;
            screened += tried.len() as u32;
            match found.hit.map(|hit| (hit.coefficient, hit.measured)).or(found.closest) {
                Some((coefficient, value)) => (coefficient, Some(value)),
                None => break,
            }
        };
        // The candidate, measured in full: it alone decides.
        let Some(candidate) = measure_candidate(lower, upper, coefficient, &mut measured, &mut measure)?
        else {
            break;
        };
        let (value, error) = (candidate.measured, candidate.measured - target.value);
        if error.abs() <= target.precision && value <= target.ceiling {
            return Ok(Calibrated { evaluations: measured.len() as u32, screened, ..candidate });
        }
        if closest.is_none_or(|(_, closest)| error.abs() < (closest - target.value).abs()) {
            closest = Some((coefficient, value));
        }
        if target.accepts(value)
            && best.as_ref().is_none_or(|b| error.abs() < (b.measured - target.value).abs())
        {
            best = Some(candidate.clone());
        }
        bracket.narrow(f64::from(coefficient), error, error > 0.0 || value > target.ceiling);
        if bracket.exhausted() {
            break;
        }
        // How far the screen is off here: the next screened search aims
        // that much below the target (and below the ceiling by what it
        // missed it by).
        let screen_value = match screen_value {
            Some(known) => known,
            None => {
                screened += 1;
                screen(&candidate.params)?
            }
        };
        offset = value - screen_value + (value - target.ceiling).max(0.0);
    }
    // The screen did not land within precision: finish in full inside the
    // bracket the full measurements established.
    bracket.side = 0;
    let mut found =
        search(lower, upper, &mut bracket, f64::NAN, target, &mut measured, EVALUATIONS_MAX, &mut measure)?;
    if found.hit.is_none() {
        if let Some(earlier) = best.filter(|earlier| {
            found
                .best
                .as_ref()
                .is_none_or(|b| (earlier.measured - target.value).abs() < (b.measured - target.value).abs())
        }) {
            found.best = Some(earlier);
        }
        if let Some((coefficient, value)) = closest
            && found.closest.is_none_or(|(_, c)| (value - target.value).abs() < (c - target.value).abs())
        {
            found.closest = Some((coefficient, value));
        }
    }
    finish(found, target, measured.len() as u32, screened)
}

/// The fixed part of an evaluation set of `len` examples that
/// [`calibrate_screened`]'s screen measures on: every `len /
/// SCREEN_EXAMPLES`-th example, the same examples on every machine, spread
/// evenly over the set. `None` for a set under four times
/// [`SCREEN_EXAMPLES`], where screening would save too little.
pub fn screen_indices(len: usize) -> Option<Vec<u32>> {
    let stride = len / SCREEN_EXAMPLES;
    (stride >= 4).then(|| (0..len).step_by(stride).map(|index| index as u32).collect())
}

/// About how many examples the screen measures: a tenth of the
/// 10,000-image Fashion-MNIST test set (a sampling error of about one
/// point of accuracy, which the full measurement of each candidate
/// corrects).
pub const SCREEN_EXAMPLES: usize = 1000;

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

    /// A stand-in for the first round's step: the value saturates fast
    /// along α (a sigmoid of the mean parameter), as accuracy does from the
    /// initial model to the first round's.
    fn saturating(params: &[f32]) -> Result<f64, TrainError> {
        let m = mean(params)?;
        Ok(((0.1 + 0.7 * (1.0 - (-12.0 * m).exp())) * 1e4).round() / 1e4)
    }

    /// A screen of it: every tenth parameter, coarser (a smaller set) and
    /// off by an amount that drifts along the segment.
    fn screened(params: &[f32]) -> Result<f64, TrainError> {
        let part: Vec<f32> = params.iter().step_by(10).copied().collect();
        let m = mean(&part)?;
        Ok(((saturating(&part)? + 0.01 - 0.008 * m) * 1e3).round() / 1e3)
    }

    #[test]
    fn screening_hits_the_target_with_fewer_full_evaluations_on_a_saturating_step() {
        let lower = vec![0.0f32; 1000];
        let mut upper = vec![1.0f32; 1000];
        upper[3] = 0.2; // not exactly uniform
        let (low, high) = (saturating(&lower).unwrap(), saturating(&upper).unwrap());
        for goal in [0.35, 0.5, 0.6, 0.7, 0.79] {
            let goal = target(goal, high);
            let plain = calibrate(&lower, low, &upper, high, &goal, saturating).unwrap();
            let found = calibrate_screened(&lower, low, &upper, high, &goal, screened, saturating).unwrap();
            assert!((found.measured - goal.value).abs() <= goal.precision, "{goal:?}: {}", found.measured);
            assert!(found.measured <= goal.ceiling);
            assert_eq!(saturating(&interpolate(&lower, &upper, found.coefficient)).unwrap(), found.measured);
            assert!(
                found.evaluations <= 4 && found.evaluations < plain.evaluations,
                "{goal:?}: {} full evaluations screened, {} plain",
                found.evaluations,
                plain.evaluations
            );
            // Deterministic: the same inputs give the same model.
            let again = calibrate_screened(&lower, low, &upper, high, &goal, screened, saturating).unwrap();
            assert_eq!((again.coefficient, again.measured), (found.coefficient, found.measured));
        }
    }

    #[test]
    fn screening_costs_nothing_where_the_step_is_linear_and_survives_a_useless_screen() {
        let lower = vec![0.70f32; 1000];
        let upper = vec![0.90f32; 1000];
        let never = |_: &[f32]| -> Result<f64, TrainError> { panic!("a linear step needs no screen") };
        let found = calibrate_screened(&lower, 0.7, &upper, 0.9, &target(0.8, 0.9), never, mean).unwrap();
        assert_eq!((found.evaluations, found.screened), (1, 0));
        // A screen that says nothing useful (a constant) costs evaluations,
        // never the guarantee: the full search finishes the job.
        let lower = vec![0.0f32; 1000];
        let upper = vec![1.0f32; 1000];
        let (low, high) = (saturating(&lower).unwrap(), saturating(&upper).unwrap());
        let constant = |_: &[f32]| Ok(0.5);
        for goal in [0.35, 0.6, 0.79] {
            let goal = target(goal, high);
            let found = calibrate_screened(&lower, low, &upper, high, &goal, constant, saturating).unwrap();
            assert!((found.measured - goal.value).abs() <= goal.tolerance, "{goal:?}: {}", found.measured);
            assert!(found.measured <= goal.ceiling);
        }
        // And the ceiling holds when the target is the ceiling itself.
        let goal = target(0.6, 0.6);
        let found = calibrate_screened(&lower, low, &upper, high, &goal, screened, saturating).unwrap();
        assert!(found.measured <= 0.6 && found.measured >= 0.595, "{}", found.measured);
    }

    #[test]
    fn the_screen_is_a_fixed_tenth_spread_over_the_set_or_nothing() {
        let indices = screen_indices(10_000).unwrap();
        assert_eq!((indices.len(), indices[1], *indices.last().unwrap()), (1000, 10, 9990));
        assert_eq!(screen_indices(10_000), Some(indices));
        assert_eq!(screen_indices(4_000).map(|i| i.len()), Some(1000));
        assert_eq!(screen_indices(3_999), None, "too small a set to screen");
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
