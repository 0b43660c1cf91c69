//! How a training set is divided among a round's participants. The
//! shards themselves are computed by `crowdtrain-data`.

use serde::{Deserialize, Serialize};

use crate::RecipeError;

/// How the training set is divided among workers. Written `iid` or
/// `dirichlet:ALPHA` (in `run.toml`, on the command line and in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Sharding {
    /// A uniformly random partition into near-equal parts (the default, and
    /// what robust aggregation needs: see `docs/ARCHITECTURE.md`).
    #[default]
    Iid,
    /// Label skew: each class is split among workers in Dirichlet(alpha)
    /// proportions. Small alpha means each worker sees few classes.
    Dirichlet { alpha: f64 },
}

impl Sharding {
    pub fn validate(&self) -> Result<(), RecipeError> {
        match *self {
            Self::Dirichlet { alpha } if !(alpha.is_finite() && alpha > 0.0) => {
                Err(RecipeError::new("sharding", "the Dirichlet alpha must be a positive number"))
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Iid => write!(f, "iid"),
            Self::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
        }
    }
}

impl std::str::FromStr for Sharding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "iid" => Ok(Self::Iid),
            Some(("dirichlet", alpha)) => alpha
                .parse()
                .map(|alpha| Self::Dirichlet { alpha })
                .map_err(|_| format!("{alpha:?} is not a number; write dirichlet:ALPHA, e.g. dirichlet:0.5")),
            _ => Err(format!("unknown sharding {text:?}; expected iid or dirichlet:ALPHA")),
        }
    }
}

impl From<Sharding> for String {
    fn from(sharding: Sharding) -> Self {
        sharding.to_string()
    }
}

impl TryFrom<String> for Sharding {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shardings_round_trip_through_text_and_json() {
        for sharding in [Sharding::Iid, Sharding::Dirichlet { alpha: 0.5 }] {
            assert_eq!(sharding.to_string().parse::<Sharding>(), Ok(sharding));
            let json = serde_json::to_string(&sharding).unwrap();
            assert_eq!(serde_json::from_str::<Sharding>(&json).unwrap(), sharding);
        }
        assert_eq!(serde_json::to_string(&Sharding::Dirichlet { alpha: 0.5 }).unwrap(), "\"dirichlet:0.5\"");
        for bad in ["", "dirichlet", "dirichlet:x", "iid:1", "zipf:2"] {
            assert!(bad.parse::<Sharding>().is_err(), "{bad}");
        }
        assert!(Sharding::Dirichlet { alpha: 0.0 }.validate().is_err());
    }
}
