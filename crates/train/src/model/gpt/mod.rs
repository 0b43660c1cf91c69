//! A decoder-only transformer (GPT-2's architecture, nanoGPT's sizes).
//!
//! Token and learned position embeddings; `layers` pre-LayerNorm blocks of
//! causal multi-head self-attention and a GELU MLP (4x wide), each added to
//! the residual stream; a final LayerNorm; the output head tied to the
//! token embedding. Weights are input-major (`[in, out]`, the transpose of
//! PyTorch's `nn.Linear`), every linear layer has a bias, dropout is none.
//!
//! The forward and backward passes are ours ([`engine`]), over flat
//! buffers with our kernels: each matrix product is an FMA chain in
//! increasing `k` (`kernels::gemm`), every sum has a fixed order, every
//! transcendental is a polynomial in basic arithmetic
//! (`kernels::vector`), and threads split outputs, never sums. So a step
//! gives the same bits at any thread count and on any x86-64 CPU, as the
//! MLP's does.

mod engine;
mod sample;

use std::ops::Range;
use std::sync::Mutex;

use super::{Examples, Init, LossSum, Model, ParamLayout, ParamSpec, check_len};
use crate::TrainError;

pub use crowdtrain_recipe::GptConfig;
pub use engine::Workspace;
pub use sample::{Sampling, draw};

/// Where one block's tensors live in the flat vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockRanges {
    pub ln1_weight: Range<usize>,
    pub ln1_bias: Range<usize>,
    pub attn_weight: Range<usize>,
    pub attn_bias: Range<usize>,
    pub attn_proj_weight: Range<usize>,
    pub attn_proj_bias: Range<usize>,
    pub ln2_weight: Range<usize>,
    pub ln2_bias: Range<usize>,
    pub fc_weight: Range<usize>,
    pub fc_bias: Range<usize>,
    pub fc_proj_weight: Range<usize>,
    pub fc_proj_bias: Range<usize>,
}

/// Where every tensor lives in the flat vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ranges {
    pub token_embedding: Range<usize>,
    pub position_embedding: Range<usize>,
    pub blocks: Vec<BlockRanges>,
    pub lnf_weight: Range<usize>,
    pub lnf_bias: Range<usize>,
}

/// A GPT of one configuration, with a pool of reusable buffers so that a
/// step allocates nothing once warm (several steps may run at once, as
/// DiLoCo's simulated workers do).
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    layout: ParamLayout,
    ranges: Ranges,
    workspaces: Mutex<Vec<Workspace>>,
}

impl Gpt {
    /// # Panics
    /// If `config` does not validate; call [`GptConfig::validate`] first
    /// on untrusted sizes.
    pub fn new(config: GptConfig) -> Self {
        if let Err(error) = config.validate() {
            panic!("{error}");
        }
        let (layout, ranges) = build_layout(&config);
        Self { config, layout, ranges, workspaces: Mutex::new(Vec::new()) }
    }

    pub fn config(&self) -> GptConfig {
        self.config
    }

    /// Logits `[tokens.len(), vocab]` of one sequence of at most `context`
    /// tokens: for each position, the scores of the next token.
    pub fn logits(&self, params: &[f32], tokens: &[u32]) -> Result<Vec<f32>, TrainError> {
        check_len("parameters", params.len(), self.layout.len())?;
        self.check_tokens(tokens, tokens, 1)?;
        Ok(self.with_workspace(1, tokens.len(), |workspace| {
            engine::forward(&self.config, &self.ranges, params, tokens, workspace);
            workspace.logits().to_vec()
        }))
    }

    /// The parameters as nanoGPT's `GPT` (with `bias=True`) names and lays
    /// them out: `transformer.`-prefixed names, linear weights transposed to
    /// `[out, in]`; the head is tied to `transformer.wte.weight` and not
    /// repeated.
    pub fn pytorch_tensors(&self, params: &[f32]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.layout
            .iter()
            .map(|(spec, range)| {
                let values = &params[range];
                let name = format!("transformer.{}", spec.name);
                let embedding = spec.name.starts_with("wte.") || spec.name.starts_with("wpe.");
                match spec.shape.as_slice() {
                    &[inputs, outputs] if !embedding => {
                        let mut transposed = vec![0.0f32; values.len()];
                        for i in 0..inputs {
                            for o in 0..outputs {
                                transposed[o * inputs + i] = values[i * outputs + o];
                            }
                        }
                        (name, vec![outputs, inputs], transposed)
                    }
                    shape => (name, shape.to_vec(), values.to_vec()),
                }
            })
            .collect()
    }

    /// nanoGPT's `GPTConfig` for this model, with what a loader must know
    /// beyond it (the GELU's tanh form, the tied head, LayerNorm's epsilon).
    pub fn pytorch_config(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": "gpt2",
            "n_layer": self.config.layers,
            "n_head": self.config.heads,
            "n_embd": self.config.width,
            "block_size": self.config.context,
            "vocab_size": self.config.vocab,
            "bias": true,
            "dropout": 0.0,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": true,
            "crowdtrain_model": self.name(),
        })
    }

    fn check_tokens(&self, inputs: &[u32], targets: &[u32], sequences: usize) -> Result<usize, TrainError> {
        let tokens = inputs.len();
        let bad = || TrainError::BadSequences {
            tokens,
            targets: targets.len(),
            sequences,
            context: self.config.context,
        };
        if sequences == 0 || tokens == 0 || targets.len() != tokens || !tokens.is_multiple_of(sequences) {
            return Err(bad());
        }
        let length = tokens / sequences;
        if length > self.config.context {
            return Err(bad());
        }
        if let Some(&token) = inputs.iter().chain(targets).find(|&&token| token as usize >= self.config.vocab)
        {
            return Err(TrainError::TokenOutOfRange { token, vocab: self.config.vocab });
        }
        Ok(length)
    }

    /// Runs `work` with a workspace for `sequences` sequences of `length`,
    /// taken from the pool and returned to it.
    fn with_workspace<R>(
        &self,
        sequences: usize,
        length: usize,
        work: impl FnOnce(&mut Workspace) -> R,
    ) -> R {
        let taken = self.workspaces.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let mut workspace = match taken {
            Some(workspace) if workspace.fits(sequences, length) => workspace,
            _ => Workspace::new(&self.config, sequences, length),
        };
        let result = work(&mut workspace);
        self.workspaces.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(workspace);
        result
    }
}

impl Model for Gpt {
    fn name(&self) -> String {
        self.config.name()
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn loss_and_grad(
        &self,
        params: &[f32],
        examples: Examples<'_>,
        grads: &mut [f32],
    ) -> Result<f32, TrainError> {
        let Examples::Tokens { inputs, targets, sequences } = examples else {
            return Err(TrainError::WrongExamples { model: self.name(), found: examples.kind() });
        };
        check_len("parameters", params.len(), self.layout.len())?;
        check_len("gradients", grads.len(), self.layout.len())?;
        let length = self.check_tokens(inputs, targets, sequences)?;
        Ok(self.with_workspace(sequences, length, |workspace| {
            engine::forward(&self.config, &self.ranges, params, inputs, workspace);
            let loss = engine::cross_entropy(&self.config, targets, workspace, true);
            engine::backward(&self.config, &self.ranges, params, inputs, workspace, grads);
            (loss.loss / loss.count as f64) as f32
        }))
    }

    fn loss_sum(&self, params: &[f32], examples: Examples<'_>) -> Result<LossSum, TrainError> {
        let Examples::Tokens { inputs, targets, sequences } = examples else {
            return Err(TrainError::WrongExamples { model: self.name(), found: examples.kind() });
        };
        check_len("parameters", params.len(), self.layout.len())?;
        let length = self.check_tokens(inputs, targets, sequences)?;
        Ok(self.with_workspace(sequences, length, |workspace| {
            engine::forward(&self.config, &self.ranges, params, inputs, workspace);
            engine::cross_entropy(&self.config, targets, workspace, false)
        }))
    }
}

/// nanoGPT's initialisation: N(0, 0.02) for embeddings and linear weights,
/// N(0, 0.02 / sqrt(2 layers)) for the projections into the residual
/// stream, zero biases, LayerNorm weight 1 and bias 0. Biases and
/// LayerNorm parameters are not weight-decayed.
fn build_layout(config: &GptConfig) -> (ParamLayout, Ranges) {
    const STD: f64 = 0.02;
    let residual_std = STD / ((2 * config.layers) as f64).sqrt();
    let c = config.width;
    let mut specs = Vec::new();
    let mut next = 0usize;
    let mut add = |specs: &mut Vec<ParamSpec>, name: String, shape: &[usize], init: Init, decay: bool| {
        let spec = ParamSpec::with_init(&name, shape, init, decay);
        let range = next..next + spec.len();
        next = range.end;
        specs.push(spec);
        range
    };
    let weight = |std: f64| Init::Normal { std };
    let zeros = Init::Constant(0.0);
    let ones = Init::Constant(1.0);
    let token_embedding = add(&mut specs, "wte.weight".into(), &[config.vocab, c], weight(STD), true);
    let position_embedding = add(&mut specs, "wpe.weight".into(), &[config.context, c], weight(STD), true);
    let blocks = (0..config.layers)
        .map(|layer| {
            let mut block = |name: &str, shape: &[usize], init: Init, decay: bool| {
                add(&mut specs, format!("h.{layer}.{name}"), shape, init, decay)
            };
            BlockRanges {
                ln1_weight: block("ln_1.weight", &[c], ones, false),
                ln1_bias: block("ln_1.bias", &[c], zeros, false),
                attn_weight: block("attn.c_attn.weight", &[c, 3 * c], weight(STD), true),
                attn_bias: block("attn.c_attn.bias", &[3 * c], zeros, false),
                attn_proj_weight: block("attn.c_proj.weight", &[c, c], weight(residual_std), true),
                attn_proj_bias: block("attn.c_proj.bias", &[c], zeros, false),
                ln2_weight: block("ln_2.weight", &[c], ones, false),
                ln2_bias: block("ln_2.bias", &[c], zeros, false),
                fc_weight: block("mlp.c_fc.weight", &[c, 4 * c], weight(STD), true),
                fc_bias: block("mlp.c_fc.bias", &[4 * c], zeros, false),
                fc_proj_weight: block("mlp.c_proj.weight", &[4 * c, c], weight(residual_std), true),
                fc_proj_bias: block("mlp.c_proj.bias", &[c], zeros, false),
            }
        })
        .collect();
    let lnf_weight = add(&mut specs, "ln_f.weight".into(), &[c], ones, false);
    let lnf_bias = add(&mut specs, "ln_f.bias".into(), &[c], zeros, false);
    let layout = ParamLayout::new(specs);
    (layout, Ranges { token_embedding, position_embedding, blocks, lnf_weight, lnf_bias })
}

#[cfg(test)]
mod tests;
