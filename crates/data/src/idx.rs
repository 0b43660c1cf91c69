//! The IDX file format of (Fashion-)MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, a type code and the
//! number of dimensions), one big-endian `u32` per dimension, then the
//! elements in row-major order. We only read unsigned bytes (type `0x08`),
//! which is what image and label files use.
//!
//! Files are untrusted: the declared size is capped before anything is
//! allocated, gzip output is read through a limit, and every way the bytes can
//! disagree with the header is its own error.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// The largest payload we accept from one IDX file: well above the 47 MB of
/// the full Fashion-MNIST training images, far below what would hurt.
pub const IDX_PAYLOAD_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// IDX type code for unsigned bytes.
const IDX_TYPE_U8: u8 = 0x08;

/// Dimensions beyond this are not a data set we know how to use.
const IDX_RANK_MAX: u8 = 4;

/// Why an IDX file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("IDX file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("could not read IDX file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not an IDX file of unsigned bytes: magic number {found:02x?}, \
         expected [00, 00, 08, rank]"
    )]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{path} has {found} dimensions, expected {expected}")]
    WrongRank { path: PathBuf, expected: u8, found: u8 },
    #[error("{path} has dimensions {found:?}: {reason}")]
    WrongDimensions { path: PathBuf, found: Vec<u32>, reason: String },
    #[error("{path} declares {declared} bytes of data, above the limit of {limit}")]
    TooLarge { path: PathBuf, declared: u64, limit: u64 },
    #[error("{path} is truncated inside its header")]
    TruncatedHeader { path: PathBuf },
    #[error("{path} is truncated: its header declares {declared} bytes of data, it holds {found}")]
    Truncated { path: PathBuf, declared: u64, found: u64 },
    #[error("{path} has {extra} bytes after the {declared} its header declares")]
    TrailingBytes { path: PathBuf, declared: u64, extra: u64 },
}

/// One IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first.
    pub dims: Vec<u32>,
    /// Elements in row-major order; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes with exactly `rank` dimensions.
/// Gzip is detected from the content, not the file name.
pub fn read_idx(path: &Path, rank: u8) -> Result<IdxArray, IdxError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => IdxError::Missing { path: path.to_owned() },
        _ => IdxError::Io { path: path.to_owned(), source },
    })?;
    let mut reader = io::BufReader::new(file);
    let mut start = [0u8; 2];
    let peeked = read_up_to(&mut reader, &mut start).map_err(|source| io_error(path, source))?;
    let chained = (&start[..peeked]).chain(reader);
    if peeked == 2 && start == [0x1f, 0x8b] {
        parse_idx(path, GzDecoder::new(chained), rank)
    } else {
        parse_idx(path, chained, rank)
    }
}

/// Parses an IDX stream; `path` only names the source in errors.
pub fn parse_idx(path: &Path, mut reader: impl Read, rank: u8) -> Result<IdxArray, IdxError> {
    assert!((1..=IDX_RANK_MAX).contains(&rank), "callers ask for a rank we support");
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(|source| io_error(path, source))?;
    if got < 4 || magic[0] != 0 || magic[1] != 0 || magic[2] != IDX_TYPE_U8 || magic[3] == 0 {
        return Err(IdxError::BadMagic { path: path.to_owned(), found: magic });
    }
    if magic[3] != rank {
        return Err(IdxError::WrongRank { path: path.to_owned(), expected: rank, found: magic[3] });
    }
    let mut dims = Vec::with_capacity(usize::from(rank));
    for _ in 0..rank {
        let mut word = [0u8; 4];
        let got = read_up_to(&mut reader, &mut word).map_err(|source| io_error(path, source))?;
        if got < 4 {
            return Err(IdxError::TruncatedHeader { path: path.to_owned() });
        }
        dims.push(u32::from_be_bytes(word));
    }
    let declared = dims.iter().try_fold(1u64, |size, &dim| size.checked_mul(u64::from(dim)));
    let declared = match declared {
        Some(size) if size <= IDX_PAYLOAD_BYTES_MAX => size,
        Some(size) => {
            return Err(IdxError::TooLarge {
                path: path.to_owned(),
                declared: size,
                limit: IDX_PAYLOAD_BYTES_MAX,
            });
        }
        None => {
            return Err(IdxError::TooLarge {
                path: path.to_owned(),
                declared: u64::MAX,
                limit: IDX_PAYLOAD_BYTES_MAX,
            });
        }
    };
    let declared_len = usize::try_from(declared).expect("capped at IDX_PAYLOAD_BYTES_MAX");
    let mut data = Vec::with_capacity(declared_len);
    // One byte past the declared size tells a trailing-garbage file from an exact one.
    (&mut reader).take(declared + 1).read_to_end(&mut data).map_err(|source| io_error(path, source))?;
    let found = data.len() as u64;
    if found < declared {
        return Err(IdxError::Truncated { path: path.to_owned(), declared, found });
    }
    if found > declared {
        let extra = 1 + io::copy(&mut reader.take(IDX_PAYLOAD_BYTES_MAX), &mut io::sink())
            .map_err(|source| io_error(path, source))?;
        return Err(IdxError::TrailingBytes { path: path.to_owned(), declared, extra });
    }
    Ok(IdxArray { dims, data })
}

fn io_error(path: &Path, source: io::Error) -> IdxError {
    IdxError::Io { path: path.to_owned(), source }
}

/// Fills as much of `buffer` as the stream holds; returns how much that was.
pub(crate) fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Writes an IDX file of unsigned bytes; used to build the bundled subset
/// and by tests that need real files on disk.
pub fn encode_idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let rank = u8::try_from(dims.len()).expect("IDX rank fits in a byte");
    assert_eq!(
        dims.iter().map(|&dim| dim as usize).product::<usize>(),
        data.len(),
        "dimensions must match the data"
    );
    let mut bytes = vec![0, 0, IDX_TYPE_U8, rank];
    for dim in dims {
        bytes.extend_from_slice(&dim.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn reads_raw_and_gzip_files_alike() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        for (name, content) in [("raw", bytes.clone()), ("zipped.gz", gzip(&bytes))] {
            let array = read_idx(&write(dir.path(), name, &content), 2).unwrap();
            assert_eq!(array.dims, vec![2, 3]);
            assert_eq!(array.data, vec![1, 2, 3, 4, 5, 6]);
        }
    }

    #[test]
    fn missing_file_is_named() {
        let error = read_idx(Path::new("/nonexistent/train-images-idx3-ubyte.gz"), 3).unwrap_err();
        assert!(matches!(error, IdxError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/train-images-idx3-ubyte.gz"));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_idx(&[2], &[7, 8]);
        bytes[2] = 0x0d; // float data, which we do not read
        let error = read_idx(&write(dir.path(), "floats", &bytes), 1).unwrap_err();
        assert!(matches!(error, IdxError::BadMagic { .. }), "{error}");
        let error = read_idx(&write(dir.path(), "text", b"hello world"), 1).unwrap_err();
        assert!(matches!(error, IdxError::BadMagic { .. }), "{error}");
        let error = read_idx(&write(dir.path(), "short", b"\0\0"), 1).unwrap_err();
        assert!(matches!(error, IdxError::BadMagic { .. }), "{error}");
    }

    #[test]
    fn wrong_number_of_dimensions_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "labels", &encode_idx(&[4], &[0, 1, 2, 3]));
        let error = read_idx(&path, 3).unwrap_err();
        assert!(matches!(error, IdxError::WrongRank { expected: 3, found: 1, .. }), "{error}");
    }

    #[test]
    fn truncated_data_is_rejected_raw_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_idx(&[10, 2, 2], &[9; 40]);
        bytes.truncate(bytes.len() - 5);
        for (name, content) in [("raw", bytes.clone()), ("zipped", gzip(&bytes))] {
            let error = read_idx(&write(dir.path(), name, &content), 3).unwrap_err();
            assert!(matches!(error, IdxError::Truncated { declared: 40, found: 35, .. }), "{name}: {error}");
        }
        // A header cut inside its dimensions is truncated too.
        let error = read_idx(&write(dir.path(), "header", &bytes[..7]), 3).unwrap_err();
        assert!(matches!(error, IdxError::TruncatedHeader { .. }), "{error}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_idx(&[2], &[1, 2]);
        bytes.extend_from_slice(&[0; 3]);
        let error = read_idx(&write(dir.path(), "long", &bytes), 1).unwrap_err();
        assert!(matches!(error, IdxError::TrailingBytes { extra: 3, .. }), "{error}");
    }

    #[test]
    fn oversized_declarations_are_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0, 0, IDX_TYPE_U8, 3];
        for dim in [u32::MAX, u32::MAX, 4] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        let error = read_idx(&write(dir.path(), "huge", &bytes), 3).unwrap_err();
        assert!(matches!(error, IdxError::TooLarge { .. }), "{error}");
    }
}
