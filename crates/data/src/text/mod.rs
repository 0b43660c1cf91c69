//! Text for language models: corpora, tokenizers, token files, shards and
//! batches.
//!
//! # The API in brief
//!
//! ```no_run
//! use crowdtrain_data::text::*;
//! use crowdtrain_data::RngKey;
//! # fn main() -> Result<(), TextError> {
//! // `--data FILE|DIR`, else the installed corpus, else the bundled one.
//! let source = TextSource::resolve(None);
//! // Character tokenizer from the text; or TokenizerSpec::File("tokenizer.json".into()).
//! let data = TextDataset::load(&source, &TokenizerSpec::Char, Some(&default_cache_dir()), &|_| {})?;
//! println!("data: {}", data.info);
//! let vocab = data.tokenizer().vocab_size();          // the model's embedding rows
//! let fingerprint = data.fingerprint();               // workers must match it
//!
//! // Worker `slot` of 4 in round 7, step 3, batch 12, context 64:
//! let (batch, context, seed) = (12, 64, 0);
//! assert!(participants_supported(data.train().len(), batch, context) >= 4);
//! let shard = text_shard(data.train().len(), 1, 4, batch, context, seed)?;
//! let mut tokens = TokenBatch::default();
//! sample_shard_batch(data.train(), &shard, batch, context, RngKey::new(seed, 7, 1, 3), &mut tokens)?;
//! // tokens.inputs and tokens.targets: [12, 64] row-major u32.
//!
//! // Scoring (the round's beacon picks the batch), and the final validation loss:
//! let eval = evaluation_batch(data.validation(), 32, context, RngKey::new(1, 7, 0, 0))?;
//! for batch in validation_batches(data.validation(), 64, context)? { /* sum the loss */ }
//!
//! // Sampling from a model: prompt to ids, ids to text.
//! let ids = data.tokenizer().encode("ROMEO:")?;
//! let text = data.tokenizer().decode(&ids)?;
//! # Ok(()) }
//! ```
//!
//! - [`TextSource`]: a file, a directory of files, or the bundled corpus,
//!   read as a stream of UTF-8 chunks (never whole).
//! - [`Tokenizer`]: characters, or GPT-2's byte-level BPE trained on the
//!   corpus ([`Tokenizer::train_bpe`]), saved and loaded as Hugging Face
//!   `tokenizer.json`.
//! - [`TextDataset`]: the tokens (in memory, or a cached token file mapped
//!   into memory), the tokenizer, the train/validation split (the last
//!   tenth is validation: [`split_point`]) and the [`fingerprint`](TextDataset::fingerprint).
//! - [`text_shards`] (each a [`TokenShard`] of stripes spread over the
//!   text), [`participants_supported`], [`sample_shard_batch`],
//!   [`evaluation_batch`], [`validation_batches`]: pure functions of their
//!   arguments and keys, like the image side's.

mod batch;
mod dataset;
mod source;
mod tokenizer;
mod tokens;

use std::path::PathBuf;

pub use batch::{
    STRIPE_TOKENS, TokenBatch, TokenShard, evaluation_batch, participants_supported, round_evaluation_batch,
    sample_batch, sample_shard_batch, shard_tokens_min, text_shard, text_shards, validation_batches,
    validation_sequences,
};
pub use dataset::{TextDataset, TextDatasetInfo, TokenizerSpec, VALIDATION_TENTHS, split_point};
pub use source::{INSTALLED_SHAKESPEARE, TextChunks, TextSource, hex_digest};
pub use tokenizer::{BPE_VOCAB_MIN, TOKENIZER_JSON_BYTES_MAX, Tokenizer, TokenizerKind, VOCAB_MAX};
pub use tokens::{CacheStatus, TokenFileMeta, TokenStore, TokenWidth, Tokens};

/// What a long text operation is doing, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the text to hash it (and find its characters).
    Reading,
    /// Feeding the text to the BPE trainer.
    Training,
    /// Tokenising the text.
    Tokenizing,
    /// Hashing a cached token file before using it.
    Verifying,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reading => "reading",
            Self::Training => "training",
            Self::Tokenizing => "tokenising",
            Self::Verifying => "verifying",
        })
    }
}

/// Progress of a [`Phase`]: `done` of `total` bytes (input bytes, which
/// for gzip files are compressed bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// Where token files are cached: `$CROWDTRAIN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/crowdtrain/tokens`, else `~/.cache/crowdtrain/tokens`,
/// else the system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    let nonempty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(dir) = nonempty("CROWDTRAIN_CACHE_DIR") {
        return dir;
    }
    let base = nonempty("XDG_CACHE_HOME")
        .or_else(|| nonempty("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("crowdtrain").join("tokens")
}

/// Why text could not be read, tokenised or cut into batches.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is neither a file nor a directory")]
    NotAFile(PathBuf),
    #[error("directory {0} holds no files (names starting with a dot are skipped)")]
    NoFiles(PathBuf),
    #[error("could not read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not UTF-8 text: invalid byte at offset {offset}")]
    InvalidUtf8 { path: String, offset: u64 },
    #[error("{path} is not UTF-8 text: it ends inside a character")]
    TruncatedUtf8 { path: String },
    #[error("{0}")]
    Empty(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tokenizer file {path}: {reason}")]
    TokenizerFile { path: PathBuf, reason: String },
    #[error("a vocabulary of {size} tokens is above the limit of {max}")]
    VocabularyTooLarge { size: usize, max: usize },
    #[error(
        "a byte-level BPE vocabulary must hold {min} to {max} tokens (its 256 bytes and the merges); asked for {requested}"
    )]
    BadVocabSize { requested: usize, min: usize, max: usize },
    #[error("character {ch:?} (U+{:04X}) at byte {offset} is not in the tokenizer's vocabulary", u32::from(*ch))]
    UnknownChar { ch: char, offset: u64 },
    #[error("token id {id} is not below the vocabulary size {vocab_size}")]
    UnknownId { id: u32, vocab_size: usize },
    #[error(
        "could not write the token cache in {dir}: {source} (set CROWDTRAIN_CACHE_DIR to a writable directory)"
    )]
    Cache { dir: PathBuf, source: std::io::Error },
    #[error("{tokens} tokens hold no sequence of context {context} (that takes {} tokens)", context + 1)]
    TooShort { tokens: usize, context: usize },
    #[error(
        "{train_tokens} training tokens support {supported} workers with batch {batch} and context {context} \
         (each shard needs {} tokens), not {workers}", batch + context
    )]
    TooManyWorkers { workers: usize, train_tokens: usize, batch: usize, context: usize, supported: usize },
}

#[cfg(test)]
mod tests;
