//! Element-wise and row-wise kernels written as plain scalar Rust whose
//! order of operations is fixed by the source.
//!
//! Rust never reassociates floating-point operations and never contracts
//! `a * b + c` into a fused multiply-add, so every function here computes
//! the same bits however LLVM vectorises it. [`with_path`] runs a closure
//! inside a function compiled for AVX2+FMA when that is the active kernel
//! path: the same source then runs eight lanes at a time, with the same
//! results. Sums are spread over [`LANES`] interleaved accumulators (element
//! `i` goes to lane `i % LANES`) combined in one fixed tree, which is what
//! lets the sum vectorise without changing its order.
//!
//! Transcendentals are ours too ([`exp`], [`tanh`]): a libm call per
//! element would cost more than the matrix products of a small transformer,
//! and these are polynomials in basic arithmetic, so they vectorise and
//! give the same bits on every CPU.

use super::{KernelPath, active_path};

/// Interleaved accumulators of a sum.
pub const LANES: usize = 8;

/// Runs `work` compiled for the active kernel path. The code is the same
/// source either way, so the bits are too; only the speed differs.
#[inline(always)]
pub fn with_path<R>(work: impl FnOnce() -> R) -> R {
    match active_path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active_path` returns Avx2Fma only on CPUs with both features.
        KernelPath::Avx512 | KernelPath::Avx2Fma => unsafe { run_avx2_fma(work) },
        _ => work(),
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma<R>(work: impl FnOnce() -> R) -> R {
    work()
}

/// Combines the lanes of a sum in one fixed order.
#[inline(always)]
fn combine(lanes: [f32; LANES]) -> f32 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// `x[0] + x[1] + ...`, element `i` added into lane `i % LANES` in order.
#[inline(always)]
pub fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            lanes[lane] += chunk[lane];
        }
    }
    for (lane, &value) in tail.iter().enumerate() {
        lanes[lane] += value;
    }
    combine(lanes)
}

/// `sum(a[i] * b[i])`, each product rounded, then added as in [`lane_sum`].
#[inline(always)]
pub fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    for (lane, (&x, &y)) in a_tail.iter().zip(b_tail).enumerate() {
        lanes[lane] += x * y;
    }
    combine(lanes)
}

/// The largest value (negative infinity for none); NaN if any is NaN, so
/// a diverged row stays visible.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut best = f32::NEG_INFINITY;
    let mut nan = false;
    for &value in x {
        nan |= value.is_nan();
        best = if value > best { value } else { best };
    }
    if nan { f32::NAN } else { best }
}

/// Below this, [`exp`] is zero: its callers exponentiate a value minus its
/// row's maximum, where `e^-64` (1.6e-28) is far below the resolution of a
/// sum that holds 1, and a zero keeps subnormal numbers (slow on x86) out
/// of the products that follow.
pub const EXP_CUTOFF: f32 = -64.0;

/// `e^x` to within 2 ulp, zero below [`EXP_CUTOFF`], the largest finite
/// value's neighbourhood above 88. Cody-Waite reduction to `r` in
/// `[-ln 2 / 2, ln 2 / 2]`, a degree-7 Taylor polynomial, and the power of
/// two built in the exponent bits; only basic arithmetic and selects, so it
/// vectorises.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HIGH` is exact for |n| < 2^9.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer, kept in the low
    // mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    // Written out rather than `clamp`, which panics on nothing here but
    // must match the vector paths' compare-and-select exactly.
    #[allow(clippy::manual_clamp)]
    let clamped = if x > 88.0 {
        88.0
    } else if x < EXP_CUTOFF {
        EXP_CUTOFF
    } else {
        x
    };
    let shifted = clamped * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let r = (clamped - n * LN2_HIGH) - n * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((exponent + 127) << 23) as u32);
    let value = p * scale;
    if x < EXP_CUTOFF {
        0.0
    } else if x.is_nan() {
        x
    } else {
        value
    }
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`, through [`exp`]; exactly -1 below -32
/// and 1 above 44.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// sqrt(2 / pi), in GELU's tanh approximation.
const GELU_SCALE: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// GELU in the tanh form of GPT-2 (PyTorch's `gelu(approximate="tanh")`):
/// writes `gelu(u)` to `out` and the tanh to `tanhs`, which the backward
/// pass reuses.
#[inline(always)]
pub fn gelu_forward(u: &[f32], out: &mut [f32], tanhs: &mut [f32]) {
    assert!(u.len() == out.len() && u.len() == tanhs.len());
    for ((&x, y), t) in u.iter().zip(out.iter_mut()).zip(tanhs.iter_mut()) {
        let inner = GELU_SCALE * (x + GELU_CUBIC * (x * x * x));
        let th = tanh(inner);
        *t = th;
        *y = 0.5 * x * (1.0 + th);
    }
}

/// The gradient through GELU: `grad[i] *= gelu'(u[i])`, with the tanh
/// values from [`gelu_forward`].
#[inline(always)]
pub fn gelu_backward(u: &[f32], tanhs: &[f32], grad: &mut [f32]) {
    assert!(u.len() == tanhs.len() && u.len() == grad.len());
    for ((&x, &th), g) in u.iter().zip(tanhs).zip(grad.iter_mut()) {
        let inner_grad = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * (x * x));
        let local = 0.5 * (1.0 + th) + 0.5 * x * ((1.0 - th * th) * inner_grad);
        *g *= local;
    }
}

/// `value`, or zero where it is subnormal (see `ops::flush_subnormal`).
#[inline(always)]
pub fn flush_subnormal(value: f32) -> f32 {
    if value.abs() < f32::MIN_POSITIVE { 0.0 } else { value }
}

/// Softmax of `row` in place; returns the sum of the exponentials (for a
/// log-sum-exp). A row of one value gives 1.
#[inline(always)]
pub fn softmax_in_place(row: &mut [f32]) -> f32 {
    let top = max(row);
    for value in row.iter_mut() {
        *value = exp(*value - top);
    }
    let sum = lane_sum(row);
    let inverse = 1.0 / sum;
    for value in row.iter_mut() {
        *value = flush_subnormal(*value * inverse);
    }
    sum
}

/// LayerNorm of one row with PyTorch's definition (biased variance, `eps`
/// inside the square root): writes the normalised row to `xhat`, the
/// output `xhat * weight + bias` to `out`, and returns `1 / sqrt(var + eps)`.
#[inline(always)]
pub fn layer_norm_row(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    xhat: &mut [f32],
    out: &mut [f32],
) -> f32 {
    let width = x.len();
    assert!(weight.len() == width && bias.len() == width && xhat.len() == width && out.len() == width);
    let inverse_width = 1.0 / width as f32;
    let mean = lane_sum(x) * inverse_width;
    for (centred, &value) in xhat.iter_mut().zip(x) {
        *centred = value - mean;
    }
    let variance = lane_dot(xhat, xhat) * inverse_width;
    let rstd = 1.0 / (variance + eps).sqrt();
    for (((centred, y), &w), &b) in xhat.iter_mut().zip(out.iter_mut()).zip(weight).zip(bias) {
        *centred *= rstd;
        *y = *centred * w + b;
    }
    rstd
}

/// The input gradient of [`layer_norm_row`] from the output gradient `dy`:
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` with `g = dy * weight`,
/// added to `dx` (the residual stream's gradient); `scratch` holds `g`.
#[inline(always)]
pub fn layer_norm_row_backward(
    dy: &[f32],
    xhat: &[f32],
    weight: &[f32],
    rstd: f32,
    scratch: &mut [f32],
    dx: &mut [f32],
) {
    let width = dy.len();
    assert!(xhat.len() == width && weight.len() == width && scratch.len() == width && dx.len() == width);
    for ((g, &d), &w) in scratch.iter_mut().zip(dy).zip(weight) {
        *g = d * w;
    }
    let inverse_width = 1.0 / width as f32;
    let mean_g = lane_sum(scratch) * inverse_width;
    let mean_gx = lane_dot(scratch, xhat) * inverse_width;
    for ((out, &g), &xh) in dx.iter_mut().zip(scratch.iter()).zip(xhat) {
        *out += rstd * ((g - mean_g) - xh * mean_gx);
    }
}

/// `sums[j] += rows[0][j] * other[0][j] + rows[1][j] * other[1][j] + ...`
/// for row-major `rows` and `other` of `sums.len()` columns, adding in row
/// order (one lane per column): LayerNorm's weight gradient.
#[inline(always)]
pub fn column_dot_accumulate(rows: &[f32], other: &[f32], sums: &mut [f32]) {
    let width = sums.len();
    assert!(rows.len() == other.len() && rows.len().is_multiple_of(width.max(1)));
    for (row, other_row) in rows.chunks_exact(width).zip(other.chunks_exact(width)) {
        for ((sum, &x), &y) in sums.iter_mut().zip(row).zip(other_row) {
            *sum += x * y;
        }
    }
}

/// `sums[j] += rows[0][j] + rows[1][j] + ...`, in row order: a bias
/// gradient.
#[inline(always)]
pub fn column_sum_accumulate(rows: &[f32], sums: &mut [f32]) {
    let width = sums.len();
    assert!(rows.len().is_multiple_of(width.max(1)));
    for row in rows.chunks_exact(width) {
        for (sum, &x) in sums.iter_mut().zip(row) {
            *sum += x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_clean_at_the_edges() {
        let mut worst = 0.0f64;
        let mut x = -63.9f32;
        while x < 88.0 {
            let ours = f64::from(exp(x));
            let truth = f64::from(x).exp();
            worst = worst.max(((ours - truth) / truth).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f64::from(f32::EPSILON), "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-64.5), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite());
        assert!(exp(EXP_CUTOFF).is_normal());
    }

    #[test]
    fn tanh_and_gelu_match_their_definitions() {
        for i in -400..400 {
            let x = i as f32 * 0.02;
            assert!((f64::from(tanh(x)) - f64::from(x).tanh()).abs() < 3e-7, "tanh({x})");
            let mut out = [0.0];
            let mut t = [0.0];
            gelu_forward(&[x], &mut out, &mut t);
            let xd = f64::from(x);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            let reference = 0.5 * xd * (1.0 + inner.tanh());
            assert!((f64::from(out[0]) - reference).abs() < 1e-6, "gelu({x})");
            // The derivative against a central difference in f64.
            let h = 1e-4;
            let g = |x: f64| {
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + inner.tanh())
            };
            let numeric = (g(xd + h) - g(xd - h)) / (2.0 * h);
            let mut grad = [1.0];
            gelu_backward(&[x], &t, &mut grad);
            assert!((f64::from(grad[0]) - numeric).abs() < 2e-6, "gelu'({x}): {} vs {numeric}", grad[0]);
        }
    }

    #[test]
    fn sums_follow_their_lanes() {
        // 1e8 + 1 - 1e8 in lanes: index 0 and 8 share lane 0, 1 sits alone.
        let mut values = vec![0.0f32; 9];
        values[0] = 1e8;
        values[1] = 1.0;
        values[8] = -1e8;
        assert_eq!(lane_sum(&values), 1.0);
        assert_eq!(lane_sum(&[]), 0.0);
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(lane_dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }

    #[test]
    fn the_vectorised_build_gives_the_same_bits() {
        let values: Vec<f32> = (0..1001).map(|i| ((i as f32) * 0.377).sin() * 30.0).collect();
        let plain: Vec<u32> = values.iter().map(|&x| exp(x).to_bits()).collect();
        let fast: Vec<u32> = with_path(|| values.iter().map(|&x| exp(x).to_bits()).collect());
        assert_eq!(plain, fast);
        assert_eq!(lane_sum(&values).to_bits(), with_path(|| lane_sum(&values)).to_bits());
    }

    #[test]
    fn layer_norm_normalises_and_its_gradient_matches_differences() {
        let x: Vec<f32> = (0..13).map(|i| (i as f32 * 0.9).cos() * 2.0 + 0.3).collect();
        let weight: Vec<f32> = (0..13).map(|i| 1.0 + 0.1 * i as f32).collect();
        let bias = vec![0.5f32; 13];
        let (mut xhat, mut out) = (vec![0.0; 13], vec![0.0; 13]);
        let rstd = layer_norm_row(&x, &weight, &bias, 1e-5, &mut xhat, &mut out);
        assert!(lane_sum(&xhat).abs() < 1e-5);
        assert!((lane_dot(&xhat, &xhat) / 13.0 - 1.0).abs() < 1e-4);
        // Loss = sum(out * c) for fixed c; gradient against differences.
        let c: Vec<f32> = (0..13).map(|i| (i as f32 * 1.7).sin()).collect();
        let loss = |x: &[f32]| -> f64 {
            let (mut xhat, mut out) = (vec![0.0; 13], vec![0.0; 13]);
            layer_norm_row(x, &weight, &bias, 1e-5, &mut xhat, &mut out);
            out.iter().zip(&c).map(|(&o, &c)| f64::from(o) * f64::from(c)).sum()
        };
        let mut dx = vec![0.0; 13];
        let mut scratch = vec![0.0; 13];
        layer_norm_row_backward(&c, &xhat, &weight, rstd, &mut scratch, &mut dx);
        for i in 0..13 {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-2;
            assert!((numeric - f64::from(dx[i])).abs() < 2e-3, "{i}: {numeric} vs {}", dx[i]);
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut row = vec![1.0f32, 2.0, 3.0, -100.0];
        let sum = softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(row[3], 0.0, "below the cutoff");
        assert!(sum > 1.0);
    }
}
