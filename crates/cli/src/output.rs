//! What every command shares for talking to the user: logging, progress
//! bars, thread pools, data loading and the `--json` convention.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crowdtrain_data::{DataSource, Dataset};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Logs go to stderr, filtered by `RUST_LOG` (default `warn`), with colours
/// only on a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints `value` as one JSON object on stdout, followed by a newline.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// A progress bar on stderr; hidden when stderr is not a terminal, so logs
/// and CI output stay clean.
pub fn progress_bar(length: u64, message: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(length) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {msg}",
        )
        .expect("static template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(message.to_owned());
    bar
}

/// Flags shared by every command that trains.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Directory with the Fashion-MNIST IDX files. Default: the Debian
    /// package's /usr/share/datasets/fashion-mnist if installed, else the
    /// subset bundled into this binary.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Worker threads for the kernels. Default: RAYON_NUM_THREADS, else
    /// one per core. Results are bit-identical at any setting.
    #[arg(long, value_name = "T")]
    pub threads: Option<usize>,

    /// Print one JSON object on stdout instead of a report.
    #[arg(long)]
    pub json: bool,
}

impl RuntimeArgs {
    /// Loads the data set and says which one it is.
    pub fn load_data(&self) -> anyhow::Result<Dataset> {
        let source = DataSource::resolve(self.data.as_deref());
        let dataset = source.load().context("could not load the training data")?;
        if !self.json {
            eprintln!("data: {}", dataset.info);
        }
        Ok(dataset)
    }

    /// Runs `work` on a pool of `--threads` threads; see [`on_thread_pool`].
    pub fn on_thread_pool<R: Send>(
        &self,
        work: impl FnOnce() -> anyhow::Result<R> + Send,
    ) -> anyhow::Result<R> {
        on_thread_pool(self.threads, work)
    }
}

/// Runs `work` on a rayon pool of `threads` threads (default:
/// `RAYON_NUM_THREADS`, else one per core) and returns its result.
///
/// The work itself runs on one of the pool's threads, so the kernels'
/// parallel loops use that thread too: a pool of T threads keeps exactly T
/// busy, with no caller parked beside it (which on a 2-core machine cost a
/// quarter of a training step in wake-ups).
pub fn on_thread_pool<R: Send>(
    threads: Option<usize>,
    work: impl FnOnce() -> anyhow::Result<R> + Send,
) -> anyhow::Result<R> {
    let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|index| format!("crowdtrain-{index}"));
    if let Some(threads) = threads {
        anyhow::ensure!(threads >= 1, "--threads must be at least 1");
        builder = builder.num_threads(threads);
    }
    let pool = builder.build().context("could not start the thread pool")?;
    pool.install(work)
}

/// A table with a header row, for human reports.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_BORDERS_ONLY);
    if !header.is_empty() {
        table.set_header(header.to_vec());
    }
    table
}

/// Formats a byte count with a binary unit.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{count} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Progress bars for long text work, one per phase (reading, training,
/// tokenising, verifying), in bytes. Inputs under 32 MiB finish too fast
/// to need one; bars are hidden when stderr is not a terminal.
pub struct TextProgress {
    current: std::sync::Mutex<Option<(crowdtrain_data::text::Phase, ProgressBar)>>,
}

impl TextProgress {
    const SHOWN_FROM_BYTES: u64 = 32 << 20;

    pub fn new() -> Self {
        Self { current: std::sync::Mutex::new(None) }
    }

    pub fn report(&self, progress: crowdtrain_data::text::Progress) {
        if progress.total < Self::SHOWN_FROM_BYTES {
            return;
        }
        let mut current = self.current.lock().expect("not poisoned");
        if current.as_ref().is_none_or(|(phase, _)| *phase != progress.phase) {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let bar = if std::io::stderr().is_terminal() {
                ProgressBar::new(progress.total)
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
                )
                .expect("static template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix(progress.phase.to_string());
            *current = Some((progress.phase, bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_position(progress.done.min(progress.total));
        }
    }
}

impl Drop for TextProgress {
    fn drop(&mut self) {
        if let Some((_, bar)) = self.current.lock().map(|mut current| current.take()).ok().flatten() {
            bar.finish_and_clear();
        }
    }
}

/// Where the text comes from (`--data FILE|DIR`, else the installed
/// Shakespeare, else the bundled subset), tokenised with `tokenizer`
/// through the token cache (`CROWDTRAIN_CACHE_DIR`, else
/// `~/.cache/crowdtrain/tokens`; the bundled 1.2 MB are tokenised in
/// memory instead, in well under a second); prints the `data:` line
/// unless `json`.
pub fn load_text(
    data: Option<&std::path::Path>,
    tokenizer: &crowdtrain_data::text::TokenizerSpec,
    json: bool,
) -> anyhow::Result<crowdtrain_data::text::TextDataset> {
    use crowdtrain_data::text::{TextDataset, TextSource, default_cache_dir};
    let source = TextSource::resolve(data);
    let progress = TextProgress::new();
    let cache = matches!(source, TextSource::Path(_)).then(default_cache_dir);
    let dataset = TextDataset::load(&source, tokenizer, cache.as_deref(), &|step| progress.report(step))
        .with_context(|| format!("could not load the text {}", source.describe()))?;
    drop(progress);
    if !json {
        eprintln!("data: {}", dataset.info);
    }
    Ok(dataset)
}
