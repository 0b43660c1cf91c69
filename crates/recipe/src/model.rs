//! Which model a run trains.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The models a run can choose. The architectures themselves live in
/// `crowdtrain-train` (`crowdtrain_train::model::build`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// 784-256-10 with ReLU.
    #[default]
    Mlp,
    /// Two 5x5 convolutions (16 and 32 channels) with max-pooling, then a
    /// linear classifier.
    Cnn,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
        }
    }
}

impl FromStr for ModelKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "mlp" => Ok(Self::Mlp),
            "cnn" => Ok(Self::Cnn),
            other => Err(format!("unknown model {other:?}; expected mlp or cnn")),
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_parse_and_unknown_names_are_refused() {
        assert_eq!("mlp".parse::<ModelKind>(), Ok(ModelKind::Mlp));
        assert_eq!("cnn".parse::<ModelKind>(), Ok(ModelKind::Cnn));
        assert!("transformer".parse::<ModelKind>().unwrap_err().contains("unknown model"));
    }
}
