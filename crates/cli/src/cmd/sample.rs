//! `crowdtrain sample`: text from a trained language model.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crowdtrain_data::text::Tokenizer;
use crowdtrain_train::{Gpt, ModelFile, ModelKind, Sampling};
use serde::Serialize;

use crate::output;

/// Generate text from a model trained with `crowdtrain train --model gpt
/// --checkpoint-out FILE`; the same seed always gives the same text.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The model file.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,

    /// The text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,

    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,

    /// Softmax temperature; 0 always takes the most likely token.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,

    /// Draw only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 200)]
    top_k: usize,

    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Also write the model's logits at every position of the prompt to
    /// this file (JSON: `tokens`, `logits` [positions][vocab]), e.g. for
    /// bench/pytorch_gpt.py check.
    #[arg(long, value_name = "FILE")]
    logits_json: Option<PathBuf>,

    /// Worker threads for the kernels.
    #[arg(long, value_name = "T")]
    threads: Option<usize>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct SampleReport {
    model: String,
    prompt: String,
    text: String,
    prompt_tokens: Vec<u32>,
    tokens: Vec<u32>,
    temperature: f32,
    top_k: usize,
    seed: u64,
}

#[derive(Debug, Serialize)]
struct PromptLogits<'a> {
    model: String,
    tokens: &'a [u32],
    logits: Vec<&'a [f32]>,
}

/// A language model file, its network and its tokenizer.
pub fn load_language_model(path: &std::path::Path) -> anyhow::Result<(ModelFile, Gpt, Tokenizer)> {
    let file =
        ModelFile::load(path).with_context(|| format!("could not read the model {}", path.display()))?;
    let ModelKind::Gpt(config) = file.kind else {
        anyhow::bail!("{} holds a {} model, not a language model", path.display(), file.kind);
    };
    let json = file.tokenizer.as_deref().context("the model file has no tokenizer")?;
    let tokenizer = Tokenizer::from_json(json).context("the model file's tokenizer")?;
    anyhow::ensure!(
        tokenizer.vocab_size() == config.vocab,
        "the tokenizer has {} tokens, the model {}",
        tokenizer.vocab_size(),
        config.vocab
    );
    Ok((file, Gpt::new(config), tokenizer))
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.temperature >= 0.0 && args.temperature.is_finite(), "--temperature must be >= 0");
    output::on_thread_pool(args.threads, || sample(args))
}

fn sample(args: SampleArgs) -> anyhow::Result<()> {
    let (file, gpt, tokenizer) = load_language_model(&args.checkpoint)?;
    let prompt = tokenizer.encode(&args.prompt).context("could not encode the prompt")?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    let model_name = crowdtrain_train::Model::name(&gpt);
    if let Some(path) = &args.logits_json {
        let window = &prompt[prompt.len().saturating_sub(gpt.config().context)..];
        let logits = gpt.logits(&file.params, window)?;
        let report = PromptLogits {
            model: model_name.clone(),
            tokens: window,
            logits: logits.chunks(gpt.config().vocab).collect(),
        };
        std::fs::write(path, serde_json::to_vec(&report)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, seed: args.seed };
    let generated = gpt.generate(&file.params, &prompt, args.tokens, sampling)?;
    let text = tokenizer.decode(&generated).context("could not decode the generated tokens")?;
    if args.json {
        return output::print_json(&SampleReport {
            model: model_name,
            prompt: args.prompt,
            text,
            prompt_tokens: prompt,
            tokens: generated,
            temperature: args.temperature,
            top_k: args.top_k,
            seed: args.seed,
        });
    }
    println!("{}{text}", args.prompt);
    Ok(())
}
