//! What a model's quality is, on the scale of the contract's accuracy
//! function: plain data, so that the ledger's reward recipes and the run's
//! `[contract]` can name it without training code.

use serde::{Deserialize, Serialize};

use crate::RecipeError;

/// What a model's quality is: a value measured on a held-out set, higher is
/// better, 0 for a worthless model and at most 1. This is the a in a(M) of
/// the contract, so rewards and the accuracy function use the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// The share of held-out examples classified correctly.
    Accuracy,
    /// 1 - loss / reference_loss: the share of the reference's
    /// cross-entropy the model removes. With the reference the loss of
    /// guessing uniformly (ln of the number of classes, or of the
    /// vocabulary for a language model) a model no better than chance is
    /// worth 0 and a perfect one 1. The map is affine, so a loss curve
    /// L(M) = L_inf + B M^-c (the usual scaling law) is a saturating power
    /// law in this value too, and a target value r is the loss
    /// reference_loss (1 - r).
    NegLoss {
        /// The loss that is worth 0.
        reference_loss: f64,
    },
}

impl Metric {
    /// The value of an evaluation with this accuracy and mean loss.
    pub fn value(&self, accuracy: f64, loss: f64) -> f64 {
        match *self {
            Metric::Accuracy => accuracy,
            Metric::NegLoss { reference_loss } => 1.0 - loss / reference_loss,
        }
    }

    /// Short name, as on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::NegLoss { .. } => "neg-loss",
        }
    }

    /// Checks the reference loss is positive and finite.
    pub fn validate(&self) -> Result<(), RecipeError> {
        match *self {
            Metric::NegLoss { reference_loss } if !(reference_loss.is_finite() && reference_loss > 0.0) => {
                Err(RecipeError::new(
                    "reference_loss",
                    format!("the reference loss must be positive, got {reference_loss}"),
                ))
            }
            _ => Ok(()),
        }
    }
}
