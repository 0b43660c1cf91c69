//! Fitting the accuracy function a(M) to a measured learning curve.
//!
//! The contract needs a(M), the value of the model trained on a total
//! contribution M, before the run that will realise it. A pilot run (a
//! simulation, or an earlier run's record) measures points (M, a) along its
//! learning curve; this module fits the two forms the solver knows how to
//! optimise over and says how well each fits:
//!
//! * **`power-law`**: a(M) = a_opt - b M^-c, three parameters. For a fixed
//!   exponent c the model is linear in (a_opt, b), so least squares gives
//!   them in closed form and only c is searched (variable projection): a
//!   grid over log c, then golden-section search around the best cell.
//! * **`generalization-bound`**: the paper's a(x) = a_opt - (sqrt(2k(2 +
//!   ln(x/k))) + 4) / sqrt(x) at x = M / unit. For fixed (k, unit) the best
//!   a_opt is the mean of y + shortfall, so the search is over (log k, log
//!   unit), nested grid-and-golden the same way. With `unit` free the form
//!   does not depend on what the contribution is counted in (samples,
//!   tokens, work units); `unit = 1` is the paper's function.
//!
//! Both searches are deterministic (fixed grids, fixed iteration counts),
//! so the same curve always gives the same `[accuracy]` section.
//!
//! The values need not be accuracies: any "higher is better" score in
//! [0, 1] works (the CLI turns a loss into one, `docs/CONTRACT.md`), since
//! the contract only needs a(M) increasing and concave with a(M) >= 0
//! meaning "a model worth a(M) of the valuation scale".

use crate::accuracy::Accuracy;
use crate::error::{ContractError, Result};

/// One measurement of the learning curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Total contribution M (verified work units) behind the model.
    pub contribution: f64,
    /// Its measured value (accuracy, or a loss turned into a value).
    pub value: f64,
}

/// The functional forms `fit` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// a_opt - b M^-c.
    PowerLaw,
    /// The paper's generalization bound at M / unit.
    GeneralizationBound,
}

impl Form {
    /// Both forms, in the order reports list them.
    pub const ALL: [Form; 2] = [Form::PowerLaw, Form::GeneralizationBound];

    /// The scenario file's `kind` for this form.
    pub fn kind(self) -> &'static str {
        match self {
            Form::PowerLaw => "power-law",
            Form::GeneralizationBound => "generalization-bound",
        }
    }
}

/// How far a function is from a set of points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Errors {
    /// Root mean square of a(M) - value.
    pub rmse: f64,
    /// Largest |a(M) - value|.
    pub max_error: f64,
    /// Number of points compared.
    pub points: usize,
}

/// A fitted accuracy function and its error on the points it was fitted to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub form: Form,
    pub accuracy: Accuracy,
    pub errors: Errors,
}

/// Fewest points a fit accepts: both forms have three parameters.
pub const POINTS_MIN: usize = 3;

/// Fits `form` to `points` by least squares.
pub fn fit(form: Form, points: &[CurvePoint]) -> Result<Fit> {
    validate(points)?;
    let accuracy = match form {
        Form::PowerLaw => fit_power_law(points)?,
        Form::GeneralizationBound => fit_generalization_bound(points)?,
    };
    accuracy.validate()?;
    Ok(Fit { form, accuracy, errors: errors(&accuracy, points) })
}

/// A fitted form with how well it extrapolates along its own curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub fit: Fit,
    /// See [`extrapolation_errors`].
    pub extrapolation: Option<Errors>,
}

/// What decided between the two forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// The lower [`extrapolation_errors`] RMSE: fitted to the earlier part
    /// of the curve, predicting the later part.
    Extrapolation,
    /// The lower RMSE on all the points (the curve is too short to split).
    Fit,
}

impl Criterion {
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Extrapolation => "extrapolation",
            Criterion::Fit => "fit",
        }
    }
}

/// Fits both forms and puts the better one first.
///
/// "Better" is what a contract needs: a(M) is used at the contributions
/// the menu will ask for, usually beyond the pilot's. So each form is also
/// fitted to earlier parts of the curve and judged on the later parts
/// ([`extrapolation_errors`]), and the lower RMSE there decides (on the
/// MLP's curves the power law fits as well as the bound but extrapolates
/// worse: `docs/BENCHMARKS.md`). When the curve is too short to split, the
/// lower RMSE on all the points decides; a tie goes to the power law.
pub fn fit_both(points: &[CurvePoint]) -> Result<([Candidate; 2], Criterion)> {
    let candidate = |form| -> Result<Candidate> {
        Ok(Candidate { fit: fit(form, points)?, extrapolation: extrapolation_errors(form, points) })
    };
    let (power, bound) = (candidate(Form::PowerLaw)?, candidate(Form::GeneralizationBound)?);
    let (criterion, bound_wins) = match (power.extrapolation, bound.extrapolation) {
        (Some(p), Some(b)) => (Criterion::Extrapolation, b.rmse < p.rmse),
        _ => (Criterion::Fit, bound.fit.errors.rmse < power.fit.errors.rmse),
    };
    Ok((if bound_wins { [bound, power] } else { [power, bound] }, criterion))
}

/// Where [`extrapolation_errors`] splits a curve: it fits on the points at
/// the smallest of each share of the distinct contributions and predicts
/// the rest (rolling-origin validation, as for forecasts).
pub const EXTRAPOLATION_SPLITS: [f64; 4] = [0.5, 0.6, 0.7, 0.8];

/// How well `form` extrapolates along `points` themselves: for each split
/// of [`EXTRAPOLATION_SPLITS`], fitted to the earlier points, its errors on
/// the later ones; the RMSE is the mean over the splits, the max error the
/// largest. `None` if a part is too small to fit or to judge (fewer than
/// [`POINTS_MIN`] distinct contributions) at every split.
pub fn extrapolation_errors(form: Form, points: &[CurvePoint]) -> Option<Errors> {
    let mut distinct: Vec<f64> = points.iter().map(|p| p.contribution).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    let mut judged: Vec<Errors> = Vec::new();
    for share in EXTRAPOLATION_SPLITS {
        let cut = (distinct.len() as f64 * share).floor() as usize;
        if cut < POINTS_MIN || distinct.len() - cut < POINTS_MIN {
            continue;
        }
        let threshold = distinct[cut - 1];
        let (early, late): (Vec<CurvePoint>, Vec<CurvePoint>) =
            points.iter().partition(|p| p.contribution <= threshold);
        judged.push(errors(&fit(form, &early).ok()?.accuracy, &late));
    }
    if judged.is_empty() {
        return None;
    }
    Some(Errors {
        rmse: judged.iter().map(|e| e.rmse).sum::<f64>() / judged.len() as f64,
        max_error: judged.iter().fold(0.0, |max, e| max.max(e.max_error)),
        points: judged.iter().map(|e| e.points).sum(),
    })
}

/// The errors of `accuracy` on `points` (e.g. held-out ones).
pub fn errors(accuracy: &Accuracy, points: &[CurvePoint]) -> Errors {
    let (mut squares, mut max_error) = (0.0, 0.0f64);
    for point in points {
        let residual = accuracy.value(point.contribution) - point.value;
        squares += residual * residual;
        max_error = max_error.max(residual.abs());
    }
    let rmse = if points.is_empty() { 0.0 } else { (squares / points.len() as f64).sqrt() };
    Errors { rmse, max_error, points: points.len() }
}

fn validate(points: &[CurvePoint]) -> Result<()> {
    for (index, point) in points.iter().enumerate() {
        if !(point.contribution.is_finite() && point.contribution > 0.0) {
            return Err(ContractError::field(
                format!("points[{index}].contribution"),
                format!("must be a positive finite number, got {}", point.contribution),
            ));
        }
        if !point.value.is_finite() {
            return Err(ContractError::field(
                format!("points[{index}].value"),
                format!("must be finite, got {}", point.value),
            ));
        }
    }
    let mut distinct: Vec<f64> = points.iter().map(|p| p.contribution).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < POINTS_MIN {
        return Err(ContractError::field(
            "points",
            format!(
                "a fit needs measurements at {POINTS_MIN} or more distinct contributions, got {}",
                distinct.len()
            ),
        ));
    }
    Ok(())
}

fn not_increasing() -> ContractError {
    ContractError::field(
        "points",
        "the values do not increase with the contribution, so no increasing accuracy function fits them",
    )
}

/// Least squares of y = a - beta z with beta >= 0: (a, beta, sum of squares).
fn linear_fit(z: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = z.len() as f64;
    let (z_mean, y_mean) = (z.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut szz, mut szy) = (0.0, 0.0);
    for (zi, yi) in z.iter().zip(y) {
        szz += (zi - z_mean) * (zi - z_mean);
        szy += (zi - z_mean) * (yi - y_mean);
    }
    let beta = if szz > 0.0 { (-szy / szz).max(0.0) } else { 0.0 };
    let a = y_mean + beta * z_mean;
    let sse = z.iter().zip(y).map(|(zi, yi)| (a - beta * zi - yi).powi(2)).sum();
    (a, beta, sse)
}

fn fit_power_law(points: &[CurvePoint]) -> Result<Accuracy> {
    // Contributions are scaled by their geometric mean so that M^-c stays
    // near 1 for every c searched (M^-c itself underflows at c = 20).
    let log_reference = points.iter().map(|p| p.contribution.ln()).sum::<f64>() / points.len() as f64;
    let logs: Vec<f64> = points.iter().map(|p| p.contribution.ln() - log_reference).collect();
    let y: Vec<f64> = points.iter().map(|p| p.value).collect();
    let solve = |log_c: f64| {
        let c = log_c.exp();
        let z: Vec<f64> = logs.iter().map(|l| (-c * l).exp()).collect();
        linear_fit(&z, &y)
    };
    let log_c = minimize(|log_c| solve(log_c).2, (1e-3f64).ln(), 20f64.ln());
    let (a_opt, beta, _) = solve(log_c);
    let c = log_c.exp();
    if beta <= 0.0 {
        return Err(not_increasing());
    }
    // a_opt - beta (M / M_ref)^-c = a_opt - (beta M_ref^c) M^-c.
    let b = beta * (c * log_reference).exp();
    if !(a_opt > 0.0 && b.is_finite()) {
        return Err(not_increasing());
    }
    Ok(Accuracy::PowerLaw { a_opt, b, c })
}

/// The bound's shortfall (sqrt(2k(2 + ln(x/k))) + 4) / sqrt(x), or `None`
/// where it is undefined (x <= k e^-2, where the function is 0).
fn bound_shortfall(x: f64, k: f64) -> Option<f64> {
    let inner = 2.0 + (x / k).ln();
    (inner > 0.0).then(|| ((2.0 * k * inner).sqrt() + 4.0) / x.sqrt())
}

fn fit_generalization_bound(points: &[CurvePoint]) -> Result<Accuracy> {
    let y: Vec<f64> = points.iter().map(|p| p.value).collect();
    // For fixed (k, unit): the best a_opt, and the sum of squares of the
    // clipped function it gives.
    let solve = |log_k: f64, log_unit: f64| -> (f64, f64) {
        let (k, unit) = (log_k.exp(), log_unit.exp());
        let shortfall: Vec<Option<f64>> =
            points.iter().map(|p| bound_shortfall(p.contribution / unit, k)).collect();
        let defined: Vec<(f64, f64)> =
            shortfall.iter().zip(&y).filter_map(|(s, yi)| s.map(|s| (s, *yi))).collect();
        if defined.is_empty() {
            return (0.0, f64::INFINITY);
        }
        let a_opt = defined.iter().map(|(s, yi)| yi + s).sum::<f64>() / defined.len() as f64;
        let sse = shortfall
            .iter()
            .zip(&y)
            .map(|(s, yi)| {
                let value = s.map_or(0.0, |s| (a_opt - s).max(0.0));
                (value - yi).powi(2)
            })
            .sum();
        (a_opt, sse)
    };
    // The unit ranges from far below the smallest contribution (points are
    // then deep in the bound's tail) to far above the largest.
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.contribution.ln()), hi.max(p.contribution.ln())));
    let (unit_lo, unit_hi) = (lo - 12.0 * std::f64::consts::LN_10, hi + std::f64::consts::LN_10);
    let (k_lo, k_hi) = ((1e-3f64).ln(), (1e6f64).ln());
    let best_k = |log_unit: f64| minimize(|log_k| solve(log_k, log_unit).1, k_lo, k_hi);
    let log_unit = minimize(|log_unit| solve(best_k(log_unit), log_unit).1, unit_lo, unit_hi);
    let log_k = best_k(log_unit);
    let (a_opt, sse) = solve(log_k, log_unit);
    if !sse.is_finite() || a_opt <= 0.0 {
        return Err(not_increasing());
    }
    Ok(Accuracy::GeneralizationBound { a_opt, k: log_k.exp(), unit: log_unit.exp() })
}

/// The minimiser of `f` on [lo, hi]: the best of a uniform grid, refined by
/// golden-section search between its neighbours. Deterministic; finds the
/// global minimum when it is unimodal at the grid's resolution.
fn minimize(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    const GRID: usize = 48;
    const GOLDEN_STEPS: usize = 60;
    let at = |i: usize| lo + (hi - lo) * i as f64 / GRID as f64;
    let values: Vec<f64> = (0..=GRID).map(|i| f(at(i))).collect();
    let best = (0..=GRID).min_by(|&a, &b| values[a].total_cmp(&values[b])).expect("the grid is not empty");
    let (mut a, mut b) = (at(best.saturating_sub(1)), at((best + 1).min(GRID)));
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (b - ratio * (b - a), a + ratio * (b - a));
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..GOLDEN_STEPS {
        if f1 <= f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - ratio * (b - a);
            f1 = f(x1);
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + ratio * (b - a);
            f2 = f(x2);
        }
    }
    let refined = 0.5 * (a + b);
    if f(refined) <= values[best] { refined } else { at(best) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(accuracy: &Accuracy, contributions: &[f64]) -> Vec<CurvePoint> {
        contributions.iter().map(|&m| CurvePoint { contribution: m, value: accuracy.value(m) }).collect()
    }

    fn geometric(from: f64, to: f64, count: usize) -> Vec<f64> {
        (0..count).map(|i| from * (to / from).powf(i as f64 / (count - 1) as f64)).collect()
    }

    #[test]
    fn a_power_law_is_recovered_from_its_own_curve() {
        let truth = Accuracy::PowerLaw { a_opt: 0.88, b: 40.0, c: 0.55 };
        let points = curve(&truth, &geometric(6_400.0, 768_000.0, 40));
        let fitted = fit(Form::PowerLaw, &points).unwrap();
        let Accuracy::PowerLaw { a_opt, b, c } = fitted.accuracy else { panic!("{fitted:?}") };
        assert!((a_opt - 0.88).abs() < 1e-6 && (c - 0.55).abs() < 1e-4, "{fitted:?}");
        assert!((b / 40.0 - 1.0).abs() < 1e-3, "{fitted:?}");
        assert!(fitted.errors.rmse < 1e-7, "{fitted:?}");
    }

    #[test]
    fn the_paper_bound_is_recovered_with_a_unit() {
        let truth = Accuracy::GeneralizationBound { a_opt: 0.9, k: 3.0, unit: 25.0 };
        let points = curve(&truth, &geometric(20_000.0, 2_000_000.0, 30));
        let fitted = fit(Form::GeneralizationBound, &points).unwrap();
        assert!(fitted.errors.max_error < 1e-4, "{fitted:?}");
        // Both forms are fitted; the true one wins, on both criteria.
        let ([best, other], criterion) = fit_both(&points).unwrap();
        assert_eq!((best.fit.form, criterion), (Form::GeneralizationBound, Criterion::Extrapolation));
        assert!(other.fit.errors.rmse > best.fit.errors.rmse);
        let extrapolation = |c: &Candidate| c.extrapolation.unwrap().rmse;
        assert!(extrapolation(&other) > extrapolation(&best));
        // Too short to split: the fit's RMSE decides.
        let ([best, _], criterion) = fit_both(&points[..5]).unwrap();
        assert_eq!((best.fit.form, criterion), (Form::GeneralizationBound, Criterion::Fit));
    }

    #[test]
    fn noisy_points_give_a_prediction_close_to_the_truth() {
        // A deterministic +-0.3 point zig-zag, like round-to-round noise.
        let truth = Accuracy::PowerLaw { a_opt: 0.875, b: 2.0, c: 0.45 };
        let mut points = curve(&truth, &geometric(10_000.0, 300_000.0, 30));
        for (i, p) in points.iter_mut().enumerate() {
            p.value += if i % 2 == 0 { 0.003 } else { -0.003 };
        }
        let fitted = fit(Form::PowerLaw, &points).unwrap();
        let predicted = fitted.accuracy.value(1_000_000.0);
        assert!((predicted - truth.value(1_000_000.0)).abs() < 0.005, "{fitted:?}");
    }

    #[test]
    fn bad_curves_are_refused_with_a_reason() {
        let flat: Vec<CurvePoint> = (1..10)
            .map(|i| CurvePoint { contribution: i as f64 * 100.0, value: 1.0 - 0.01 * i as f64 })
            .collect();
        assert!(fit(Form::PowerLaw, &flat).unwrap_err().to_string().contains("do not increase"));
        let two =
            [CurvePoint { contribution: 1.0, value: 0.5 }, CurvePoint { contribution: 2.0, value: 0.6 }];
        assert!(fit(Form::PowerLaw, &two).unwrap_err().to_string().contains("3 or more"));
        let bad = [CurvePoint { contribution: -1.0, value: 0.5 }; 3];
        assert!(fit(Form::PowerLaw, &bad).unwrap_err().to_string().contains("points[0].contribution"));
        let nan = [
            CurvePoint { contribution: 1.0, value: 0.5 },
            CurvePoint { contribution: 2.0, value: f64::NAN },
            CurvePoint { contribution: 3.0, value: 0.5 },
        ];
        assert!(fit(Form::GeneralizationBound, &nan).unwrap_err().to_string().contains("points[1].value"));
    }

    #[test]
    fn fitting_is_deterministic() {
        let truth = Accuracy::PowerLaw { a_opt: 0.8, b: 5.0, c: 0.3 };
        let mut points = curve(&truth, &geometric(1_000.0, 100_000.0, 12));
        points[3].value += 0.01;
        for form in Form::ALL {
            assert_eq!(fit(form, &points).unwrap(), fit(form, &points).unwrap());
        }
    }
}
