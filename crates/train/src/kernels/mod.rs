//! Our own CPU kernels, written so that their results are a function of
//! their inputs alone: not of the thread count, not of the CPU's vector
//! width, not of the platform's C library.
//!
//! Each kernel fixes the order of its floating-point operations and may
//! have several implementations of that one order (a portable one and an
//! AVX2+FMA one). [`active_path`] picks the fastest the CPU supports; the
//! environment variable `CROWDTRAIN_KERNELS=portable` forces the portable
//! one, which is how the cross-CPU script and the tests check that the
//! choice never shows in the bits.

pub mod gemm;

use std::sync::OnceLock;

pub mod vector;

pub use gemm::{MatRef, matmul, matmul_strided};

/// Which implementation of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// 512-bit matrix products (AVX-512F, with AVX2 and FMA for the rest).
    Avx512,
    /// 256-bit vectors with fused multiply-add (x86-64-v3 and later).
    Avx2Fma,
    /// Scalar code; `f32::mul_add` is a correctly rounded library call
    /// where the CPU lacks FMA, so it is slow there but exact.
    Portable,
}

impl KernelPath {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2Fma => "avx2-fma",
            Self::Portable => "portable",
        }
    }

    /// Whether the CPU has AVX2 and FMA on this path (for the element-wise
    /// kernels, which stay 256 bits wide).
    pub fn has_avx2_fma(self) -> bool {
        matches!(self, Self::Avx512 | Self::Avx2Fma)
    }
}

/// The kernel implementation this process uses, chosen once: the widest
/// the CPU runs, unless `CROWDTRAIN_KERNELS` names another (`portable`,
/// `avx2-fma`) that it can run.
pub fn active_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let available = available_paths();
        let requested = std::env::var("CROWDTRAIN_KERNELS").ok();
        available
            .iter()
            .copied()
            .find(|path| requested.as_deref() == Some(path.name()))
            .unwrap_or(available[0])
    })
}

/// Every implementation this CPU can run, fastest first.
pub fn available_paths() -> Vec<KernelPath> {
    let mut paths = vec![KernelPath::Portable];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        paths.insert(0, KernelPath::Avx2Fma);
        if std::arch::is_x86_feature_detected!("avx512f") {
            paths.insert(0, KernelPath::Avx512);
        }
    }
    paths
}

/// `sums[j] = x[0][j] + x[1][j] + ...`, adding rows in order. Each lane
/// of a vectorised loop owns one column, so vector width cannot reorder a
/// sum.
pub fn column_sums(x: &[f32], rows: usize, cols: usize, sums: &mut [f32]) {
    assert_eq!(x.len(), rows * cols);
    assert_eq!(sums.len(), cols);
    sums.fill(0.0);
    for row in x.chunks_exact(cols) {
        for (sum, &value) in sums.iter_mut().zip(row) {
            *sum += value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_sums_add_rows_in_order() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut sums = [9.0; 3];
        column_sums(&x, 2, 3, &mut sums);
        assert_eq!(sums, [5.0, 7.0, 9.0]);
        // Order is visible in floating point: 1e8 + 1 - 1e8 is 0 in f32,
        // and that is what a row-ordered sum must give.
        let mut sums = [0.0; 1];
        column_sums(&[1e8, 1.0, -1e8], 3, 1, &mut sums);
        assert_eq!(sums, [0.0]);
    }
}
