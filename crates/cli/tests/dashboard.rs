//! The coordinator's live dashboard, looked at in a real browser (headless
//! Debian Chromium) while a real run goes on: a coordinator and worker
//! processes on loopback. Also its read-only feed, `/metrics`, and the
//! run's HTML report.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::browser::Browser;
use common::*;
use crowdtrain_protocol::wire::{LedgerEntryView, LedgerPage};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn the_dashboard_shows_the_run_live_in_a_real_browser() {
    // Goal: a participant opening the coordinator's address sees the run:
    // every worker, the accuracy chart, the feed of audits and slashes with
    // links to their ledger entries; and the page follows the run as rounds
    // close, without reloading.
    // Method: three workers (one fabricates its updates, so it is audited,
    // caught and slashed) train 6 rounds, every submission audited; the
    // page is opened before the first round closes and read through the
    // DevTools protocol until a round closes after the page first showed
    // one; a screenshot is kept.
    let mut network =
        Network::new(6, 40, 1.0, "min_workers = 3\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 3000");
    network.start_coordinator();
    let Some(mut browser) = Browser::launch(&network.path("chromium.log")) else { return };
    for (index, behavior) in ["honest", "honest", "fabricate"].iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    browser.open(&network.url());
    browser.wait_until(30, "the run", "document.getElementById('connection').textContent === 'live'");
    // A mark that a reload would wipe.
    browser.eval("window.stayed = true");
    browser.wait_until(
        120,
        "a closed round",
        "Number(document.getElementById('completed').dataset.completed) >= 1",
    );
    let first: u64 =
        browser.eval("Number(document.getElementById('completed').dataset.completed)").as_u64().unwrap();
    let opened_at = now_ms();
    browser.wait_until(
        120,
        "the next round closing, live",
        &format!("Number(document.getElementById('completed').dataset.completed) > {first}"),
    );
    assert_eq!(
        browser.eval("window.stayed === true"),
        serde_json::Value::Bool(true),
        "the page did not reload"
    );

    // How long after its close the page showed each round that closed
    // while it was open.
    let status = network.status().unwrap();
    let seen = browser.eval(
        "Object.fromEntries([...document.querySelectorAll('#rounds tr[data-closed-seen-at]')]\
           .filter((row) => row.dataset.closedSeenAt).map((row) => [row.dataset.round, Number(row.dataset.closedSeenAt)]))",
    );
    let delays: Vec<(u64, u64)> = status
        .rounds
        .iter()
        .filter_map(|round| {
            let closed = round.closed_unix_ms.filter(|&closed| closed > opened_at)?;
            let shown = seen[round.round.to_string()].as_u64()?;
            Some((round.round, shown.saturating_sub(closed)))
        })
        .collect();
    eprintln!("rounds shown after their close (round, ms): {delays:?}");
    assert!(!delays.is_empty(), "a round closed while the page was open");
    // The target is 1 s; a loaded test machine gets slack (the benchmark
    // measures it).
    assert!(delays.iter().all(|&(_, delay)| delay < 5000), "the page lagged: {delays:?}");

    // Every worker, and the chart with a point per evaluated round.
    let status = network.wait_for(180, "the run to finish", finished_and_evaluated);
    browser.wait_until(
        30,
        "the final round",
        &format!(
            "Number(document.getElementById('completed').dataset.completed) === {}",
            status.completed_rounds
        ),
    );
    let evaluated = status.rounds.iter().filter(|round| round.test_accuracy.is_some()).count();
    browser.wait_until(
        30,
        "every evaluated round in the chart",
        &format!("document.querySelectorAll('#accuracy-chart circle.point').length === {evaluated}"),
    );
    let rows = browser
        .eval("[...document.querySelectorAll('#workers tbody tr')].map((row) => Number(row.dataset.worker))");
    let expected: Vec<u64> = status.workers.iter().map(|worker| worker.worker.0).collect();
    assert_eq!(rows, serde_json::json!(expected), "a row per worker");
    let cheater =
        status.workers.iter().find(|worker| worker.slashed > 0).expect("the fabricator was slashed");
    let row = browser.eval(&format!(
        "[...document.querySelectorAll('#workers tr[data-worker=\"{}\"] td')].map((cell) => cell.textContent)",
        cheater.worker.0
    ));
    assert!(
        row.as_array().unwrap().iter().any(|cell| cell == &serde_json::json!(cheater.slashed.to_string()))
    );
    assert!(status.workers.iter().all(|worker| worker.last_seen_unix_ms.is_some()), "last seen is known");

    // The feed links each slash to its ledger entry, which says so.
    browser.wait_until(
        30,
        "a slash in the feed",
        "document.querySelector('#feed li[data-kind=slash] a') !== null",
    );
    let link = browser.eval("document.querySelector('#feed li[data-kind=slash] a').getAttribute('href')");
    let entry: LedgerEntryView = get_json(&format!("{}{}", network.url(), link.as_str().unwrap())).unwrap();
    assert_eq!(entry.kind, "slash");
    let shot = browser.screenshot();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    let artefact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artefact, shot).unwrap();
    eprintln!("screenshot: {}", artefact.display());

    // What the page reads is bounded whatever is asked.
    let page: LedgerPage = get_json(&format!("{}/v1/ledger?limit=100000", network.url())).unwrap();
    assert!(page.entries.len() == 200 || page.entries.len() as u64 == page.length);
    assert!(page.entries.windows(2).all(|pair| pair[0].index > pair[1].index), "newest first");
    let kinds: Vec<String> = (0..21).map(|kind| format!("kind-{kind}")).collect();
    assert_eq!(get_text(&format!("{}/v1/ledger?kinds={}", network.url(), kinds.join(","))).0, 400);
    let twice: LedgerPage =
        get_json(&format!("{}/v1/ledger?kinds=slash,slash&limit=200", network.url())).unwrap();
    let once: LedgerPage = get_json(&format!("{}/v1/ledger?kinds=slash&limit=200", network.url())).unwrap();
    assert_eq!(twice, once, "a kind named twice is listed once");
    assert_eq!(get_text(&format!("{}/v1/ledger?before=3&from=1", network.url())).0, 400);
    assert_eq!(get_text(&format!("{}/v1/ledger/{}", network.url(), page.length)).0, 404);
    let oldest: LedgerPage =
        get_json(&format!("{}/v1/ledger?from=0&limit=2&kinds=run-started", network.url())).unwrap();
    assert_eq!(oldest.entries.iter().map(|entry| entry.index).collect::<Vec<_>>(), vec![0]);

    // The same run in Prometheus' format.
    let (code, metrics) = get_text(&format!("{}/metrics", network.url()));
    assert_eq!(code, 200);
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|text| text.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(value("crowdtrain_rounds_closed_total"), status.completed_rounds as f64);
    assert_eq!(value("crowdtrain_workers_registered"), 3.0);
    let slashes: u64 = status.rounds.iter().map(|round| u64::from(round.slashed)).sum();
    assert_eq!(value("crowdtrain_submissions_total{outcome=\"slashed\"}"), slashes as f64);
    assert!(value("crowdtrain_audits_total{verdict=\"passed\"}") >= 1.0);
    assert_eq!(value("crowdtrain_received_bytes_total"), status.bytes_uploaded as f64);
    assert_eq!(value("crowdtrain_served_bytes_total"), status.bytes_downloaded as f64);
    assert_eq!(value("crowdtrain_round_duration_seconds_count"), status.completed_rounds as f64);

    // The run's report: one file that opens offline and shows the same run.
    network.kill_coordinator();
    let (html, pngs) = (network.path("report.html"), network.path("plots"));
    let output = std::process::Command::new(binary())
        .args(["report", "--json", "--state"])
        .arg(network.path("state"))
        .arg("--out")
        .arg(&html)
        .arg("--png")
        .arg(&pngs)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(figures["ledger_verified"], serde_json::json!(true));
    assert_eq!(figures["rounds_closed"], serde_json::json!(status.completed_rounds));
    assert_eq!(figures["slashes"].as_array().unwrap().len() as u64, slashes);
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.len() < 2_000_000, "the report is {} bytes", text.len());
    assert!(
        !text.contains("src=") && !text.contains("<script") && !text.contains("<link"),
        "nothing to fetch"
    );
    for plot in ["learning-curve", "loss", "workers", "bytes", "timings"] {
        let png = std::fs::read(pngs.join(format!("{plot}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{plot}.png");
    }
    browser.open(&format!("file://{}", html.display()));
    browser.wait_until(30, "the report", "document.querySelectorAll('#workers tbody tr').length === 3");
    assert_eq!(browser.eval("document.querySelectorAll('figure svg').length"), serde_json::json!(5));
    assert_eq!(
        browser.eval("document.querySelectorAll('#rounds tbody tr').length"),
        serde_json::json!(status.rounds.len())
    );
    assert_eq!(
        browser.eval("document.getElementById('ledger').textContent.startsWith('Ledger: verified')"),
        serde_json::Value::Bool(true)
    );
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png"),
        browser.screenshot(),
    )
    .unwrap();
}
