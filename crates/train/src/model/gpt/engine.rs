//! The GPT's forward and backward passes over flat buffers.
//!
//! Everything a step computes is written down here in one order:
//!
//! - matrix products are `kernels::gemm` (one FMA chain per output in
//!   increasing `k`; threads split output panels);
//! - row operations (LayerNorm, softmax, GELU, cross-entropy) are
//!   `kernels::vector`, whose sums use fixed lanes; rows are independent,
//!   so threads may take any rows;
//! - attention runs one sequence per task (each task owns its rows of the
//!   outputs), heads one after another inside it;
//! - reductions over rows (bias and LayerNorm gradients, the position
//!   embedding's gradient, the token embedding's scatter-add, the loss)
//!   add rows in increasing order on one thread.
//!
//! `n = sequences x length` rows flow through the network; activations
//! the backward pass needs are kept per block in the [`Workspace`].

use rayon::prelude::*;

use super::{BlockRanges, GptConfig, Ranges};
use crate::kernels::gemm::{MatRef, matmul, matmul_strided};
use crate::kernels::vector::{self, with_path};
use crate::model::LossSum;

/// PyTorch's LayerNorm epsilon.
const LN_EPS: f32 = 1e-5;

/// Rows per parallel task in row-wise operations: enough work to be worth
/// handing to another thread.
const ROW_TASK_ELEMENTS: usize = 1 << 14;

/// One block's activations, kept from the forward pass for the backward.
#[derive(Debug)]
struct BlockActivations {
    ln1_xhat: Vec<f32>,
    ln1_rstd: Vec<f32>,
    ln1_out: Vec<f32>,
    /// `[n, 3 width]`: queries, keys, values.
    qkv: Vec<f32>,
    /// `[sequences, heads, length, length]` attention probabilities (zero
    /// above the diagonal).
    probs: Vec<f32>,
    /// `[n, width]`: the heads' outputs, side by side.
    att: Vec<f32>,
    ln2_xhat: Vec<f32>,
    ln2_rstd: Vec<f32>,
    ln2_out: Vec<f32>,
    /// `[n, 4 width]` before GELU, the tanh inside GELU, and after it.
    fc: Vec<f32>,
    fc_tanh: Vec<f32>,
    fc_act: Vec<f32>,
}

/// Every buffer one step needs, for a fixed number of sequences and
/// sequence length; reused from step to step.
#[derive(Debug)]
pub struct Workspace {
    sequences: usize,
    length: usize,
    blocks: Vec<BlockActivations>,
    /// `[n, width]`: the residual stream, updated in place by each block.
    residual: Vec<f32>,
    lnf_xhat: Vec<f32>,
    lnf_rstd: Vec<f32>,
    lnf_out: Vec<f32>,
    /// `[n, vocab]`; after `cross_entropy` with gradients, their gradient.
    logits: Vec<f32>,
    /// `[n]`: each prediction's loss.
    losses: Vec<f32>,
    /// `[n, width]`: a branch's output in the forward pass, the gradient of
    /// a LayerNorm's output or of the attention output in the backward.
    branch: Vec<f32>,
    /// `[n, width]`: the gradient of the residual stream.
    d_residual: Vec<f32>,
    /// `[n, width]`: LayerNorm backward's scratch.
    d_scratch: Vec<f32>,
    /// `[n, 4 width]`: the gradient of the MLP's hidden layer.
    d_hidden: Vec<f32>,
    /// `[n, 3 width]`: the gradient of queries, keys and values.
    d_qkv: Vec<f32>,
    /// `[sequences, length, length]`: attention backward's scratch, one
    /// square per sequence.
    d_probs: Vec<f32>,
}

impl Workspace {
    pub fn new(config: &GptConfig, sequences: usize, length: usize) -> Self {
        let n = sequences * length;
        let c = config.width;
        let zeros = |len: usize| vec![0.0f32; len];
        let blocks = (0..config.layers)
            .map(|_| BlockActivations {
                ln1_xhat: zeros(n * c),
                ln1_rstd: zeros(n),
                ln1_out: zeros(n * c),
                qkv: zeros(n * 3 * c),
                probs: zeros(sequences * config.heads * length * length),
                att: zeros(n * c),
                ln2_xhat: zeros(n * c),
                ln2_rstd: zeros(n),
                ln2_out: zeros(n * c),
                fc: zeros(n * 4 * c),
                fc_tanh: zeros(n * 4 * c),
                fc_act: zeros(n * 4 * c),
            })
            .collect();
        Self {
            sequences,
            length,
            blocks,
            residual: zeros(n * c),
            lnf_xhat: zeros(n * c),
            lnf_rstd: zeros(n),
            lnf_out: zeros(n * c),
            logits: zeros(n * config.vocab),
            losses: zeros(n),
            branch: zeros(n * c),
            d_residual: zeros(n * c),
            d_scratch: zeros(n * c),
            d_hidden: zeros(n * 4 * c),
            d_qkv: zeros(n * 3 * c),
            d_probs: zeros(sequences * length * length),
        }
    }

    /// Whether this workspace is the one for `sequences` of `length`.
    pub fn fits(&self, sequences: usize, length: usize) -> bool {
        self.sequences == sequences && self.length == length
    }

    /// The last forward pass's logits, `[n, vocab]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

/// Rows per task for a row-wise operation on rows of `width` values.
fn rows_per_task(width: usize) -> usize {
    (ROW_TASK_ELEMENTS / width.max(1)).max(1)
}

/// LayerNorm of every row of `x` into `xhat`, `out` and `rstd`.
fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], xhat: &mut [f32], out: &mut [f32], rstd: &mut [f32]) {
    let width = weight.len();
    let rows = rows_per_task(width);
    x.par_chunks(rows * width)
        .zip(xhat.par_chunks_mut(rows * width))
        .zip(out.par_chunks_mut(rows * width))
        .zip(rstd.par_chunks_mut(rows))
        .for_each(|(((x, xhat), out), rstd)| {
            with_path(|| {
                for (((x, xhat), out), rstd) in x
                    .chunks_exact(width)
                    .zip(xhat.chunks_exact_mut(width))
                    .zip(out.chunks_exact_mut(width))
                    .zip(rstd.iter_mut())
                {
                    *rstd = vector::layer_norm_row(x, weight, bias, LN_EPS, xhat, out);
                }
            })
        });
}

/// The backward pass of [`layer_norm`]: adds the input gradient to
/// `d_input` and writes the weight and bias gradients.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward(
    d_out: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    weight: &[f32],
    scratch: &mut [f32],
    d_input: &mut [f32],
    d_weight: &mut [f32],
    d_bias: &mut [f32],
) {
    let width = weight.len();
    let rows = rows_per_task(width);
    d_out
        .par_chunks(rows * width)
        .zip(xhat.par_chunks(rows * width))
        .zip(rstd.par_chunks(rows))
        .zip(scratch.par_chunks_mut(rows * width))
        .zip(d_input.par_chunks_mut(rows * width))
        .for_each(|((((d_out, xhat), rstd), scratch), d_input)| {
            with_path(|| {
                for ((((dy, xh), &r), s), dx) in d_out
                    .chunks_exact(width)
                    .zip(xhat.chunks_exact(width))
                    .zip(rstd)
                    .zip(scratch.chunks_exact_mut(width))
                    .zip(d_input.chunks_exact_mut(width))
                {
                    vector::layer_norm_row_backward(dy, xh, weight, r, s, dx);
                }
            })
        });
    with_path(|| {
        d_weight.fill(0.0);
        vector::column_dot_accumulate(d_out, xhat, d_weight);
        d_bias.fill(0.0);
        vector::column_sum_accumulate(d_out, d_bias);
    });
}

/// `out = x w + b` for row-major `x` `[rows, in]` and `w` `[in, out]`.
fn linear(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32]) {
    let outputs = b.len();
    let inputs = w.len() / outputs;
    let rows = x.len() / inputs;
    matmul(MatRef::row_major(x, rows, inputs), MatRef::row_major(w, inputs, outputs), out);
    add_bias(out, b);
}

fn add_bias(out: &mut [f32], b: &[f32]) {
    let width = b.len();
    let rows = rows_per_task(width);
    out.par_chunks_mut(rows * width).for_each(|chunk| {
        with_path(|| {
            for row in chunk.chunks_exact_mut(width) {
                for (value, &bias) in row.iter_mut().zip(b) {
                    *value += bias;
                }
            }
        })
    });
}

/// The backward pass of [`linear`]: weight and bias gradients, and, if
/// asked for, the input gradient (overwritten).
fn linear_backward(
    x: &[f32],
    w: &[f32],
    d_out: &[f32],
    d_w: &mut [f32],
    d_b: &mut [f32],
    d_x: Option<&mut [f32]>,
) {
    let outputs = d_b.len();
    let inputs = w.len() / outputs;
    let rows = x.len() / inputs;
    let d_out_view = MatRef::row_major(d_out, rows, outputs);
    matmul(MatRef::row_major(x, rows, inputs).t(), d_out_view, d_w);
    with_path(|| {
        d_b.fill(0.0);
        vector::column_sum_accumulate(d_out, d_b);
    });
    if let Some(d_x) = d_x {
        matmul(d_out_view, MatRef::row_major(w, inputs, outputs).t(), d_x);
    }
}

/// `a += b`, element by element.
fn add_into(a: &mut [f32], b: &[f32]) {
    let chunk = ROW_TASK_ELEMENTS;
    a.par_chunks_mut(chunk).zip(b.par_chunks(chunk)).for_each(|(a, b)| {
        with_path(|| {
            for (x, &y) in a.iter_mut().zip(b) {
                *x += y;
            }
        })
    });
}

/// The forward pass on `tokens` (`workspace.sequences` rows of
/// `workspace.length`), leaving the logits and every activation the
/// backward pass needs in `workspace`.
pub(super) fn forward(
    config: &GptConfig,
    ranges: &Ranges,
    params: &[f32],
    tokens: &[u32],
    workspace: &mut Workspace,
) {
    let c = config.width;
    let length = workspace.length;
    let n = workspace.sequences * length;
    assert_eq!(tokens.len(), n);
    let wte = &params[ranges.token_embedding.clone()];
    let wpe = &params[ranges.position_embedding.clone()];
    with_path(|| {
        for (position, (row, &token)) in workspace.residual.chunks_exact_mut(c).zip(tokens).enumerate() {
            let t = position % length;
            let token_row = &wte[token as usize * c..(token as usize + 1) * c];
            let position_row = &wpe[t * c..(t + 1) * c];
            for ((value, &a), &b) in row.iter_mut().zip(token_row).zip(position_row) {
                *value = a + b;
            }
        }
    });
    for (block, acts) in ranges.blocks.iter().zip(workspace.blocks.iter_mut()) {
        block_forward(config, block, params, length, acts, &mut workspace.residual, &mut workspace.branch);
    }
    layer_norm(
        &workspace.residual,
        &params[ranges.lnf_weight.clone()],
        &params[ranges.lnf_bias.clone()],
        &mut workspace.lnf_xhat,
        &mut workspace.lnf_out,
        &mut workspace.lnf_rstd,
    );
    // The head is tied to the token embedding: logits = x wte^T.
    matmul(
        MatRef::row_major(&workspace.lnf_out, n, c),
        MatRef::row_major(wte, config.vocab, c).t(),
        &mut workspace.logits,
    );
}

#[allow(clippy::too_many_arguments)]
fn block_forward(
    config: &GptConfig,
    block: &BlockRanges,
    params: &[f32],
    length: usize,
    acts: &mut BlockActivations,
    residual: &mut [f32],
    branch: &mut [f32],
) {
    let p = |range: &std::ops::Range<usize>| &params[range.clone()];
    layer_norm(
        residual,
        p(&block.ln1_weight),
        p(&block.ln1_bias),
        &mut acts.ln1_xhat,
        &mut acts.ln1_out,
        &mut acts.ln1_rstd,
    );
    linear(&acts.ln1_out, p(&block.attn_weight), p(&block.attn_bias), &mut acts.qkv);
    attention(config, length, &acts.qkv, &mut acts.probs, &mut acts.att);
    linear(&acts.att, p(&block.attn_proj_weight), p(&block.attn_proj_bias), branch);
    add_into(residual, branch);
    layer_norm(
        residual,
        p(&block.ln2_weight),
        p(&block.ln2_bias),
        &mut acts.ln2_xhat,
        &mut acts.ln2_out,
        &mut acts.ln2_rstd,
    );
    linear(&acts.ln2_out, p(&block.fc_weight), p(&block.fc_bias), &mut acts.fc);
    let width = 4 * config.width;
    let rows = rows_per_task(width);
    acts.fc
        .par_chunks(rows * width)
        .zip(acts.fc_act.par_chunks_mut(rows * width))
        .zip(acts.fc_tanh.par_chunks_mut(rows * width))
        .for_each(|((u, out), tanhs)| with_path(|| vector::gelu_forward(u, out, tanhs)));
    linear(&acts.fc_act, p(&block.fc_proj_weight), p(&block.fc_proj_bias), branch);
    add_into(residual, branch);
}

/// Causal self-attention, one sequence per task: for each head,
/// `probs = softmax(q k^T / sqrt(head width))` over the positions up to
/// each row's own, and `att = probs v`.
fn attention(config: &GptConfig, length: usize, qkv: &[f32], probs: &mut [f32], att: &mut [f32]) {
    let c = config.width;
    let (heads, hs) = (config.heads, config.head_width());
    let scale = 1.0 / (hs as f32).sqrt();
    let square = length * length;
    probs.par_chunks_mut(heads * square).zip(att.par_chunks_mut(length * c)).enumerate().for_each(
        |(sequence, (probs, att))| {
            let qkv = &qkv[sequence * length * 3 * c..(sequence + 1) * length * 3 * c];
            for (head, probs) in probs.chunks_exact_mut(square).enumerate() {
                let (q, k, v) = (head * hs, c + head * hs, 2 * c + head * hs);
                for (first, last) in causal_blocks(length) {
                    // Scores of rows first..last against keys 0..last: the
                    // keys after a row's own are masked anyway.
                    let q_rows = MatRef::strided(&qkv[first * 3 * c + q..], last - first, hs, 3 * c, 1);
                    let k_t = MatRef::strided(&qkv[k..], hs, last, 1, 3 * c);
                    matmul_strided(q_rows, k_t, &mut probs[first * length..], length);
                }
                with_path(|| {
                    for (i, row) in probs.chunks_exact_mut(length).enumerate() {
                        let (visible, future) = row.split_at_mut(i + 1);
                        for value in visible.iter_mut() {
                            *value *= scale;
                        }
                        vector::softmax_in_place(visible);
                        future.fill(0.0);
                    }
                });
                for (first, last) in causal_blocks(length) {
                    // att = probs v over keys 0..last: the probabilities
                    // beyond are zeros at the end of each chain, which
                    // change no bit.
                    let p_rows = MatRef::strided(&probs[first * length..], last - first, last, length, 1);
                    let v_rows = MatRef::strided(&qkv[v..], last, hs, 3 * c, 1);
                    matmul_strided(p_rows, v_rows, &mut att[first * c + head * hs..], c);
                }
            }
        },
    );
}

/// Rows per block of causal attention: a block of rows needs the keys up
/// to its last row only.
const CAUSAL_BLOCK: usize = 16;

/// `[first, last)` row blocks of a `length x length` causal square.
fn causal_blocks(length: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..length).step_by(CAUSAL_BLOCK).map(move |first| (first, (first + CAUSAL_BLOCK).min(length)))
}

/// The backward pass of [`attention`]: `d_qkv` from `d_att`.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    config: &GptConfig,
    sequences: usize,
    length: usize,
    qkv: &[f32],
    probs: &[f32],
    d_att: &[f32],
    d_probs: &mut [f32],
    d_qkv: &mut [f32],
) {
    let c = config.width;
    let (heads, hs) = (config.heads, config.head_width());
    let scale = 1.0 / (hs as f32).sqrt();
    let square = length * length;
    debug_assert_eq!(d_qkv.len(), sequences * length * 3 * c);
    d_qkv.par_chunks_mut(length * 3 * c).zip(d_probs.par_chunks_mut(square)).enumerate().for_each(
        |(sequence, (d_qkv, d_p))| {
            let qkv = &qkv[sequence * length * 3 * c..(sequence + 1) * length * 3 * c];
            let d_att = &d_att[sequence * length * c..(sequence + 1) * length * c];
            let probs = &probs[sequence * heads * square..(sequence + 1) * heads * square];
            for (head, p) in probs.chunks_exact(square).enumerate() {
                let (q, k, v, y) = (head * hs, c + head * hs, 2 * c + head * hs, head * hs);
                // d_v = p^T d_y. Row j of d_v sums over rows i >= j of p:
                // a block of rows j starts its chains at its first row,
                // the terms before being exact zeros.
                for (first, last) in causal_blocks(length) {
                    let p_t = MatRef::strided(
                        &p[first * length + first..],
                        last - first,
                        length - first,
                        1,
                        length,
                    );
                    let d_y = MatRef::strided(&d_att[first * c + y..], length - first, hs, c, 1);
                    matmul_strided(p_t, d_y, &mut d_qkv[first * 3 * c + v..], 3 * c);
                }
                // d_p = d_y v^T where p is not masked.
                for (first, last) in causal_blocks(length) {
                    let d_y = MatRef::strided(&d_att[first * c + y..], last - first, hs, c, 1);
                    let v_t = MatRef::strided(&qkv[v..], hs, last, 1, 3 * c);
                    matmul_strided(d_y, v_t, &mut d_p[first * length..], length);
                }
                // The softmax's backward pass, times the scale:
                // d_s = p (d_p - sum(p d_p)).
                with_path(|| {
                    for (i, (d_row, p_row)) in
                        d_p.chunks_exact_mut(length).zip(p.chunks_exact(length)).enumerate()
                    {
                        let (visible, future) = d_row.split_at_mut(i + 1);
                        let p_visible = &p_row[..=i];
                        let dot = vector::lane_dot(visible, p_visible);
                        for (d, &prob) in visible.iter_mut().zip(p_visible) {
                            *d = prob * (*d - dot) * scale;
                        }
                        future.fill(0.0);
                    }
                });
                for (first, last) in causal_blocks(length) {
                    // d_q = d_s k, over keys 0..last.
                    let d_s = MatRef::strided(&d_p[first * length..], last - first, last, length, 1);
                    let k_rows = MatRef::strided(&qkv[k..], last, hs, 3 * c, 1);
                    matmul_strided(d_s, k_rows, &mut d_qkv[first * 3 * c + q..], 3 * c);
                    // d_k = d_s^T q, over rows first..length.
                    let d_s_t = MatRef::strided(
                        &d_p[first * length + first..],
                        last - first,
                        length - first,
                        1,
                        length,
                    );
                    let q_rows = MatRef::strided(&qkv[first * 3 * c + q..], length - first, hs, 3 * c, 1);
                    matmul_strided(d_s_t, q_rows, &mut d_qkv[first * 3 * c + k..], 3 * c);
                }
            }
        },
    );
}

/// Softmax cross-entropy of the logits against `targets`: the summed loss
/// (added in row order, in f64) and how many predictions were right. With
/// `gradient`, the logits become the gradient of the mean loss.
pub(super) fn cross_entropy(
    config: &GptConfig,
    targets: &[u32],
    workspace: &mut Workspace,
    gradient: bool,
) -> LossSum {
    let vocab = config.vocab;
    let n = targets.len();
    let inverse_n = 1.0 / n as f32;
    let rows = rows_per_task(vocab);
    let correct: usize = workspace
        .logits
        .par_chunks_mut(rows * vocab)
        .zip(workspace.losses.par_chunks_mut(rows))
        .zip(targets.par_chunks(rows))
        .map(|((logits, losses), targets)| {
            with_path(|| {
                let mut correct = 0;
                for ((row, loss), &target) in
                    logits.chunks_exact_mut(vocab).zip(losses.iter_mut()).zip(targets)
                {
                    let target = target as usize;
                    let top = vector::max(row);
                    let target_logit = row[target];
                    // The first largest logit is the prediction.
                    correct += usize::from(row.iter().position(|&value| value == top) == Some(target));
                    let total = vector::softmax_in_place(row);
                    *loss = (top + libm::logf(total)) - target_logit;
                    if !gradient {
                        continue;
                    }
                    for value in row.iter_mut() {
                        *value *= inverse_n;
                    }
                    row[target] -= inverse_n;
                    for value in row.iter_mut() {
                        *value = vector::flush_subnormal(*value);
                    }
                }
                correct
            })
        })
        .sum();
    let loss = workspace.losses[..n].iter().map(|&loss| f64::from(loss)).sum();
    LossSum { loss, correct, count: n }
}

/// The backward pass, after [`cross_entropy`] with gradients: every
/// parameter's gradient into `grads`.
pub(super) fn backward(
    config: &GptConfig,
    ranges: &Ranges,
    params: &[f32],
    tokens: &[u32],
    workspace: &mut Workspace,
    grads: &mut [f32],
) {
    let c = config.width;
    let length = workspace.length;
    let sequences = workspace.sequences;
    let n = sequences * length;
    let ws = workspace;
    let wte = &params[ranges.token_embedding.clone()];
    let d_logits = MatRef::row_major(&ws.logits, n, config.vocab);
    // The tied head: d_wte = d_logits^T x (the embedding's own scatter-add
    // comes last), d_x = d_logits wte.
    matmul(d_logits.t(), MatRef::row_major(&ws.lnf_out, n, c), &mut grads[ranges.token_embedding.clone()]);
    matmul(d_logits, MatRef::row_major(wte, config.vocab, c), &mut ws.branch);
    ws.d_residual.fill(0.0);
    {
        let (d_weight, d_bias) = two_ranges(grads, &ranges.lnf_weight, &ranges.lnf_bias);
        layer_norm_backward(
            &ws.branch,
            &ws.lnf_xhat,
            &ws.lnf_rstd,
            &params[ranges.lnf_weight.clone()],
            &mut ws.d_scratch,
            &mut ws.d_residual,
            d_weight,
            d_bias,
        );
    }
    for (block, acts) in ranges.blocks.iter().zip(ws.blocks.iter()).rev() {
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        // The MLP branch: residual += c_proj(gelu(c_fc(ln_2(residual)))).
        {
            let (d_w, d_b) = two_ranges(grads, &block.fc_proj_weight, &block.fc_proj_bias);
            linear_backward(
                &acts.fc_act,
                p(&block.fc_proj_weight),
                &ws.d_residual,
                d_w,
                d_b,
                Some(&mut ws.d_hidden),
            );
        }
        let width = 4 * c;
        let rows = rows_per_task(width);
        acts.fc
            .par_chunks(rows * width)
            .zip(acts.fc_tanh.par_chunks(rows * width))
            .zip(ws.d_hidden.par_chunks_mut(rows * width))
            .for_each(|((u, t), g)| with_path(|| vector::gelu_backward(u, t, g)));
        {
            let (d_w, d_b) = two_ranges(grads, &block.fc_weight, &block.fc_bias);
            linear_backward(&acts.ln2_out, p(&block.fc_weight), &ws.d_hidden, d_w, d_b, Some(&mut ws.branch));
        }
        {
            let (d_weight, d_bias) = two_ranges(grads, &block.ln2_weight, &block.ln2_bias);
            layer_norm_backward(
                &ws.branch,
                &acts.ln2_xhat,
                &acts.ln2_rstd,
                p(&block.ln2_weight),
                &mut ws.d_scratch,
                &mut ws.d_residual,
                d_weight,
                d_bias,
            );
        }
        // The attention branch: residual += c_proj(attention(c_attn(ln_1(residual)))).
        {
            let (d_w, d_b) = two_ranges(grads, &block.attn_proj_weight, &block.attn_proj_bias);
            linear_backward(
                &acts.att,
                p(&block.attn_proj_weight),
                &ws.d_residual,
                d_w,
                d_b,
                Some(&mut ws.branch),
            );
        }
        attention_backward(
            config,
            sequences,
            length,
            &acts.qkv,
            &acts.probs,
            &ws.branch,
            &mut ws.d_probs,
            &mut ws.d_qkv,
        );
        {
            let (d_w, d_b) = two_ranges(grads, &block.attn_weight, &block.attn_bias);
            linear_backward(&acts.ln1_out, p(&block.attn_weight), &ws.d_qkv, d_w, d_b, Some(&mut ws.branch));
        }
        {
            let (d_weight, d_bias) = two_ranges(grads, &block.ln1_weight, &block.ln1_bias);
            layer_norm_backward(
                &ws.branch,
                &acts.ln1_xhat,
                &acts.ln1_rstd,
                p(&block.ln1_weight),
                &mut ws.d_scratch,
                &mut ws.d_residual,
                d_weight,
                d_bias,
            );
        }
    }
    // The embeddings: positions sum over sequences in order; tokens add
    // into the head's gradient, position by position.
    let d_residual = &ws.d_residual;
    with_path(|| {
        let d_wpe = &mut grads[ranges.position_embedding.clone()];
        d_wpe.fill(0.0);
        for sequence in d_residual.chunks_exact(length * c) {
            for (sum, &value) in d_wpe[..length * c].iter_mut().zip(sequence) {
                *sum += value;
            }
        }
        let d_wte = &mut grads[ranges.token_embedding.clone()];
        for (row, &token) in d_residual.chunks_exact(c).zip(tokens) {
            let target = &mut d_wte[token as usize * c..(token as usize + 1) * c];
            for (sum, &value) in target.iter_mut().zip(row) {
                *sum += value;
            }
        }
    });
}

/// Two disjoint ranges of `values`, mutably (the first before the second).
fn two_ranges<'a>(
    values: &'a mut [f32],
    first: &std::ops::Range<usize>,
    second: &std::ops::Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(first.end <= second.start, "ranges in layout order");
    let (head, tail) = values.split_at_mut(second.start);
    (&mut head[first.clone()], &mut tail[..second.end - second.start])
}
