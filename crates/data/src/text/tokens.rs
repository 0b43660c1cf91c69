//! Token streams: in memory, or in a binary token file that is built once,
//! cached, and memory-mapped.
//!
//! A token file is the tokens as little-endian `u16` (when every id fits)
//! or `u32`, nothing else: nanoGPT's `train.bin` layout, which NumPy opens
//! with `np.memmap(path, dtype=np.uint16)`. Beside it, a small JSON file
//! says what it holds: the width, the count, BLAKE3 of the token bytes,
//! and the hashes of the text and tokenizer it came from.
//!
//! Cache entries are named by the hash of (text, tokenizer), so a changed
//! text or tokenizer never finds a stale entry, and an entry whose
//! metadata or tokens disagree with that name (a stale or damaged one) is
//! rebuilt. Files are written under temporary names, synced and renamed
//! into place, tokens before metadata: a reader sees a whole entry or
//! none, and processes building the same entry at once both succeed.
//! Entries are never modified in place, so a mapped file never changes
//! under its reader.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::source::{TextSource, hex_digest};
use super::tokenizer::Tokenizer;
use super::{Phase, Progress, TextError};

/// How token ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    /// `u16` when every id of a vocabulary of `vocab_size` fits, else `u32`.
    pub fn for_vocab(vocab_size: usize) -> Result<Self, TextError> {
        if vocab_size <= 1 << 16 {
            Ok(Self::U16)
        } else if vocab_size as u64 <= 1 << 32 {
            Ok(Self::U32)
        } else {
            Err(TextError::VocabularyTooLarge { size: vocab_size, max: 1 << 32 })
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    fn push(self, id: u32, out: &mut Vec<u8>) {
        match self {
            Self::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            Self::U32 => out.extend_from_slice(&id.to_le_bytes()),
        }
    }
}

/// A view of a token stream (all of it, a split, or a shard): cheap to
/// copy, reading ids as `u32` whatever their stored width.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    bytes: &'a [u8],
    width: TokenWidth,
}

impl<'a> Tokens<'a> {
    /// A view of stored token bytes.
    pub fn new(bytes: &'a [u8], width: TokenWidth) -> Self {
        assert_eq!(bytes.len() % width.bytes(), 0, "a whole number of tokens");
        Self { bytes, width }
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / self.width.bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn width(&self) -> TokenWidth {
        self.width
    }

    /// Token `index`.
    pub fn get(&self, index: usize) -> u32 {
        match self.width {
            TokenWidth::U16 => {
                u32::from(u16::from_le_bytes([self.bytes[2 * index], self.bytes[2 * index + 1]]))
            }
            TokenWidth::U32 => {
                let at = 4 * index;
                u32::from_le_bytes(self.bytes[at..at + 4].try_into().expect("four bytes"))
            }
        }
    }

    /// The tokens in `range`.
    pub fn slice(&self, range: Range<usize>) -> Tokens<'a> {
        let size = self.width.bytes();
        assert!(range.start <= range.end && range.end <= self.len(), "{range:?} of {} tokens", self.len());
        Tokens { bytes: &self.bytes[range.start * size..range.end * size], width: self.width }
    }

    /// Appends the tokens to `out`.
    pub fn extend_into(&self, out: &mut Vec<u32>) {
        match self.width {
            TokenWidth::U16 => {
                out.extend(
                    self.bytes.chunks_exact(2).map(|pair| u32::from(u16::from_le_bytes([pair[0], pair[1]]))),
                );
            }
            TokenWidth::U32 => {
                out.extend(
                    self.bytes
                        .chunks_exact(4)
                        .map(|four| u32::from_le_bytes(four.try_into().expect("four bytes"))),
                );
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_into(&mut out);
        out
    }

    /// The stored bytes (little-endian ids of [`Self::width`]).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The tokens of a whole text, held in memory or mapped from a cache file.
#[derive(Debug)]
pub struct TokenStore {
    storage: Storage,
    width: TokenWidth,
    /// BLAKE3 (derive-key mode) of the stored bytes.
    hash: [u8; 32],
    cache: CacheStatus,
}

#[derive(Debug)]
enum Storage {
    Memory(Vec<u8>),
    Mapped { map: memmap2::Mmap, path: PathBuf },
}

/// What the token cache did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum CacheStatus {
    /// No cache: the tokens are in memory.
    Unused,
    /// The text was tokenised and the cache entry written.
    Built,
    /// An entry was found, checked and used: nothing was tokenised.
    Reused,
    /// An entry was found but was stale or damaged, and was rebuilt.
    Rebuilt { reason: String },
}

impl TokenStore {
    pub fn tokens(&self) -> Tokens<'_> {
        let bytes = match &self.storage {
            Storage::Memory(bytes) => bytes.as_slice(),
            Storage::Mapped { map, .. } => map,
        };
        Tokens { bytes, width: self.width }
    }

    pub fn len(&self) -> usize {
        self.tokens().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// BLAKE3 of the token bytes, computed as they were written and checked
    /// whenever a cache entry is opened.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    pub fn cache(&self) -> &CacheStatus {
        &self.cache
    }

    /// The token file, if the tokens are mapped from one.
    pub fn path(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Memory(_) => None,
            Storage::Mapped { path, .. } => Some(path),
        }
    }
}

const TOKENS_HASH_CONTEXT: &str = "crowdtrain 2026-12 token bytes v1";
const CACHE_KEY_CONTEXT: &str = "crowdtrain 2026-12 token cache v1";
const CACHE_FORMAT: &str = "crowdtrain-tokens/1";
/// Metadata files are tiny; a larger one is not ours.
const METADATA_BYTES_MAX: u64 = 64 << 10;

fn tokens_hasher() -> blake3::Hasher {
    blake3::Hasher::new_derive_key(TOKENS_HASH_CONTEXT)
}

/// What a text was, as the first pass over it found.
#[derive(Debug, Clone)]
pub(crate) struct TextSummary {
    pub hash: [u8; 32],
    pub bytes: u64,
    pub chars: u64,
}

/// A token file's metadata (`<key>.json` beside `<key>.tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFileMeta {
    pub format: String,
    pub width: TokenWidth,
    pub tokens: u64,
    /// BLAKE3 (derive-key mode) of the token bytes, hex.
    pub tokens_hash: String,
    /// BLAKE3 of the text, hex.
    pub text_hash: String,
    pub text_bytes: u64,
    pub text_chars: u64,
    pub tokenizer_hash: String,
    pub vocab_size: usize,
    /// Where the text was read from when the entry was built (information only).
    pub source: String,
}

/// Tokenises `source` into memory.
pub(crate) fn tokenize_to_memory(
    source: &TextSource,
    tokenizer: &Tokenizer,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<TokenStore, TextError> {
    let width = TokenWidth::for_vocab(tokenizer.vocab_size())?;
    let mut bytes = Vec::new();
    let mut hasher = tokens_hasher();
    tokenize_stream(source, tokenizer, width, progress, &mut |encoded: &[u8]| {
        hasher.update(encoded);
        bytes.extend_from_slice(encoded);
        Ok(())
    })?;
    Ok(TokenStore {
        storage: Storage::Memory(bytes),
        width,
        hash: *hasher.finalize().as_bytes(),
        cache: CacheStatus::Unused,
    })
}

/// The cache entry of (`text`, `tokenizer`) in `dir`, reused if whole and
/// matching, else (re)built.
pub(crate) fn tokenize_cached(
    source: &TextSource,
    text: &TextSummary,
    tokenizer: &Tokenizer,
    dir: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<TokenStore, TextError> {
    let width = TokenWidth::for_vocab(tokenizer.vocab_size())?;
    let key = {
        let mut hasher = blake3::Hasher::new_derive_key(CACHE_KEY_CONTEXT);
        hasher.update(&text.hash).update(&tokenizer.hash());
        hex_digest(hasher.finalize().as_bytes())
    };
    let tokens_path = dir.join(format!("{key}.tokens"));
    let meta_path = dir.join(format!("{key}.json"));
    let expected = |tokens: u64, tokens_hash: &[u8; 32]| TokenFileMeta {
        format: CACHE_FORMAT.to_owned(),
        width,
        tokens,
        tokens_hash: hex_digest(tokens_hash),
        text_hash: hex_digest(&text.hash),
        text_bytes: text.bytes,
        text_chars: text.chars,
        tokenizer_hash: hex_digest(&tokenizer.hash()),
        vocab_size: tokenizer.vocab_size(),
        source: source.describe(),
    };

    let rebuild_reason = match open_entry(&tokens_path, &meta_path, progress) {
        Ok(None) => None,
        Ok(Some((map, meta, hash))) => {
            let wanted = expected(meta.tokens, &hash);
            let matches = TokenFileMeta { source: String::new(), ..meta.clone() }
                == TokenFileMeta { source: String::new(), ..wanted };
            if matches {
                return Ok(TokenStore {
                    storage: Storage::Mapped { map, path: tokens_path },
                    width,
                    hash,
                    cache: CacheStatus::Reused,
                });
            }
            Some(format!("its metadata {} does not describe this text and tokenizer", meta_path.display()))
        }
        Err(reason) => Some(reason),
    };

    std::fs::create_dir_all(dir).map_err(|source| cache_error(dir, source))?;
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{key}."))
        .suffix(".tokens.partial")
        .tempfile_in(dir)
        .map_err(|source| cache_error(dir, source))?;
    let mut hasher = tokens_hasher();
    let mut count = 0u64;
    {
        let mut writer = BufWriter::with_capacity(1 << 20, file.as_file_mut());
        tokenize_stream(source, tokenizer, width, progress, &mut |encoded: &[u8]| {
            hasher.update(encoded);
            count += (encoded.len() / width.bytes()) as u64;
            writer.write_all(encoded).map_err(|source| cache_error(dir, source))
        })?;
        writer.flush().map_err(|source| cache_error(dir, source))?;
    }
    if count == 0 {
        return Err(TextError::Empty(format!("{} gives no tokens with {tokenizer}", source.describe())));
    }
    let hash = *hasher.finalize().as_bytes();
    file.as_file().sync_all().map_err(|source| cache_error(dir, source))?;
    file.persist(&tokens_path).map_err(|error| cache_error(dir, error.error))?;

    let meta = expected(count, &hash);
    let mut meta_file = tempfile::Builder::new()
        .prefix(&format!(".{key}."))
        .suffix(".json.partial")
        .tempfile_in(dir)
        .map_err(|source| cache_error(dir, source))?;
    serde_json::to_writer_pretty(meta_file.as_file_mut(), &meta)
        .map_err(|error| cache_error(dir, error.into()))?;
    meta_file.as_file().sync_all().map_err(|source| cache_error(dir, source))?;
    meta_file.persist(&meta_path).map_err(|error| cache_error(dir, error.error))?;
    if let Ok(directory) = File::open(dir) {
        let _ = directory.sync_all();
    }

    let map = map_file(&tokens_path)?;
    Ok(TokenStore {
        storage: Storage::Mapped { map, path: tokens_path },
        width,
        hash,
        cache: match rebuild_reason {
            None => CacheStatus::Built,
            Some(reason) => CacheStatus::Rebuilt { reason },
        },
    })
}

fn cache_error(dir: &Path, source: std::io::Error) -> TextError {
    TextError::Cache { dir: dir.to_owned(), source }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, TextError> {
    let file = File::open(path).map_err(|source| TextError::Io { path: path.to_owned(), source })?;
    if file.metadata().map_err(|source| TextError::Io { path: path.to_owned(), source })?.len() == 0 {
        // An empty mapping is an error on some systems; no text is empty.
        return Err(TextError::Io {
            path: path.to_owned(),
            source: std::io::Error::other("empty token file"),
        });
    }
    // SAFETY: cache files are written once under a temporary name and
    // renamed into place, never modified afterwards; a rebuild replaces
    // the name, not the mapped file's contents.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| TextError::Io { path: path.to_owned(), source })
}

/// An existing entry, its metadata and the hash of its token bytes: `None`
/// if there is no entry, `Err(reason)` if there is a damaged one.
fn open_entry(
    tokens_path: &Path,
    meta_path: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Option<(memmap2::Mmap, TokenFileMeta, [u8; 32])>, String> {
    let meta_size = match std::fs::metadata(meta_path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{} is unreadable: {error}", meta_path.display())),
    };
    if meta_size > METADATA_BYTES_MAX {
        return Err(format!("{} is {meta_size} bytes, not token metadata", meta_path.display()));
    }
    let meta: TokenFileMeta = std::fs::read(meta_path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
        .map_err(|error| format!("{} is not token metadata: {error}", meta_path.display()))?;
    if meta.format != CACHE_FORMAT {
        return Err(format!(
            "{} has format {:?}, expected {CACHE_FORMAT:?}",
            meta_path.display(),
            meta.format
        ));
    }
    let map = map_file(tokens_path).map_err(|error| error.to_string())?;
    let expected_bytes = meta.tokens.checked_mul(meta.width.bytes() as u64);
    if expected_bytes != Some(map.len() as u64) {
        return Err(format!(
            "{} holds {} bytes; its metadata says {} tokens of {} bytes",
            tokens_path.display(),
            map.len(),
            meta.tokens,
            meta.width.bytes()
        ));
    }
    let hash = hash_mapped(&map, progress);
    if hex_digest(&hash) != meta.tokens_hash {
        return Err(format!("{} does not hash to the value its metadata records", tokens_path.display()));
    }
    Ok(Some((map, meta, hash)))
}

/// Hashes a mapped token file in 64 MiB steps (with rayon inside each),
/// reporting progress.
fn hash_mapped(bytes: &[u8], progress: &(dyn Fn(Progress) + Sync)) -> [u8; 32] {
    const STEP: usize = 64 << 20;
    let mut hasher = tokens_hasher();
    let mut done = 0;
    for piece in bytes.chunks(STEP) {
        hasher.update_rayon(piece);
        done += piece.len();
        progress(Progress { phase: Phase::Verifying, done: done as u64, total: bytes.len() as u64 });
    }
    *hasher.finalize().as_bytes()
}

/// How many chunks are tokenised in parallel, per thread.
const CHUNKS_PER_THREAD: usize = 2;

/// Tokenises `source` chunk by chunk, handing each chunk's encoded ids to
/// `sink` in text order. Character tokenizers run on one thread (a table
/// lookup outruns reading); others tokenise groups of chunks in parallel.
fn tokenize_stream(
    source: &TextSource,
    tokenizer: &Tokenizer,
    width: TokenWidth,
    progress: &(dyn Fn(Progress) + Sync),
    sink: &mut dyn FnMut(&[u8]) -> Result<(), TextError>,
) -> Result<(), TextError> {
    use rayon::prelude::*;
    let mut chunks = source.chunks()?;
    let total = chunks.total_input_bytes();
    let report = |chunks: &super::source::TextChunks| {
        progress(Progress { phase: Phase::Tokenizing, done: chunks.input_bytes_read(), total });
    };
    let encode = |text: &str| -> Result<Vec<u8>, TextError> {
        let ids = tokenizer.encode(text)?;
        let mut encoded = Vec::with_capacity(ids.len() * width.bytes());
        for id in ids {
            if id as usize >= tokenizer.vocab_size() {
                return Err(TextError::UnknownId { id, vocab_size: tokenizer.vocab_size() });
            }
            width.push(id, &mut encoded);
        }
        Ok(encoded)
    };
    if tokenizer.kind() == super::TokenizerKind::Char {
        while let Some(chunk) = chunks.next_chunk()? {
            sink(&encode(chunk)?)?;
            report(&chunks);
        }
        return Ok(());
    }
    let group = rayon::current_num_threads().max(1) * CHUNKS_PER_THREAD;
    loop {
        let mut texts = Vec::with_capacity(group);
        while texts.len() < group {
            match chunks.next_chunk()? {
                Some(chunk) => texts.push(chunk.to_owned()),
                None => break,
            }
        }
        if texts.is_empty() {
            return Ok(());
        }
        let encoded: Vec<Result<Vec<u8>, TextError>> = texts.par_iter().map(|text| encode(text)).collect();
        for piece in encoded {
            sink(&piece?)?;
        }
        report(&chunks);
    }
}
