//! Where text comes from, and reading it as a stream of UTF-8 chunks.
//!
//! A text source is a file, a directory of files, or the corpus bundled
//! into the binary. Whatever its size, it is read in chunks of about a
//! megabyte: nothing here holds the whole text. Chunk boundaries are a
//! function of the text alone (never of read sizes or file boundaries), so
//! the tokens a chunked tokenisation produces are too.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::GzDecoder;

use super::TextError;
use crate::idx::read_up_to;

/// Where `scripts/install-shakespeare.sh` installs every play of the
/// corpus (4.8 MB), the text commands use when no `--data` is given.
pub const INSTALLED_SHAKESPEARE: &str = "/usr/local/share/datasets/shakespeare/shakespeare.txt";

/// The bundled corpus: nine plays, 1.19 MB of text (see
/// `assets/shakespeare/LICENSE` and `scripts/make-shakespeare.py`).
const BUNDLED_SHAKESPEARE: &[u8] = include_bytes!("../../assets/shakespeare/shakespeare-subset.txt.gz");

/// BLAKE3 of the bundled subset's text and of the full corpus that
/// `scripts/make-shakespeare.py --full` writes, so that a copy given with
/// `--data` is reported by its name.
const SUBSET_TEXT_HASH: &str = "2003a55cd6c51c1e3de19ab1830fa348e14f0002aa1d2c53cecfde8c86bbc27e";
const FULL_TEXT_HASH: &str = "f4e007939d0cff0d39a7ddde2c666f27eaa77c487b2b29960b620fb2cec699dd";

/// A chunk ends at the first safe boundary at or after this many bytes...
pub(crate) const CHUNK_TARGET: usize = 1 << 20;
/// ...or is cut at a character boundary here if the text has none.
pub(crate) const CHUNK_MAX: usize = 8 << 20;

/// Where to read text from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    /// A UTF-8 text file (gzip-compressed or not), or a directory of them.
    Path(PathBuf),
    /// The Shakespeare subset compiled into the binary.
    Bundled,
}

impl TextSource {
    /// `--data FILE|DIR` if given; else the installed corpus if
    /// `scripts/install-shakespeare.sh` put it at [`INSTALLED_SHAKESPEARE`];
    /// else the bundled subset.
    pub fn resolve(explicit: Option<&Path>) -> Self {
        match explicit {
            Some(path) => Self::Path(path.to_owned()),
            None if Path::new(INSTALLED_SHAKESPEARE).is_file() => {
                Self::Path(PathBuf::from(INSTALLED_SHAKESPEARE))
            }
            None => Self::Bundled,
        }
    }

    /// The path, or `bundled`.
    pub fn describe(&self) -> String {
        match self {
            Self::Path(path) => path.display().to_string(),
            Self::Bundled => "bundled".to_owned(),
        }
    }

    /// The text as a stream of chunks of about [`CHUNK_TARGET`] bytes.
    pub fn chunks(&self) -> Result<TextChunks, TextError> {
        self.chunks_sized(CHUNK_TARGET, CHUNK_MAX)
    }

    pub(crate) fn chunks_sized(&self, target: usize, max: usize) -> Result<TextChunks, TextError> {
        assert!(0 < target && target <= max, "chunk sizes {target} <= {max}");
        let parts = match self {
            Self::Bundled => VecDeque::from([Part::Bundled]),
            Self::Path(path) => list_parts(path)?,
        };
        let total_input_bytes = parts.iter().map(Part::input_bytes).sum();
        Ok(TextChunks {
            parts,
            current: None,
            consumed: Arc::new(AtomicU64::new(0)),
            total_input_bytes,
            buffer: Vec::with_capacity(max + 2 * READ_BLOCK),
            validated: 0,
            handed_out: 0,
            scanned: 0,
            last_byte: None,
            exhausted: false,
            target,
            max,
            text_bytes: 0,
        })
    }
}

/// The name a corpus is reported by: `shakespeare-subset` (the bundled
/// text, wherever it was read from), `shakespeare` (the installed corpus),
/// else `text`.
pub(crate) fn corpus_name(text_hash: &[u8; 32]) -> &'static str {
    let hex = hex_digest(text_hash);
    if hex == SUBSET_TEXT_HASH {
        "shakespeare-subset"
    } else if hex == FULL_TEXT_HASH {
        "shakespeare"
    } else {
        "text"
    }
}

/// A digest as 64 lowercase hex digits.
pub fn hex_digest(digest: &[u8; 32]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One file of a source.
#[derive(Debug)]
enum Part {
    File { path: PathBuf, bytes: u64 },
    Bundled,
}

impl Part {
    fn input_bytes(&self) -> u64 {
        match self {
            Self::File { bytes, .. } => *bytes,
            Self::Bundled => BUNDLED_SHAKESPEARE.len() as u64,
        }
    }

    fn name(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Bundled => "<bundled shakespeare-subset>".to_owned(),
        }
    }

    /// A reader of the part's text, decompressing gzip (recognised by its
    /// magic bytes, not the file name), counting the raw bytes it reads.
    fn open(&self, consumed: &Arc<AtomicU64>) -> Result<Box<dyn Read + Send>, TextError> {
        match self {
            Self::Bundled => Ok(Box::new(GzDecoder::new(Counting {
                inner: BUNDLED_SHAKESPEARE,
                consumed: consumed.clone(),
            }))),
            Self::File { path, .. } => {
                let io_error = |source| TextError::Io { path: path.clone(), source };
                let mut file = File::open(path).map_err(io_error)?;
                let mut magic = [0u8; 2];
                let peeked = read_up_to(&mut file, &mut magic).map_err(io_error)?;
                let reader = Counting {
                    inner: io::Cursor::new(magic[..peeked].to_vec()).chain(file),
                    consumed: consumed.clone(),
                };
                if peeked == 2 && magic == [0x1f, 0x8b] {
                    Ok(Box::new(GzDecoder::new(reader)))
                } else {
                    Ok(Box::new(reader))
                }
            }
        }
    }
}

/// The files of `path`: itself if it is a file; else every regular file
/// below it whose name does not start with a dot, in byte order of their
/// paths. Symbolic links to files are followed, to directories not (no
/// cycles).
fn list_parts(path: &Path) -> Result<VecDeque<Part>, TextError> {
    let metadata = std::fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TextError::Missing(path.to_owned()),
        _ => TextError::Io { path: path.to_owned(), source },
    })?;
    if metadata.is_file() {
        return Ok(VecDeque::from([Part::File { path: path.to_owned(), bytes: metadata.len() }]));
    }
    if !metadata.is_dir() {
        return Err(TextError::NotAFile(path.to_owned()));
    }
    let mut files = Vec::new();
    let mut directories = vec![path.to_owned()];
    while let Some(directory) = directories.pop() {
        let entries = std::fs::read_dir(&directory)
            .map_err(|source| TextError::Io { path: directory.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| TextError::Io { path: directory.clone(), source })?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let entry_path = entry.path();
            let file_type =
                entry.file_type().map_err(|source| TextError::Io { path: entry_path.clone(), source })?;
            if file_type.is_dir() {
                directories.push(entry_path);
            } else if let Ok(metadata) = std::fs::metadata(&entry_path)
                && metadata.is_file()
            {
                files.push((entry_path, metadata.len()));
            }
        }
    }
    if files.is_empty() {
        return Err(TextError::NoFiles(path.to_owned()));
    }
    files.sort_by(|(a, _), (b, _)| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    Ok(files.into_iter().map(|(path, bytes)| Part::File { path, bytes }).collect())
}

/// Counts the raw (possibly compressed) bytes read, for progress.
struct Counting<R> {
    inner: R,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.consumed.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

const READ_BLOCK: usize = 256 << 10;

/// The part being read: its reader, its name and how many of its
/// (decompressed) bytes were read, for error messages.
struct Current {
    reader: Box<dyn Read + Send>,
    name: String,
    offset: u64,
    started: bool,
}

/// A text source as a stream of UTF-8 chunks, files joined in order with
/// a newline between two files when the first does not end with one.
///
/// A chunk ends at the first *safe boundary* at or after the target size:
/// a space or newline that follows an ASCII letter, digit or punctuation
/// mark. Tokenising the chunks one by one then gives the tokens of the
/// whole text, trivially for characters and for the byte-level BPE's
/// GPT-2 pre-tokenizer because no pre-token spans such a boundary: runs of
/// letters, digits or punctuation stop before whitespace, and whitespace
/// runs start after them. A text without one for [`CHUNK_MAX`] bytes is cut
/// at a character boundary there: still a function of the text alone.
pub struct TextChunks {
    parts: VecDeque<Part>,
    current: Option<Current>,
    consumed: Arc<AtomicU64>,
    total_input_bytes: u64,
    /// Bytes read and not yet handed out (after the first `handed_out`,
    /// which the last chunk borrowed); `buffer[..validated]` is UTF-8.
    buffer: Vec<u8>,
    validated: usize,
    handed_out: usize,
    /// Positions below this hold no boundary (searched already).
    scanned: usize,
    /// The last byte of the stream so far (for the newline between files).
    last_byte: Option<u8>,
    exhausted: bool,
    target: usize,
    max: usize,
    text_bytes: u64,
}

impl TextChunks {
    /// Raw input bytes read so far (compressed bytes for gzip files), for
    /// progress against [`Self::total_input_bytes`].
    pub fn input_bytes_read(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// The size of the input files (compressed, for gzip files).
    pub fn total_input_bytes(&self) -> u64 {
        self.total_input_bytes
    }

    /// Text bytes handed out so far.
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// The next chunk, or `None` at the end of the text. The chunk borrows
    /// the stream's buffer until the next call.
    pub fn next_chunk(&mut self) -> Result<Option<&str>, TextError> {
        self.buffer.drain(..self.handed_out);
        self.validated -= self.handed_out;
        self.handed_out = 0;
        self.scanned = 0;
        let end = loop {
            if let Some(end) = self.boundary() {
                break end;
            }
            self.fill()?;
        };
        if end == 0 {
            return Ok(None);
        }
        self.handed_out = end;
        self.text_bytes += end as u64;
        Ok(Some(std::str::from_utf8(&self.buffer[..end]).expect("validated as UTF-8 when read")))
    }

    /// Where the next chunk ends, if the bytes read so far decide it.
    fn boundary(&mut self) -> Option<usize> {
        let text = &self.buffer[..self.validated];
        // A boundary at p needs bytes p - 1 and p.
        let last = text.len().saturating_sub(1).min(self.max);
        let first = self.scanned.max(self.target);
        if let Some(p) =
            (first..=last).find(|&p| matches!(text[p], b' ' | b'\n') && text[p - 1].is_ascii_graphic())
        {
            return Some(p);
        }
        self.scanned = self.scanned.max(last + 1);
        if text.len() > self.max {
            // No safe boundary: cut at the last character boundary.
            return (1..=self.max).rev().find(|&p| text[p] & 0xc0 != 0x80);
        }
        self.exhausted.then_some(text.len())
    }

    /// Reads one block into the buffer, opening the next file when one
    /// ends; at the end of the last file, marks the stream exhausted.
    fn fill(&mut self) -> Result<(), TextError> {
        loop {
            if self.current.is_none() {
                let Some(part) = self.parts.pop_front() else {
                    self.exhausted = true;
                    return Ok(());
                };
                let reader = part.open(&self.consumed)?;
                self.current = Some(Current { reader, name: part.name(), offset: 0, started: false });
            }
            let current = self.current.as_mut().expect("opened above");
            let start = self.buffer.len();
            self.buffer.resize(start + READ_BLOCK, 0);
            let count = loop {
                match current.reader.read(&mut self.buffer[start..]) {
                    Ok(count) => break count,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(TextError::Io { path: PathBuf::from(&current.name), source });
                    }
                }
            };
            self.buffer.truncate(start + count);
            if count == 0 {
                if self.validated < self.buffer.len() {
                    return Err(TextError::TruncatedUtf8 { path: current.name.clone() });
                }
                self.current = None;
                continue;
            }
            if !current.started {
                current.started = true;
                if self.last_byte.is_some_and(|byte| byte != b'\n') {
                    self.buffer.insert(start, b'\n');
                }
            }
            current.offset += count as u64;
            match std::str::from_utf8(&self.buffer[self.validated..]) {
                Ok(_) => self.validated = self.buffer.len(),
                Err(error) => {
                    if error.error_len().is_some() {
                        let bad = self.validated + error.valid_up_to();
                        let offset = current.offset - (self.buffer.len() - bad) as u64;
                        return Err(TextError::InvalidUtf8 { path: current.name.clone(), offset });
                    }
                    // A character cut by the block's end: the next read completes it.
                    self.validated += error.valid_up_to();
                }
            }
            self.last_byte = self.buffer.last().copied();
            return Ok(());
        }
    }
}
