//! A small convolutional network for 28x28 grey images.

use candle_core::Tensor;

use super::{CandleClassifier, ParamLayout, ParamSpec};
use crate::ops::Linear;

const SIDE: usize = 28;
const CONV1_CHANNELS: usize = 16;
const CONV2_CHANNELS: usize = 32;
const KERNEL: usize = 5;
const CLASSES: usize = 10;
/// Two 2x2 poolings take 28x28 to 7x7.
const FEATURES: usize = CONV2_CHANNELS * (SIDE / 4) * (SIDE / 4);

/// conv 5x5 (16) -> ReLU -> max-pool 2 -> conv 5x5 (32) -> ReLU -> max-pool 2
/// -> linear (1568 -> 10). About 29k parameters.
///
/// The convolutions are candle's (im2col and gemm): deterministic across
/// runs and thread counts, and across AVX2 and AVX-512 machines, but not
/// guaranteed across CPUs without FMA; the MLP, whose arithmetic is all
/// ours, has no such limit (see `docs/ARCHITECTURE.md`).
#[derive(Debug, Clone)]
pub struct Cnn {
    layout: ParamLayout,
}

impl Cnn {
    pub fn new() -> Self {
        let layout = ParamLayout::new(vec![
            ParamSpec::new("conv1.weight", &[CONV1_CHANNELS, 1, KERNEL, KERNEL], KERNEL * KERNEL),
            ParamSpec::new("conv1.bias", &[CONV1_CHANNELS], KERNEL * KERNEL),
            ParamSpec::new(
                "conv2.weight",
                &[CONV2_CHANNELS, CONV1_CHANNELS, KERNEL, KERNEL],
                CONV1_CHANNELS * KERNEL * KERNEL,
            ),
            ParamSpec::new("conv2.bias", &[CONV2_CHANNELS], CONV1_CHANNELS * KERNEL * KERNEL),
            ParamSpec::new("fc.weight", &[FEATURES, CLASSES], FEATURES),
            ParamSpec::new("fc.bias", &[CLASSES], FEATURES),
        ]);
        Self { layout }
    }
}

impl Default for Cnn {
    fn default() -> Self {
        Self::new()
    }
}

impl CandleClassifier for Cnn {
    fn name(&self) -> String {
        format!("cnn-{CONV1_CHANNELS}-{CONV2_CHANNELS}-{CLASSES}")
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn logits(&self, params: &[Tensor], inputs: &Tensor) -> candle_core::Result<Tensor> {
        let [conv1_weight, conv1_bias, conv2_weight, conv2_bias, fc_weight, fc_bias] = params else {
            candle_core::bail!(
                "{} takes 6 parameter tensors, got {}",
                CandleClassifier::name(self),
                params.len()
            );
        };
        let (batch, features) = inputs.dims2()?;
        if features != SIDE * SIDE {
            candle_core::bail!(
                "{} needs {SIDE}x{SIDE} images, got {features} features",
                CandleClassifier::name(self)
            );
        }
        let padding = KERNEL / 2;
        let images = inputs.reshape((batch, 1, SIDE, SIDE))?;
        let conv1 = images
            .conv2d(conv1_weight, padding, 1, 1, 1)?
            .broadcast_add(&conv1_bias.reshape((1, CONV1_CHANNELS, 1, 1))?)?
            .relu()?
            .max_pool2d(2)?;
        let conv2 = conv1
            .conv2d(conv2_weight, padding, 1, 1, 1)?
            .broadcast_add(&conv2_bias.reshape((1, CONV2_CHANNELS, 1, 1))?)?
            .relu()?
            .max_pool2d(2)?;
        conv2.reshape((batch, FEATURES))?.apply_op3(fc_weight, fc_bias, Linear { relu: false })
    }
}
