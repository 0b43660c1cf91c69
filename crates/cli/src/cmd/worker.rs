//! `crowdtrain worker`: train for a coordinator.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use std::io::Write;

use crowdtrain_node::NodeError;
use crowdtrain_node::worker::{Behavior, Choose, WorkerEvent, WorkerOptions, WorkerSummary, run_worker};
use crowdtrain_protocol::PublicKey;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output;

/// Join a training run: register, then train each round's assignment and
/// upload the result, until the run ends.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://127.0.0.1:7070.
    #[arg(long, value_name = "URL")]
    coordinator: String,

    /// This worker's key (from `crowdtrain keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,

    /// The run's data: a directory with the Fashion-MNIST IDX files, or for
    /// a language model a UTF-8 text file or directory (default: as for
    /// every command). Its fingerprint must be the run's.
    #[arg(long, value_name = "DIR|FILE")]
    data: Option<PathBuf>,

    /// For a language model, the run's tokenizer: `char` or a
    /// tokenizer.json (the data fingerprint covers it).
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: crowdtrain_data::text::TokenizerSpec,

    /// Where downloaded models are cached (default: ~/.cache/crowdtrain/models).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,

    /// Threads for training (default: RAYON_NUM_THREADS, else one per core).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,

    /// Give up after the coordinator has been unreachable this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    give_up_after: u64,

    /// Trust only this coordinator key (hex); default: the key it presents.
    #[arg(long, value_name = "HEX")]
    coordinator_key: Option<PublicKey>,

    /// How to behave: honest, or a cheater for tests and demos. Against the
    /// audits: lazy:F, fabricate, wrong-data, stale, copy, tamper-reveal,
    /// no-answer, and under a lossy codec inflate-residual[:SCALE] (sends
    /// SCALE x the error-feedback residual it committed to). Against the model (the checks, robust aggregation and
    /// quality scoring): sign-flip, noise[:SCALE] (Gaussian at SCALE x its
    /// honest norm), label-flip, alie[:Z], ipm[:EPSILON], nan.
    #[arg(long, default_value = "honest")]
    behavior: Behavior,

    /// The admission token the run's operator gave this worker (runs that
    /// admit by token; see `crowdtrain admission token`).
    #[arg(long, value_name = "TOKEN", conflicts_with = "admission_token_file")]
    admission_token: Option<String>,

    /// Read the admission token from this file (keeps it out of `ps`).
    #[arg(long, value_name = "FILE")]
    admission_token_file: Option<PathBuf>,

    /// Your private per-unit cost of contribution, in runs that offer a
    /// contract: the worker takes the option of the signed menu that
    /// maximises your expected utility (ties to the higher contribution).
    /// The cost never leaves this machine; a cost of none of the menu's
    /// types is refused.
    #[arg(long, value_name = "C", conflicts_with = "option")]
    cost: Option<f64>,

    /// Take option K of the run's contract menu (0 is the highest-cost
    /// type's), whatever it is worth to you.
    #[arg(long, value_name = "K")]
    option: Option<u32>,

    /// Reveal an update only once its round's commit phase is over. By
    /// default it goes at once, with its commitment, to a run without a
    /// bucket (the coordinator keeps it to itself until the round closes,
    /// and the round's reveal phase then waits for no upload over your
    /// link); through a bucket it always waits.
    #[arg(long)]
    no_early_reveal: bool,

    /// Print a JSON summary on stdout when the run ends.
    #[arg(long, conflicts_with = "json_log")]
    json: bool,

    /// Instead of progress bars and lines for people, print one JSON
    /// object per line on stdout as things happen. Every object has an
    /// "event" key:
    /// `registered` {worker, run_id};
    /// `round_started` {round, steps, batch, slot, participants, base_model};
    /// `progress` {round, step, steps, samples_per_second} (every
    /// --progress-every steps, and the last);
    /// `uploaded` {round, what: commitment|reveal|audit_answer, bytes,
    /// status, reason};
    /// `round_summary` {round, round_state, accepted, work, refused,
    /// audited, verdict, slashed, reward, totals: {submissions_accepted,
    /// verified_work, audits_passed, audits_failed, slashed, credits}},
    /// once the round has closed;
    /// `note` {message};
    /// `finished` {rounds, model, totals};
    /// `exit` {summary} or `error` {message} last.
    #[arg(long, verbatim_doc_comment)]
    json_log: bool,

    /// With --json-log, a progress line at most every this many inner steps.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    progress_every: u64,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let cache = args.cache.clone().unwrap_or_else(default_cache);
    let admission_token = match &args.admission_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("could not read {}: {error}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => args.admission_token.clone(),
    };
    let options = WorkerOptions {
        coordinator: args.coordinator.clone(),
        key: args.key.clone(),
        data: args.data.clone(),
        tokenizer: args.tokenizer.clone(),
        cache,
        give_up_after: Duration::from_secs(args.give_up_after),
        coordinator_key: args.coordinator_key,
        threads: args.threads,
        behavior: args.behavior,
        admission_token,
        early_reveal: !args.no_early_reveal,
        choose: match (args.cost, args.option) {
            (Some(cost), _) => Some(Choose::Cost(cost)),
            (None, Some(option)) => Some(Choose::Option(option)),
            (None, None) => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if args.json_log {
        let mut log = JsonLog::new(args.progress_every);
        let result = runtime.block_on(run_worker(options, |event| log.event(event)));
        return log.exit(result);
    }
    let mut view = View::default();
    let summary = runtime.block_on(run_worker(options, |event| view.event(event)));
    drop(view);
    let summary = summary?;
    if args.json {
        return output::print_json(&summary);
    }
    println!(
        "{} rounds trained; {} commitments, {} reveals accepted; audits: {} answered and replayed by the \
         coordinator, {} delegated (verdicts in the ledger), {} failed on receipt; {} replayed for others; {} \
         refused; {} uploaded, {} downloaded{}",
        summary.rounds_trained,
        summary.commitments,
        summary.reveals_accepted,
        summary.audits_answered,
        summary.audits_delegated,
        summary.audits_failed,
        summary.audits_judged,
        summary.refused,
        output::bytes(summary.bytes_uploaded),
        output::bytes(summary.bytes_downloaded),
        summary.compute_utilisation.map_or(String::new(), |share| format!(
            "; trained {:.1} of {:.1} s since joining ({:.1}% compute utilisation)",
            summary.training_seconds,
            summary.active_seconds,
            100.0 * share
        ))
    );
    Ok(())
}

/// The worker's view for people, on stderr: a bar per round (inner steps
/// and samples per second, then the upload in bytes) and one line per
/// event worth reading. Bars draw only on a terminal (indicatif hides
/// them otherwise); the lines are always printed, so logs keep them.
#[derive(Default)]
struct View {
    bar: Option<ProgressBar>,
}

impl View {
    fn event(&mut self, event: &WorkerEvent) {
        match event {
            WorkerEvent::RoundStarted { round, steps, .. } => {
                self.finish();
                let bar = ProgressBar::new(*steps);
                bar.set_style(style("{prefix:>10} [{bar:30}] {pos}/{len} steps {msg} ({elapsed})"));
                bar.set_prefix(format!("round {round}"));
                self.bar = Some(bar);
            }
            WorkerEvent::Progress { step, samples_per_second, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*step);
                    bar.set_message(format!("{samples_per_second:.0} samples/s"));
                }
            }
            WorkerEvent::Uploading { what, sent, bytes, .. } => {
                if let Some(bar) = &self.bar {
                    if bar.length() != Some(*bytes) || bar.message() != what.to_string() {
                        bar.set_style(style(
                            "{prefix:>10} [{bar:30}] {msg} {bytes}/{total_bytes} {bytes_per_sec}",
                        ));
                        bar.set_length(*bytes);
                        bar.set_message(what.to_string());
                        bar.reset_elapsed();
                    }
                    bar.set_position(*sent);
                }
            }
            _ => {}
        }
        if let Some(line) = event.line() {
            match &self.bar {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        }
        if matches!(event, WorkerEvent::RoundSummary(_) | WorkerEvent::Finished { .. }) {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.finish();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("static template is valid").progress_chars("=> ")
}

/// `--json-log`: one JSON object per line on stdout (the keys are
/// documented in `--help` and README), flushed line by line so that a
/// reader sees each event as it happens.
struct JsonLog {
    every: u64,
    /// The last step a progress line was printed for.
    last_step: Option<u64>,
}

impl JsonLog {
    fn new(every: u64) -> Self {
        Self { every, last_step: None }
    }

    fn event(&mut self, event: &WorkerEvent) {
        match event {
            WorkerEvent::RoundStarted { .. } => self.last_step = None,
            WorkerEvent::Progress { step, steps, .. } => {
                let due = self.last_step.is_none_or(|last| *step >= last + self.every) || step >= steps;
                if !due || self.last_step == Some(*step) {
                    return;
                }
                self.last_step = Some(*step);
            }
            // Bytes as they go are for bars; machines get `uploaded`.
            WorkerEvent::Uploading { .. } => return,
            _ => {}
        }
        Self::line(event);
    }

    fn line<T: Serialize>(value: &T) {
        let mut stdout = std::io::stdout().lock();
        // A closed pipe is the reader's business; the worker goes on.
        let _ = serde_json::to_writer(&mut stdout, value).map_err(std::io::Error::from);
        let _ = writeln!(stdout);
        let _ = stdout.flush();
    }

    fn exit(self, result: Result<WorkerSummary, NodeError>) -> anyhow::Result<()> {
        #[derive(Serialize)]
        #[serde(tag = "event", rename_all = "snake_case")]
        enum Exit<'a> {
            Exit { summary: &'a WorkerSummary },
            Error { message: String },
        }
        match result {
            Ok(summary) => {
                Self::line(&Exit::Exit { summary: &summary });
                Ok(())
            }
            Err(error) => {
                Self::line(&Exit::Error { message: error.to_string() });
                Err(error.into())
            }
        }
    }
}

fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("crowdtrain").join("models")
}
