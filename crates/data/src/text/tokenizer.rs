//! Tokenizers: characters, and byte-level BPE trained on the corpus, both
//! in Hugging Face's `tokenizer.json` format.
//!
//! Every tokenizer is a [`tokenizers::Tokenizer`] underneath, so the file
//! we save is the one a Python user loads with `Tokenizer.from_file` and
//! gets the same ids from. Two kinds are ours, each with a fast path:
//!
//! - **Characters**: a `WordLevel` model over single characters behind a
//!   pre-tokenizer that splits every character (`[\s\S]`), and a `Fuse`
//!   decoder. Its vocabulary is the corpus's characters in code point
//!   order (nanoGPT's `sorted(set(text))`). A character outside it is an
//!   error, in Python too (the `<unk>` token it names is not in the
//!   vocabulary). We encode and decode with a lookup table, hundreds of
//!   times faster than the library.
//! - **Byte-level BPE** (GPT-2's scheme): the GPT-2 regex splits the text,
//!   bytes map to 256 printable characters, merges are learned by
//!   [`Tokenizer::train_bpe`]. Every byte is in the vocabulary, so any text
//!   encodes and decodes back to itself. No prefix space is added, so a
//!   text's tokens are the concatenation of its chunks' tokens. We split
//!   the text with the library's own compiled regex and merge each piece
//!   with the library's own BPE model, but skip its per-byte offset
//!   bookkeeping and merge each distinct piece once: 2.5x faster
//!   (`docs/BENCHMARKS.md`).
//!
//! Tests check both fast paths give the library's ids
//! ([`Tokenizer::encode_with_library`]). Any other `tokenizer.json` loads
//! too and is used through the library, with its truncation and padding
//! removed (they would cut the text short) and BPE dropout refused (it
//! makes tokenisation random).
//!
//! A tokenizer's identity is [`Tokenizer::hash`]: BLAKE3 of the library's
//! compact serialisation of it, which does not depend on the file's
//! formatting. Data fingerprints and token caches name it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::Trainer;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
#[cfg(test)]
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::utils::SysRegex;

use super::source::{TextChunks, TextSource};
use super::{Phase, Progress, TextError};

/// The largest vocabulary we accept: four times the largest in use in
/// 2026 (about 262,000). A tokenizer is untrusted input, and a model
/// allocates an embedding row per token.
pub const VOCAB_MAX: usize = 1 << 20;

/// The smallest byte-level BPE vocabulary: the 256 bytes.
pub const BPE_VOCAB_MIN: usize = 256;

/// A `tokenizer.json` larger than this is refused before it is read (a
/// 1M-token BPE vocabulary with its merges is about 40 MB).
pub const TOKENIZER_JSON_BYTES_MAX: u64 = 256 << 20;

/// The pre-tokenizer pattern of character tokenizers: every character.
const CHAR_PATTERN: &str = r"[\s\S]";
/// The unknown token a character tokenizer names and does not contain.
const CHAR_UNKNOWN: &str = "<unk>";

/// GPT-2's pre-tokenizer pattern, as the library's byte-level
/// pre-tokenizer compiles it.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const HASH_CONTEXT: &str = "crowdtrain 2026-12 tokenizer v1";

/// What kind of tokenizer a [`Tokenizer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// One token per character ([`Tokenizer::char_level`]).
    Char,
    /// GPT-2's byte-level BPE ([`Tokenizer::train_bpe`], or any
    /// `tokenizer.json` with a BPE model and byte-level pre-tokenizer and
    /// decoder).
    Bpe,
    /// Any other `tokenizer.json`.
    Other,
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Char => "char",
            Self::Bpe => "bpe",
            Self::Other => "other",
        })
    }
}

/// How a tokenizer encodes.
#[derive(Debug, Clone)]
enum FastPath {
    /// A character tokenizer: a table.
    Chars(Box<CharTable>),
    /// GPT-2's byte-level BPE with no prefix space, no normaliser and no
    /// added tokens: the library's regex and model without its offsets.
    ByteLevelBpe,
    /// The library's general path.
    Library,
}

/// A tokenizer: text to token ids and back.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    fast: FastPath,
    /// The canonical (compact) `tokenizer.json`.
    json: String,
    hash: [u8; 32],
    vocab_size: usize,
}

impl Tokenizer {
    /// A character tokenizer over `chars` (deduplicated), in code point
    /// order.
    pub fn char_level(chars: impl IntoIterator<Item = char>) -> Result<Self, TextError> {
        let mut chars: Vec<char> = chars.into_iter().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_json(&char_level_json(&chars)?)
    }

    /// The character tokenizer of `text`'s characters.
    pub fn char_level_of(text: &str) -> Result<Self, TextError> {
        Self::char_level(text.chars())
    }

    /// Trains GPT-2's byte-level BPE on `source` up to `vocab_size` tokens
    /// (256 bytes plus the merges; fewer if the text runs out of pairs to
    /// merge). Deterministic: the same text and size give the same
    /// `tokenizer.json`, byte for byte, at any thread count (the library
    /// breaks ties between equally frequent pairs by their token ids, and
    /// gives ids in byte order, then merge order). Reads the text once, in
    /// chunks; the memory it takes is that of the distinct words.
    pub fn train_bpe(
        source: &TextSource,
        vocab_size: usize,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Self, TextError> {
        if !(BPE_VOCAB_MIN..=VOCAB_MAX).contains(&vocab_size) {
            return Err(TextError::BadVocabSize {
                requested: vocab_size,
                min: BPE_VOCAB_MIN,
                max: VOCAB_MAX,
            });
        }
        let mut trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let failure = Mutex::new(None);
        let chunks = OwnedChunks { chunks: source.chunks()?, failure: &failure, progress };
        // The words the library's byte-level pre-tokenizer would give, three
        // times faster (the tests train both ways and compare the files).
        trainer
            .feed(chunks, |text| {
                let mut words = Vec::new();
                split_byte_level(text, |piece| {
                    words.push(byte_level_chars(piece));
                    Ok::<_, TextError>(())
                })?;
                Ok(words)
            })
            .map_err(|error| TextError::Tokenizer(error.to_string()))?;
        if let Some(error) = failure.into_inner().expect("not poisoned") {
            return Err(error);
        }
        let mut model = BPE::default();
        trainer.train(&mut model).map_err(|error| TextError::Tokenizer(error.to_string()))?;
        Self::from_inner(byte_level_bpe(model))
    }

    /// [`Self::train_bpe`] through the library's own training path: what
    /// it must agree with.
    #[cfg(test)]
    pub(crate) fn train_bpe_with_library(source: &TextSource, vocab_size: usize) -> Result<Self, TextError> {
        let mut tokenizer = byte_level_bpe(BPE::default());
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainer::builder()
                .vocab_size(vocab_size)
                .show_progress(false)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build(),
        );
        let failure = Mutex::new(None);
        let chunks = OwnedChunks { chunks: source.chunks()?, failure: &failure, progress: &|_| {} };
        tokenizer.train(&mut trainer, chunks).map_err(|error| TextError::Tokenizer(error.to_string()))?;
        Self::from_inner(tokenizer)
    }

    /// Parses a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self, TextError> {
        let inner: tokenizers::Tokenizer =
            json.parse().map_err(|error: tokenizers::Error| TextError::Tokenizer(error.to_string()))?;
        Self::from_inner(inner)
    }

    /// Reads a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self, TextError> {
        let io_error = |source| TextError::Io { path: path.to_owned(), source };
        let size = std::fs::metadata(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => TextError::Missing(path.to_owned()),
                _ => io_error(source),
            })?
            .len();
        if size > TOKENIZER_JSON_BYTES_MAX {
            return Err(TextError::TokenizerFile {
                path: path.to_owned(),
                reason: format!("{size} bytes, above the limit of {TOKENIZER_JSON_BYTES_MAX}"),
            });
        }
        let json = std::fs::read_to_string(path).map_err(io_error)?;
        Self::from_json(&json)
            .map_err(|error| TextError::TokenizerFile { path: path.to_owned(), reason: error.to_string() })
    }

    /// Writes the `tokenizer.json` (indented for people; it loads to the
    /// same tokenizer, with the same hash, as the compact form).
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        let pretty = self.inner.to_string(true).map_err(|error| TextError::Tokenizer(error.to_string()))?;
        std::fs::write(path, pretty + "\n").map_err(|source| TextError::Io { path: path.to_owned(), source })
    }

    fn from_inner(mut inner: tokenizers::Tokenizer) -> Result<Self, TextError> {
        // Truncation and padding shape model inputs at inference; here
        // they would cut every chunk of text short.
        inner.with_truncation(None).map_err(|error| TextError::Tokenizer(error.to_string()))?;
        inner.with_padding(None);
        if let ModelWrapper::BPE(bpe) = inner.get_model()
            && bpe.dropout.is_some_and(|dropout| dropout > 0.0)
        {
            return Err(TextError::Tokenizer(
                "BPE dropout makes tokenisation random, and every worker must get the same tokens; \
                 set \"dropout\" to null"
                    .to_owned(),
            ));
        }
        let vocab_size = checked_vocab_size(&inner)?;
        let json = inner.to_string(false).map_err(|error| TextError::Tokenizer(error.to_string()))?;
        let fast = match char_table(&inner, &json)? {
            Some(table) => FastPath::Chars(Box::new(table)),
            None if is_plain_byte_level_bpe(&inner) => FastPath::ByteLevelBpe,
            None => FastPath::Library,
        };
        let kind = match fast {
            FastPath::Chars(_) => TokenizerKind::Char,
            _ if is_byte_level_bpe(&inner) => TokenizerKind::Bpe,
            _ => TokenizerKind::Other,
        };
        let hash =
            *blake3::Hasher::new_derive_key(HASH_CONTEXT).update(json.as_bytes()).finalize().as_bytes();
        Ok(Self { inner, kind, fast, json, hash, vocab_size })
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Token ids are below this: the rows of a model's embedding.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// BLAKE3 of the canonical `tokenizer.json`.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The canonical (compact) `tokenizer.json`.
    pub fn to_json(&self) -> &str {
        &self.json
    }

    /// The library's tokenizer, for anything this type does not offer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids)?;
        Ok(ids)
    }

    /// Appends the ids of `text` to `ids`.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TextError> {
        match (&self.fast, self.inner.get_model()) {
            (FastPath::Chars(table), _) => table.encode_into(text, ids),
            (FastPath::ByteLevelBpe, ModelWrapper::BPE(model)) => encode_byte_level_bpe(model, text, ids),
            _ => self.encode_with_library(text, ids),
        }
    }

    /// [`Self::encode_into`] through the library's general path, whatever
    /// the tokenizer: what the fast paths must agree with.
    pub fn encode_with_library(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TextError> {
        let encoding =
            self.inner.encode_fast(text, false).map_err(|error| TextError::Tokenizer(error.to_string()))?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// The text of `ids`. Byte-level tokens that do not end a UTF-8
    /// character decode to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TextError::UnknownId { id, vocab_size: self.vocab_size });
        }
        match &self.fast {
            FastPath::Chars(table) => Ok(ids.iter().map(|&id| table.by_id[id as usize]).collect()),
            _ => self.inner.decode(ids, false).map_err(|error| TextError::Tokenizer(error.to_string())),
        }
    }
}

impl std::fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            TokenizerKind::Char => write!(f, "char ({} symbols)", self.vocab_size),
            TokenizerKind::Bpe => write!(f, "byte-level BPE ({} tokens)", self.vocab_size),
            TokenizerKind::Other => write!(f, "tokenizer.json ({} tokens)", self.vocab_size),
        }
    }
}

/// GPT-2's byte-level BPE around `model`, without a prefix space.
fn byte_level_bpe(model: BPE) -> tokenizers::Tokenizer {
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(byte_level()));
    tokenizer.with_decoder(Some(byte_level()));
    tokenizer
}

fn byte_level() -> ByteLevel {
    // No prefix space: it would make a text's tokens depend on where it
    // was cut into chunks, and decoding would not give the text back.
    ByteLevel::new(false, true, true)
}

fn is_byte_level_bpe(inner: &tokenizers::Tokenizer) -> bool {
    matches!(inner.get_model(), ModelWrapper::BPE(_))
        && matches!(inner.get_pre_tokenizer(), Some(PreTokenizerWrapper::ByteLevel(_)))
        && matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)))
}

/// Whether the library would encode with exactly GPT-2's byte-level steps:
/// no normaliser, no added tokens, the byte-level pre-tokenizer with its
/// regex and no prefix space, a BPE model, and a post-processor that adds
/// nothing.
fn is_plain_byte_level_bpe(inner: &tokenizers::Tokenizer) -> bool {
    matches!(inner.get_model(), ModelWrapper::BPE(_))
        && inner.get_normalizer().is_none()
        && inner.get_added_tokens_decoder().is_empty()
        && matches!(
            inner.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::ByteLevel(level)) if !level.add_prefix_space && level.use_regex
        )
        && matches!(inner.get_post_processor(), None | Some(PostProcessorWrapper::ByteLevel(_)))
}

static GPT2_SPLIT: LazyLock<SysRegex> =
    LazyLock::new(|| SysRegex::new(GPT2_PATTERN).expect("GPT-2's pattern compiles"));

/// GPT-2's map from bytes to printable characters: printable Latin-1
/// bytes map to themselves, the other 68 to U+0100 onwards, in byte order.
static BYTE_CHARS: LazyLock<[char; 256]> = LazyLock::new(|| {
    let printable = |byte: u8| matches!(byte, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut chars = ['\0'; 256];
    let mut next = 0x100;
    for byte in 0..=255u8 {
        chars[usize::from(byte)] = if printable(byte) {
            char::from(byte)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    chars
});

/// Hands `visit` the pieces GPT-2's regex cuts `text` into, in order
/// (text between two matches is a piece too, as in the library).
fn split_byte_level<'t, E>(text: &'t str, mut visit: impl FnMut(&'t str) -> Result<(), E>) -> Result<(), E> {
    let mut previous = 0;
    for (start, end) in GPT2_SPLIT.find_iter(text) {
        if previous != start {
            visit(&text[previous..start])?;
        }
        visit(&text[start..end])?;
        previous = end;
    }
    if previous != text.len() {
        visit(&text[previous..])?;
    }
    Ok(())
}

/// A piece's bytes as GPT-2's printable characters.
fn byte_level_chars(piece: &str) -> String {
    piece.bytes().map(|byte| BYTE_CHARS[usize::from(byte)]).collect()
}

/// Byte-level BPE without the library's offset bookkeeping: the library's
/// regex and model, each distinct piece merged once.
fn encode_byte_level_bpe(model: &BPE, text: &str, ids: &mut Vec<u32>) -> Result<(), TextError> {
    let mut known = HashMap::new();
    let mut mapped = String::new();
    split_byte_level(text, |piece| encode_piece(model, piece, &mut known, &mut mapped, ids))
}

/// One piece of [`encode_byte_level_bpe`]: copied from where it was first
/// encoded (`known`), else merged by the model.
fn encode_piece<'t>(
    model: &BPE,
    piece: &'t str,
    known: &mut HashMap<&'t str, Range<usize>>,
    mapped: &mut String,
    ids: &mut Vec<u32>,
) -> Result<(), TextError> {
    use tokenizers::Model;
    if let Some(range) = known.get(piece) {
        ids.extend_from_within(range.clone());
        return Ok(());
    }
    mapped.clear();
    mapped.extend(piece.bytes().map(|byte| BYTE_CHARS[usize::from(byte)]));
    let start = ids.len();
    let tokens = model.tokenize(mapped).map_err(|error| TextError::Tokenizer(error.to_string()))?;
    ids.extend(tokens.iter().map(|token| token.id));
    known.insert(piece, start..ids.len());
    Ok(())
}

/// The vocabulary's size, checked: ids `0..n` with no gaps (the library
/// prints to stdout when it saves one with gaps), at most [`VOCAB_MAX`].
fn checked_vocab_size(inner: &tokenizers::Tokenizer) -> Result<usize, TextError> {
    let vocab = inner.get_vocab(true);
    let size = vocab.len();
    if size == 0 {
        return Err(TextError::Tokenizer("the vocabulary is empty".to_owned()));
    }
    if size > VOCAB_MAX {
        return Err(TextError::VocabularyTooLarge { size, max: VOCAB_MAX });
    }
    let mut seen = vec![false; size];
    for &id in vocab.values() {
        match seen.get_mut(id as usize) {
            Some(slot) if !*slot => *slot = true,
            _ => {
                return Err(TextError::Tokenizer(format!(
                    "token ids must be 0..{size} with no gaps or repeats; found id {id}"
                )));
            }
        }
    }
    Ok(size)
}

/// The `tokenizer.json` of a character tokenizer with `chars` as ids
/// `0..n`, in the library's canonical form.
fn char_level_json(chars: &[char]) -> Result<String, TextError> {
    if chars.is_empty() {
        return Err(TextError::Tokenizer("a character tokenizer needs at least one character".to_owned()));
    }
    if chars.len() > VOCAB_MAX {
        return Err(TextError::VocabularyTooLarge { size: chars.len(), max: VOCAB_MAX });
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        chars.iter().enumerate().map(|(id, ch)| (ch.to_string(), json!(id))).collect();
    let value = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": CHAR_PATTERN}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": CHAR_UNKNOWN},
    });
    let inner: tokenizers::Tokenizer = value
        .to_string()
        .parse()
        .map_err(|error: tokenizers::Error| TextError::Tokenizer(error.to_string()))?;
    inner.to_string(false).map_err(|error| TextError::Tokenizer(error.to_string()))
}

/// The lookup table of a character tokenizer, if `inner` is exactly one
/// (its canonical JSON is the one [`char_level_json`] builds from its
/// vocabulary).
fn char_table(inner: &tokenizers::Tokenizer, json: &str) -> Result<Option<CharTable>, TextError> {
    let ModelWrapper::WordLevel(_) = inner.get_model() else {
        return Ok(None);
    };
    let mut vocab: Vec<(String, u32)> = inner.get_vocab(true).into_iter().collect();
    vocab.sort_unstable_by_key(|&(_, id)| id);
    let mut by_id = Vec::with_capacity(vocab.len());
    for (token, _) in &vocab {
        let mut chars = token.chars();
        match (chars.next(), chars.next()) {
            (Some(ch), None) => by_id.push(ch),
            _ => return Ok(None),
        }
    }
    if char_level_json(&by_id)? != json {
        return Ok(None);
    }
    Ok(Some(CharTable::new(by_id)))
}

/// Characters to ids and back without the library: an array for ASCII, a
/// sorted list for the rest.
#[derive(Debug, Clone)]
struct CharTable {
    ascii: [u32; 128],
    /// (character, id) for characters beyond ASCII, by character.
    other: Vec<(char, u32)>,
    by_id: Vec<char>,
}

impl CharTable {
    const ABSENT: u32 = u32::MAX;

    fn new(by_id: Vec<char>) -> Self {
        let mut ascii = [Self::ABSENT; 128];
        let mut other = Vec::new();
        for (id, &ch) in by_id.iter().enumerate() {
            if ch.is_ascii() {
                ascii[ch as usize] = id as u32;
            } else {
                other.push((ch, id as u32));
            }
        }
        other.sort_unstable();
        Self { ascii, other, by_id }
    }

    fn encode_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TextError> {
        ids.reserve(text.len());
        let unknown = |ch: char, offset: usize| TextError::UnknownChar { ch, offset: offset as u64 };
        let bytes = text.as_bytes();
        let mut offset = 0;
        while offset < bytes.len() {
            let byte = bytes[offset];
            if byte.is_ascii() {
                let id = self.ascii[usize::from(byte)];
                if id == Self::ABSENT {
                    return Err(unknown(char::from(byte), offset));
                }
                ids.push(id);
                offset += 1;
            } else {
                let ch = text[offset..].chars().next().expect("a character starts here");
                let at =
                    self.other.binary_search_by_key(&ch, |&(ch, _)| ch).map_err(|_| unknown(ch, offset))?;
                ids.push(self.other[at].1);
                offset += ch.len_utf8();
            }
        }
        Ok(())
    }
}

/// A text source's chunks as owned strings, the library's trainer input;
/// a read error ends the stream and is kept for the caller.
struct OwnedChunks<'a> {
    chunks: TextChunks,
    failure: &'a Mutex<Option<TextError>>,
    progress: &'a (dyn Fn(Progress) + Sync),
}

impl Iterator for OwnedChunks<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let chunk = match self.chunks.next_chunk() {
            Ok(Some(chunk)) => chunk.to_owned(),
            Ok(None) => return None,
            Err(error) => {
                *self.failure.lock().expect("not poisoned") = Some(error);
                return None;
            }
        };
        (self.progress)(Progress {
            phase: Phase::Training,
            done: self.chunks.input_bytes_read(),
            total: self.chunks.total_input_bytes(),
        });
        Some(chunk)
    }
}
