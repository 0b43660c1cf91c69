//! The optimizers, fused over the flat parameter vector.
//!
//! Each update is one pass over memory, element by element, with no
//! reductions: the result of an element depends only on that element's
//! inputs, so any split among threads and any vector width give the same
//! bits. Rust never contracts `a * b + c` into a fused multiply-add on its
//! own, so the formulas below are evaluated exactly as written on every CPU.

use rayon::prelude::*;

pub use crowdtrain_recipe::{AdamW, Nesterov};
use serde::{Deserialize, Serialize};

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
    /// Applies step number `step` (counting from 1) to `params`.
    fn apply(&self, step: u64, params: &mut [f32], moments: &mut AdamWMoments, grads: &[f32]);
}

impl AdamWUpdate for AdamW {
    fn apply(&self, step: u64, params: &mut [f32], moments: &mut AdamWMoments, grads: &[f32]) {
        assert!(step >= 1, "AdamW steps count from 1");
        let len = params.len();
        assert!(moments.first.len() == len && moments.second.len() == len && grads.len() == len);
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
        let update = |params: &mut [f32], first: &mut [f32], second: &mut [f32], grads: &[f32]| {
            constants.update(path, params, first, second, grads)
        };
        if len >= 2 * CHUNK && rayon::current_num_threads() > 1 {
            params
                .par_chunks_mut(CHUNK)
                .zip(moments.first.par_chunks_mut(CHUNK))
                .zip(moments.second.par_chunks_mut(CHUNK))
                .zip(grads.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| update(p, m, v, g));
        } else {
            update(params, &mut moments.first, &mut moments.second, grads);
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
            KernelPath::Avx2Fma => unsafe { self.update_avx2(params, first, second, grads) },
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

/// How the learning rate changes over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    /// The optimizer's rate at every step.
    Constant,
    /// Cosine decay from the full rate at step 1 to `final_fraction` of it
    /// at `total_steps` (and after).
    Cosine { total_steps: u64, final_fraction: f32 },
}

impl Schedule {
    /// The multiplier of the base rate at `step` (counting from 1),
    /// computed with the pure-Rust `libm` so every machine agrees.
    pub fn factor(&self, step: u64) -> f32 {
        match *self {
            Self::Constant => 1.0,
            Self::Cosine { total_steps, final_fraction } => {
                let span = total_steps.saturating_sub(1).max(1) as f64;
                let progress = (step.saturating_sub(1) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + libm::cos(std::f64::consts::PI * progress));
                (f64::from(final_fraction) + (1.0 - f64::from(final_fraction)) * cosine) as f32
            }
        }
    }
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
    fn cosine_schedule_decays_from_one_to_the_final_fraction() {
        let schedule = Schedule::Cosine { total_steps: 101, final_fraction: 0.1 };
        assert_eq!(schedule.factor(1), 1.0);
        assert!((schedule.factor(51) - 0.55).abs() < 1e-6);
        assert!((schedule.factor(102) - 0.1).abs() < 1e-6);
        assert!((schedule.factor(500) - 0.1).abs() < 1e-6);
        assert_eq!(Schedule::Constant.factor(7), 1.0);
    }

    #[test]
    fn power_by_squaring_is_exact_for_small_cases() {
        assert_eq!(power(0.5, 3), 0.125);
        assert_eq!(power(0.9, 0), 1.0);
        assert!((power(0.999, 1000) - 0.999f64.powi(1000)).abs() < 1e-12);
    }
}
