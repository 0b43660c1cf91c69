//! How the coordinator publishes each round's model (`[outer] broadcast`
//! in `run.toml`). The arithmetic lives in `crowdtrain-train`
//! (`crowdtrain_train::diloco::outer_step`).

use serde::{Deserialize, Serialize};

use crate::Codec;

/// How a new global model reaches workers that hold the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Broadcast {
    /// The outer step's exact result is published, and downloaded whole
    /// every round.
    #[default]
    Full,
    /// The coordinator keeps its exact model private and publishes the
    /// previous published model plus the change to the exact one, encoded
    /// with this codec: what the encoding loses stays in the difference and
    /// is sent in a later round (error feedback by construction). A worker
    /// holding the previous published model downloads the encoded change and
    /// rebuilds the new one bit for bit.
    Delta(Codec),
}

impl Broadcast {
    pub fn is_full(&self) -> bool {
        *self == Self::Full
    }

    /// The codec of the published changes, if any.
    pub fn codec(self) -> Option<Codec> {
        match self {
            Self::Full => None,
            Self::Delta(codec) => Some(codec),
        }
    }
}

impl std::fmt::Display for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => f.write_str("full"),
            Self::Delta(codec) => codec.fmt(f),
        }
    }
}

impl std::str::FromStr for Broadcast {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "full" => Ok(Self::Full),
            text => match text.parse::<Codec>() {
                // An exact change is as large as the model and no more exact.
                Ok(Codec::F32) => {
                    Err("an f32 broadcast is no smaller than the model: use \"full\"".to_owned())
                }
                Ok(codec) => Ok(Self::Delta(codec)),
                Err(error) => Err(format!("{error}; or full")),
            },
        }
    }
}

impl From<Broadcast> for String {
    fn from(broadcast: Broadcast) -> Self {
        broadcast.to_string()
    }
}

impl TryFrom<String> for Broadcast {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_names_round_trip_and_f32_is_refused() {
        for text in ["full", "int8"] {
            assert_eq!(text.parse::<Broadcast>().unwrap().to_string(), text);
        }
        assert_eq!("int8".parse::<Broadcast>(), Ok(Broadcast::Delta(Codec::INT8)));
        assert!("f32".parse::<Broadcast>().is_err());
        assert!("zip".parse::<Broadcast>().is_err());
        assert!(Broadcast::default().is_full());
    }
}
