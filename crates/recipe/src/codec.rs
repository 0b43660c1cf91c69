//! Which encoding a pseudo-gradient travels in. The encoders and decoders
//! live in `crowdtrain-train` (`crowdtrain_train::codec`).

use serde::{Deserialize, Serialize};

/// How a pseudo-gradient is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// Exact: 4 bytes a value.
    F32,
    /// Blockwise absolute-max quantisation: a 4-byte scale per 256 values
    /// and one signed byte per value.
    #[default]
    Int8,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            other => Err(format!("unknown codec {other:?}; expected f32 or int8")),
        }
    }
}
