//! A tokenised text with its tokenizer, its train/validation split and its
//! fingerprint.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::source::{TextSource, corpus_name, hex_digest};
use super::tokenizer::Tokenizer;
use super::tokens::{CacheStatus, TextSummary, TokenStore, Tokens, tokenize_cached, tokenize_to_memory};
use super::{Phase, Progress, TextError, TokenizerKind};

/// Which tokenizer a text dataset uses; as a string (`run.toml`, flags)
/// `char` or a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TokenizerSpec {
    /// One token per character of the text, in code point order.
    Char,
    /// A `tokenizer.json` file (from `crowdtrain tokenizer train`, or any
    /// Hugging Face tokenizer).
    File(PathBuf),
}

impl TokenizerSpec {
    /// The tokenizer itself: the file read, or `source`'s characters found
    /// (one pass over the text).
    pub fn build(
        &self,
        source: &TextSource,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Tokenizer, TextError> {
        match self {
            Self::Char => Tokenizer::char_level(summarize(source, true, progress)?.1),
            Self::File(path) => Tokenizer::load(path),
        }
    }
}

impl FromStr for TokenizerSpec {
    type Err = std::convert::Infallible;

    /// `char`, or the path of a `tokenizer.json` (`./char` for a file
    /// called `char`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(if text == "char" { Self::Char } else { Self::File(PathBuf::from(text)) })
    }
}

impl From<String> for TokenizerSpec {
    fn from(text: String) -> Self {
        match text.parse() {
            Ok(spec) => spec,
            Err(never) => match never {},
        }
    }
}

impl From<TokenizerSpec> for String {
    fn from(spec: TokenizerSpec) -> Self {
        spec.to_string()
    }
}

impl std::fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Char => f.write_str("char"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The share of the tokens held out for validation: the last tenth.
///
/// The last tenth, not blocks scattered by the seed: the split is then
/// the same for every seed and run, so validation losses compare across
/// runs; it is nanoGPT's (`n * 9 // 10`), so a PyTorch baseline splits
/// identically; the training tokens are one contiguous range that shards
/// cut into contiguous ranges; and no training window overlaps a
/// validation window. On the bundled corpus the last tenth is most of The
/// Tempest, a play no worker trains on: validation measures generalisation,
/// not recall.
pub const VALIDATION_TENTHS: usize = 1;

/// Where the training tokens end and validation begins: `n * 9 / 10`.
pub fn split_point(tokens: usize) -> usize {
    (tokens as u128 * (10 - VALIDATION_TENTHS) as u128 / 10) as usize
}

/// Which text a run used, as every command reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextDatasetInfo {
    /// `shakespeare-subset` (the bundled corpus, wherever it was read
    /// from), `shakespeare` (the installed corpus), else `text`.
    pub name: String,
    /// The file or directory, or `bundled`.
    pub source: String,
    pub text_bytes: u64,
    pub text_chars: u64,
    /// `char`, `bpe` or `other`.
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub tokens: usize,
    pub train_tokens: usize,
    pub validation_tokens: usize,
    /// BLAKE3 of the text, hex.
    pub text_hash: String,
    /// What the token cache did.
    pub cache: CacheStatus,
}

impl std::fmt::Display for TextDatasetInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} characters from {}; {} tokenizer, vocabulary {}; {} tokens: {} training, {} validation",
            self.name,
            self.text_chars,
            self.source,
            self.tokenizer,
            self.vocab_size,
            self.tokens,
            self.train_tokens,
            self.validation_tokens
        )?;
        match &self.cache {
            CacheStatus::Unused => f.write_str(")"),
            CacheStatus::Built => f.write_str("; tokenised and cached)"),
            CacheStatus::Reused => f.write_str("; from the token cache)"),
            CacheStatus::Rebuilt { reason } => write!(f, "; cache rebuilt: {reason})"),
        }
    }
}

/// A text, tokenised: the tokens (in memory or memory-mapped), the
/// tokenizer, the split, and what workers must agree on.
#[derive(Debug)]
pub struct TextDataset {
    pub info: TextDatasetInfo,
    tokenizer: Tokenizer,
    store: TokenStore,
    split: usize,
    fingerprint: [u8; 32],
}

const FINGERPRINT_CONTEXT: &str = "crowdtrain 2026-12 text dataset v1";

impl TextDataset {
    /// Reads `source`, builds or loads the tokenizer, and tokenises the
    /// text, streaming it in chunks.
    ///
    /// With a `cache` directory the tokens go to a token file there (or
    /// come from one built earlier for the same text and tokenizer) and
    /// are memory-mapped; without, they are held in memory (right for the
    /// bundled corpus and tests, not for gigabytes). The text is read once
    /// to hash it (and find its characters, for [`TokenizerSpec::Char`]),
    /// and once more only if it has to be tokenised.
    pub fn load(
        source: &TextSource,
        tokenizer: &TokenizerSpec,
        cache: Option<&Path>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Self, TextError> {
        let wants_chars = *tokenizer == TokenizerSpec::Char;
        let (summary, chars) = summarize(source, wants_chars, progress)?;
        let tokenizer = match tokenizer {
            TokenizerSpec::Char => Tokenizer::char_level(chars)?,
            TokenizerSpec::File(path) => Tokenizer::load(path)?,
        };
        Self::tokenize(source, &summary, tokenizer, cache, progress)
    }

    /// [`Self::load`] with a tokenizer already in hand (from a checkpoint,
    /// or one just trained).
    pub fn load_with(
        source: &TextSource,
        tokenizer: Tokenizer,
        cache: Option<&Path>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Self, TextError> {
        let (summary, _) = summarize(source, false, progress)?;
        Self::tokenize(source, &summary, tokenizer, cache, progress)
    }

    fn tokenize(
        source: &TextSource,
        summary: &TextSummary,
        tokenizer: Tokenizer,
        cache: Option<&Path>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Self, TextError> {
        let store = match cache {
            Some(dir) => tokenize_cached(source, summary, &tokenizer, dir, progress)?,
            None => tokenize_to_memory(source, &tokenizer, progress)?,
        };
        if store.is_empty() {
            return Err(TextError::Empty(format!("{} gives no tokens with {tokenizer}", source.describe())));
        }
        let tokens = store.len();
        let split = split_point(tokens);
        let info = TextDatasetInfo {
            name: corpus_name(&summary.hash).to_owned(),
            source: source.describe(),
            text_bytes: summary.bytes,
            text_chars: summary.chars,
            tokenizer: tokenizer.kind(),
            vocab_size: tokenizer.vocab_size(),
            tokens,
            train_tokens: split,
            validation_tokens: tokens - split,
            text_hash: hex_digest(&summary.hash),
            cache: store.cache().clone(),
        };
        let fingerprint = fingerprint(&tokenizer, &store, split);
        Ok(Self { info, tokenizer, store, split, fingerprint })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Every token of the text.
    pub fn tokens(&self) -> Tokens<'_> {
        self.store.tokens()
    }

    /// The first nine tenths ([`split_point`]): what shards divide.
    pub fn train(&self) -> Tokens<'_> {
        self.tokens().slice(0..self.split)
    }

    /// The last tenth: evaluation batches and the final validation loss.
    pub fn validation(&self) -> Tokens<'_> {
        let tokens = self.tokens();
        tokens.slice(self.split..tokens.len())
    }

    /// The token file the tokens are mapped from, if any.
    pub fn token_file(&self) -> Option<&Path> {
        self.store.path()
    }

    /// What workers must agree on before training together: BLAKE3 over
    /// the tokenizer's hash, the token width and count, the hash of every
    /// token, and the split. Equal fingerprints mean equal batches for
    /// equal keys.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

fn fingerprint(tokenizer: &Tokenizer, store: &TokenStore, split: usize) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(FINGERPRINT_CONTEXT);
    hasher.update(&tokenizer.hash());
    hasher.update(&[store.tokens().width().bytes() as u8]);
    hasher.update(&(store.len() as u64).to_le_bytes());
    hasher.update(&store.hash());
    hasher.update(&(split as u64).to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The first pass: the text's hash, size and character count (and its
/// distinct characters if asked), checking it is UTF-8 and not empty.
fn summarize(
    source: &TextSource,
    collect_chars: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(TextSummary, Vec<char>), TextError> {
    let mut chunks = source.chunks()?;
    let total = chunks.total_input_bytes();
    let mut hasher = blake3::Hasher::new();
    let mut chars = 0u64;
    let mut ascii = [false; 128];
    let mut other = std::collections::BTreeSet::new();
    while let Some(chunk) = chunks.next_chunk()? {
        hasher.update_rayon(chunk.as_bytes());
        // Every byte that does not continue a character starts one.
        chars += chunk.bytes().filter(|&byte| byte & 0xc0 != 0x80).count() as u64;
        if collect_chars {
            for &byte in chunk.as_bytes().iter().filter(|byte| byte.is_ascii()) {
                ascii[usize::from(byte)] = true;
            }
            if !chunk.is_ascii() {
                other.extend(chunk.chars().filter(|ch| !ch.is_ascii()));
            }
        }
        progress(Progress { phase: Phase::Reading, done: chunks.input_bytes_read(), total });
    }
    let bytes = chunks.text_bytes();
    if bytes == 0 {
        return Err(TextError::Empty(format!("{} holds no text", source.describe())));
    }
    let distinct = (0u8..128).filter(|&byte| ascii[usize::from(byte)]).map(char::from).chain(other).collect();
    Ok((TextSummary { hash: *hasher.finalize().as_bytes(), bytes, chars }, distinct))
}
