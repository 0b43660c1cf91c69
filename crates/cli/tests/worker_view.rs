//! The worker's own view, as a program running `crowdtrain worker
//! --json-log` reads it: real worker processes against a real coordinator,
//! each stdout line a JSON object with the documented keys, and round
//! summaries that say what the coordinator's status and the ledger say.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

/// The keys each event carries (besides `event`), as `--help` documents them.
const KEYS: &[(&str, &[&str])] = &[
    ("registered", &["worker", "run_id"]),
    ("round_started", &["round", "steps", "batch", "slot", "participants", "base_model"]),
    ("progress", &["round", "step", "steps", "samples_per_second"]),
    ("uploaded", &["round", "what", "bytes", "status", "reason"]),
    (
        "round_summary",
        &[
            "round",
            "round_state",
            "accepted",
            "work",
            "refused",
            "audited",
            "verdict",
            "slashed",
            "reward",
            "totals",
        ],
    ),
    ("note", &["message"]),
    ("finished", &["rounds", "model", "totals"]),
    ("exit", &["summary"]),
];

const TOTALS: &[&str] =
    &["submissions_accepted", "verified_work", "audits_passed", "audits_failed", "slashed", "credits"];

fn events(stdout: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(stdout.to_vec()).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect()
}

fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|event| event["event"] == kind).collect()
}

#[test]
fn json_log_lines_follow_each_round_and_agree_with_the_coordinator() {
    const ROUNDS: u64 = 3;
    const STEPS: u64 = 24;
    let mut network = Network::new(ROUNDS, STEPS, 1.0, "min_workers = 3\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker_logged(0, "honest", &["--progress-every", "5"]);
    network.start_worker_logged(1, "honest", &[]);
    network.start_worker_logged(2, "fabricate", &[]);
    let status = network.wait_for(180, "the run to finish", finished_and_evaluated);
    let outputs = network.join_workers();
    let rewards = network.rewards();
    let credits_by_key: BTreeMap<String, i64> = rewards["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|worker| {
            (worker["public_key"].as_str().unwrap().to_owned(), worker["credits"].as_i64().unwrap())
        })
        .collect();

    for (index, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "worker {index}: {}", network.log(&format!("worker-{index}.log")));
        let events = events(&output.stdout);
        for event in &events {
            let kind = event["event"].as_str().unwrap();
            let (_, keys) = KEYS.iter().find(|(name, _)| *name == kind).unwrap_or_else(|| panic!("{event}"));
            for key in *keys {
                assert!(event.get(key).is_some(), "{kind} without {key}: {event}");
            }
        }
        assert_eq!(events.first().unwrap()["event"], "registered");
        assert_eq!(events.last().unwrap()["event"], "exit", "the last line is the summary");
        let me = events[0]["worker"].as_u64().unwrap();
        let mine = status.workers.iter().find(|worker| worker.worker.0 == me).unwrap();
        let key = mine.public_key.to_hex();

        // Every round it trained: started (again, if a round opened ahead
        // was withdrawn when the fabricator's audit failed), progress up to
        // its last step (every 5th step at most, for worker 0), then
        // summarised once.
        let mut started: Vec<u64> =
            of(&events, "round_started").iter().map(|event| event["round"].as_u64().unwrap()).collect();
        started.dedup();
        assert_eq!(started, (0..ROUNDS).collect::<Vec<_>>());
        let summaries = of(&events, "round_summary");
        let summarised: Vec<u64> =
            summaries.iter().map(|summary| summary["round"].as_u64().unwrap()).collect();
        assert_eq!(summarised, (0..ROUNDS).collect::<Vec<_>>(), "one summary per round, in order");
        if index < 2 {
            // The steps reported for each training, in order.
            let mut trainings: Vec<Vec<u64>> = Vec::new();
            for event in &events {
                match event["event"].as_str() {
                    Some("round_started") => trainings.push(Vec::new()),
                    Some("progress") => trainings.last_mut().unwrap().push(event["step"].as_u64().unwrap()),
                    _ => {}
                }
            }
            for steps in &trainings {
                assert_eq!(steps.last(), Some(&STEPS), "{steps:?}");
                assert!(steps.windows(2).all(|pair| pair[0] < pair[1]), "{steps:?}");
                if index == 0 {
                    assert!(
                        steps.windows(2).all(|pair| pair[1] - pair[0] >= 5 || pair[1] == STEPS),
                        "{steps:?}"
                    );
                }
            }
        }
        for summary in &summaries {
            assert_eq!(summary["round_state"], "closed");
            for key in TOTALS {
                assert!(summary["totals"].get(key).is_some(), "{summary}");
            }
            assert_eq!(summary["audited"], true, "audit probability 1");
            let reveal = of(&events, "uploaded")
                .into_iter()
                .find(|event| event["round"] == summary["round"] && event["what"] == "reveal")
                .cloned();
            if index < 2 {
                assert_eq!(summary["accepted"], true, "{summary}");
                assert_eq!(summary["verdict"], "passed");
                assert_eq!(summary["work"].as_u64(), Some(STEPS * 32));
                assert_eq!(reveal.unwrap()["status"], "accepted");
            } else {
                assert_eq!(summary["accepted"], false, "{summary}");
                assert_eq!(summary["verdict"], "failed");
                assert_eq!(summary["refused"], "audit failed");
                assert!(summary["slashed"].as_u64().unwrap() > 0);
            }
        }
        // The totals the worker reports are the coordinator's.
        let last = summaries.last().unwrap();
        assert_eq!(last["totals"]["submissions_accepted"].as_u64(), Some(mine.submissions_accepted));
        assert_eq!(last["totals"]["audits_failed"].as_u64(), Some(mine.audits_failed));
        let finished = of(&events, "finished");
        assert_eq!(finished.len(), 1);
        let totals = &finished[0]["totals"];
        assert_eq!(totals["submissions_accepted"].as_u64(), Some(mine.submissions_accepted));
        assert_eq!(totals["verified_work"].as_u64(), Some(mine.verified_work));
        assert_eq!(totals["credits"].as_i64(), Some(mine.credits));
        assert_eq!(totals["credits"].as_i64(), Some(credits_by_key[&key]), "as crowdtrain rewards says");
        let expected_accepted = if index < 2 { ROUNDS } else { 0 };
        assert_eq!(mine.submissions_accepted, expected_accepted);
    }

    // The endpoint the summaries read: bounded, and refusing what it
    // cannot name.
    let url = network.url();
    let code = |path: &str| {
        runtime().block_on(async { reqwest::get(format!("{url}{path}")).await.unwrap().status().as_u16() })
    };
    assert_eq!(code("/v1/workers/nobody"), 400);
    assert_eq!(code("/v1/workers/0?rounds_limit=-1"), 400);
    assert_eq!(code("/v1/workers/99"), 404);
    let view: Value = get_json(&format!("{url}/v1/workers/0?rounds_from=0&rounds_limit=100000")).unwrap();
    assert_eq!(view["rounds"].as_array().unwrap().len() as u64, ROUNDS);
    let view: Value = get_json(&format!("{url}/v1/workers/0?rounds_from=1&rounds_limit=1")).unwrap();
    assert_eq!(view["rounds"].as_array().unwrap().len(), 1);
    assert_eq!(view["rounds"][0]["round"], 1);
}

#[test]
fn a_worker_without_a_terminal_writes_lines_not_progress_bars() {
    let mut network = Network::new(2, 24, 0.0, "min_workers = 1\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    network.wait_for(120, "the run to finish", finished_and_evaluated);
    let outputs = network.join_workers();
    assert!(outputs[0].status.success());
    // stderr went to a file: no bar was drawn, the summaries are plain lines.
    let log = network.log("worker-0.log");
    assert!(!log.contains('\r') && !log.contains('\u{1b}'), "no terminal control in a log: {log:?}");
    let summaries: Vec<&str> = log.lines().filter(|line| line.contains("so far")).collect();
    assert_eq!(summaries.len(), 2, "{log}");
    assert!(summaries[0].starts_with("round 0: accepted (768 work units), not audited"), "{log}");
    assert!(log.lines().any(|line| line.starts_with("run finished after 2 rounds")), "{log}");
}
