//! Reservation utilities: what a type earns by training alone.
//!
//! f_i = max(0, max_m v(a(m)) - c_i m). Only f enters the contract; the
//! standalone contribution m*_i is reported (and plotted) for comparison.
//! The objective is flat around m*, so m* is known to far fewer digits than
//! f, as the spec warns.

use crate::accuracy::Accuracy;

/// Standalone outcome of one type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    /// f_i, floored at 0.
    pub utility: f64,
    /// m*_i, the maximiser, or 0 when standalone training does not pay.
    pub contribution: f64,
}

/// Computes f and m* for a cost, an accuracy function and v(a) = scale a.
///
/// A log-spaced scan finds the basin (the clipped accuracy is flat at 0 on
/// the left, so derivative-based search from an arbitrary start can stall),
/// then bisection on the sign of v'(a(m)) a'(m) - c, which is decreasing on
/// the concave part, pins the maximiser to machine precision.
pub fn reservation(accuracy: &Accuracy, valuation_scale: f64, cost: f64) -> Reservation {
    let gain = |m: f64| valuation_scale * accuracy.value(m) - cost * m;
    const SCAN_POINTS: usize = 3000;
    let (log_lo, log_hi) = (-6.0f64, 14.0f64);
    let at = |i: usize| 10f64.powf(log_lo + (log_hi - log_lo) * i as f64 / (SCAN_POINTS - 1) as f64);
    let best =
        (0..SCAN_POINTS).max_by(|&a, &b| gain(at(a)).total_cmp(&gain(at(b)))).expect("scan is non-empty");
    if gain(at(best)) <= 0.0 {
        return Reservation { utility: 0.0, contribution: 0.0 };
    }
    let slope = |m: f64| valuation_scale * accuracy.derivatives(m).first - cost;
    let mut lo = at(best.saturating_sub(1));
    let mut hi = at((best + 1).min(SCAN_POINTS - 1));
    // Keep the bracket inside the region where a > 0 so the slope is defined.
    let x0 = accuracy.zero_threshold();
    if lo <= x0 {
        lo = x0 * (1.0 + 1e-12);
    }
    for _ in 0..300 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if slope(mid) > 0.0 { lo = mid } else { hi = mid }
    }
    let m = 0.5 * (lo + hi);
    let value = gain(m).max(gain(at(best)));
    if value <= 0.0 {
        Reservation { utility: 0.0, contribution: 0.0 }
    } else {
        Reservation { utility: gain(m), contribution: m }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrt_has_closed_form() {
        // a = sqrt(x), v = a: m* = 1/(4c^2), f = 1/(4c) (spec TV1: f = 0.25, 0.5).
        for c in [1.0, 0.5, 0.1] {
            let r = reservation(&Accuracy::Sqrt, 1.0, c);
            assert!((r.utility - 0.25 / c).abs() < 1e-12, "{r:?}");
            assert!((r.contribution - 0.25 / (c * c)).abs() < 1e-6 / (c * c));
        }
    }
}
