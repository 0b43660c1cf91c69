//! Labeled image data sets and where they come from.
//!
//! Three sources, in the order a command looks for them: a directory given
//! with `--data`, the Debian package `dataset-fashion-mnist`, and the subset
//! compiled into the binary. The last one means a fresh clone can train and
//! test before anything is installed; every command reports which source it
//! used ([`DatasetInfo`]) so that numbers are never compared across data sets
//! by accident.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::idx::{IdxError, parse_idx, read_idx};

/// Where the Debian package `dataset-fashion-mnist` installs its files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST has ten classes (T-shirt/top, trouser, pullover, dress,
/// coat, sandal, shirt, sneaker, bag, ankle boot).
pub const CLASS_COUNT: usize = 10;

/// Per-pixel normalisation, from the mean and standard deviation of the full
/// Fashion-MNIST training images scaled to [0, 1]. Fixed constants, not
/// statistics of whatever subset is loaded, so every worker sees the same
/// inputs.
pub const PIXEL_MEAN: f32 = 0.2860;
pub const PIXEL_STD: f32 = 0.3530;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// The bundled subset: the first 2,000 training and 500 test images of
/// Fashion-MNIST (MIT licence, see `assets/fashion-mnist-subset/LICENSE`).
mod bundled {
    pub const TRAIN_IMAGES: &[u8] =
        include_bytes!("../assets/fashion-mnist-subset/train-images-idx3-ubyte.gz");
    pub const TRAIN_LABELS: &[u8] =
        include_bytes!("../assets/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
    pub const TEST_IMAGES: &[u8] = include_bytes!("../assets/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
    pub const TEST_LABELS: &[u8] = include_bytes!("../assets/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");
}

/// Why a data set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Idx(#[from] IdxError),
    #[error("data directory {0} does not exist")]
    MissingDirectory(PathBuf),
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels")]
    CountMismatch { images: String, labels: String, image_count: u32, label_count: u32 },
    #[error("{labels} holds label {label} at index {index}; labels must be below {CLASS_COUNT}")]
    LabelOutOfRange { labels: String, index: usize, label: u8 },
    #[error("{images} holds {found}x{found_cols} images; the {train} set holds {expected}x{expected_cols}")]
    ImageSizeMismatch {
        images: String,
        train: &'static str,
        found: u32,
        found_cols: u32,
        expected: u32,
        expected_cols: u32,
    },
    #[error("{0} holds no images")]
    Empty(String),
}

/// Images as raw bytes (row-major, `rows * cols` per image) with labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImages {
    pub rows: u32,
    pub cols: u32,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl LabeledImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn pixels_per_image(&self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// The raw bytes of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.pixels_per_image();
        &self.pixels[index * size..(index + 1) * size]
    }

    /// BLAKE3 over the dimensions, pixels and labels: two parties with the
    /// same digest train on the same data.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-11 labeled-images v1");
        hasher.update(&self.rows.to_le_bytes());
        hasher.update(&self.cols.to_le_bytes());
        hasher.update(&(self.labels.len() as u64).to_le_bytes());
        hasher.update(&self.pixels);
        hasher.update(&self.labels);
        *hasher.finalize().as_bytes()
    }

    /// Appends image `index`, normalised, to `out`.
    pub fn push_normalized(&self, index: usize, out: &mut Vec<f32>) {
        out.extend(self.image(index).iter().map(|&byte| normalize_pixel(byte)));
    }
}

/// Maps a pixel byte to the model's input scale. A lookup of 256 values
/// would do the same; the arithmetic is exact enough to be deterministic on
/// every IEEE-754 machine, which is what matters.
pub fn normalize_pixel(byte: u8) -> f32 {
    (f32::from(byte) / 255.0 - PIXEL_MEAN) / PIXEL_STD
}

/// Which data a run used, as every command reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// `fashion-mnist` or `fashion-mnist-subset`.
    pub name: String,
    /// The directory the files came from, or `bundled`.
    pub source: String,
    pub train_examples: usize,
    pub test_examples: usize,
}

impl std::fmt::Display for DatasetInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} training, {} test images, from {})",
            self.name, self.train_examples, self.test_examples, self.source
        )
    }
}

/// A training split, a test split, and where they came from.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub info: DatasetInfo,
    pub train: LabeledImages,
    pub test: LabeledImages,
}

/// Where to load a data set from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// A directory with the four Fashion-MNIST IDX files (gzipped or not).
    Directory(PathBuf),
    /// The subset compiled into the binary.
    Bundled,
}

impl DataSource {
    /// `--data DIR` if given; else the Debian package if installed; else
    /// the bundled subset.
    pub fn resolve(explicit: Option<&Path>) -> Self {
        match explicit {
            Some(dir) => Self::Directory(dir.to_owned()),
            None if Path::new(DEBIAN_FASHION_MNIST_DIR).join(format!("{TRAIN_IMAGES}.gz")).exists() => {
                Self::Directory(PathBuf::from(DEBIAN_FASHION_MNIST_DIR))
            }
            None => Self::Bundled,
        }
    }

    pub fn load(&self) -> Result<Dataset, DatasetError> {
        match self {
            Self::Directory(dir) => load_directory(dir),
            Self::Bundled => load_bundled(),
        }
    }
}

fn load_directory(dir: &Path) -> Result<Dataset, DatasetError> {
    if !dir.is_dir() {
        return Err(DatasetError::MissingDirectory(dir.to_owned()));
    }
    let file = |stem: &str| {
        let zipped = dir.join(format!("{stem}.gz"));
        if zipped.exists() { zipped } else { dir.join(stem) }
    };
    let load_split = |images: &str, labels: &str| -> Result<LabeledImages, DatasetError> {
        let (images, labels) = (file(images), file(labels));
        let image_array = read_idx(&images, 3)?;
        let label_array = read_idx(&labels, 1)?;
        check_split(images.display().to_string(), labels.display().to_string(), image_array, label_array)
    };
    let train = load_split(TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = load_split(TEST_IMAGES, TEST_LABELS)?;
    let name = if train.len() == 60_000 && test.len() == 10_000 {
        "fashion-mnist"
    } else if is_bundled_subset(&train, &test) {
        "fashion-mnist-subset"
    } else {
        "fashion-mnist-custom"
    };
    finish(name, dir.display().to_string(), train, test)
}

/// Whether a directory holds exactly the subset built into the binary
/// (as `crates/data/assets/fashion-mnist-subset` does).
fn is_bundled_subset(train: &LabeledImages, test: &LabeledImages) -> bool {
    (train.len(), test.len()) == (2000, 500)
        && load_bundled().is_ok_and(|bundled| bundled.train == *train && bundled.test == *test)
}

fn load_bundled() -> Result<Dataset, DatasetError> {
    let parse = |name: &str, bytes: &[u8], rank: u8| {
        let path = PathBuf::from(format!("<bundled>/{name}.gz"));
        parse_idx(&path, flate2::read::GzDecoder::new(bytes), rank)
    };
    let split = |images: &str, image_bytes: &[u8], labels: &str, label_bytes: &[u8]| {
        check_split(
            format!("<bundled>/{images}"),
            format!("<bundled>/{labels}"),
            parse(images, image_bytes, 3)?,
            parse(labels, label_bytes, 1)?,
        )
    };
    let train = split(TRAIN_IMAGES, bundled::TRAIN_IMAGES, TRAIN_LABELS, bundled::TRAIN_LABELS)?;
    let test = split(TEST_IMAGES, bundled::TEST_IMAGES, TEST_LABELS, bundled::TEST_LABELS)?;
    finish("fashion-mnist-subset", "bundled".to_owned(), train, test)
}

fn finish(
    name: &str,
    source: String,
    train: LabeledImages,
    test: LabeledImages,
) -> Result<Dataset, DatasetError> {
    if (test.rows, test.cols) != (train.rows, train.cols) {
        return Err(DatasetError::ImageSizeMismatch {
            images: format!("{source}/{TEST_IMAGES}"),
            train: "training",
            found: test.rows,
            found_cols: test.cols,
            expected: train.rows,
            expected_cols: train.cols,
        });
    }
    let info =
        DatasetInfo { name: name.to_owned(), source, train_examples: train.len(), test_examples: test.len() };
    Ok(Dataset { info, train, test })
}

fn check_split(
    images: String,
    labels: String,
    image_array: crate::idx::IdxArray,
    label_array: crate::idx::IdxArray,
) -> Result<LabeledImages, DatasetError> {
    let (image_count, label_count) = (image_array.dims[0], label_array.dims[0]);
    if image_count != label_count {
        return Err(DatasetError::CountMismatch { images, labels, image_count, label_count });
    }
    if image_count == 0 {
        return Err(DatasetError::Empty(images));
    }
    if let Some((index, &label)) =
        label_array.data.iter().enumerate().find(|&(_, &label)| usize::from(label) >= CLASS_COUNT)
    {
        return Err(DatasetError::LabelOutOfRange { labels, index, label });
    }
    Ok(LabeledImages {
        rows: image_array.dims[1],
        cols: image_array.dims[2],
        pixels: image_array.data,
        labels: label_array.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::encode_idx;

    #[test]
    fn bundled_subset_loads_with_its_documented_size() {
        let dataset = DataSource::Bundled.load().unwrap();
        assert_eq!(dataset.info.name, "fashion-mnist-subset");
        assert_eq!(dataset.info.source, "bundled");
        assert_eq!((dataset.train.len(), dataset.test.len()), (2000, 500));
        assert_eq!((dataset.train.rows, dataset.train.cols), (28, 28));
        // Every class is present in both splits.
        for split in [&dataset.train, &dataset.test] {
            let mut counts = [0usize; CLASS_COUNT];
            for &label in &split.labels {
                counts[usize::from(label)] += 1;
            }
            assert!(counts.iter().all(|&count| count > 0), "{counts:?}");
        }
    }

    fn write_split(dir: &Path, images: &str, labels: &str, count: u32, label_values: &[u8]) {
        std::fs::write(dir.join(images), encode_idx(&[count, 2, 2], &vec![128; count as usize * 4])).unwrap();
        std::fs::write(dir.join(labels), encode_idx(&[label_values.len() as u32], label_values)).unwrap();
    }

    #[test]
    fn the_digest_sees_every_pixel_and_label() {
        let train = DataSource::Bundled.load().unwrap().train;
        let mut changed = train.clone();
        changed.pixels[1234] ^= 1;
        assert_ne!(changed.digest(), train.digest());
        let mut relabeled = train.clone();
        relabeled.labels[7] = (relabeled.labels[7] + 1) % 10;
        assert_ne!(relabeled.digest(), train.digest());
        assert_eq!(train.clone().digest(), train.digest());
    }

    #[test]
    fn a_directory_of_raw_files_loads_and_is_named_custom() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), TRAIN_IMAGES, TRAIN_LABELS, 3, &[0, 1, 2]);
        write_split(dir.path(), TEST_IMAGES, TEST_LABELS, 2, &[3, 4]);
        let dataset = DataSource::Directory(dir.path().to_owned()).load().unwrap();
        assert_eq!(dataset.info.name, "fashion-mnist-custom");
        let subset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist-subset");
        assert_eq!(DataSource::Directory(subset).load().unwrap().info.name, "fashion-mnist-subset");
        assert_eq!((dataset.info.train_examples, dataset.info.test_examples), (3, 2));
        assert!(dataset.info.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn mismatched_counts_and_bad_labels_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), TRAIN_IMAGES, TRAIN_LABELS, 3, &[0, 1]);
        write_split(dir.path(), TEST_IMAGES, TEST_LABELS, 2, &[3, 4]);
        let error = DataSource::Directory(dir.path().to_owned()).load().unwrap_err();
        assert!(matches!(error, DatasetError::CountMismatch { .. }), "{error}");

        write_split(dir.path(), TRAIN_IMAGES, TRAIN_LABELS, 2, &[0, 10]);
        let error = DataSource::Directory(dir.path().to_owned()).load().unwrap_err();
        assert!(matches!(error, DatasetError::LabelOutOfRange { index: 1, label: 10, .. }), "{error}");
    }

    #[test]
    fn missing_directory_and_missing_file_are_named() {
        let error = DataSource::Directory("/nonexistent/data".into()).load().unwrap_err();
        assert!(error.to_string().contains("/nonexistent/data"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let error = DataSource::Directory(dir.path().to_owned()).load().unwrap_err();
        assert!(error.to_string().contains(TRAIN_IMAGES), "{error}");
    }

    #[test]
    fn explicit_directory_wins_over_everything() {
        let source = DataSource::resolve(Some(Path::new("/somewhere")));
        assert_eq!(source, DataSource::Directory("/somewhere".into()));
    }
}
