//! The optimizers' hyperparameters. Their fused, deterministic updates
//! live in `crowdtrain-train` (`crowdtrain_train::optim`).

use serde::{Deserialize, Serialize};

use crate::{RecipeError, check, check_positive};

/// AdamW (Loshchilov and Hutter), the inner optimizer, with PyTorch's
/// defaults and formula (decoupled weight decay applied before the step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamW {
    /// Checks the hyperparameters; fields are named `optimizer.*`.
    pub fn validate(&self) -> Result<(), RecipeError> {
        check_positive("optimizer.lr", self.lr)?;
        check("optimizer.beta1", (0.0..1.0).contains(&self.beta1), "must be in [0, 1)")?;
        check("optimizer.beta2", (0.0..1.0).contains(&self.beta2), "must be in [0, 1)")?;
        check_positive("optimizer.eps", self.eps)?;
        check(
            "optimizer.weight_decay",
            self.weight_decay.is_finite() && self.weight_decay >= 0.0 && self.lr * self.weight_decay < 1.0,
            "must be finite, non-negative and below 1 / optimizer.lr",
        )
    }
}

/// SGD with Nesterov momentum, the outer optimizer of DiLoCo, applied to
/// the aggregated pseudo-gradient (global minus local parameters).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nesterov {
    pub lr: f32,
    pub momentum: f32,
}

impl Default for Nesterov {
    /// DiLoCo's published setting.
    fn default() -> Self {
        Self { lr: 0.7, momentum: 0.9 }
    }
}

impl Nesterov {
    /// Checks the hyperparameters; fields are named `outer.*`.
    pub fn validate(&self) -> Result<(), RecipeError> {
        check_positive("outer.lr", self.lr)?;
        check("outer.momentum", (0.0..1.0).contains(&self.momentum), "must be in [0, 1)")
    }
}
