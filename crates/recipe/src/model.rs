//! Which model a run trains.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::RecipeError;

/// The models a run can choose. The architectures themselves live in
/// `crowdtrain-train` (`crowdtrain_train::model::build`).
///
/// In `run.toml`, `model = "mlp"`, or for a GPT a table of its sizes:
/// `[training.model.gpt]` with `layers`, `heads`, `width`, `context` and
/// `vocab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// 784-256-10 with ReLU.
    #[default]
    Mlp,
    /// Two 5x5 convolutions (16 and 32 channels) with max-pooling, then a
    /// linear classifier.
    Cnn,
    /// A decoder-only transformer over tokens, of these sizes.
    Gpt(GptConfig),
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Cnn => "cnn",
            Self::Gpt(_) => "gpt",
        }
    }

    /// Whether the model reads tokens (else images).
    pub fn is_language_model(self) -> bool {
        matches!(self, Self::Gpt(_))
    }

    /// Refuses sizes that do not make a model or would not fit in memory.
    pub fn validate(&self) -> Result<(), RecipeError> {
        match self {
            Self::Gpt(config) => config.validate(),
            Self::Mlp | Self::Cnn => Ok(()),
        }
    }
}

/// Parses `mlp` and `cnn`. A GPT's sizes include its vocabulary, which
/// comes from a tokenizer, so commands build [`ModelKind::Gpt`] from their
/// flags and data instead.
impl FromStr for ModelKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "mlp" => Ok(Self::Mlp),
            "cnn" => Ok(Self::Cnn),
            "gpt" => Err("a gpt needs its sizes and a tokenizer; this command takes mlp or cnn".to_owned()),
            other => Err(format!("unknown model {other:?}; expected mlp or cnn")),
        }
    }
}

/// A GPT's sizes. Part of the model's name, and so of every state hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block; `width` must be a multiple.
    pub heads: usize,
    /// The residual stream's width (embedding size).
    pub width: usize,
    /// The longest sequence the model reads (position embeddings).
    pub context: usize,
    /// Tokens the tokenizer can produce.
    pub vocab: usize,
}

/// The largest sizes a configuration may name: a configuration can come
/// from a file or the network, and a model is allocated from it.
const LAYERS_MAX: usize = 64;
const WIDTH_MAX: usize = 4096;
const CONTEXT_MAX: usize = 8192;
const VOCAB_MAX: usize = 1 << 20;
const PARAMETERS_MAX: usize = 1 << 31;

impl GptConfig {
    /// nanoGPT's CPU quick-start ("baby") model for a vocabulary of `vocab`.
    pub fn baby(vocab: usize) -> Self {
        Self { layers: 4, heads: 4, width: 128, context: 64, vocab }
    }

    /// Width of one attention head.
    pub fn head_width(&self) -> usize {
        self.width / self.heads
    }

    /// `gpt-l4-h4-c128-t64-v65`: every size, so models of different shapes
    /// never share a state hash.
    pub fn name(&self) -> String {
        format!("gpt-l{}-h{}-c{}-t{}-v{}", self.layers, self.heads, self.width, self.context, self.vocab)
    }

    /// Refuses sizes that do not make a model, or that would not fit in
    /// memory.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let bad = |message: String| Err(RecipeError::new("model.gpt", message));
        if !(1..=LAYERS_MAX).contains(&self.layers) {
            return bad(format!("layers must be 1 to {LAYERS_MAX}, got {}", self.layers));
        }
        if !(1..=WIDTH_MAX).contains(&self.width) || self.heads == 0 || !self.width.is_multiple_of(self.heads)
        {
            return bad(format!(
                "width must be 1 to {WIDTH_MAX} and a multiple of heads, got width {} and {} heads",
                self.width, self.heads
            ));
        }
        if !(1..=CONTEXT_MAX).contains(&self.context) {
            return bad(format!("context must be 1 to {CONTEXT_MAX}, got {}", self.context));
        }
        if !(2..=VOCAB_MAX).contains(&self.vocab) {
            return bad(format!("vocabulary must be 2 to {VOCAB_MAX}, got {}", self.vocab));
        }
        if self.parameters() > PARAMETERS_MAX {
            return bad(format!("{} parameters is more than {PARAMETERS_MAX}", self.parameters()));
        }
        Ok(())
    }

    /// Parameters in the flat vector.
    pub fn parameters(&self) -> usize {
        let c = self.width;
        let per_layer = 4 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
        self.vocab * c + self.context * c + self.layers * per_layer + 2 * c
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
        assert!("gpt".parse::<ModelKind>().unwrap_err().contains("sizes"));
    }

    #[test]
    fn a_gpt_is_a_table_of_its_sizes_and_bad_sizes_are_refused() {
        #[derive(Deserialize)]
        struct Wrapper {
            model: ModelKind,
        }
        let text = "[model.gpt]\nlayers = 4\nheads = 4\nwidth = 128\ncontext = 64\nvocab = 65\n";
        let parsed: Wrapper = toml::from_str(text).unwrap();
        assert_eq!(parsed.model, ModelKind::Gpt(GptConfig::baby(65)));
        assert!(parsed.model.validate().is_ok());
        assert_eq!(GptConfig::baby(65).name(), "gpt-l4-h4-c128-t64-v65");
        let odd_heads = GptConfig { heads: 3, ..GptConfig::baby(65) };
        assert!(odd_heads.validate().unwrap_err().reason.contains("multiple of heads"));
        let huge = GptConfig { width: 4096, layers: 64, ..GptConfig::baby(65) };
        assert!(huge.validate().unwrap_err().reason.contains("parameters"));
    }
}
