//! The optimizers, fused over the flat parameter vector.
//!
//! Each update is one pass over memory, element by element, with no
//! reductions: the result of an element depends only on that element's
//! inputs, so any split among threads and any vector width give the same
//! bits. Rust never contracts `a * b + c` into a fused multiply-add on its
//! own, so the formulas below are evaluated exactly as written on every CPU.

use rayon::prelude::*;

pub use crowdtrain_recipe::{AdamW, Eager, Nesterov, Schedule};

use crate::kernels::KernelPath;

/// Elements per parallel task: big enough to amortise scheduling.
const CHUNK: usize = 1 << 15;

/// AdamW's moment estimates, one per parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWMoments {
    pub first: Vec<f32>,
    pub second: Vec<f32>,
}

impl AdamWMoments {
    pub fn zeros(len: usize) -> Self {
        Self { first: vec![0.0; len], second: vec![0.0; len] }
    }
}

/// AdamW's fused update over the flat vector.
pub trait AdamWUpdate {
    /// Applies step number `step` (counting from 1) to `params`, decaying
    /// every parameter.
    fn apply(&self, step: u64, params: &mut [f32], moments: &mut AdamWMoments, grads: &[f32]) {
        self.apply_segments(step, params, moments, grads, &[(0..params.len(), true)]);
    }

    /// [`AdamWUpdate::apply`] with weight decay only on the segments marked
    /// `true` (see `ParamLayout::decay_segments`); the segments must cover
    /// the vector. An undecayed parameter is multiplied by exactly 1, so a
    /// layout that decays everything gives the bits `apply` gives.
    fn apply_segments(
        &self,
        step: u64,
        params: &mut [f32],
        moments: &mut AdamWMoments,
        grads: &[f32],
        segments: &[(std::ops::Range<usize>, bool)],
    );
}

impl AdamWUpdate for AdamW {
    fn apply_segments(
        &self,
        step: u64,
        params: &mut [f32],
        moments: &mut AdamWMoments,
        grads: &[f32],
        segments: &[(std::ops::Range<usize>, bool)],
    ) {
        assert!(step >= 1, "AdamW steps count from 1");
        let len = params.len();
        assert!(moments.first.len() == len && moments.second.len() == len && grads.len() == len);
        assert_eq!(
            segments.iter().map(|(range, _)| range.len()).sum::<usize>(),
            len,
            "segments cover the vector"
        );
        // Bias corrections in f64 by repeated squaring: exact enough, and the
        // same on every machine (no libm pow).
        let first_correction = 1.0 - power(f64::from(self.beta1), step);
        let second_correction = 1.0 - power(f64::from(self.beta2), step);
        let step_size = (f64::from(self.lr) / first_correction) as f32;
        let second_correction_sqrt = second_correction.sqrt() as f32;
        let constants = AdamWConstants {
            beta1: self.beta1,
            beta2: self.beta2,
            keep1: 1.0 - self.beta1,
            keep2: 1.0 - self.beta2,
            eps: self.eps,
            decay: 1.0 - self.lr * self.weight_decay,
            step_size,
            second_correction_sqrt,
        };
        let path = crate::kernels::active_path();
        for (range, decayed) in segments {
            let constants =
                AdamWConstants { decay: if *decayed { constants.decay } else { 1.0 }, ..constants };
            let update = |params: &mut [f32], first: &mut [f32], second: &mut [f32], grads: &[f32]| {
                constants.update(path, params, first, second, grads)
            };
            let (params, first, second, grads) = (
                &mut params[range.clone()],
                &mut moments.first[range.clone()],
                &mut moments.second[range.clone()],
                &grads[range.clone()],
            );
            if range.len() >= 2 * CHUNK && rayon::current_num_threads() > 1 {
                params
                    .par_chunks_mut(CHUNK)
                    .zip(first.par_chunks_mut(CHUNK))
                    .zip(second.par_chunks_mut(CHUNK))
                    .zip(grads.par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| update(p, m, v, g));
            } else {
                update(params, first, second, grads);
            }
        }
    }
}

/// The per-step scalars of an AdamW update.
#[derive(Debug, Clone, Copy)]
struct AdamWConstants {
    beta1: f32,
    beta2: f32,
    keep1: f32,
    keep2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    second_correction_sqrt: f32,
}

impl AdamWConstants {
    /// The element-wise update. The AVX2 build of the same source only
    /// widens the vectors: multiplication, addition, division and square
    /// root are correctly rounded in every width, so the bits agree.
    fn update(
        &self,
        path: KernelPath,
        params: &mut [f32],
        first: &mut [f32],
        second: &mut [f32],
        grads: &[f32],
    ) {
        match path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `active_path` returns Avx2Fma only on CPUs with AVX2.
            KernelPath::Avx512 | KernelPath::Avx2Fma => unsafe {
                self.update_avx2(params, first, second, grads)
            },
            _ => self.update_portable(params, first, second, grads),
        }
    }

    #[inline(always)]
    fn update_portable(&self, params: &mut [f32], first: &mut [f32], second: &mut [f32], grads: &[f32]) {
        for (((param, m), v), &g) in params.iter_mut().zip(first).zip(second).zip(grads) {
            *m = *m * self.beta1 + g * self.keep1;
            *v = *v * self.beta2 + (g * g) * self.keep2;
            let denominator = v.sqrt() / self.second_correction_sqrt + self.eps;
            *param = *param * self.decay - self.step_size * (*m / denominator);
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn update_avx2(&self, params: &mut [f32], first: &mut [f32], second: &mut [f32], grads: &[f32]) {
        self.update_portable(params, first, second, grads)
    }
}

/// The gradient's global L2 norm: squares in f64 summed in four lanes over
/// fixed chunks, the chunks added in order, so the bits do not depend on the
/// thread count.
pub fn global_norm(grads: &[f32]) -> f64 {
    let chunk_sum = |chunk: &[f32]| {
        let mut lanes = [0.0f64; 4];
        for (index, &value) in chunk.iter().enumerate() {
            let value = f64::from(value);
            lanes[index % 4] += value * value;
        }
        (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
    };
    let sums: Vec<f64> = grads.par_chunks(CHUNK).map(chunk_sum).collect();
    sums.iter().sum::<f64>().sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm`, as PyTorch's
/// `clip_grad_norm_` does (`max_norm / (norm + 1e-6)` when that is below
/// 1); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f64 {
    let norm = global_norm(grads);
    let coefficient = f64::from(max_norm) / (norm + 1e-6);
    if coefficient < 1.0 {
        let coefficient = coefficient as f32;
        grads.par_chunks_mut(CHUNK).for_each(|chunk| chunk.iter_mut().for_each(|g| *g *= coefficient));
    }
    norm
}

/// The outer Nesterov step over the flat vector.
pub trait NesterovUpdate {
    /// `buffer = momentum * buffer + delta; params -= lr * (delta + momentum * buffer)`
    /// (PyTorch's formulation).
    fn apply(&self, params: &mut [f32], buffer: &mut [f32], delta: &[f32]);
}

impl NesterovUpdate for Nesterov {
    fn apply(&self, params: &mut [f32], buffer: &mut [f32], delta: &[f32]) {
        assert!(params.len() == buffer.len() && params.len() == delta.len());
        let (lr, momentum) = (self.lr, self.momentum);
        for ((param, b), &d) in params.iter_mut().zip(buffer.iter_mut()).zip(delta) {
            *b = *b * momentum + d;
            *param -= lr * (d + momentum * *b);
        }
    }
}

/// `base^exponent` by repeated squaring.
fn power(base: f64, mut exponent: u64) -> f64 {
    let (mut result, mut square) = (1.0, base);
    while exponent > 0 {
        if exponent & 1 == 1 {
            result *= square;
        }
        square *= square;
        exponent >>= 1;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AdamW written the plain way, element by element, from the paper's
    /// algorithm with PyTorch's placement of the decay.
    fn reference_adamw(opt: &AdamW, steps: &[Vec<f32>], start: &[f32]) -> Vec<f32> {
        let mut params: Vec<f64> = start.iter().map(|&p| f64::from(p)).collect();
        let mut m = vec![0.0f64; start.len()];
        let mut v = vec![0.0f64; start.len()];
        for (t, grads) in steps.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..params.len() {
                let g = f64::from(grads[i]);
                params[i] *= 1.0 - f64::from(opt.lr) * f64::from(opt.weight_decay);
                m[i] = f64::from(opt.beta1) * m[i] + (1.0 - f64::from(opt.beta1)) * g;
                v[i] = f64::from(opt.beta2) * v[i] + (1.0 - f64::from(opt.beta2)) * g * g;
                let m_hat = m[i] / (1.0 - f64::from(opt.beta1).powi(t));
                let v_hat = v[i] / (1.0 - f64::from(opt.beta2).powi(t));
                params[i] -= f64::from(opt.lr) * m_hat / (v_hat.sqrt() + f64::from(opt.eps));
            }
        }
        params.iter().map(|&p| p as f32).collect()
    }

    #[test]
    fn adamw_matches_the_textbook_update() {
        let opt = AdamW::default();
        let start: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let steps: Vec<Vec<f32>> =
            (0..20).map(|t| (0..50).map(|i| ((i * 7 + t * 3) as f32 * 0.11).cos()).collect()).collect();
        let mut params = start.clone();
        let mut moments = AdamWMoments::zeros(50);
        for (t, grads) in steps.iter().enumerate() {
            opt.apply(t as u64 + 1, &mut params, &mut moments, grads);
        }
        for (ours, reference) in params.iter().zip(reference_adamw(&opt, &steps, &start)) {
            assert!((ours - reference).abs() < 1e-5, "{ours} vs {reference}");
        }
    }

    #[test]
    fn adamw_is_bitwise_independent_of_thread_count() {
        let len = 5 * CHUNK + 123;
        let grads: Vec<f32> = (0..len).map(|i| ((i % 1000) as f32 * 0.01).sin()).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut params = vec![0.5f32; len];
            let mut moments = AdamWMoments::zeros(len);
            pool.install(|| {
                for step in 1..=3 {
                    AdamW::default().apply(step, &mut params, &mut moments, &grads);
                }
            });
            params.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn adamw_gives_the_same_bits_on_every_kernel_path() {
        let len = 1000;
        let grads: Vec<f32> = (0..len).map(|i| ((i * 31 % 977) as f32 * 0.013).sin() * 1e-3).collect();
        let constants = AdamWConstants {
            beta1: 0.9,
            beta2: 0.999,
            keep1: 0.1,
            keep2: 0.001,
            eps: 1e-8,
            decay: 1.0 - 1e-5,
            step_size: 1e-2,
            second_correction_sqrt: 0.0447,
        };
        let run = |path| {
            let (mut params, mut first, mut second) =
                (vec![0.25f32; len], vec![1e-4f32; len], vec![1e-7f32; len]);
            for _ in 0..5 {
                constants.update(path, &mut params, &mut first, &mut second, &grads);
            }
            [params, first, second].concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let expected = run(KernelPath::Portable);
        for path in crate::kernels::available_paths() {
            assert_eq!(run(path), expected, "{path:?}");
        }
    }

    #[test]
    fn nesterov_matches_pytorch_formulation() {
        let opt = Nesterov::default();
        let mut params = vec![1.0f32];
        let mut buffer = vec![0.0f32];
        opt.apply(&mut params, &mut buffer, &[0.5]);
        // buffer = 0.5; params = 1 - 0.7 * (0.5 + 0.9 * 0.5) = 0.335
        assert_eq!(buffer, vec![0.5]);
        assert!((params[0] - 0.335).abs() < 1e-6);
        opt.apply(&mut params, &mut buffer, &[0.5]);
        // buffer = 0.95; params = 0.335 - 0.7 * (0.5 + 0.855) = -0.6135
        assert!((buffer[0] - 0.95).abs() < 1e-6);
        assert!((params[0] + 0.6135).abs() < 1e-5);
    }

    #[test]
    fn clipping_bounds_the_norm_and_decay_segments_spare_what_they_should() {
        let mut grads = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut grads, 10.0), 5.0);
        assert_eq!(grads, vec![3.0, 4.0], "within the bound: untouched");
        clip_grad_norm(&mut grads, 1.0);
        assert!((global_norm(&grads) - 1.0).abs() < 1e-6);
        let long: Vec<f32> = (0..3 * CHUNK + 7).map(|i| (i as f32 * 0.01).sin()).collect();
        let one =
            rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| global_norm(&long));
        let three =
            rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| global_norm(&long));
        assert_eq!(one.to_bits(), three.to_bits());
        // Decay on the first half only; with a zero gradient, only decay moves a parameter.
        let opt = AdamW { weight_decay: 0.5, ..AdamW::default() };
        let mut params = vec![1.0f32; 4];
        let mut moments = AdamWMoments::zeros(4);
        opt.apply_segments(1, &mut params, &mut moments, &[0.0; 4], &[(0..2, true), (2..4, false)]);
        assert!(params[0] < 1.0 && params[1] < 1.0);
        assert_eq!(&params[2..], &[1.0, 1.0]);
        let mut everything = vec![1.0f32; 4];
        let mut moments = AdamWMoments::zeros(4);
        opt.apply(1, &mut everything, &mut moments, &[0.0; 4]);
        assert_eq!(everything[0], params[0]);
    }

    #[test]
    fn power_by_squaring_is_exact_for_small_cases() {
        assert_eq!(power(0.5, 3), 0.125);
        assert_eq!(power(0.9, 0), 1.0);
        assert!((power(0.999, 1000) - 0.999f64.powi(1000)).abs() < 1e-12);
    }
}
