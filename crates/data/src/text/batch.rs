//! Shards of the training tokens, and batches of token sequences.
//!
//! A sequence is a window of `context + 1` consecutive tokens: the first
//! `context` are the model's inputs, the last `context` its targets, each
//! the token after its input. Everything here is a pure function of its
//! arguments and a [`RngKey`], so the coordinator, every worker and every
//! auditor compute the same shards and batches without shipping offsets
//! around, and sampling a batch costs `O(batch x context)` whatever the
//! size of the text.

use std::ops::Range;

use crate::rng::{RngKey, keyed_rng, shuffle, uniform_below};

use super::TextError;
use super::tokens::Tokens;

/// `sequences` rows of `context` input tokens and their next-token
/// targets, row-major: `targets[r * context + c]` is the token after
/// `inputs[r * context + c]` in the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub sequences: usize,
    pub context: usize,
}

impl TokenBatch {
    /// Refills this batch with the windows of `tokens` starting at
    /// `offsets`, reusing its buffers.
    pub fn fill(&mut self, tokens: Tokens<'_>, offsets: &[usize], context: usize) {
        self.inputs.clear();
        self.targets.clear();
        self.sequences = offsets.len();
        self.context = context;
        let mut window = Vec::with_capacity(context + 1);
        for &offset in offsets {
            window.clear();
            tokens.slice(offset..offset + context + 1).extend_into(&mut window);
            self.inputs.extend_from_slice(&window[..context]);
            self.targets.extend_from_slice(&window[1..]);
        }
    }

    /// The number of target tokens.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// The fewest tokens a shard may hold: `batch` distinct windows of
/// `context + 1` tokens.
pub fn shard_tokens_min(batch: usize, context: usize) -> usize {
    batch + context
}

/// How many workers `train_tokens` training tokens can be split among
/// with every shard holding at least [`shard_tokens_min`] tokens (shards
/// differ by at most one token, the smallest being
/// `train_tokens / workers`). The coordinator must never admit more
/// participants to a round.
pub fn participants_supported(train_tokens: usize, batch: usize, context: usize) -> usize {
    assert!(batch >= 1 && context >= 1, "batch {batch} and context {context} must be positive");
    train_tokens / shard_tokens_min(batch, context)
}

/// The length the stripes of a shard aim at, in tokens (at least
/// [`shard_tokens_min`]).
///
/// Why stripes: a corpus is stored in some order (Shakespeare play by play,
/// a crawl site by site), and one contiguous eighth of it is a few plays.
/// A worker that trains a round on a few plays drifts towards them, and
/// the average of eight such drifts is worth less than eight workers who
/// each read the whole corpus (docs/BENCHMARKS.md, "Shards that span the
/// corpus": on Shakespeare DiLoCo is 0.01 to 0.05 nats ahead in each of
/// its first five rounds, level or a little behind by the tenth, when the
/// corpus has been read ten times). Cut into stripes of about 16K tokens
/// (a scene or two) dealt out in turn, every shard covers the whole text
/// evenly, while each stripe stays a contiguous range that a memory-mapped
/// token file serves in place.
pub const STRIPE_TOKENS: usize = 16_384;

/// One worker's share of the training tokens: disjoint contiguous ranges
/// (stripes) of the training split, in ascending order. A batch draws its
/// windows uniformly among every window that lies inside one stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenShard {
    pub stripes: Vec<Range<usize>>,
}

impl TokenShard {
    /// The shard of one contiguous range.
    pub fn contiguous(range: Range<usize>) -> Self {
        Self { stripes: vec![range] }
    }

    /// The tokens it holds.
    pub fn len(&self) -> usize {
        self.stripes.iter().map(ExactSizeIterator::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The training tokens `0..train_tokens` as `workers` shards of near-equal
/// length. The split is cut into `workers x k` contiguous pieces, `k` the
/// most that keeps pieces at least [`STRIPE_TOKENS`] (and
/// [`shard_tokens_min`]) long, and never below one; a shard holds every
/// `workers`-th piece, shard `slot` starting at piece `perm[slot]` of a
/// permutation drawn from `seed`. So every shard spans the whole text, which
/// part of it a slot trains on changes with the run, and every token is some
/// slot's. Below `2 x workers x STRIPE_TOKENS` tokens each shard is one
/// contiguous range.
pub fn text_shards(
    train_tokens: usize,
    workers: usize,
    batch: usize,
    context: usize,
    seed: u64,
) -> Result<Vec<TokenShard>, TextError> {
    let supported = participants_supported(train_tokens, batch, context);
    if workers == 0 || workers > supported {
        return Err(TextError::TooManyWorkers { workers, train_tokens, batch, context, supported });
    }
    let stripe = STRIPE_TOKENS.max(shard_tokens_min(batch, context));
    let per_shard = (train_tokens / workers / stripe).max(1);
    let pieces = workers * per_shard;
    let piece = |index: usize| {
        let bound = |at: usize| (train_tokens as u128 * at as u128 / pieces as u128) as usize;
        bound(index)..bound(index + 1)
    };
    let mut order: Vec<usize> = (0..workers).collect();
    shuffle(&mut keyed_rng("text-shards", RngKey::new(seed, 0, 0, workers as u64)), &mut order);
    Ok(order
        .into_iter()
        .map(|first| TokenShard {
            stripes: (0..per_shard).map(|turn| piece(first + turn * workers)).collect(),
        })
        .collect())
}

/// Shard `slot` of [`text_shards`].
pub fn text_shard(
    train_tokens: usize,
    slot: usize,
    workers: usize,
    batch: usize,
    context: usize,
    seed: u64,
) -> Result<TokenShard, TextError> {
    assert!(slot < workers, "slot {slot} of {workers}");
    Ok(text_shards(train_tokens, workers, batch, context, seed)?.swap_remove(slot))
}

/// One training step's batch: `batch` windows of `tokens`, each starting at
/// an offset drawn uniformly (independently, as nanoGPT does: windows a
/// token apart overlap almost entirely anyway) from the stream keyed by
/// `key`, (seed, round, slot, step).
pub fn sample_batch(
    tokens: Tokens<'_>,
    batch: usize,
    context: usize,
    key: RngKey,
    out: &mut TokenBatch,
) -> Result<(), TextError> {
    draw_windows("text-batch", tokens, std::slice::from_ref(&(0..tokens.len())), batch, context, key, out)
}

/// [`sample_batch`] from `shard` of the training tokens `train`: the
/// windows lie inside its stripes, each of them equally likely. A shard of
/// one stripe draws the same windows as [`sample_batch`] on its slice.
pub fn sample_shard_batch(
    train: Tokens<'_>,
    shard: &TokenShard,
    batch: usize,
    context: usize,
    key: RngKey,
    out: &mut TokenBatch,
) -> Result<(), TextError> {
    draw_windows("text-batch", train, &shard.stripes, batch, context, key, out)
}

/// An evaluation batch of `batch` windows of the validation tokens drawn
/// with `key`, each at any offset (a round's test loss in a text run; the
/// updates' scores use [`round_evaluation_batch`] instead).
pub fn evaluation_batch(
    validation: Tokens<'_>,
    batch: usize,
    context: usize,
    key: RngKey,
) -> Result<TokenBatch, TextError> {
    let mut out = TokenBatch::default();
    draw_windows(
        "text-eval",
        validation,
        std::slice::from_ref(&(0..validation.len())),
        batch,
        context,
        key,
        &mut out,
    )?;
    Ok(out)
}

/// Round `round`'s evaluation batch for scoring updates: `batch` of the
/// validation split's non-overlapping windows (one every `context` tokens,
/// as [`validation_batches`] cuts them), fresh every round for as long as
/// the split has unused windows ([`crate::rng::epoch_block`], keyed by
/// `run`), so that no window is scored twice within an epoch of the split.
/// At most every window.
pub fn round_evaluation_batch(
    validation: Tokens<'_>,
    batch: usize,
    context: usize,
    run: u64,
    round: u64,
) -> Result<TokenBatch, TextError> {
    assert!(batch >= 1 && context >= 1, "batch {batch} and context {context} must be positive");
    let windows = validation_sequences(validation.len(), context);
    if windows == 0 {
        return Err(TextError::TooShort { tokens: validation.len(), context });
    }
    let offsets: Vec<usize> = crate::rng::epoch_block("text-eval-epoch", run, windows as u64, batch, round)
        .into_iter()
        .map(|window| window as usize * context)
        .collect();
    let mut out = TokenBatch::default();
    out.fill(validation, &offsets, context);
    Ok(out)
}

/// `batch` windows of `context + 1` tokens, each inside one of `stripes`
/// (ranges of `tokens`), drawn uniformly among all such windows with the
/// stream keyed by `purpose` and `key`. Offsets number the windows stripe
/// after stripe, so one stripe draws exactly what its slice alone would.
fn draw_windows(
    purpose: &str,
    tokens: Tokens<'_>,
    stripes: &[Range<usize>],
    batch: usize,
    context: usize,
    key: RngKey,
    out: &mut TokenBatch,
) -> Result<(), TextError> {
    assert!(batch >= 1 && context >= 1, "batch {batch} and context {context} must be positive");
    // Windows before the end of each stripe, cumulatively.
    let mut ends = Vec::with_capacity(stripes.len());
    let mut windows = 0u64;
    for stripe in stripes {
        assert!(stripe.end <= tokens.len(), "stripe {stripe:?} of {} tokens", tokens.len());
        if stripe.len() <= context {
            return Err(TextError::TooShort { tokens: stripe.len(), context });
        }
        windows += (stripe.len() - context) as u64;
        ends.push(windows);
    }
    if windows == 0 {
        return Err(TextError::TooShort { tokens: 0, context });
    }
    let mut rng = keyed_rng(purpose, key);
    let offsets: Vec<usize> = (0..batch)
        .map(|_| {
            let window = uniform_below(&mut rng, windows);
            let stripe = ends.partition_point(|&end| end <= window);
            let before = if stripe == 0 { 0 } else { ends[stripe - 1] };
            stripes[stripe].start + (window - before) as usize
        })
        .collect();
    out.fill(tokens, &offsets, context);
    Ok(())
}

/// The number of sequences [`validation_batches`] covers: windows
/// starting every `context` tokens that fit.
pub fn validation_sequences(tokens: usize, context: usize) -> usize {
    tokens.saturating_sub(1) / context
}

/// The whole validation split in order, as batches of up to `batch`
/// sequences: windows start every `context` tokens, so every token after
/// the first is a target exactly once (up to the last partial window,
/// dropped). Memory is one batch, whatever the split's size.
pub fn validation_batches(
    validation: Tokens<'_>,
    batch: usize,
    context: usize,
) -> Result<impl Iterator<Item = TokenBatch> + '_, TextError> {
    assert!(batch >= 1 && context >= 1, "batch {batch} and context {context} must be positive");
    let sequences = validation_sequences(validation.len(), context);
    if sequences == 0 {
        return Err(TextError::TooShort { tokens: validation.len(), context });
    }
    Ok((0..sequences).step_by(batch).map(move |first| {
        let offsets: Vec<usize> =
            (first..(first + batch).min(sequences)).map(|sequence| sequence * context).collect();
        let mut out = TokenBatch::default();
        out.fill(validation, &offsets, context);
        out
    }))
}
