//! A multi-layer perceptron with one hidden ReLU layer.

use candle_core::Tensor;

use super::{CandleClassifier, ParamLayout, ParamSpec};
use crate::ops::Linear;

/// `inputs -> hidden (ReLU) -> classes`, 784-256-10 by default.
///
/// Weights are stored input-major (`[in, out]`), the layout our forward
/// kernel streams; a PyTorch `nn.Linear` weight is the transpose.
#[derive(Debug, Clone)]
pub struct Mlp {
    sizes: [usize; 3],
    layout: ParamLayout,
}

impl Mlp {
    pub fn new(inputs: usize, hidden: usize, classes: usize) -> Self {
        let layout = ParamLayout::new(vec![
            ParamSpec::new("fc1.weight", &[inputs, hidden], inputs),
            ParamSpec::new("fc1.bias", &[hidden], inputs),
            ParamSpec::new("fc2.weight", &[hidden, classes], hidden),
            ParamSpec::new("fc2.bias", &[classes], hidden),
        ]);
        Self { sizes: [inputs, hidden, classes], layout }
    }
}

impl CandleClassifier for Mlp {
    fn name(&self) -> String {
        let [inputs, hidden, classes] = self.sizes;
        format!("mlp-{inputs}-{hidden}-{classes}")
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn logits(&self, params: &[Tensor], inputs: &Tensor) -> candle_core::Result<Tensor> {
        let [fc1_weight, fc1_bias, fc2_weight, fc2_bias] = params else {
            candle_core::bail!(
                "{} takes 4 parameter tensors, got {}",
                CandleClassifier::name(self),
                params.len()
            );
        };
        let hidden = inputs.apply_op3(fc1_weight, fc1_bias, Linear { relu: true })?;
        hidden.apply_op3(fc2_weight, fc2_bias, Linear { relu: false })
    }
}
