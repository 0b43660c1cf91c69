//! `crowdtrain export`: a trained language model in the layout a PyTorch
//! user knows.

use std::path::PathBuf;

use clap::Args;
use crowdtrain_train::model_file::export_pytorch;
use serde::Serialize;

use crate::output;

/// Write a model file as `model.safetensors` (nanoGPT's tensor names,
/// `[out, in]` linear weights), `config.json` (nanoGPT's GPTConfig) and
/// `tokenizer.json` (Hugging Face); bench/pytorch_gpt.py loads it.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model file (from `crowdtrain train --model gpt --checkpoint-out`).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,

    /// The directory to write (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ExportReport {
    model: String,
    parameters: usize,
    steps: u64,
    files: Vec<String>,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let (file, gpt, _) = super::sample::load_language_model(&args.checkpoint)?;
    let files = export_pytorch(&file, &args.out)?;
    let report = ExportReport {
        model: crowdtrain_train::Model::name(&gpt),
        parameters: file.params.len(),
        steps: file.steps,
        files: files.iter().map(|path| path.display().to_string()).collect(),
    };
    if args.json {
        return output::print_json(&report);
    }
    println!("{} ({} parameters, {} steps):", report.model, report.parameters, report.steps);
    for path in &report.files {
        println!("  {path}");
    }
    Ok(())
}
