//! The few vector reductions the defence needs (dot products, distances,
//! Gram matrices), with one fixed order of operations.
//!
//! Checks and robust aggregation compare updates by their lengths and
//! angles; if those numbers differed between machines or thread counts, so
//! could a verdict, and with it the model. So every sum here is defined
//! exactly: each product (or squared difference) rounded once in `f32`,
//! then accumulated in `f64` in [`LANES`] interleaved lanes
//! (lane `j` takes indices `j, j + LANES, ...`) over fixed chunks of
//! [`CHUNK`] values, lanes added in order, then chunks added in order.
//! The lanes let the compiler use vector instructions without reordering
//! anything (Rust never contracts `a * b + c` into an FMA), and the chunks
//! let threads share the work without changing the result. [`dot`] and
//! [`distance`] run on the calling thread: at a model's size one of them
//! takes a fraction of a millisecond, so callers parallelise across
//! vectors instead, with one fork-join where a fork-join per call would
//! cost more in wake-ups than it saves.

use rayon::prelude::*;

/// Interleaved accumulators per sum.
pub const LANES: usize = 8;

/// Values per parallel task. Part of the definition of every sum here:
/// changing it changes low-order bits.
pub const CHUNK: usize = 1 << 14;

/// `sum_i term(a[i], b[i])` over one chunk: each term rounded in `f32`,
/// accumulated in `f64` in interleaved lanes, lanes added in order.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f64; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for lane in 0..LANES {
            lanes[lane] += f64::from(term(x[lane], y[lane]));
        }
    }
    for (lane, (&x, &y)) in a_tail.iter().zip(b_tail).enumerate() {
        lanes[lane] += f64::from(term(x, y));
    }
    lanes.iter().fold(0.0, |sum, lane| sum + lane)
}

fn dot_chunk(a: &[f32], b: &[f32]) -> f64 {
    lane_sum(a, b, |x, y| x * y)
}

fn distance_chunk(a: &[f32], b: &[f32]) -> f64 {
    lane_sum(a, b, |x, y| (x - y) * (x - y))
}

/// The dot product of `a` and `b`.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of one length");
    in_order(a.chunks(CHUNK).zip(b.chunks(CHUNK)).map(|(a, b)| dot_chunk(a, b)).collect())
}

/// Adds per-chunk partial sums in chunk order.
fn in_order(partials: Vec<f64>) -> f64 {
    partials.iter().fold(0.0, |sum, partial| sum + partial)
}

/// The Euclidean norm of `a`.
pub fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

/// The Euclidean distance between `a` and `b`.
pub fn distance(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of one length");
    in_order(a.chunks(CHUNK).zip(b.chunks(CHUNK)).map(|(a, b)| distance_chunk(a, b)).collect()).sqrt()
}

/// Every pairwise dot product of `vectors` (all of one length): entry
/// `(i, j)` of the symmetric Gram matrix, row-major, `n x n`.
pub fn gram(vectors: &[&[f32]]) -> Vec<f64> {
    let n = vectors.len();
    let len = vectors.first().map_or(0, |vector| vector.len());
    assert!(vectors.iter().all(|vector| vector.len() == len), "vectors of one length");
    let chunks = len.div_ceil(CHUNK);
    let partials: Vec<Vec<f64>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let range = chunk * CHUNK..((chunk + 1) * CHUNK).min(len);
            let mut partial = vec![0.0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    partial[i * n + j] = dot_chunk(&vectors[i][range.clone()], &vectors[j][range.clone()]);
                }
            }
            partial
        })
        .collect();
    let mut total = vec![0.0f64; n * n];
    for partial in &partials {
        for (sum, value) in total.iter_mut().zip(partial) {
            *sum += value;
        }
    }
    for i in 0..n {
        for j in 0..i {
            total[i * n + j] = total[j * n + i];
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(seed: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 * 1e-3 - 1.0)
            .collect()
    }

    #[test]
    fn sums_are_right_and_the_gram_matrix_agrees_with_dot() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [4.0f32, -5.0, 6.0];
        assert_eq!(dot(&a, &b), 12.0);
        assert_eq!(distance(&a, &b), (9.0f64 + 49.0 + 9.0).sqrt());
        let vectors: Vec<Vec<f32>> = (0..4).map(|seed| vector(seed, 50_001)).collect();
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        let matrix = gram(&views);
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(matrix[i * 4 + j].to_bits(), dot(views[i], views[j]).to_bits(), "({i}, {j})");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let vectors: Vec<Vec<f32>> = (0..5).map(|seed| vector(seed, 100_003)).collect();
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (gram(&views), distance(views[0], views[1]), norm(views[2])))
        };
        let (one, two, three) = (run(1), run(2), run(3));
        assert_eq!(format!("{one:?}"), format!("{two:?}"));
        assert_eq!(format!("{one:?}"), format!("{three:?}"));
    }
}
