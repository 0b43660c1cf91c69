//! Models, and the flat parameter vector they all read from.
//!
//! A model is a description (a [`ParamLayout`]) plus a loss and its
//! gradient on a batch of [`Examples`]. Its parameters live outside it, in
//! one `Vec<f32>` in layout order: the optimizers, the state hash,
//! pseudo-gradients, the wire format and checkpoints all work on that
//! vector, so none of them knows what a model is.
//!
//! The image classifiers ([`Mlp`], [`Cnn`]) write their forward pass as a
//! candle graph ([`CandleClassifier`]) and let candle's backpropagation call
//! our deterministic ops. The language model ([`Gpt`]) computes its own
//! forward and backward passes over flat buffers with our kernels: a
//! transformer is dozens of small operations per layer, and candle's graph
//! bookkeeping and copies would cost more than the arithmetic.

mod cnn;
pub mod gpt;
mod mlp;

use std::ops::Range;

use candle_core::{Device, Tensor, Var};
use crowdtrain_data::rng::{RngKey, keyed_rng, standard_normal, unit_f64};
use crowdtrain_data::{Batch, LabeledImages};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::ops::{SoftmaxCrossEntropy, row_argmax, row_loss, with_f32};

pub use cnn::Cnn;
pub use gpt::{Gpt, Sampling};
pub use mlp::Mlp;

/// How a parameter tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for linear and
    /// convolution layers.
    Uniform { fan_in: usize },
    /// N(0, std^2): GPT-2's embeddings and projections.
    Normal { std: f64 },
    /// Every value the same (LayerNorm's ones and zeros, zero biases);
    /// draws nothing from the stream.
    Constant(f32),
}

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// Whether AdamW's weight decay applies (language models leave
    /// biases and LayerNorm parameters undecayed).
    pub decay: bool,
}

impl ParamSpec {
    /// A tensor initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and decayed.
    pub fn new(name: &str, shape: &[usize], fan_in: usize) -> Self {
        Self::with_init(name, shape, Init::Uniform { fan_in }, true)
    }

    pub fn with_init(name: &str, shape: &[usize], init: Init, decay: bool) -> Self {
        Self { name: name.to_owned(), shape: shape.to_vec(), init, decay }
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
    /// stream, each tensor by its own rule.
    pub fn initialize(&self, seed: u64) -> Vec<f32> {
        let mut rng = keyed_rng("init", RngKey::new(seed, 0, 0, 0));
        let mut params = Vec::with_capacity(self.len());
        for spec in &self.specs {
            match spec.init {
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    params.extend((0..spec.len()).map(|_| ((2.0 * unit_f64(&mut rng) - 1.0) * bound) as f32));
                }
                Init::Normal { std } => {
                    params.extend((0..spec.len()).map(|_| (standard_normal(&mut rng) * std) as f32));
                }
                Init::Constant(value) => params.extend(std::iter::repeat_n(value, spec.len())),
            }
        }
        params
    }

    /// The ranges of the flat vector with and without weight decay, in
    /// order, neighbours of the same kind merged.
    pub fn decay_segments(&self) -> Vec<(Range<usize>, bool)> {
        let mut segments: Vec<(Range<usize>, bool)> = Vec::new();
        for (spec, range) in self.iter() {
            match segments.last_mut() {
                Some((last, decay)) if *decay == spec.decay && last.end == range.start => {
                    last.end = range.end
                }
                _ => segments.push((range, spec.decay)),
            }
        }
        segments
    }

    /// The range of the tensor called `name`.
    pub fn range_of(&self, name: &str) -> Option<Range<usize>> {
        self.iter().find(|(spec, _)| spec.name == name).map(|(_, range)| range)
    }
}

/// A batch of examples, as a model reads them.
#[derive(Debug, Clone, Copy)]
pub enum Examples<'a> {
    /// Images with class labels.
    Images(&'a Batch),
    /// `sequences` token sequences of equal length, row-major: `inputs`
    /// and the next token after each, `targets`.
    Tokens { inputs: &'a [u32], targets: &'a [u32], sequences: usize },
}

impl Examples<'_> {
    /// What the examples are, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Images(_) => "images",
            Self::Tokens { .. } => "tokens",
        }
    }

    /// Predictions the loss averages over: images, or tokens.
    pub fn targets(&self) -> usize {
        match self {
            Self::Images(batch) => batch.len(),
            Self::Tokens { targets, .. } => targets.len(),
        }
    }
}

/// Summed loss and correct predictions over some examples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSum {
    /// The sum of per-prediction losses (nats).
    pub loss: f64,
    /// Predictions whose largest logit is the target.
    pub correct: usize,
    /// Predictions made.
    pub count: usize,
}

impl LossSum {
    pub fn add(&mut self, other: LossSum) {
        self.loss += other.loss;
        self.correct += other.correct;
        self.count += other.count;
    }

    /// Mean loss and accuracy.
    pub fn evaluation(&self) -> Evaluation {
        let count = self.count.max(1) as f64;
        Evaluation { loss: self.loss / count, accuracy: self.correct as f64 / count }
    }
}

/// A model: named tensors in a flat vector, and a loss with its gradient.
pub trait Model: Send + Sync {
    /// A short name that identifies the architecture and its sizes, e.g.
    /// `mlp-784-256-10`; it is part of the state hash.
    fn name(&self) -> String;

    fn layout(&self) -> &ParamLayout;

    /// Mean loss on `examples`, with the gradient of every parameter
    /// written to `grads` (same layout as `params`).
    fn loss_and_grad(
        &self,
        params: &[f32],
        examples: Examples<'_>,
        grads: &mut [f32],
    ) -> Result<f32, TrainError>;

    /// Summed loss and correct predictions on `examples`, no gradients.
    fn loss_sum(&self, params: &[f32], examples: Examples<'_>) -> Result<LossSum, TrainError>;
}

/// A classifier of images whose forward pass is a candle graph built from
/// our deterministic ops; candle's backpropagation gives the gradients.
pub trait CandleClassifier: Send + Sync {
    /// See [`Model::name`].
    fn name(&self) -> String;

    fn layout(&self) -> &ParamLayout;

    /// Logits `[batch, classes]` for `inputs` `[batch, features]`, with
    /// `params` the layout's tensors in order.
    fn logits(&self, params: &[Tensor], inputs: &Tensor) -> candle_core::Result<Tensor>;
}

impl<T: CandleClassifier> Model for T {
    fn name(&self) -> String {
        CandleClassifier::name(self)
    }

    fn layout(&self) -> &ParamLayout {
        CandleClassifier::layout(self)
    }

    fn loss_and_grad(
        &self,
        params: &[f32],
        examples: Examples<'_>,
        grads: &mut [f32],
    ) -> Result<f32, TrainError> {
        let Examples::Images(batch) = examples else {
            return Err(TrainError::WrongExamples { model: Model::name(self), found: examples.kind() });
        };
        candle_loss_and_grad(self, params, batch, grads)
    }

    fn loss_sum(&self, params: &[f32], examples: Examples<'_>) -> Result<LossSum, TrainError> {
        let Examples::Images(batch) = examples else {
            return Err(TrainError::WrongExamples { model: Model::name(self), found: examples.kind() });
        };
        let layout = CandleClassifier::layout(self);
        check_len("parameters", params.len(), layout.len())?;
        let device = Device::Cpu;
        let tensors = layout
            .iter()
            .map(|(spec, range)| Tensor::from_slice(&params[range], spec.shape.as_slice(), &device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let inputs = Tensor::from_slice(&batch.inputs, (batch.len(), batch.features), &device)?;
        let logits = self.logits(&tensors, &inputs)?;
        let classes = logits.dim(1)?;
        let mut sum = LossSum { count: batch.len(), ..LossSum::default() };
        with_f32(&logits, |logits| {
            for (row, &target) in logits.chunks_exact(classes).zip(&batch.targets) {
                sum.loss += f64::from(row_loss(row, target as usize));
                sum.correct += usize::from(row_argmax(row) == target as usize);
            }
        })?;
        Ok(sum)
    }
}

pub use crowdtrain_recipe::{GptConfig, ModelKind};

/// The architecture a [`ModelKind`] names.
pub fn build_model(kind: ModelKind) -> Box<dyn Model> {
    match kind {
        ModelKind::Mlp => Box::new(Mlp::new(784, 256, 10)),
        ModelKind::Cnn => Box::new(Cnn::new()),
        ModelKind::Gpt(config) => Box::new(Gpt::new(config)),
    }
}

/// Mean loss on an image `batch`, with the gradient of every parameter
/// written to `grads` (same layout as `params`).
pub fn loss_and_grad(
    model: &dyn Model,
    params: &[f32],
    batch: &Batch,
    grads: &mut [f32],
) -> Result<f32, TrainError> {
    model.loss_and_grad(params, Examples::Images(batch), grads)
}

/// One step of a candle classifier: parameters into `Var`s, the graph,
/// candle's backpropagation, gradients out.
fn candle_loss_and_grad(
    model: &dyn CandleClassifier,
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
    check_len("parameters", params.len(), model.layout().len())?;
    let mut sum = LossSum::default();
    let mut batch = Batch::default();
    for chunk in indices.chunks(EVALUATION_CHUNK) {
        batch.fill(images, chunk);
        sum.add(model.loss_sum(params, Examples::Images(&batch))?);
    }
    Ok(sum.evaluation())
}

/// The mean loss of `params` on the given examples of `images` and its
/// gradient (written to `grads`): what the linearised quality score
/// (`crowdtrain_defense::quality`) takes from one backward pass. Chunks of
/// [`EVALUATION_CHUNK`] bound the memory; their gradients are weighted by
/// size and added in chunk order, in `f64`, so the result depends on the
/// examples alone, never on the thread count.
pub fn gradient_subset(
    model: &dyn Model,
    params: &[f32],
    images: &LabeledImages,
    indices: &[u32],
    grads: &mut [f32],
) -> Result<f64, TrainError> {
    check_len("parameters", params.len(), model.layout().len())?;
    check_len("gradients", grads.len(), model.layout().len())?;
    let mut total = vec![0.0f64; grads.len()];
    let mut loss = 0.0f64;
    let mut batch = Batch::default();
    for chunk in indices.chunks(EVALUATION_CHUNK) {
        batch.fill(images, chunk);
        let weight = chunk.len() as f64;
        loss += weight * f64::from(model.loss_and_grad(params, Examples::Images(&batch), grads)?);
        total.iter_mut().zip(grads.iter()).for_each(|(sum, grad)| *sum += weight * f64::from(*grad));
    }
    let count = indices.len().max(1) as f64;
    grads.iter_mut().zip(&total).for_each(|(grad, sum)| *grad = (sum / count) as f32);
    Ok(loss / count)
}

/// The loss of `params` on each of the given examples of `images`, in
/// order: what a held-out score's sampling error is measured from.
pub fn example_losses(
    model: &dyn Model,
    params: &[f32],
    images: &LabeledImages,
    indices: &[u32],
) -> Result<Vec<f32>, TrainError> {
    check_len("parameters", params.len(), model.layout().len())?;
    let mut batch = Batch::default();
    indices
        .iter()
        .map(|&index| {
            batch.fill(images, &[index]);
            Ok(model.loss_sum(params, Examples::Images(&batch))?.loss as f32)
        })
        .collect()
}

pub(crate) fn check_len(what: &'static str, found: usize, expected: usize) -> Result<(), TrainError> {
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
        let layout = CandleClassifier::layout(&Mlp::new(784, 256, 10)).clone();
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
