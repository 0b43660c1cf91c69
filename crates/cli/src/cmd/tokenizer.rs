//! `crowdtrain tokenizer ...`: train a byte-level BPE tokenizer, tokenise a
//! text into a token file, decode ids, and measure tokenisation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use crowdtrain_data::text::{
    TextDatasetInfo, TextSource, TokenWidth, Tokenizer, TokenizerKind, TokenizerSpec, default_cache_dir,
    hex_digest,
};
use serde::Serialize;

use crate::output::{self, TextProgress};

/// Tokenizers for language models: train byte-level BPE on a corpus,
/// encode a text into a token file, decode ids, measure the speed.
///
/// Text comes from --data FILE|DIR (UTF-8, gzipped or not; a directory's
/// files in path order), else the installed Shakespeare
/// (scripts/install-shakespeare.sh), else the subset bundled into this
/// binary. Tokens are cached in CROWDTRAIN_CACHE_DIR (default
/// ~/.cache/crowdtrain/tokens), so a text is tokenised once.
#[derive(Debug, Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    command: TokenizerCommand,
}

#[derive(Debug, Subcommand)]
enum TokenizerCommand {
    /// Train GPT-2's byte-level BPE on a text (or take its characters) and save it as tokenizer.json.
    Train(TrainArgs),
    /// Tokenise a text (or --text STRING) and report its tokens.
    Encode(EncodeArgs),
    /// Turn token ids back into text.
    Decode(DecodeArgs),
    /// Tokenisation speed: our fast path beside the Hugging Face library's, on the same chunks.
    Bench(BenchArgs),
}

/// Where the text is and how many threads work on it.
#[derive(Debug, Args)]
struct TextArgs {
    /// A UTF-8 text file (gzipped or not) or a directory of them. Default:
    /// the installed Shakespeare, else the bundled subset.
    #[arg(long, value_name = "FILE|DIR")]
    data: Option<PathBuf>,

    /// Worker threads. Default: RAYON_NUM_THREADS, else one per core.
    /// Results are identical at any setting.
    #[arg(long, value_name = "T")]
    threads: Option<usize>,

    /// Print one JSON object on stdout instead of a report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// Vocabulary size: the 256 bytes plus the merges (at least 256).
    #[arg(long, value_name = "N", required_unless_present = "chars")]
    vocab: Option<usize>,

    /// Save the text's character tokenizer instead (every distinct
    /// character, in code point order; what `--tokenizer char` builds).
    #[arg(long, conflicts_with = "vocab")]
    chars: bool,

    /// Where to write the tokenizer (Hugging Face tokenizer.json format).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    #[command(flatten)]
    text: TextArgs,
}

#[derive(Debug, Args)]
struct EncodeArgs {
    /// `char` (the text's characters) or a tokenizer.json.
    #[arg(long, value_name = "char|FILE", default_value = "char")]
    tokenizer: TokenizerSpec,

    /// Encode this string instead of the data and print its ids (a `char`
    /// tokenizer still takes its characters from the data).
    #[arg(long, value_name = "STRING")]
    text: Option<String>,

    /// Also write the tokens to FILE: little-endian u16 when the
    /// vocabulary fits, else u32, nothing else (NumPy: np.memmap(FILE,
    /// dtype=np.uint16)).
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    out: Option<PathBuf>,

    #[command(flatten)]
    source: TextArgs,
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// `char` (the data's characters) or a tokenizer.json.
    #[arg(long, value_name = "char|FILE", default_value = "char")]
    tokenizer: TokenizerSpec,

    /// Token ids, separated by commas or spaces.
    #[arg(required = true, value_name = "IDS", value_delimiter = ',', num_args = 1..)]
    ids: Vec<String>,

    #[command(flatten)]
    source: TextArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// `char` (the text's characters) or a tokenizer.json.
    #[arg(long, value_name = "char|FILE", default_value = "char")]
    tokenizer: TokenizerSpec,

    /// Stop after this many bytes of text.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_bytes: u64,

    /// Encode each chunk this many times with each path, alternately, and
    /// count the median time.
    #[arg(long, value_name = "N", default_value_t = 5)]
    repeat: usize,

    #[command(flatten)]
    source: TextArgs,
}

pub fn run(args: TokenizerArgs) -> anyhow::Result<()> {
    match args.command {
        TokenizerCommand::Train(args) => {
            let threads = args.text.threads;
            output::on_thread_pool(threads, || train(args))
        }
        TokenizerCommand::Encode(args) => {
            let threads = args.source.threads;
            output::on_thread_pool(threads, || encode(args))
        }
        TokenizerCommand::Decode(args) => decode(args),
        TokenizerCommand::Bench(args) => {
            let threads = args.source.threads;
            output::on_thread_pool(threads, || bench(args))
        }
    }
}

#[derive(Serialize)]
struct TrainReport {
    /// The trained vocabulary (fewer than asked when the text has no more
    /// pairs to merge).
    vocab_size: usize,
    /// `--vocab`, absent with `--chars`.
    requested_vocab_size: Option<usize>,
    tokenizer: TokenizerKind,
    tokenizer_hash: String,
    out: PathBuf,
    /// The text, tokenised with the new tokenizer.
    tokens: usize,
    text_bytes: u64,
    bytes_per_token: f64,
    train_seconds: f64,
    tokenize_seconds: f64,
    data: TextDatasetInfo,
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let source = TextSource::resolve(args.text.data.as_deref());
    let progress = TextProgress::new();
    let started = Instant::now();
    let tokenizer = match args.vocab {
        Some(vocab) => Tokenizer::train_bpe(&source, vocab, &|step| progress.report(step)),
        None => TokenizerSpec::Char.build(&source, &|step| progress.report(step)),
    }
    .with_context(|| format!("could not train a tokenizer on {}", source.describe()))?;
    let train_seconds = started.elapsed().as_secs_f64();
    tokenizer.save(&args.out).with_context(|| format!("could not write {}", args.out.display()))?;
    let started = Instant::now();
    let dataset = crowdtrain_data::text::TextDataset::load_with(
        &source,
        tokenizer.clone(),
        Some(&default_cache_dir()),
        &|step| progress.report(step),
    )
    .with_context(|| format!("could not tokenise {}", source.describe()))?;
    let tokenize_seconds = started.elapsed().as_secs_f64();
    drop(progress);
    let info = dataset.info.clone();
    let report = TrainReport {
        vocab_size: tokenizer.vocab_size(),
        requested_vocab_size: args.vocab,
        tokenizer: tokenizer.kind(),
        tokenizer_hash: hex_digest(&tokenizer.hash()),
        out: args.out,
        tokens: info.tokens,
        text_bytes: info.text_bytes,
        bytes_per_token: info.text_bytes as f64 / info.tokens as f64,
        train_seconds,
        tokenize_seconds,
        data: info,
    };
    if args.text.json {
        return output::print_json(&report);
    }
    eprintln!("data: {}", report.data);
    println!(
        "{} written to {}: {} bytes of text are {} tokens, {:.2} bytes per token (trained in {:.1} s)",
        tokenizer,
        report.out.display(),
        report.text_bytes,
        report.tokens,
        report.bytes_per_token,
        report.train_seconds
    );
    Ok(())
}

#[derive(Serialize)]
struct EncodeReport {
    tokenizer: TokenizerKind,
    vocab_size: usize,
    tokenizer_hash: String,
    tokens: usize,
    text_bytes: u64,
    bytes_per_token: f64,
    width: TokenWidth,
    train_tokens: usize,
    validation_tokens: usize,
    /// What workers must match (hex).
    fingerprint: String,
    /// The cached token file the tokens are mapped from.
    token_file: Option<PathBuf>,
    out: Option<PathBuf>,
    seconds: f64,
    data: TextDatasetInfo,
}

#[derive(Serialize)]
struct IdsReport {
    ids: Vec<u32>,
    tokens: usize,
    tokenizer: TokenizerKind,
    vocab_size: usize,
}

fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    if let Some(text) = &args.text {
        let tokenizer = build_tokenizer(&args.tokenizer, args.source.data.as_deref())?;
        let ids = tokenizer.encode(text).context("could not encode the text")?;
        if args.source.json {
            return output::print_json(&IdsReport {
                tokens: ids.len(),
                ids,
                tokenizer: tokenizer.kind(),
                vocab_size: tokenizer.vocab_size(),
            });
        }
        println!("{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    let started = Instant::now();
    let dataset = output::load_text(args.source.data.as_deref(), &args.tokenizer, args.source.json)?;
    if let Some(out) = &args.out {
        std::fs::write(out, dataset.tokens().as_bytes())
            .with_context(|| format!("could not write {}", out.display()))?;
    }
    let info = dataset.info.clone();
    let report = EncodeReport {
        tokenizer: info.tokenizer,
        vocab_size: info.vocab_size,
        tokenizer_hash: hex_digest(&dataset.tokenizer().hash()),
        tokens: info.tokens,
        text_bytes: info.text_bytes,
        bytes_per_token: info.text_bytes as f64 / info.tokens as f64,
        width: dataset.tokens().width(),
        train_tokens: info.train_tokens,
        validation_tokens: info.validation_tokens,
        fingerprint: hex_digest(&dataset.fingerprint()),
        token_file: dataset.token_file().map(Path::to_owned),
        out: args.out,
        seconds: started.elapsed().as_secs_f64(),
        data: info,
    };
    if args.source.json {
        return output::print_json(&report);
    }
    println!(
        "{} tokens ({:.2} bytes per token, {:?}): {} training, {} validation; fingerprint {}",
        report.tokens,
        report.bytes_per_token,
        report.width,
        report.train_tokens,
        report.validation_tokens,
        report.fingerprint
    );
    if let Some(out) = &report.out {
        println!("tokens written to {}", out.display());
    }
    Ok(())
}

#[derive(Serialize)]
struct DecodeReport {
    text: String,
}

fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    let ids = args
        .ids
        .iter()
        .flat_map(|field| field.split_whitespace())
        .map(|id| id.parse::<u32>().with_context(|| format!("{id:?} is not a token id")))
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let tokenizer = build_tokenizer(&args.tokenizer, args.source.data.as_deref())?;
    let text = tokenizer.decode(&ids).context("could not decode the ids")?;
    if args.source.json {
        return output::print_json(&DecodeReport { text });
    }
    println!("{text}");
    Ok(())
}

#[derive(Serialize)]
struct BenchReport {
    tokenizer: TokenizerKind,
    vocab_size: usize,
    text_bytes: u64,
    tokens: usize,
    /// Ours, one thread, MB (10^6 bytes) of text per second.
    fast_mb_per_sec: f64,
    /// The Hugging Face library's general path on the same chunks.
    library_mb_per_sec: f64,
    speedup: f64,
    /// Whether both gave the same ids for every chunk.
    identical: bool,
    source: String,
}

/// Each chunk is encoded by both paths in turn, `--repeat` times, and the
/// median of each path's times counts: machine noise falls on both alike.
fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let source = TextSource::resolve(args.source.data.as_deref());
    let tokenizer = build_tokenizer(&args.tokenizer, args.source.data.as_deref())?;
    let mut chunks = source.chunks()?;
    let (mut fast_seconds, mut library_seconds) = (0.0, 0.0);
    let (mut fast, mut library) = (Vec::new(), Vec::new());
    let (mut tokens, mut identical) = (0, true);
    let bar = output::progress_bar(args.max_bytes.min(chunks.total_input_bytes()), "encoding");
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    while let Some(chunk) = chunks.next_chunk()? {
        let (mut fast_times, mut library_times) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            fast.clear();
            library.clear();
            let started = Instant::now();
            tokenizer.encode_into(chunk, &mut fast)?;
            fast_times.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            tokenizer.encode_with_library(chunk, &mut library)?;
            library_times.push(started.elapsed().as_secs_f64());
            identical &= fast == library;
        }
        fast_seconds += median(&mut fast_times);
        library_seconds += median(&mut library_times);
        tokens += fast.len();
        bar.set_position(chunks.text_bytes());
        if chunks.text_bytes() >= args.max_bytes {
            break;
        }
    }
    bar.finish_and_clear();
    let text_bytes = chunks.text_bytes();
    let megabytes = text_bytes as f64 / 1e6;
    let report = BenchReport {
        tokenizer: tokenizer.kind(),
        vocab_size: tokenizer.vocab_size(),
        text_bytes,
        tokens,
        fast_mb_per_sec: megabytes / fast_seconds,
        library_mb_per_sec: megabytes / library_seconds,
        speedup: library_seconds / fast_seconds,
        identical,
        source: source.describe(),
    };
    if args.source.json {
        return output::print_json(&report);
    }
    println!(
        "{tokenizer}, {} bytes of {}: {:.1} MB/s, the library {:.1} MB/s ({:.1}x); ids {}",
        report.text_bytes,
        report.source,
        report.fast_mb_per_sec,
        report.library_mb_per_sec,
        report.speedup,
        if identical { "identical" } else { "DIFFERENT" }
    );
    anyhow::ensure!(identical, "the fast path and the library disagree on this text");
    Ok(())
}

/// A tokenizer from `--tokenizer`: a file, or the data's characters.
fn build_tokenizer(spec: &TokenizerSpec, data: Option<&Path>) -> anyhow::Result<Tokenizer> {
    let source = TextSource::resolve(data);
    let progress = TextProgress::new();
    spec.build(&source, &|step| progress.report(step))
        .with_context(|| format!("could not build the {spec} tokenizer for {}", source.describe()))
}
