//! Models, and the flat parameter vector they all read from.
//!
//! A model is a description (a [`ParamLayout`]) plus a forward pass written
//! with candle tensors. Its parameters live outside it, in one `Vec<f32>`
//! in layout order: the optimizers, the state hash, pseudo-gradients, the
//! wire format and checkpoints all work on that vector, so none of them
//! knows what a model is. Adding a model (a char-level transformer, say)
//! means one new module implementing [`Model`] and one [`ModelKind`]
//! variant; nothing else changes.

mod cnn;
mod mlp;

use std::ops::Range;

use candle_core::{Device, Tensor, Var};
use crowdtrain_data::rng::{RngKey, keyed_rng, unit_f64};
use crowdtrain_data::{Batch, LabeledImages};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::ops::{SoftmaxCrossEntropy, row_argmax, row_loss, with_f32};

pub use cnn::Cnn;
pub use mlp::Mlp;

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Fan-in for initialisation: values are drawn from U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in)), PyTorch's default for linear and conv layers.
    pub fan_in: usize,
}

impl ParamSpec {
    pub fn new(name: &str, shape: &[usize], fan_in: usize) -> Self {
        Self { name: name.to_owned(), shape: shape.to_vec(), fan_in }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where each parameter lives in the flat vector. The order is the order
/// the model declares: stable, and part of the checkpoint and wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    ranges: Vec<Range<usize>>,
}

impl ParamLayout {
    pub fn new(specs: Vec<ParamSpec>) -> Self {
        let mut start = 0;
        let ranges = specs
            .iter()
            .map(|spec| {
                let range = start..start + spec.len();
                start = range.end;
                range
            })
            .collect();
        Self { specs, ranges }
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.ranges.last().map_or(0, |range| range.end)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each parameter with its range in the flat vector.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamSpec, Range<usize>)> {
        self.specs.iter().zip(self.ranges.iter().cloned())
    }

    /// Fresh parameters for `seed`, drawn in layout order from the "init"
    /// stream.
    pub fn initialize(&self, seed: u64) -> Vec<f32> {
        let mut rng = keyed_rng("init", RngKey::new(seed, 0, 0, 0));
        let mut params = Vec::with_capacity(self.len());
        for spec in &self.specs {
            let bound = 1.0 / (spec.fan_in as f64).sqrt();
            params.extend((0..spec.len()).map(|_| ((2.0 * unit_f64(&mut rng) - 1.0) * bound) as f32));
        }
        params
    }
}

/// A classifier over a batch of inputs.
pub trait Model: Send + Sync {
    /// A short name that identifies the architecture and its sizes, e.g.
    /// `mlp-784-256-10`; it is part of the state hash.
    fn name(&self) -> String;

    fn layout(&self) -> &ParamLayout;

    /// Logits `[n, classes]` for `inputs` `[batch, features]`, with
    /// `params` the layout's tensors in order. `n` equals the number of
    /// targets in the batch (the batch size for a classifier; batch times
    /// sequence length for a language model).
    fn logits(&self, params: &[Tensor], inputs: &Tensor) -> candle_core::Result<Tensor>;
}

pub use crowdtrain_recipe::ModelKind;

/// The architecture a [`ModelKind`] names.
pub fn build_model(kind: ModelKind) -> Box<dyn Model> {
    match kind {
        ModelKind::Mlp => Box::new(Mlp::new(784, 256, 10)),
        ModelKind::Cnn => Box::new(Cnn::new()),
    }
}

/// Mean loss on `batch`, with the gradient of every parameter written to
/// `grads` (same layout as `params`).
pub fn loss_and_grad(
    model: &dyn Model,
    params: &[f32],
    batch: &Batch,
    grads: &mut [f32],
) -> Result<f32, TrainError> {
    let layout = model.layout();
    check_len("parameters", params.len(), layout.len())?;
    check_len("gradients", grads.len(), layout.len())?;
    let device = Device::Cpu;
    let vars = layout
        .iter()
        .map(|(spec, range)| Var::from_slice(&params[range], spec.shape.as_slice(), &device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|var| var.as_tensor().clone()).collect();
    let inputs = Tensor::from_slice(&batch.inputs, (batch.len(), batch.features), &device)?;
    let targets = Tensor::from_slice(&batch.targets, batch.len(), &device)?;
    let loss = model.logits(&tensors, &inputs)?.apply_op2(&targets, SoftmaxCrossEntropy)?;
    let store = loss.backward()?;
    for (var, (_, range)) in vars.iter().zip(layout.iter()) {
        match store.get(var) {
            Some(grad) => with_f32(grad, |grad| grads[range].copy_from_slice(grad))?,
            None => grads[range].fill(0.0),
        }
    }
    Ok(loss.to_scalar::<f32>()?)
}

/// Loss and accuracy of a model on a labeled set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
}

/// Examples per forward pass during evaluation: large enough to keep the
/// kernels busy, small enough to bound memory.
const EVALUATION_CHUNK: usize = 1000;

/// Mean loss and accuracy of `params` on all of `images`.
pub fn evaluate(model: &dyn Model, params: &[f32], images: &LabeledImages) -> Result<Evaluation, TrainError> {
    let indices: Vec<u32> = (0..images.len() as u32).collect();
    evaluate_subset(model, params, images, &indices)
}

/// Mean loss and accuracy of `params` on the given examples of `images`.
pub fn evaluate_subset(
    model: &dyn Model,
    params: &[f32],
    images: &LabeledImages,
    indices: &[u32],
) -> Result<Evaluation, TrainError> {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    for_each_example(model, params, images, indices, |loss, right| {
        loss_sum += f64::from(loss);
        correct += usize::from(right);
    })?;
    let count = indices.len().max(1) as f64;
    Ok(Evaluation { loss: loss_sum / count, accuracy: correct as f64 / count })
}

/// The loss of `params` on each of the given examples of `images`, in
/// order: what a held-out score's sampling error is measured from.
pub fn example_losses(
    model: &dyn Model,
    params: &[f32],
    images: &LabeledImages,
    indices: &[u32],
) -> Result<Vec<f32>, TrainError> {
    let mut losses = Vec::with_capacity(indices.len());
    for_each_example(model, params, images, indices, |loss, _| losses.push(loss))?;
    Ok(losses)
}

/// Calls `visit(loss, correct)` for each of the given examples, in order.
fn for_each_example(
    model: &dyn Model,
    params: &[f32],
    images: &LabeledImages,
    indices: &[u32],
    mut visit: impl FnMut(f32, bool),
) -> Result<(), TrainError> {
    let layout = model.layout();
    check_len("parameters", params.len(), layout.len())?;
    let device = Device::Cpu;
    let tensors = layout
        .iter()
        .map(|(spec, range)| Tensor::from_slice(&params[range], spec.shape.as_slice(), &device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut batch = Batch::default();
    for chunk in indices.chunks(EVALUATION_CHUNK) {
        batch.fill(images, chunk);
        let inputs = Tensor::from_slice(&batch.inputs, (batch.len(), batch.features), &device)?;
        let logits = model.logits(&tensors, &inputs)?;
        let classes = logits.dim(1)?;
        with_f32(&logits, |logits| {
            for (row, &target) in logits.chunks_exact(classes).zip(&batch.targets) {
                visit(row_loss(row, target as usize), row_argmax(row) == target as usize);
            }
        })?;
    }
    Ok(())
}

fn check_len(what: &'static str, found: usize, expected: usize) -> Result<(), TrainError> {
    if found == expected { Ok(()) } else { Err(TrainError::WrongLength { what, found, expected }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_orders_parameters_as_declared() {
        let layout = ParamLayout::new(vec![ParamSpec::new("a", &[2, 3], 2), ParamSpec::new("b", &[3], 2)]);
        let ranges: Vec<_> = layout.iter().map(|(spec, range)| (spec.name.clone(), range)).collect();
        assert_eq!(ranges, vec![("a".to_owned(), 0..6), ("b".to_owned(), 6..9)]);
        assert_eq!(layout.len(), 9);
    }

    #[test]
    fn initialization_is_seeded_and_bounded() {
        let layout = Mlp::new(784, 256, 10).layout().clone();
        let params = layout.initialize(1);
        assert_eq!(params.len(), 784 * 256 + 256 + 256 * 10 + 10);
        assert_eq!(params, layout.initialize(1));
        assert_ne!(params, layout.initialize(2));
        let bound = 1.0 / 784f32.sqrt();
        assert!(params[..784 * 256].iter().all(|value| value.abs() <= bound));
    }

    #[test]
    fn wrong_parameter_count_is_an_error_not_a_panic() {
        let model = build_model(ModelKind::Mlp);
        let batch = Batch { inputs: vec![0.0; 784], features: 784, targets: vec![1] };
        let mut grads = vec![0.0; model.layout().len()];
        let error = loss_and_grad(model.as_ref(), &[0.0; 10], &batch, &mut grads).unwrap_err();
        assert!(matches!(error, TrainError::WrongLength { what: "parameters", .. }), "{error}");
    }
}
