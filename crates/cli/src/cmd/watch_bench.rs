//! `crowdtrain bench dashboard`: what watching a run costs the coordinator.
//! The same demo runs with nobody watching and with a headless Chromium
//! showing the dashboard (which polls `/v1/status` and `/v1/ledger` twice
//! a second), alternately, and the coordinator's CPU time per round and
//! the rounds' durations are compared. A browser's two polls a second are
//! lost in the noise of a round's CPU time, so a third run polls as fast
//! as one client can, back to back, to measure what one poll costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::demo;
use crate::browser::Browser;
use crate::output;

#[derive(Debug, Args)]
pub struct DashboardBenchArgs {
    /// Workers of each run.
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Rounds of each run.
    #[arg(long, default_value_t = 20)]
    rounds: u64,

    /// Inner steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,

    /// Pairs of runs (unwatched and watched, in alternating order).
    #[arg(long, default_value_t = 2)]
    repeats: usize,

    /// Directory with the Fashion-MNIST IDX files (default as for `demo`).
    #[arg(long, value_name = "DIR")]
    data: Option<std::path::PathBuf>,

    /// The workers' nice level: on one machine they stand in for other
    /// machines, and at the same priority 64 of them starve the browser
    /// (whose page lags by seconds) and the coordinator of the CPU.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    worker_nice: i32,

    /// The browser (Debian's `chromium` by default).
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: std::path::PathBuf,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Who looks at the run while it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Watcher {
    Nobody,
    /// Headless Chromium showing the dashboard.
    Browser,
    /// One client fetching what the dashboard fetches, back to back.
    Flood,
}

/// One demo run, as the benchmark measures it.
#[derive(Debug, Serialize)]
struct Run {
    watcher: Watcher,
    /// Dashboard polls (a status and a feed page) the flood made.
    polls: u64,
    rounds: usize,
    /// The coordinator's CPU time (user and system), over its whole life.
    coordinator_cpu_seconds: f64,
    coordinator_cpu_ms_per_round: f64,
    round_seconds_median: Option<f64>,
    seconds: f64,
    /// With the browser: how long after its close the page showed each
    /// round that closed while it was open (ms; the page's own record of
    /// when a round's row first showed it closed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shown_after_close_ms: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    workers: usize,
    worker_nice: i32,
    rounds: u64,
    inner_steps: u64,
    runs: Vec<Run>,
    /// Medians over the runs of each kind.
    unwatched_cpu_ms_per_round: f64,
    watched_cpu_ms_per_round: f64,
    round_seconds_median: f64,
    /// (watched - unwatched) CPU per round over the median round's
    /// duration: the share of a round the dashboard costs the coordinator,
    /// measured directly (within the noise of the runs).
    watching_cost_fraction_of_round: f64,
    /// The coordinator's CPU time per dashboard poll, from the flood:
    /// (flooded - unwatched) CPU over the polls made.
    cpu_ms_per_poll: f64,
    /// What a page polling every 500 ms costs the coordinator, from the
    /// cost of a poll: CPU time per second of the run.
    browser_cost_fraction_from_polls: f64,
    /// Over the browser runs: the median and the slowest delay from a
    /// round's close to the page showing it.
    shown_after_close_ms_median: Option<u64>,
    shown_after_close_ms_max: Option<u64>,
}

/// How often the dashboard polls (`dashboard.js`'s `POLL_MS`).
const POLLS_PER_SECOND: f64 = 2.0;

pub fn run(args: DashboardBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.chromium.exists(),
        "{} is missing: install Debian's chromium (scripts/install-prerequisites.sh --browser)",
        args.chromium.display()
    );
    let mut demo_args = demo::quiet_args(args.workers, args.rounds, args.inner_steps, args.data.as_deref());
    demo_args.worker_nice = args.worker_nice;
    let mut runs = Vec::new();
    for repeat in 0..args.repeats {
        // Alternate the order, so drift on a shared machine falls on both.
        let mut order = [Watcher::Nobody, Watcher::Browser, Watcher::Flood];
        if repeat % 2 == 1 {
            order.reverse();
        }
        for watcher in order {
            let run = measure(&demo_args, watcher, &args.chromium)?;
            if !args.json {
                eprintln!(
                    "{:?}: {} rounds, {} polls, coordinator {:.1} ms CPU per round, median round {:.2} s",
                    watcher,
                    run.rounds,
                    run.polls,
                    run.coordinator_cpu_ms_per_round,
                    run.round_seconds_median.unwrap_or(f64::NAN)
                );
            }
            runs.push(run);
        }
    }
    let median_of = |watcher: Watcher, value: &dyn Fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().filter(|run| run.watcher == watcher).map(value).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let unwatched = median_of(Watcher::Nobody, &|run| run.coordinator_cpu_ms_per_round);
    let watched = median_of(Watcher::Browser, &|run| run.coordinator_cpu_ms_per_round);
    let round_seconds = median_of(Watcher::Nobody, &|run| run.round_seconds_median.unwrap_or(f64::NAN));
    let unwatched_cpu = median_of(Watcher::Nobody, &|run| run.coordinator_cpu_seconds);
    let cpu_ms_per_poll = median_of(Watcher::Flood, &|run| {
        1e3 * (run.coordinator_cpu_seconds - unwatched_cpu) / run.polls.max(1) as f64
    });
    let mut shown: Vec<u64> = runs.iter().flat_map(|run| run.shown_after_close_ms.iter().copied()).collect();
    shown.sort_unstable();
    let report = Report {
        shown_after_close_ms_median: shown.get(shown.len() / 2).copied(),
        shown_after_close_ms_max: shown.last().copied(),
        workers: args.workers,
        worker_nice: args.worker_nice,
        rounds: args.rounds,
        inner_steps: args.inner_steps,
        runs,
        unwatched_cpu_ms_per_round: unwatched,
        watched_cpu_ms_per_round: watched,
        round_seconds_median: round_seconds,
        watching_cost_fraction_of_round: (watched - unwatched) / (round_seconds * 1e3),
        cpu_ms_per_poll,
        browser_cost_fraction_from_polls: POLLS_PER_SECOND * cpu_ms_per_poll / 1e3,
    };
    if args.json {
        return output::print_json(&report);
    }
    println!(
        "coordinator CPU per round: {:.1} ms unwatched, {:.1} ms with the dashboard open; median round {:.2} s; \
         watching costs {:.2}% of a round\none poll (status and feed) costs the coordinator {:.2} ms CPU: a page \
         polling twice a second costs {:.2}% of its time\na closed round showed on the page {} ms after its \
         close (median; slowest {} ms)",
        report.unwatched_cpu_ms_per_round,
        report.watched_cpu_ms_per_round,
        report.round_seconds_median,
        100.0 * report.watching_cost_fraction_of_round,
        report.cpu_ms_per_poll,
        100.0 * report.browser_cost_fraction_from_polls,
        report.shown_after_close_ms_median.map_or("-".into(), |ms| ms.to_string()),
        report.shown_after_close_ms_max.map_or("-".into(), |ms| ms.to_string()),
    );
    Ok(())
}

/// Runs the demo watched by `watcher`, and samples the coordinator's CPU
/// time until it exits.
fn measure(args: &demo::DemoArgs, watcher: Watcher, chromium: &std::path::Path) -> anyhow::Result<Run> {
    let cpu_ticks = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let polls = Arc::new(AtomicU64::new(0));
    let mut sampler = None;
    let mut flood = None;
    let mut browser: Option<Browser> = None;
    let report = demo::execute(args, |url, pid, _| {
        let (cpu_ticks, sampled) = (Arc::clone(&cpu_ticks), Arc::clone(&sampling));
        sampler = Some(std::thread::spawn(move || {
            while sampled.load(Ordering::Relaxed) {
                if let Some(ticks) = cpu_ticks_of(pid) {
                    cpu_ticks.fetch_max(ticks, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
        if watcher == Watcher::Flood {
            let (url, sampling, polls) = (url.to_owned(), Arc::clone(&sampling), Arc::clone(&polls));
            flood = Some(std::thread::spawn(move || flood_polls(&url, &sampling, &polls)));
        }
        if watcher == Watcher::Browser {
            let path = chromium.to_str().context("the browser's path is not UTF-8")?;
            let mut page =
                Browser::launch_at(path, &std::env::temp_dir().join("crowdtrain-bench-chromium.log"))
                    .context("could not start the browser")?;
            page.open(url);
            // The page is showing before the first worker joins.
            page.wait_until(30, "the run", "document.getElementById('connection').textContent === 'live'");
            browser = Some(page);
        }
        Ok(())
    });
    sampling.store(false, Ordering::Relaxed);
    // When the page saw each round closed (the page's clock is the
    // coordinator's: one machine).
    let seen = browser.as_mut().map(|page| {
        page.eval(
            "Object.fromEntries([...document.querySelectorAll('#rounds tr[data-closed-seen-at]')]\
               .filter((row) => row.dataset.closedSeenAt).map((row) => [row.dataset.round, Number(row.dataset.closedSeenAt)]))",
        )
    });
    drop(browser);
    for thread in [sampler, flood].into_iter().flatten() {
        let _ = thread.join();
    }
    let report = report?;
    let shown_after_close_ms = match &seen {
        Some(seen) => report
            .rounds
            .iter()
            .filter_map(|round| {
                let shown = seen[round.round.to_string()].as_u64()?;
                Some(shown.saturating_sub(round.closed_unix_ms?))
            })
            .collect(),
        None => Vec::new(),
    };
    // SAFETY: sysconf only reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_seconds = cpu_ticks.load(Ordering::Relaxed) as f64 / ticks_per_second;
    let rounds = report
        .rounds
        .iter()
        .filter(|round| round.status == crowdtrain_protocol::coordinator::RoundState::Closed)
        .count();
    Ok(Run {
        watcher,
        polls: polls.load(Ordering::Relaxed),
        rounds,
        coordinator_cpu_seconds: cpu_seconds,
        coordinator_cpu_ms_per_round: 1e3 * cpu_seconds / rounds.max(1) as f64,
        round_seconds_median: report.round_seconds_median,
        seconds: report.seconds,
        shown_after_close_ms,
    })
}

/// Fetches what the dashboard fetches, back to back, until `running` is
/// cleared; counts the polls.
fn flood_polls(url: &str, running: &AtomicBool, polls: &AtomicU64) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let client = reqwest::Client::new();
    runtime.block_on(async {
        while running.load(Ordering::Relaxed) {
            let status = client.get(format!("{url}/v1/status?rounds_limit=200")).send();
            let feed = client
                .get(format!(
                    "{url}/v1/ledger?kinds=audit,slash,auditor-slashed,update-refused,round-failed&limit=50"
                ))
                .send();
            let (status, feed) = tokio::join!(status, feed);
            let bodies = match (status, feed) {
                (Ok(status), Ok(feed)) => tokio::join!(status.bytes(), feed.bytes()),
                _ => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if bodies.0.is_ok() && bodies.1.is_ok() {
                polls.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// User plus system CPU time of process `pid`, in clock ticks.
fn cpu_ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from its closing ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}
