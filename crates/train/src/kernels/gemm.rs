//! Matrix multiplication with one fixed order of floating-point operations.
//!
//! Every output element is `c[i][j] = fma(a[i][k-1], b[k-1][j], ... fma(a[i][0],
//! b[0][j], 0.0))`: a single fused multiply-add chain in increasing `k`. That
//! chain is the definition; the AVX2 kernel and the portable kernel are two
//! ways of evaluating it, and because a fused multiply-add is correctly
//! rounded everywhere, both give the same bits. Threads split the output by
//! column panels, never the `k` sum, so the thread count cannot change a
//! result either. What we give up for that is split-K parallelism and
//! blocking over `k`, which matter little at the sizes we train.

use rayon::prelude::*;

use super::KernelPath;

/// Rows of the register tile: 6 rows by 2 AVX vectors uses 12 of the 16
/// `ymm` registers for accumulators, leaving room for the operands.
const MR: usize = 6;
/// Columns of the register tile: two 8-lane AVX vectors.
const NR: usize = 16;

/// Below this many multiply-adds a product is done on the calling thread:
/// handing it to the pool would cost more than it saves.
const PARALLEL_MULTIPLY_ADDS_MIN: usize = 1 << 18;

/// A read-only view of a matrix inside a slice: element `(i, j)` lives at
/// `data[i * row_stride + j * col_stride]`. Transposing a view swaps the
/// strides, so `A^T B` and `A B^T` need no copies.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a {rows}x{cols} matrix needs {} values", rows * cols);
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// A view with explicit strides, e.g. one head's columns inside a
    /// wider row-major buffer. Panics if an element lies outside `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "a {rows}x{cols} view with strides ({row_stride}, {col_stride}) needs {} values",
                last + 1
            );
        }
        Self { data, rows, cols, row_stride, col_stride }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn at(&self, row: usize, col: usize) -> f32 {
        self.data[row * self.row_stride + col * self.col_stride]
    }
}

/// `c = a * b`, with `c` dense row-major `a.rows() x b.cols()`, using the
/// fastest kernel this CPU supports. The result does not depend on which.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32]) {
    matmul_with(super::active_path(), a, b, c);
}

/// [`matmul`] with an explicit kernel, so tests can hold the two against
/// each other.
pub fn matmul_with(path: KernelPath, a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32]) {
    assert_eq!(c.len(), a.rows * b.cols, "output must hold {}x{} values", a.rows, b.cols);
    matmul_strided_with(path, a, b, c, b.cols);
}

/// [`matmul`] into rows `c_row_stride` apart (at least `b.cols()`), such as
/// one head's columns of a wider buffer; values between rows are left as
/// they are.
pub fn matmul_strided(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], c_row_stride: usize) {
    matmul_strided_with(super::active_path(), a, b, c, c_row_stride);
}

fn matmul_strided_with(path: KernelPath, a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], c_row_stride: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ: {m}x{k} times {}x{n}", b.rows);
    assert!(c_row_stride >= n, "output rows of {n} values cannot be {c_row_stride} apart");
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * c_row_stride + n, "output must hold {m} rows of {n}, {c_row_stride} apart");
    if k == 0 {
        c.chunks_mut(c_row_stride).take(m).for_each(|row| row[..n].fill(0.0));
        return;
    }
    // Every index the kernels touch is below these bounds, which the safe
    // views guarantee; the unsafe kernel relies on it.
    assert!((m - 1) * a.row_stride + (k - 1) * a.col_stride < a.data.len());
    assert!((k - 1) * b.row_stride + (n - 1) * b.col_stride < b.data.len());

    let output = SharedOutput(c.as_mut_ptr(), c_row_stride, n);
    let panels = n.div_ceil(NR);
    let panel = |index: usize| compute_panel(path, a, b, index * NR, output);
    if m * n * k >= PARALLEL_MULTIPLY_ADDS_MIN && rayon::current_num_threads() > 1 {
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
}

/// The output pointer, shared by the tasks of one product. Each task writes
/// only the columns of its own panel, so the writes never overlap.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32, usize, usize);
// SAFETY: tasks write disjoint column ranges (see `compute_panel`), and
// `matmul_with` holds the exclusive borrow until all of them have finished.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

/// Computes columns `first_col..first_col + NR` (clipped to `n`) of the
/// output, for all rows.
fn compute_panel(path: KernelPath, a: MatRef<'_>, b: MatRef<'_>, first_col: usize, output: SharedOutput) {
    let (k, n) = (a.cols, b.cols);
    let width = NR.min(n - first_col);
    // The kernels read NR contiguous values per k. A row-major B panel is
    // already laid out that way; anything else is packed, zero-padded, into
    // this thread's reusable buffer.
    if b.col_stride == 1 && width == NR {
        panel_rows(path, a, &b.data[first_col..], b.row_stride, first_col, output);
        return;
    }
    PACKED.with_borrow_mut(|packed| {
        packed.clear();
        packed.resize(k * NR, 0.0);
        for (p, row) in packed.chunks_exact_mut(NR).enumerate() {
            for (j, value) in row.iter_mut().enumerate().take(width) {
                *value = b.at(p, first_col + j);
            }
        }
        panel_rows(path, a, packed, NR, first_col, output);
    });
}

thread_local! {
    /// The packed B panel of the product this thread is computing.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every row tile of one column panel, `panel` holding NR values per `k`
/// (`panel_stride` apart).
fn panel_rows(
    path: KernelPath,
    a: MatRef<'_>,
    panel: &[f32],
    panel_stride: usize,
    first_col: usize,
    output: SharedOutput,
) {
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 {
        // SAFETY: `active_path` returns Avx512 only on CPUs with AVX-512F;
        // the bounds were asserted in `matmul_strided_with`.
        unsafe { panel_rows_avx512(a, panel, panel_stride, first_col, output) };
        return;
    }
    let (m, k) = (a.rows, a.cols);
    let width = NR.min(output.2 - first_col);
    let mut tile = [[0.0f32; NR]; MR];
    for first_row in (0..m).step_by(MR) {
        let rows = MR.min(m - first_row);
        // Rows past the end repeat the last row; their results are dropped.
        let row_offsets: [usize; MR] = std::array::from_fn(|r| (first_row + r.min(rows - 1)) * a.row_stride);
        match path {
            // SAFETY: `active_path` only returns Avx2Fma when the CPU has
            // both features, and the bounds were asserted in `matmul_with`.
            KernelPath::Avx2Fma | KernelPath::Avx512 => unsafe {
                #[cfg(target_arch = "x86_64")]
                tile_avx2_fma(k, a.data, row_offsets, a.col_stride, panel, panel_stride, &mut tile);
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("the AVX2 kernel exists only on x86_64");
            },
            KernelPath::Portable => {
                tile_portable(k, a.data, row_offsets, a.col_stride, panel, panel_stride, &mut tile)
            }
        }
        for (r, tile_row) in tile.iter().enumerate().take(rows) {
            let start = (first_row + r) * output.1 + first_col;
            // SAFETY: row `first_row + r` < m and columns
            // `first_col..first_col + width` <= n lie inside the m x n output;
            // no other task writes these columns.
            unsafe {
                std::ptr::copy_nonoverlapping(tile_row.as_ptr(), output.0.add(start), width);
            }
        }
    }
}

/// Rows of the AVX-512 tile: one 16-lane accumulator per row, 12 of the 32
/// `zmm` registers, so two FMA units always have independent work.
#[cfg(target_arch = "x86_64")]
const MR_512: usize = 12;

/// [`panel_rows`] with a 12 x 16 tile of 512-bit accumulators: each lane
/// still evaluates its output's one chain in increasing `k`.
///
/// # Safety
/// The CPU must support AVX-512F; the panel and `a` must hold every
/// element the product reads, as `matmul_strided_with` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_rows_avx512(
    a: MatRef<'_>,
    panel: &[f32],
    panel_stride: usize,
    first_col: usize,
    output: SharedOutput,
) {
    use std::arch::x86_64::*;
    let (m, k) = (a.rows, a.cols);
    let width = NR.min(output.2 - first_col);
    let (a_data, a_step, b) = (a.data.as_ptr(), a.col_stride, panel.as_ptr());
    let mut tile = [[0.0f32; NR]; MR_512];
    for first_row in (0..m).step_by(MR_512) {
        let rows = MR_512.min(m - first_row);
        let row_offsets: [usize; MR_512] =
            std::array::from_fn(|r| (first_row + r.min(rows - 1)) * a.row_stride);
        let mut acc = [_mm512_setzero_ps(); MR_512];
        for p in 0..k {
            // SAFETY: in bounds by this function's contract.
            unsafe {
                let b_row = _mm512_loadu_ps(b.add(p * panel_stride));
                for r in 0..MR_512 {
                    let a_value = _mm512_set1_ps(*a_data.add(row_offsets[r] + p * a_step));
                    acc[r] = _mm512_fmadd_ps(a_value, b_row, acc[r]);
                }
            }
        }
        for r in 0..MR_512 {
            // SAFETY: each tile row holds one 16-lane vector.
            unsafe { _mm512_storeu_ps(tile[r].as_mut_ptr(), acc[r]) };
        }
        for (r, tile_row) in tile.iter().enumerate().take(rows) {
            let start = (first_row + r) * output.1 + first_col;
            // SAFETY: as in `panel_rows`: inside the output, in this task's columns.
            unsafe { std::ptr::copy_nonoverlapping(tile_row.as_ptr(), output.0.add(start), width) };
        }
    }
}

/// The definition of the chain, one scalar fused multiply-add at a time.
fn tile_portable(
    k: usize,
    a: &[f32],
    row_offsets: [usize; MR],
    a_step: usize,
    panel: &[f32],
    panel_stride: usize,
    tile: &mut [[f32; NR]; MR],
) {
    for (row, &offset) in tile.iter_mut().zip(&row_offsets) {
        let mut accumulators = [0.0f32; NR];
        for p in 0..k {
            let a_value = a[offset + p * a_step];
            let b_row = &panel[p * panel_stride..p * panel_stride + NR];
            for (accumulator, &b_value) in accumulators.iter_mut().zip(b_row) {
                *accumulator = a_value.mul_add(b_value, *accumulator);
            }
        }
        *row = accumulators;
    }
}

/// The same chain, 6 x 16 outputs at a time in AVX2 registers.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and for every `p < k` and row `r`,
/// `a[row_offsets[r] + p * a_step]` and `panel[p * panel_stride .. + NR]`
/// must be in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_fma(
    k: usize,
    a: &[f32],
    row_offsets: [usize; MR],
    a_step: usize,
    panel: &[f32],
    panel_stride: usize,
    tile: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let a = a.as_ptr();
    let b = panel.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..k {
        // SAFETY: in bounds by this function's contract.
        unsafe {
            let b_low = _mm256_loadu_ps(b.add(p * panel_stride));
            let b_high = _mm256_loadu_ps(b.add(p * panel_stride + 8));
            for r in 0..MR {
                let a_value = _mm256_set1_ps(*a.add(row_offsets[r] + p * a_step));
                acc[r][0] = _mm256_fmadd_ps(a_value, b_low, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a_value, b_high, acc[r][1]);
            }
        }
    }
    for r in 0..MR {
        // SAFETY: each tile row holds exactly two 8-lane vectors.
        unsafe {
            _mm256_storeu_ps(tile[r].as_mut_ptr(), acc[r][0]);
            _mm256_storeu_ps(tile[r].as_mut_ptr().add(8), acc[r][1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{KernelPath, available_paths};
    use crowdtrain_data::rng::{RngKey, keyed_rng, standard_normal};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = keyed_rng("test-gemm", RngKey::new(seed, 0, 0, 0));
        (0..len).map(|_| standard_normal(&mut rng) as f32).collect()
    }

    /// The specification, written as plainly as possible.
    fn reference(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
        let mut c = vec![0.0; a.rows() * b.cols()];
        for i in 0..a.rows() {
            for j in 0..b.cols() {
                let mut sum = 0.0f32;
                for p in 0..a.cols() {
                    sum = a.at(i, p).mul_add(b.at(p, j), sum);
                }
                c[i * b.cols() + j] = sum;
            }
        }
        c
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|value| value.to_bits()).collect()
    }

    #[test]
    fn every_kernel_matches_the_definition_bit_for_bit_in_every_layout() {
        // Shapes cover full and partial tiles in both directions and the
        // sizes the MLP uses.
        let shapes = [(1, 1, 1), (5, 7, 3), (6, 16, 16), (13, 33, 17), (64, 784, 40), (64, 10, 256)];
        for (case, &(m, k, n)) in shapes.iter().enumerate() {
            let a_data = random(m * k, case as u64);
            let b_data = random(k * n, 100 + case as u64);
            let a_plain = MatRef::row_major(&a_data, m, k);
            let b_plain = MatRef::row_major(&b_data, k, n);
            let a_transposed = MatRef::row_major(&a_data, k, m).t();
            let b_transposed = MatRef::row_major(&b_data, n, k).t();
            for (a, b) in [(a_plain, b_plain), (a_transposed, b_plain), (a_plain, b_transposed)] {
                let expected = bits(&reference(a, b));
                for path in available_paths() {
                    let mut c = vec![f32::NAN; m * n];
                    matmul_with(path, a, b, &mut c);
                    assert_eq!(bits(&c), expected, "{path:?} on {m}x{k}x{n}");
                }
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_a_bit() {
        let (m, k, n) = (70, 300, 90);
        let a_data = random(m * k, 1);
        let b_data = random(k * n, 2);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![0.0; m * n];
            pool.install(|| {
                matmul(MatRef::row_major(&a_data, m, k), MatRef::row_major(&b_data, k, n), &mut c)
            });
            bits(&c)
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        let mut c = vec![1.0; 6];
        matmul(MatRef::row_major(&[], 2, 0), MatRef::row_major(&[], 0, 3), &mut c);
        assert_eq!(c, vec![0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn mismatched_shapes_are_refused() {
        let mut c = vec![0.0; 4];
        matmul(MatRef::row_major(&[0.0; 6], 2, 3), MatRef::row_major(&[0.0; 4], 2, 2), &mut c);
    }

    #[test]
    fn the_portable_kernel_is_always_available() {
        assert!(available_paths().contains(&KernelPath::Portable));
    }
}
