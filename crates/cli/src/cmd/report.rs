//! `crowdtrain report`: a run as one self-contained HTML file (plots inline
//! as SVG, no scripts, nothing fetched), from its `--state` directory: the
//! learning curve, per-worker work and credits, audit outcomes, slashes,
//! bytes, timings and the ledger's verification. `--png DIR` writes the
//! same plots as PNGs; `--json` prints the figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{RoundRecord, WorkerStatus};
use crowdtrain_protocol::{Digest, Verdict};
use crowdtrain_store::Store;
use crowdtrain_store::db::verify_ledger;
use serde::Serialize;

use crate::output;
use crate::plot::{Bars, Series, bar_chart, line_chart};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The coordinator's --state directory.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,

    /// The HTML file to write.
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    out: PathBuf,

    /// Also write the plots as PNGs into this directory.
    #[arg(long, value_name = "DIR")]
    png: Option<PathBuf>,

    /// Print the report's figures as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What the report shows, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport {
    run_id: Digest,
    /// `verified: N entries`, or what is broken.
    ledger: String,
    ledger_verified: bool,
    rounds_closed: usize,
    final_test_accuracy: Option<f64>,
    bytes_uploaded: u64,
    bytes_downloaded: u64,
    /// Audit verdicts by kind (`passed`, `failed`, `unanswered`).
    audits: BTreeMap<String, u64>,
    /// Every slash, from the ledger.
    slashes: Vec<Slash>,
    workers: Vec<WorkerStatus>,
    rounds: Vec<RoundRecord>,
}

#[derive(Debug, Serialize)]
struct Slash {
    ledger_index: u64,
    round: u64,
    worker: u64,
    amount: u64,
    reason: String,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let report = write(&args.state, &args.out, args.png.as_deref())?;
    if args.json {
        return output::print_json(&report);
    }
    println!(
        "wrote {} ({}): {} rounds, final accuracy {}, ledger {}",
        args.out.display(),
        output::bytes(std::fs::metadata(&args.out)?.len()),
        report.rounds_closed,
        report.final_test_accuracy.map_or("–".into(), |accuracy| format!("{:.2}%", 100.0 * accuracy)),
        report.ledger
    );
    Ok(())
}

/// Reads the run in `state`, writes its HTML report to `out` (and PNGs to
/// `png`), and returns the figures.
pub(crate) fn write(state: &Path, out: &Path, png: Option<&Path>) -> anyhow::Result<RunReport> {
    let database = state.join("coordinator.sqlite");
    anyhow::ensure!(
        database.is_file(),
        "no coordinator state in {} (no coordinator.sqlite)",
        state.display()
    );
    let store =
        Store::open_reader(&database).with_context(|| format!("could not open {}", database.display()))?;
    let run = store.run()?.context("the state holds no run")?;
    let rounds = store.round_records()?;
    let workers = store.worker_statuses()?;
    drop(store);
    let (ledger, ledger_verified, entries) = match verify_ledger(&database, None) {
        Ok(entries) => (format!("verified: {} entries", entries.len()), true, entries),
        Err(failure) => (format!("BROKEN: {failure}"), false, Vec::new()),
    };
    let mut audits = BTreeMap::new();
    let mut slashes = Vec::new();
    for entry in &entries {
        match &entry.event {
            Event::Audit { verdict, .. } => {
                let name = match verdict {
                    Verdict::Passed => "passed",
                    Verdict::Failed(_) => "failed",
                    Verdict::Unanswered => "unanswered",
                };
                *audits.entry(name.to_owned()).or_insert(0) += 1;
            }
            Event::Slash { round, worker, amount, reason } => slashes.push(Slash {
                ledger_index: entry.index,
                round: *round,
                worker: worker.0,
                amount: *amount,
                reason: reason.clone(),
            }),
            Event::AuditorSlashed { round, auditor, amount, reason, .. } => slashes.push(Slash {
                ledger_index: entry.index,
                round: *round,
                worker: auditor.0,
                amount: *amount,
                reason: format!("as an auditor: {reason}"),
            }),
            _ => {}
        }
    }
    let closed: Vec<&RoundRecord> =
        rounds.iter().filter(|round| round.status == RoundState::Closed).collect();
    let report = RunReport {
        run_id: run.run_id,
        ledger,
        ledger_verified,
        rounds_closed: closed.len(),
        final_test_accuracy: closed.iter().rev().find_map(|round| round.test_accuracy),
        bytes_uploaded: rounds.iter().map(|round| round.bytes_uploaded).sum(),
        bytes_downloaded: rounds.iter().filter_map(|round| round.bytes_downloaded).sum(),
        audits,
        slashes,
        workers,
        rounds,
    };
    let plots = draw_plots(&report, png)?;
    let html = render(&report, &plots);
    std::fs::write(out, html).with_context(|| format!("could not write {}", out.display()))?;
    Ok(report)
}

/// The report's plots as inline SVG (title, markup), drawn once into a
/// temporary directory (and as PNGs into `png`).
fn draw_plots(report: &RunReport, png: Option<&Path>) -> anyhow::Result<Vec<(String, String)>> {
    if let Some(dir) = png {
        std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let scratch = tempfile::tempdir()?;
    let mut plots = Vec::new();
    let mut emit =
        |name: &str, title: &str, draw: &dyn Fn(&Path) -> anyhow::Result<()>| -> anyhow::Result<()> {
            let svg = scratch.path().join(format!("{name}.svg"));
            draw(&svg)?;
            if let Some(dir) = png {
                draw(&dir.join(format!("{name}.png")))?;
            }
            plots.push((title.to_owned(), std::fs::read_to_string(&svg)?));
            Ok(())
        };
    let evaluated: Vec<&RoundRecord> =
        report.rounds.iter().filter(|round| round.test_accuracy.is_some()).collect();
    if !evaluated.is_empty() {
        let accuracy = Series {
            name: "test accuracy".into(),
            points: evaluated
                .iter()
                .map(|round| (round.round as f64, round.test_accuracy.unwrap_or(0.0)))
                .collect(),
        };
        emit("learning-curve", "Learning curve", &|path| {
            line_chart(path, "Test accuracy per round", "round", "accuracy", std::slice::from_ref(&accuracy))
        })?;
        let loss = Series {
            name: "test loss".into(),
            points: evaluated
                .iter()
                .filter_map(|round| Some((round.round as f64, round.test_loss?)))
                .collect(),
        };
        if !loss.points.is_empty() {
            emit("loss", "Test loss", &|path| {
                line_chart(path, "Test loss per round", "round", "loss", std::slice::from_ref(&loss))
            })?;
        }
    }
    if !report.workers.is_empty() {
        let categories: Vec<String> =
            report.workers.iter().map(|worker| format!("w{}", worker.worker.0)).collect();
        let bars = [
            Bars {
                name: "verified work".into(),
                values: report.workers.iter().map(|worker| worker.verified_work as f64).collect(),
            },
            Bars {
                name: "earned".into(),
                values: report.workers.iter().map(|worker| worker.earned as f64).collect(),
            },
            Bars {
                name: "slashed".into(),
                values: report.workers.iter().map(|worker| worker.slashed as f64).collect(),
            },
        ];
        emit("workers", "Work and credits per worker", &|path| {
            bar_chart(path, "Work and credits per worker", &categories, "units", &bars)
        })?;
    }
    let closed: Vec<&RoundRecord> =
        report.rounds.iter().filter(|round| round.closed_unix_ms.is_some()).collect();
    if !closed.is_empty() {
        let up = Series {
            name: "uploaded (MB)".into(),
            points: closed
                .iter()
                .map(|round| (round.round as f64, round.bytes_uploaded as f64 / 1e6))
                .collect(),
        };
        let down = Series {
            name: "downloaded (MB)".into(),
            points: closed
                .iter()
                .filter_map(|round| Some((round.round as f64, round.bytes_downloaded? as f64 / 1e6)))
                .collect(),
        };
        let series: Vec<Series> = [up, down].into_iter().filter(|series| !series.points.is_empty()).collect();
        emit("bytes", "Bytes per round", &|path| {
            line_chart(path, "Bytes per round", "round", "MB", &series)
        })?;
        let duration = Series {
            name: "round (s)".into(),
            points: closed
                .iter()
                .filter_map(|round| {
                    Some((
                        round.round as f64,
                        round.closed_unix_ms?.saturating_sub(round.opened_unix_ms) as f64 / 1e3,
                    ))
                })
                .collect(),
        };
        let overhead = Series {
            name: "coordinator overhead (s)".into(),
            points: closed
                .iter()
                .filter_map(|round| Some((round.round as f64, round.coordinator_overhead_ms? as f64 / 1e3)))
                .collect(),
        };
        let series: Vec<Series> =
            [duration, overhead].into_iter().filter(|series| !series.points.is_empty()).collect();
        emit("timings", "Timings", &|path| line_chart(path, "Round timings", "round", "seconds", &series))?;
    }
    Ok(plots)
}

/// Escapes text for HTML (everything shown came from the run, some of it
/// from workers).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Strips what precedes the `<svg` element (an XML declaration), so the
/// markup can sit inside HTML.
fn inline_svg(svg: &str) -> &str {
    svg.find("<svg").map_or(svg, |start| &svg[start..])
}

fn table(out: &mut String, id: &str, header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for name in header {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("–".into(), |value| value.to_string())
}

fn render(report: &RunReport, plots: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>crowdtrain run {id}</title>\
         <style>body{{font:14px/1.4 system-ui,sans-serif;max-width:1200px;margin:24px auto;padding:0 16px;color:#1d2330}}\
         table{{border-collapse:collapse;margin:8px 0 24px}}th,td{{border-bottom:1px solid #e4e6eb;padding:3px 8px;\
         text-align:right}}th{{background:#eef0f4;font-size:12px}}svg{{max-width:100%;height:auto}}\
         .broken{{color:#b42318;font-weight:bold}}.ok{{color:#1a7f37}}</style></head><body>\n\
         <h1>crowdtrain run <code title=\"{id}\">{short}</code></h1>\n",
        id = report.run_id,
        short = &report.run_id.to_hex()[..16]
    );
    let _ = writeln!(
        out,
        "<p id=\"ledger\" class=\"{}\">Ledger: {}</p>",
        if report.ledger_verified { "ok" } else { "broken" },
        escape(&report.ledger)
    );
    let _ = writeln!(
        out,
        "<p>{} rounds closed; final test accuracy {}; {} uploaded, {} downloaded; audits: {}.</p>",
        report.rounds_closed,
        report.final_test_accuracy.map_or("–".into(), |accuracy| format!("{:.2}%", 100.0 * accuracy)),
        output::bytes(report.bytes_uploaded),
        output::bytes(report.bytes_downloaded),
        if report.audits.is_empty() {
            "none".to_owned()
        } else {
            report
                .audits
                .iter()
                .map(|(verdict, count)| format!("{count} {verdict}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for (title, svg) in plots {
        let _ = writeln!(out, "<h2>{}</h2><figure>{}</figure>", escape(title), inline_svg(svg));
    }
    out.push_str("<h2>Workers</h2>\n");
    table(
        &mut out,
        "workers",
        &[
            "worker",
            "class",
            "rounds",
            "accepted",
            "late",
            "rejected",
            "refused",
            "verified work",
            "quality",
            "earned",
            "slashed",
            "credits",
            "audits passed",
            "audits failed",
            "audits judged",
            "uploaded",
        ],
        report.workers.iter().map(|worker| {
            vec![
                worker.worker.0.to_string(),
                worker.class.clone(),
                worker.rounds_assigned.to_string(),
                worker.submissions_accepted.to_string(),
                worker.submissions_late.to_string(),
                worker.submissions_rejected.to_string(),
                worker.submissions_refused.to_string(),
                worker.verified_work.to_string(),
                worker.quality.map_or("–".into(), |quality| format!("{quality:.2}")),
                worker.earned.to_string(),
                worker.slashed.to_string(),
                worker.credits.to_string(),
                worker.audits_passed.to_string(),
                worker.audits_failed.to_string(),
                worker.audits_judged.to_string(),
                output::bytes(worker.bytes_uploaded),
            ]
        }),
    );
    out.push_str("<h2>Slashes</h2>\n");
    table(
        &mut out,
        "slashes",
        &["ledger entry", "round", "worker", "amount", "reason"],
        report.slashes.iter().map(|slash| {
            vec![
                slash.ledger_index.to_string(),
                slash.round.to_string(),
                slash.worker.to_string(),
                slash.amount.to_string(),
                slash.reason.clone(),
            ]
        }),
    );
    out.push_str("<h2>Rounds</h2>\n");
    table(
        &mut out,
        "rounds",
        &[
            "round",
            "status",
            "participants",
            "accepted",
            "audited",
            "slashed",
            "refused",
            "accuracy",
            "loss",
            "duration (s)",
            "overhead (ms)",
            "up",
            "down",
        ],
        report.rounds.iter().map(|round| {
            vec![
                round.round.to_string(),
                round.status.as_str().to_owned(),
                round.participants.to_string(),
                round.accepted.to_string(),
                round.audited.to_string(),
                round.slashed.to_string(),
                round.refused.to_string(),
                round.test_accuracy.map_or("–".into(), |accuracy| format!("{:.2}%", 100.0 * accuracy)),
                round.test_loss.map_or("–".into(), |loss| format!("{loss:.4}")),
                optional(round.closed_unix_ms.map(|closed| {
                    format!("{:.2}", closed.saturating_sub(round.opened_unix_ms) as f64 / 1e3)
                })),
                optional(round.coordinator_overhead_ms),
                output::bytes(round.bytes_uploaded),
                round.bytes_downloaded.map_or("–".into(), output::bytes),
            ]
        }),
    );
    out.push_str("</body></html>\n");
    out
}
