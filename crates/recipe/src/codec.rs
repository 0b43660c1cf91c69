//! Which encoding a pseudo-gradient travels in. The encoders and decoders
//! live in `crowdtrain-train` (`crowdtrain_train::codec`).
//!
//! A codec is written as a string, in `run.toml`, on the command line and
//! in JSON: a value encoding (`f32`, `int8`, `q4`, `q2`), optionally after
//! a sparsifier, `topk:DENSITY+VALUES` (SparseLoCo's combination: keep the
//! largest values of each chunk, then quantise those). `topk:0.02` alone
//! keeps the chosen values in f32.
//!
//! In binary formats (postcard: assignments, audit tasks, the ledger) a
//! codec is an enum whose first two variants are the `f32` and `int8` that
//! runs have always recorded, so their bytes, signatures and hashes do not
//! change with the codecs added after them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::RecipeError;

/// Values per chunk of chunked top-k: a kept value's position in its chunk
/// is one byte.
pub const TOPK_CHUNK: usize = 256;

/// How a sequence of values is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Values {
    /// Exact: 4 bytes a value.
    F32,
    /// Blockwise absolute-max quantisation: a 4-byte scale per 256 values
    /// and one signed byte (-127..=127) per value.
    Int8,
    /// A 4-byte scale per 64 values and 4 bits per value: the levels
    /// -7..=7 of the block's absolute maximum / 7.
    Q4,
    /// A 4-byte scale per 64 values and 2 bits per value: the levels
    /// -3, -1, 1, 3 of the block's absolute maximum / 3.
    Q2,
}

impl Values {
    pub const ALL: [Self; 4] = [Self::F32, Self::Int8, Self::Q4, Self::Q2];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
            Self::Q4 => "q4",
            Self::Q2 => "q2",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|values| values.as_str() == name)
    }

    /// Whether encoding loses more than int8's rounding: what the error
    /// is fed back for.
    pub fn is_coarse(self) -> bool {
        matches!(self, Self::Q4 | Self::Q2)
    }
}

/// Chunked top-k: of every [`TOPK_CHUNK`] consecutive values, keep the
/// `per_chunk()` largest in magnitude (ties to the lower position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TopK {
    /// The share of values kept, in millionths (`topk:0.02` is 20,000), so
    /// that the codec compares and hashes exactly.
    pub density_ppm: u32,
}

impl TopK {
    /// Values kept of a whole chunk: the density's share of
    /// [`TOPK_CHUNK`], rounded half up, at least one.
    pub fn per_chunk(self) -> usize {
        let kept = (u64::from(self.density_ppm) * TOPK_CHUNK as u64 + 500_000) / 1_000_000;
        (kept as usize).clamp(1, TOPK_CHUNK)
    }

    /// Values kept of a chunk of `len` values (the last may be short).
    pub fn kept_of(self, len: usize) -> usize {
        self.per_chunk().min(len)
    }

    /// Values kept of `count` values in all.
    pub fn kept(self, count: usize) -> usize {
        let whole = count / TOPK_CHUNK;
        whole * self.per_chunk() + self.kept_of(count % TOPK_CHUNK)
    }
}

/// How a pseudo-gradient is encoded: optionally sparsified by chunked
/// top-k, then its (kept) values stored as `values` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codec {
    pub topk: Option<TopK>,
    pub values: Values,
}

impl Default for Codec {
    fn default() -> Self {
        Self::INT8
    }
}

impl Codec {
    /// Exact values, dense.
    pub const F32: Self = Self::dense(Values::F32);
    /// Dense int8, the default.
    pub const INT8: Self = Self::dense(Values::Int8);

    pub const fn dense(values: Values) -> Self {
        Self { topk: None, values }
    }

    /// `topk:DENSITY+VALUES`.
    pub fn topk(density: f64, values: Values) -> Self {
        Self { topk: Some(TopK { density_ppm: (density * 1e6).round() as u32 }), values }
    }

    /// Whether the worker keeps what encoding loses and adds it to its next
    /// update (error feedback): for top-k and the 2- and 4-bit values,
    /// which lose too much to drop. f32 loses nothing, and int8's rounding
    /// is far below the noise of training (and the runs measured before
    /// error feedback existed keep their bits).
    pub fn error_feedback(self) -> bool {
        self.topk.is_some() || self.values.is_coarse()
    }

    /// Checks the density.
    pub fn validate(&self) -> Result<(), RecipeError> {
        match self.topk {
            Some(TopK { density_ppm }) if !(1..1_000_000).contains(&density_ppm) => Err(RecipeError::new(
                "codec",
                "the top-k density must be above 0 and below 1 (at least 0.000001)",
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.topk {
            None => f.write_str(self.values.as_str()),
            Some(TopK { density_ppm }) => {
                write!(f, "topk:{}", f64::from(density_ppm) / 1e6)?;
                match self.values {
                    Values::F32 => Ok(()),
                    values => write!(f, "+{}", values.as_str()),
                }
            }
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected f32, int8, q4, q2, or topk:DENSITY with an optional +int8, +q4 or +q2 \
            (e.g. topk:0.02+q4)";
        let (sparsity, values) = match text.split_once('+') {
            Some((sparsity, values)) => (Some(sparsity), values),
            None if text.starts_with("topk:") => (Some(text), "f32"),
            None => (None, text),
        };
        let values = Values::parse(values).ok_or_else(|| format!("unknown codec {text:?}; {EXPECTED}"))?;
        let Some(sparsity) = sparsity else { return Ok(Self::dense(values)) };
        let density = sparsity
            .strip_prefix("topk:")
            .ok_or_else(|| format!("unknown codec {text:?}; {EXPECTED}"))?
            .parse::<f64>()
            .map_err(|_| format!("in codec {text:?}, the top-k density must be a number, e.g. topk:0.02"))?;
        if !(density.is_finite() && density > 0.0 && density < 1.0) {
            return Err(format!("in codec {text:?}, the top-k density must be above 0 and below 1"));
        }
        let codec = Self::topk(density, values);
        codec.validate().map_err(|error| format!("in codec {text:?}: {}", error.reason))?;
        Ok(codec)
    }
}

/// A codec in binary formats: `F32` and `Int8` first, as the enum that
/// was the codec before top-k and q4/q2 existed.
#[derive(Serialize, Deserialize)]
enum Binary {
    F32,
    Int8,
    Dense(Values),
    TopK(TopK, Values),
}

impl Serialize for Codec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return serializer.collect_str(self);
        }
        match (self.topk, self.values) {
            (None, Values::F32) => Binary::F32,
            (None, Values::Int8) => Binary::Int8,
            (None, values) => Binary::Dense(values),
            (Some(topk), values) => Binary::TopK(topk, values),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let codec = if deserializer.is_human_readable() {
            String::deserialize(deserializer)?.parse().map_err(D::Error::custom)?
        } else {
            match Binary::deserialize(deserializer)? {
                Binary::F32 => Self::F32,
                Binary::Int8 => Self::INT8,
                // One encoding per codec: f32 and int8 have theirs.
                Binary::Dense(Values::F32 | Values::Int8) => {
                    return Err(D::Error::custom("f32 and int8 are not written as dense codecs"));
                }
                Binary::Dense(values) => Self::dense(values),
                Binary::TopK(topk, values) => Self { topk: Some(topk), values },
            }
        };
        codec.validate().map_err(D::Error::custom)?;
        Ok(codec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_through_text_json_toml_and_postcard() {
        for text in
            ["f32", "int8", "q4", "q2", "topk:0.02", "topk:0.02+q4", "topk:0.015625+q2", "topk:0.1+int8"]
        {
            let codec: Codec = text.parse().unwrap();
            assert_eq!(codec.to_string(), text);
            let json = serde_json::to_string(&codec).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Codec>(&json).unwrap(), codec);
            #[derive(Serialize, Deserialize, PartialEq, Debug)]
            struct Table {
                codec: Codec,
            }
            let toml = toml::to_string(&Table { codec }).unwrap();
            assert_eq!(toml.trim(), format!("codec = \"{text}\""));
            assert_eq!(toml::from_str::<Table>(&toml).unwrap(), Table { codec });
            let bytes = postcard::to_allocvec(&codec).unwrap();
            assert_eq!(postcard::from_bytes::<Codec>(&bytes).unwrap(), codec);
        }
        assert_eq!("topk:0.02+f32".parse::<Codec>().unwrap(), "topk:0.02".parse().unwrap());
        assert_eq!(Codec::default(), Codec::INT8);
    }

    #[test]
    fn f32_and_int8_keep_the_postcard_bytes_they_always_had() {
        // The enum before q4, q2 and top-k: variants 0 and 1.
        assert_eq!(postcard::to_allocvec(&Codec::F32).unwrap(), [0]);
        assert_eq!(postcard::to_allocvec(&Codec::INT8).unwrap(), [1]);
        assert_eq!(postcard::to_allocvec(&"q4".parse::<Codec>().unwrap()).unwrap(), [2, 2]);
        // topk (3), 20,000 ppm (varint), q2 (3).
        assert_eq!(
            postcard::to_allocvec(&"topk:0.02+q2".parse::<Codec>().unwrap()).unwrap(),
            [3, 0xa0, 0x9c, 0x01, 3]
        );
        // A density no codec has does not decode.
        assert!(postcard::from_bytes::<Codec>(&[3, 0, 3]).is_err());
        assert!(postcard::from_bytes::<Codec>(&[2, 1]).is_err(), "int8 has one encoding");
    }

    #[test]
    fn malformed_codecs_are_refused_with_a_reason() {
        for bad in [
            "",
            "int4",
            "topk",
            "topk:",
            "topk:x+q4",
            "topk:0+q4",
            "topk:1+q4",
            "topk:-0.1",
            "topk:NaN",
            "topk:0.0000001",
            "q4+q2",
            "topk:0.02+",
            "topk:0.02+q4+q2",
        ] {
            let error = bad.parse::<Codec>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
        let error = serde_json::from_str::<Codec>("\"q3\"").unwrap_err().to_string();
        assert!(error.contains("expected f32, int8, q4, q2"), "{error}");
    }

    #[test]
    fn top_k_keeps_the_density_of_every_chunk() {
        let topk = |density: f64| Codec::topk(density, Values::Q4).topk.unwrap();
        assert_eq!(topk(0.02).per_chunk(), 5);
        assert_eq!(topk(0.015625).per_chunk(), 4);
        assert_eq!(topk(0.000001).per_chunk(), 1, "at least one a chunk");
        assert_eq!(topk(0.999999).per_chunk(), TOPK_CHUNK);
        // 3 whole chunks and one of 10 values.
        assert_eq!(topk(0.02).kept(3 * TOPK_CHUNK + 10), 3 * 5 + 5);
        assert_eq!(topk(0.02).kept(3 * TOPK_CHUNK + 2), 3 * 5 + 2);
        assert_eq!(topk(0.02).kept(0), 0);
    }

    #[test]
    fn error_feedback_is_for_the_lossy_codecs() {
        assert!(!Codec::F32.error_feedback());
        assert!(!Codec::INT8.error_feedback());
        for lossy in ["q4", "q2", "topk:0.02", "topk:0.02+int8", "topk:0.02+q2"] {
            assert!(lossy.parse::<Codec>().unwrap().error_feedback(), "{lossy}");
        }
    }
}
