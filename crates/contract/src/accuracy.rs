//! Accuracy functions a(x) of the total contribution x, with the first two
//! derivatives the solver needs and the derivative bounds the
//! enumeration-free expectations need for their error bound.
//!
//! Every kind is increasing and concave to the right of the point where it
//! is clipped at 0 ([`Accuracy::zero_threshold`]), which is what makes the
//! first-moment problem convex. `power-law` and a `generalization-bound`
//! with a `unit` are what `crowdtrain contract fit` fits to a measured
//! learning curve ([`crate::fit`]).

use crate::error::{ContractError, Result};

/// a(x): accuracy of the model trained on a total contribution x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accuracy {
    /// The standard generalization bound used in the paper's experiments:
    /// a(x) = max(0, a_opt - (sqrt(2k(2 + ln(x/k))) + 4) / sqrt(x)) for
    /// x > k e^-2, and 0 below.
    ///
    /// With a `unit` other than 1 the bound is taken at x / unit: the
    /// contribution is counted in units (verified work units, samples
    /// seen) of which `unit` make one data point of the bound. The paper's
    /// function is `unit = 1`.
    GeneralizationBound {
        /// Accuracy of an infinitely large data set.
        a_opt: f64,
        /// Complexity constant of the hypothesis class.
        k: f64,
        /// Contribution per data point of the bound (1 in the paper).
        unit: f64,
    },
    /// A saturating power law a(x) = max(0, a_opt - b x^-c), the form
    /// learning curves and scaling laws are usually fitted with: the error
    /// above the best reachable one falls as a power of the contribution.
    PowerLaw {
        /// The accuracy approached as the contribution grows without bound.
        a_opt: f64,
        /// Scale of the shortfall: a_opt - a(1).
        b: f64,
        /// Exponent of the shortfall's decay.
        c: f64,
    },
    /// a(x) = sqrt(x): the toy function of the spec's test vector TV1.
    Sqrt,
}

/// a, a' and a'' at one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Derivatives {
    /// a(x)
    pub value: f64,
    /// a'(x)
    pub first: f64,
    /// a''(x)
    pub second: f64,
}

impl Accuracy {
    /// Checks the parameters (positive and finite).
    pub fn validate(&self) -> Result<()> {
        let parameters: &[(&str, f64)] = match *self {
            Accuracy::GeneralizationBound { a_opt, k, unit } => {
                &[("accuracy.a_opt", a_opt), ("accuracy.k", k), ("accuracy.unit", unit)]
            }
            Accuracy::PowerLaw { a_opt, b, c } => {
                &[("accuracy.a_opt", a_opt), ("accuracy.b", b), ("accuracy.c", c)]
            }
            Accuracy::Sqrt => &[],
        };
        for &(name, v) in parameters {
            if !v.is_finite() || v <= 0.0 {
                return Err(ContractError::field(name, format!("must be a positive finite number, got {v}")));
            }
        }
        Ok(())
    }

    /// The paper's generalization bound with `unit = 1`.
    pub const fn generalization_bound(a_opt: f64, k: f64) -> Self {
        Accuracy::GeneralizationBound { a_opt, k, unit: 1.0 }
    }

    /// The least upper bound of a, or `None` if a is unbounded (`Sqrt`).
    pub fn supremum(&self) -> Option<f64> {
        match *self {
            Accuracy::GeneralizationBound { a_opt, .. } | Accuracy::PowerLaw { a_opt, .. } => Some(a_opt),
            Accuracy::Sqrt => None,
        }
    }

    /// Short name, as in the scenario file.
    pub fn kind(&self) -> &'static str {
        match self {
            Accuracy::GeneralizationBound { .. } => "generalization-bound",
            Accuracy::PowerLaw { .. } => "power-law",
            Accuracy::Sqrt => "sqrt",
        }
    }

    /// a(x).
    pub fn value(&self, x: f64) -> f64 {
        match *self {
            Accuracy::GeneralizationBound { a_opt, k, unit } => {
                let x = x / unit;
                if x <= k * (-2.0f64).exp() {
                    return 0.0;
                }
                let s = (2.0 * k * (2.0 + (x / k).ln())).sqrt();
                (a_opt - (s + 4.0) / x.sqrt()).max(0.0)
            }
            Accuracy::PowerLaw { a_opt, b, c } => {
                if x <= 0.0 {
                    return 0.0;
                }
                (a_opt - b * x.powf(-c)).max(0.0)
            }
            Accuracy::Sqrt => x.max(0.0).sqrt(),
        }
    }

    /// a, a', a'' at x. Where a is clipped at 0 all three are 0; for `Sqrt`
    /// at x <= 0 the derivatives are infinite, which the solver treats as
    /// leaving the domain.
    pub fn derivatives(&self, x: f64) -> Derivatives {
        match *self {
            Accuracy::GeneralizationBound { a_opt, k, unit } => {
                let zero = Derivatives { value: 0.0, first: 0.0, second: 0.0 };
                // a(x) = g(x / unit), so a' = g' / unit and a'' = g'' / unit^2.
                let x = x / unit;
                if x <= k * (-2.0f64).exp() {
                    return zero;
                }
                let l = (x / k).ln();
                let s = (2.0 * k * (2.0 + l)).sqrt();
                let sqrt_x = x.sqrt();
                let value = a_opt - (s + 4.0) / sqrt_x;
                if value <= 0.0 {
                    return zero;
                }
                // a' = num / den with num = kL + k + 2s, den = s x^{3/2}.
                let num = k * l + k + 2.0 * s;
                let den = s * x * sqrt_x;
                let num_d = k / x + 2.0 * k / (x * s);
                let den_d = sqrt_x * (k / s + 1.5 * s);
                let second = (num_d * den - num * den_d) / (den * den);
                Derivatives { value, first: num / den / unit, second: second / (unit * unit) }
            }
            Accuracy::PowerLaw { a_opt, b, c } => {
                if x <= 0.0 {
                    return Derivatives { value: 0.0, first: 0.0, second: 0.0 };
                }
                let shortfall = b * x.powf(-c);
                if a_opt - shortfall <= 0.0 {
                    return Derivatives { value: 0.0, first: 0.0, second: 0.0 };
                }
                Derivatives {
                    value: a_opt - shortfall,
                    first: c * shortfall / x,
                    second: -c * (c + 1.0) * shortfall / (x * x),
                }
            }
            Accuracy::Sqrt => {
                if x <= 0.0 {
                    return Derivatives { value: 0.0, first: f64::INFINITY, second: f64::NEG_INFINITY };
                }
                let r = x.sqrt();
                Derivatives { value: r, first: 0.5 / r, second: -0.25 / (x * r) }
            }
        }
    }

    /// The point below which a is identically 0 (the kink of the clipped
    /// bound), or 0 for `Sqrt`. Concavity, and with it every second-order
    /// bound, holds only to the right of it.
    pub fn zero_threshold(&self) -> f64 {
        match *self {
            Accuracy::Sqrt => 0.0,
            // a_opt = b x^-c.
            Accuracy::PowerLaw { a_opt, b, c } => (b / a_opt).powf(1.0 / c),
            Accuracy::GeneralizationBound { k, unit, .. } => {
                let start = k * (-2.0f64).exp() * unit;
                // b is positive for large x; walk down geometrically to a
                // point where it is not, then bisect the last crossing.
                let mut hi = start.max(1.0) * 4.0;
                while self.value(hi) <= 0.0 && hi < 1e300 {
                    hi *= 4.0;
                }
                let mut lo = hi;
                while lo > start && self.value(lo) > 0.0 {
                    lo = (lo / 2.0).max(start);
                    if lo == start {
                        break;
                    }
                }
                if self.value(lo) > 0.0 {
                    return start;
                }
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if self.value(mid) > 0.0 { hi = mid } else { lo = mid }
                }
                hi
            }
        }
    }

    /// An upper bound on |a''| over [lo, hi], or `None` if the interval
    /// reaches the kink where a'' does not exist.
    ///
    /// For `Sqrt` this is exact (|a''| = x^-3/2 / 4 is decreasing). For the
    /// generalization bound a'' varies on the scale of x itself, so the
    /// maximum over a geometric grid of ratio 1.0005, inflated by 1%, bounds
    /// the supremum (between two samples |a''| changes by less than 0.2%).
    pub fn abs_second_derivative_sup(&self, lo: f64, hi: f64) -> Option<f64> {
        self.sampled_sup(lo, hi, |d| d.second.abs())
    }

    /// An upper bound on |a'| over [lo, hi] (`None` if lo <= 0 for `Sqrt`).
    pub fn abs_first_derivative_sup(&self, lo: f64, hi: f64) -> Option<f64> {
        match *self {
            Accuracy::Sqrt => (lo > 0.0).then(|| 0.5 / lo.sqrt()),
            // a' = b c x^(-c-1) is decreasing right of the kink and 0 left
            // of it, so the sup is at the later of lo and the kink.
            Accuracy::PowerLaw { b, c, .. } => {
                if !(lo.is_finite() && hi.is_finite()) || lo > hi {
                    return None;
                }
                let x0 = self.zero_threshold();
                if hi <= x0 {
                    return Some(0.0);
                }
                Some(b * c * lo.max(x0).powf(-c - 1.0))
            }
            Accuracy::GeneralizationBound { .. } => {
                // a' is 0 left of the kink; on the right use the sampled sup.
                let x0 = self.zero_threshold();
                if hi <= x0 {
                    return Some(0.0);
                }
                self.sampled_sup(lo.max(x0 * (1.0 + 1e-12)), hi, |d| d.first.abs())
            }
        }
    }

    fn sampled_sup(&self, lo: f64, hi: f64, f: impl Fn(Derivatives) -> f64) -> Option<f64> {
        if !(lo.is_finite() && hi.is_finite()) || lo > hi {
            return None;
        }
        match *self {
            Accuracy::Sqrt => {
                if lo <= 0.0 {
                    return None;
                }
                // Both |a'| and |a''| are decreasing: the sup is at lo.
                Some(f(self.derivatives(lo)))
            }
            Accuracy::PowerLaw { .. } => {
                // Right of the kink |a'| and |a''| are decreasing too.
                if lo <= self.zero_threshold() {
                    return None;
                }
                Some(f(self.derivatives(lo)))
            }
            Accuracy::GeneralizationBound { .. } => {
                if lo <= self.zero_threshold() {
                    return None;
                }
                let ratio: f64 = 1.0005;
                let steps = ((hi / lo).ln() / ratio.ln()).ceil().max(1.0) as usize;
                let steps = steps.min(2_000_000);
                let factor = (hi / lo).powf(1.0 / steps as f64);
                let mut x = lo;
                let mut sup: f64 = 0.0;
                for _ in 0..=steps {
                    sup = sup.max(f(self.derivatives(x.min(hi))));
                    x *= factor;
                }
                Some(sup * 1.01)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SGB: Accuracy = Accuracy::generalization_bound(1.0, 1.0);
    const POWER: Accuracy = Accuracy::PowerLaw { a_opt: 0.88, b: 3.5, c: 0.45 };

    #[test]
    fn derivatives_match_central_differences() {
        // The solver's Newton steps and KKT certificate rely on a' and a''
        // being right; compare them with finite differences at many scales.
        for acc in [
            SGB,
            Accuracy::generalization_bound(0.9, 3.0),
            Accuracy::GeneralizationBound { a_opt: 0.87, k: 2.0, unit: 40.0 },
            POWER,
            Accuracy::Sqrt,
        ] {
            for &x in &[80.0, 150.0, 1000.0, 12345.0, 1e6] {
                let h = x * 1e-5;
                let d = acc.derivatives(x);
                if d.value == 0.0 {
                    assert!(x < acc.zero_threshold());
                    continue;
                }
                let d1 = (acc.value(x + h) - acc.value(x - h)) / (2.0 * h);
                let d2 = (acc.derivatives(x + h).first - acc.derivatives(x - h).first) / (2.0 * h);
                assert!((d.first - d1).abs() <= 1e-6 * d.first.abs(), "{acc:?} a'({x})");
                assert!((d.second - d2).abs() <= 1e-5 * d.second.abs(), "{acc:?} a''({x})");
                assert!(d.second < 0.0, "concave right of the kink");
            }
        }
    }

    #[test]
    fn zero_threshold_is_the_kink_of_the_paper_function() {
        // Spec section 3.1: a(x) = 0 up to x = 55.80715.
        let x0 = SGB.zero_threshold();
        assert!((x0 - 55.80715).abs() < 1e-4, "{x0}");
        assert_eq!(SGB.value(x0 * (1.0 - 1e-9)), 0.0);
        assert!(SGB.value(x0 * (1.0 + 1e-9)) > 0.0);
        assert!(SGB.abs_second_derivative_sup(50.0, 100.0).is_none());
    }

    #[test]
    fn second_derivative_sup_dominates_samples() {
        let sup = SGB.abs_second_derivative_sup(100.0, 1e5).expect("right of the kink");
        for i in 0..1000 {
            let x = 100.0 * (1e3f64).powf(i as f64 / 999.0);
            assert!(SGB.derivatives(x).second.abs() <= sup);
        }
    }
}
