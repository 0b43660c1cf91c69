//! Proof-of-training against real cheaters: worker processes running each
//! dishonest behaviour, a real coordinator auditing them, and the verdicts
//! read back from the signed ledger.

mod common;

use std::collections::BTreeMap;

use common::*;
use crowdtrain_train::diloco::segment_range;
use serde_json::Value;

/// The ledger's entries of one kind, as JSON.
fn entries(network: &Network, kind: &str) -> Vec<Value> {
    let output = network.ledger(&["show", "--json", "--kind", kind]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["verified"], true, "the ledger verifies");
    shown["entries"].as_array().unwrap().clone()
}

/// `(round, worker) -> value` from ledger events of `kind`.
fn by_submission(network: &Network, kind: &str, field: &str) -> BTreeMap<(u64, u64), Value> {
    entries(network, kind)
        .into_iter()
        .map(|entry| {
            let event = &entry["event"][kind];
            ((event["round"].as_u64().unwrap(), event["worker"].as_u64().unwrap()), event[field].clone())
        })
        .collect()
}

/// The worker id each started worker got (registration order may differ
/// from start order), by behaviour.
fn workers_by_behavior(network: &mut Network) -> BTreeMap<String, u64> {
    network
        .join_workers()
        .into_iter()
        .map(|output| {
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
            (summary["behavior"].as_str().unwrap().to_owned(), summary["worker"].as_u64().unwrap())
        })
        .collect()
}

const ROUNDS: u64 = 5;
const STEPS: u64 = 16;

#[test]
fn every_cheater_is_caught_whenever_it_is_audited_and_the_honest_worker_never() {
    // Goal: each dishonest behaviour, audited (probability 1), is rejected
    // and slashed every time, and the honest worker never is.
    // Method: one honest worker and one of each cheater train for 5 rounds;
    // the verdicts, rejections and slashes come from the ledger.
    let mut network = Network::new(
        ROUNDS,
        STEPS,
        1.0,
        "min_workers = 8\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 3000",
    );
    network.start_coordinator();
    let behaviors =
        ["honest", "lazy:1", "fabricate", "wrong-data", "stale", "copy", "tamper-reveal", "no-answer"];
    for (index, behavior) in behaviors.iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, ROUNDS);
    let ids = workers_by_behavior(&mut network);
    let verdicts = by_submission(&network, "audit", "verdict");
    let slashes = by_submission(&network, "slash", "reason");
    let credited = by_submission(&network, "work-accepted", "units");
    let reveals = by_submission(&network, "reveal", "status");
    for (behavior, &worker) in &ids {
        for round in 0..ROUNDS {
            let key = (round, worker);
            let verdict =
                verdicts.get(&key).unwrap_or_else(|| panic!("{behavior} unaudited in round {round}"));
            let caught = slashes.contains_key(&key);
            match behavior.as_str() {
                "honest" => {
                    assert_eq!(verdict, &Value::String("passed".into()), "honest, round {round}");
                    assert!(!caught && credited.contains_key(&key), "honest work is credited, never slashed");
                }
                // A stale resubmitter's first round is its honest original.
                "stale" if round == 0 => assert!(credited.contains_key(&key)),
                "tamper-reveal" => {
                    assert_eq!(reveals[&key], Value::String("mismatch".into()), "round {round}");
                    assert!(
                        caught && !credited.contains_key(&key),
                        "a tampered reveal is slashed, round {round}"
                    );
                }
                _ => {
                    assert_ne!(
                        verdict,
                        &Value::String("passed".into()),
                        "{behavior} passed its audit in round {round}"
                    );
                    assert!(caught, "{behavior} was not slashed in round {round}");
                    assert!(!credited.contains_key(&key), "{behavior} was credited in round {round}");
                }
            }
        }
    }
    let honest = &status.workers[ids["honest"] as usize];
    assert_eq!((honest.audits_passed, honest.slashed), (ROUNDS, 0));
}

#[test]
fn replayed_from_the_start_every_cheater_is_caught_and_nobody_uploads_an_answer() {
    // Goal: under `audit.replay = "from-start"` the audits catch what they
    // catch today, with no answer from anyone: a worker that never answers
    // passes if it trained honestly.
    // Method: the honest worker, the cheaters audits catch and a
    // `no-answer` worker train 3 rounds, every submission audited; the
    // verdicts and slashes come from the ledger, the uploads from the
    // workers' summaries.
    const FROM_START_ROUNDS: u64 = 3;
    let mut network = Network::new(
        FROM_START_ROUNDS,
        STEPS,
        1.0,
        "min_workers = 7\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 3000",
    );
    network.replay_from_start();
    network.start_coordinator();
    let behaviors = ["honest", "no-answer", "lazy:1", "fabricate", "wrong-data", "stale", "copy"];
    for (index, behavior) in behaviors.iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, FROM_START_ROUNDS);
    let outputs = network.join_workers();
    let mut ids = BTreeMap::new();
    for output in outputs {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        let behavior = summary["behavior"].as_str().unwrap().to_owned();
        for answers in ["audits_answered", "audits_failed", "audits_delegated"] {
            assert_eq!(summary[answers], 0, "{behavior} uploaded an answer ({answers})");
        }
        ids.insert(behavior, summary["worker"].as_u64().unwrap());
    }
    let verdicts = by_submission(&network, "audit", "verdict");
    let slashes = by_submission(&network, "slash", "reason");
    let credited = by_submission(&network, "work-accepted", "units");
    let answered = by_submission(&network, "audit-answered", "answer");
    for (behavior, &worker) in &ids {
        for round in 0..FROM_START_ROUNDS {
            let key = (round, worker);
            let verdict =
                verdicts.get(&key).unwrap_or_else(|| panic!("{behavior} unaudited in round {round}"));
            assert!(answered.contains_key(&key), "{behavior}: its leaves are the answer, round {round}");
            let honest =
                matches!(behavior.as_str(), "honest" | "no-answer") || (behavior == "stale" && round == 0);
            if honest {
                assert_eq!(verdict, &Value::String("passed".into()), "{behavior}, round {round}");
                assert!(
                    !slashes.contains_key(&key) && credited.contains_key(&key),
                    "{behavior}, round {round}"
                );
            } else {
                assert_ne!(verdict, &Value::String("passed".into()), "{behavior} passed in round {round}");
                assert!(slashes.contains_key(&key), "{behavior} was not slashed in round {round}");
                assert!(!credited.contains_key(&key), "{behavior} was credited in round {round}");
            }
        }
    }
}

#[test]
fn a_worker_that_inflates_its_error_feedback_residual_is_caught_and_starts_again_from_zero() {
    // Goal: under a lossy codec, a worker that sends its update plus more
    // residual than its encoder kept (mass it never trained for), while
    // committing to its true residual chain, fails the audit that replays
    // its last segment and is slashed; the residual that audit contradicted
    // is not carried on, so its next commitment must start from zero.
    // Method: two honest workers and one `inflate-residual` (10x), q4,
    // every submission audited on its only segment. Round 0 starts from
    // the zero residual (nothing to inflate): it passes. Round 1 inflates:
    // caught. Round 2: its chain is refused, it starts from zero: passes.
    let mut network = Network::with_training(
        3,
        STEPS,
        1.0,
        "min_workers = 3\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 3000",
        "codec = \"q4\"",
        1,
        "",
    );
    network.start_coordinator();
    for (index, behavior) in ["honest", "honest", "inflate-residual"].iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 3);
    let ids = workers_by_behavior(&mut network);
    let log = network.log("worker-2.log");
    let verdicts = by_submission(&network, "audit", "verdict");
    let slashes = by_submission(&network, "slash", "reason");
    let cheater = ids["inflate-residual"];
    for round in 0..3 {
        let verdict = &verdicts[&(round, cheater)];
        if round == 1 {
            let reason = verdict["failed"].as_str().unwrap_or_else(|| panic!("round 1: {verdict}"));
            assert!(reason.contains("pseudo-gradient"), "{reason}");
            assert!(slashes.contains_key(&(round, cheater)), "slashed in round 1");
        } else {
            assert_eq!(verdict, "passed", "round {round}: nothing inflated");
            assert!(!slashes.contains_key(&(round, cheater)));
        }
    }
    assert!(log.contains("starting the error feedback again from zero"), "{log}");
    let honest: Vec<u64> = status
        .workers
        .iter()
        .filter(|worker| worker.worker.0 != cheater)
        .map(|worker| worker.audits_passed)
        .collect();
    assert_eq!(honest, [3, 3], "honest workers always pass");
}

#[test]
fn two_hundred_honest_audits_across_thread_counts_never_reject_anyone() {
    // Goal: no false positives. Method: four honest workers, two training
    // on one thread and two on two, every submission audited, 50 rounds:
    // 200 bit-exact replays by the coordinator, on its own thread count.
    let mut network = Network::new(50, 8, 1.0, "min_workers = 4\ndeadline_ms = 60000");
    network.start_coordinator();
    for index in 0..4 {
        network.start_worker_as(index, "honest", 1 + index % 2);
    }
    let status = network.wait_for(600, "the run to finish", finished_and_evaluated);
    workers_by_behavior(&mut network);
    let verdicts = by_submission(&network, "audit", "verdict");
    assert_eq!(verdicts.len(), 200);
    assert!(verdicts.values().all(|verdict| verdict == "passed"), "{verdicts:?}");
    assert!(entries(&network, "slash").is_empty());
    assert!(
        status.workers.iter().all(|worker| worker.audits_passed == 50 && worker.submissions_accepted == 50)
    );
}

#[test]
fn lazy_workers_are_caught_exactly_on_skipped_segments_and_laziness_never_pays() {
    // Goal: the expected-value rule. Method: lazy workers skipping 25%, 50%,
    // 75% and 100% of their steps are audited every round (probability 1,
    // 4 segments); a verdict must fail exactly when the drawn segment holds
    // skipped steps. From the measured share q of such segments, the
    // expected gain of laziness, F*c - p*q*(c + stake), must be negative
    // under the stake rule (stake > c/p) at every audit probability p
    // (every layout, multiplier and pattern: protocol's tests/stake_rule.rs).
    let mut network = Network::new(8, STEPS, 1.0, "min_workers = 4\ndeadline_ms = 60000");
    network.start_coordinator();
    let fractions = [0.25, 0.5, 0.75, 1.0];
    for (index, fraction) in fractions.iter().enumerate() {
        network.start_worker_as(index, &format!("lazy:{fraction}"), 1);
    }
    network.wait_for(240, "the run to finish", finished_and_evaluated);
    let ids = workers_by_behavior(&mut network);
    let draws: BTreeMap<(u64, u64), u64> = entries(&network, "audit-draw")
        .iter()
        .flat_map(|entry| {
            let event = &entry["event"]["audit-draw"];
            let round = event["round"].as_u64().unwrap();
            event["audits"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |pair| ((round, pair[0].as_u64().unwrap()), pair[1].as_u64().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    let verdicts = by_submission(&network, "audit", "verdict");
    let work = (STEPS * 32) as f64;
    for fraction in fractions {
        let worker = ids[&format!("lazy:{fraction}")];
        let honest_until = STEPS - (STEPS as f64 * fraction).round() as u64;
        let affected: Vec<u32> =
            (1..=4).filter(|&segment| segment_range(STEPS, 4, segment).1 > honest_until).collect();
        for round in 0..8 {
            let segment = draws[&(round, worker)] as u32;
            let failed = verdicts[&(round, worker)] != "passed";
            assert_eq!(
                failed,
                affected.contains(&segment),
                "lazy:{fraction}, round {round}, segment {segment}"
            );
        }
        let q = affected.len() as f64 / 4.0;
        assert!(q >= fraction, "skipping a fraction F touches at least F of the segments");
        for p in [0.05, 0.1, 0.25, 0.5, 1.0] {
            let stake = crowdtrain_protocol::audit::minimum_stake(STEPS * 32, p).unwrap() as f64;
            let gain = fraction * work - p * q * (work + stake);
            assert!(gain < 0.0, "lazy:{fraction} at p = {p}: expected gain {gain}");
        }
    }
}

#[test]
fn tampering_with_any_ledger_entry_in_the_file_is_detected_and_located() {
    // Goal: `crowdtrain ledger verify` finds a changed byte anywhere in any
    // entry (its body, its hash or its signature) and names the entry.
    // Method: a short real run; then, for every entry and each of its three
    // stored fields, flip one byte of it in the SQLite file itself.
    let mut network = Network::new(2, STEPS, 0.5, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    network.start_worker(1);
    network.wait_for(120, "the run to finish", finished_and_evaluated);
    network.join_workers();
    network.kill_coordinator();
    let database = network.path("state/coordinator.sqlite");
    type Row = (u64, Vec<u8>, Vec<u8>, Vec<u8>);
    let rows: Vec<Row> = {
        let connection = rusqlite::Connection::open(&database).unwrap();
        connection.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
        let mut statement =
            connection.prepare("SELECT idx, body, hash, signature FROM ledger ORDER BY idx").unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(rows.len() > 20, "a real run leaves a real ledger ({} entries)", rows.len());
    let verify = || network.ledger(&["verify", "--json"]);
    assert!(verify().status.success());
    let pristine = std::fs::read(&database).unwrap();
    for (index, body, hash, signature) in &rows {
        for (field, bytes) in [("body", body), ("hash", hash), ("signature", signature)] {
            let positions: Vec<usize> = pristine
                .windows(bytes.len())
                .enumerate()
                .filter(|(_, window)| *window == bytes.as_slice())
                .map(|(position, _)| position)
                .collect();
            assert_eq!(
                positions.len(),
                1,
                "entry {index}'s {field} is stored once, with no stale copy in the file"
            );
            let position = positions[0];
            let mut tampered = pristine.clone();
            tampered[position + bytes.len() / 2] ^= 0x01;
            std::fs::write(&database, &tampered).unwrap();
            let output = verify();
            assert!(!output.status.success(), "a flipped byte in entry {index}'s {field} went unnoticed");
            let report: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(report["ok"], false);
            assert_eq!(report["first_broken"]["index"], *index, "entry {index}'s {field}: {report}");
        }
    }
    std::fs::write(&database, &pristine).unwrap();
    assert!(verify().status.success(), "the untouched file verifies again");
}

/// `(audited, auditor)` pairs of every audit draw, by round.
fn auditors_by_round(network: &Network) -> BTreeMap<u64, BTreeMap<u64, u64>> {
    entries(network, "audit-draw")
        .iter()
        .map(|entry| {
            let event = &entry["event"]["audit-draw"];
            let pairs = event["auditors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap()))
                .collect();
            (event["round"].as_u64().unwrap(), pairs)
        })
        .collect()
}

/// Who judged each audit (`None`: the coordinator).
fn judges(network: &Network) -> BTreeMap<(u64, u64), Option<u64>> {
    entries(network, "audit")
        .iter()
        .map(|entry| {
            let event = &entry["event"]["audit"];
            (
                (event["round"].as_u64().unwrap(), event["worker"].as_u64().unwrap()),
                event["judged_by"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn delegated_audits_are_replayed_by_workers_of_the_same_class_with_the_coordinators_verdicts() {
    // Goal: with `audit.auditors = "workers"` each drawn segment is
    // replayed by another worker of the same determinism class, and the
    // run ends as if the coordinator had audited everything itself.
    // Method: three workers on the AVX2+FMA kernels and one on the portable
    // kernels (another class), every submission audited, 4 rounds.
    let rounds = 4;
    let mut network = Network::with_extra(
        rounds,
        STEPS,
        1.0,
        "min_workers = 4\ndeadline_ms = 60000\nreveal_ms = 30000",
        "",
    );
    network.delegate_audits();
    network.start_coordinator();
    for index in 0..3 {
        network.start_worker(index);
    }
    network.start_worker_with(3, "honest", 1, &[("CROWDTRAIN_KERNELS", "portable")]);
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    for output in network.join_workers() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let class: BTreeMap<u64, String> =
        status.workers.iter().map(|worker| (worker.worker.0, worker.class.clone())).collect();
    assert_eq!(class.values().filter(|class| class.as_str() == "portable").count(), 1);
    let verdicts = by_submission(&network, "audit", "verdict");
    assert_eq!(verdicts.len() as u64, 4 * rounds);
    assert!(verdicts.values().all(|verdict| verdict == "passed"), "{verdicts:?}");
    let auditors = auditors_by_round(&network);
    for ((round, worker), judged_by) in judges(&network) {
        match judged_by {
            Some(auditor) => {
                assert_ne!(auditor, worker);
                assert_eq!(class[&auditor], class[&worker], "round {round}: same class");
                assert_eq!(auditors[&round].get(&worker), Some(&auditor), "the auditor the draw named");
            }
            None => assert_eq!(
                class[&worker], "portable",
                "only the lone portable worker is audited by the coordinator"
            ),
        }
    }
    assert!(
        status
            .workers
            .iter()
            .filter(|worker| worker.class == "avx2-fma")
            .all(|worker| worker.audits_judged > 0)
    );
    assert!(entries(&network, "slash").is_empty() && entries(&network, "auditor-slashed").is_empty());
    assert_eq!(status.state_hash, simulated_state_hash(4, rounds, STEPS), "the same bits as any honest run");
}

#[test]
fn a_lying_auditor_is_slashed_a_silent_one_replaced_and_cheaters_still_fail() {
    // Goal: delegating audits trusts no auditor. A report that contradicts
    // the commitment makes the coordinator replay the segment itself and
    // slash whichever side its replay contradicts; an auditor that never
    // reports is replaced by the coordinator at the reveal deadline.
    // Method: two honest workers, a lazy one, a lying auditor and a silent
    // one (no-answer: it neither answers its own audits nor replays
    // others'), every submission audited, 8 rounds: with 32 draws of an
    // auditor among 4 candidates, each of the two is drawn for someone
    // except with probability (3/4)^32, about 1e-4.
    let rounds = 8;
    let mut network = Network::new(
        rounds,
        STEPS,
        1.0,
        "min_workers = 5\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 3000",
    );
    network.delegate_audits();
    network.start_coordinator();
    let behaviors = ["honest", "honest", "lazy:1", "lying-auditor", "no-answer"];
    for (index, behavior) in behaviors.iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    network.wait_for(240, "the run to finish", finished_and_evaluated);
    // By id: two workers share the behaviour "honest".
    let summaries = network.behaviors_by_id();
    let behavior_of: BTreeMap<u64, &str> =
        summaries.iter().map(|(id, behavior)| (*id, behavior.as_str())).collect();
    assert_eq!(behavior_of.len(), 5);
    let verdicts = by_submission(&network, "audit", "verdict");
    let judges = judges(&network);
    let auditors = auditors_by_round(&network);
    let auditor_slashes: Vec<(u64, u64)> = entries(&network, "auditor-slashed")
        .iter()
        .map(|entry| {
            let event = &entry["event"]["auditor-slashed"];
            (event["round"].as_u64().unwrap(), event["auditor"].as_u64().unwrap())
        })
        .collect();
    for round in 0..rounds {
        for (&worker, &behavior) in &behavior_of {
            // A verdict is "passed", "unanswered" or {"failed": reason}.
            let verdict = &verdicts[&(round, worker)];
            let kind =
                verdict.as_str().unwrap_or(if verdict.get("failed").is_some() { "failed" } else { "?" });
            match behavior {
                "honest" | "lying-auditor" => {
                    assert_eq!(kind, "passed", "{behavior}, round {round}: {verdict}")
                }
                "lazy:1" => assert_eq!(kind, "failed", "round {round}"),
                "no-answer" => assert_eq!(kind, "unanswered", "round {round}"),
                other => panic!("{other}"),
            }
            let Some(&auditor) = auditors[&round].get(&worker) else { continue };
            match behavior_of[&auditor] {
                "lying-auditor" => {
                    assert_eq!(judges[&(round, worker)], None, "a lie is re-checked by the coordinator");
                    if behavior != "no-answer" {
                        assert!(
                            auditor_slashes.contains(&(round, auditor)),
                            "the liar is slashed in round {round}"
                        );
                    }
                }
                "no-answer" if behavior != "no-answer" => {
                    assert_eq!(judges[&(round, worker)], None, "the coordinator replaces a silent auditor");
                }
                _ => {}
            }
        }
    }
    let drawn_as_auditor = |wanted: &str| {
        auditors.values().flat_map(|pairs| pairs.values()).any(|auditor| behavior_of[auditor] == wanted)
    };
    assert!(
        drawn_as_auditor("lying-auditor") && drawn_as_auditor("no-answer"),
        "both bad auditors were tried"
    );
    let honest_ids: Vec<u64> =
        behavior_of.iter().filter(|(_, behavior)| **behavior == "honest").map(|(id, _)| *id).collect();
    assert!(
        auditor_slashes.iter().all(|(_, auditor)| behavior_of[auditor] == "lying-auditor"),
        "{auditor_slashes:?}"
    );
    let slashed = by_submission(&network, "slash", "reason");
    assert!(
        slashed.keys().all(|(_, worker)| !honest_ids.contains(worker)),
        "honest workers are never slashed"
    );
    // `crowdtrain rewards` counts an auditor's slashes against it too.
    let output = std::process::Command::new(binary())
        .args(["rewards", "--json", "--state"])
        .arg(network.path("state"))
        .output()
        .unwrap();
    let rewards: Value = serde_json::from_slice(&output.stdout).unwrap();
    let liar =
        behavior_of.iter().find(|(_, behavior)| **behavior == "lying-auditor").map(|(id, _)| *id).unwrap();
    let liar_slashed = rewards["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|worker| worker["worker"] == liar)
        .unwrap()["slashed"]
        .as_u64()
        .unwrap();
    let stake = crowdtrain_protocol::audit::minimum_stake(STEPS * 32, 1.0).unwrap();
    let liar_rounds: std::collections::BTreeSet<u64> =
        auditor_slashes.iter().filter(|(_, auditor)| *auditor == liar).map(|(round, _)| *round).collect();
    assert_eq!(liar_slashed, stake * liar_rounds.len() as u64, "one stake per round it lied in");
}

/// Runs `network` to its end with two honest workers and a copier (it
/// retrains the next slot's assignment: its update is its victim's, bit for
/// bit). Returns the workers' behaviours by id, and the copier's id.
fn run_two_honest_workers_and_a_copier(network: &mut Network) -> (BTreeMap<u64, String>, u64) {
    network.start_coordinator();
    for (index, behavior) in ["honest", "honest", "copy"].iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    network.wait_for(240, "the run to finish", finished_and_evaluated);
    let ids = network.behaviors_by_id();
    let copier = ids.iter().find(|(_, behavior)| behavior.as_str() == "copy").map(|(id, _)| *id).unwrap();
    (ids, copier)
}

#[test]
fn a_copiers_answer_is_its_victims_file_and_is_kept_until_every_audit_naming_it_is_decided() {
    // Goal: a copier answers its audit with its victim's very bytes, so
    // both audits name one content-addressed file. The victim's audit
    // passing must not delete the file the copier's audit still needs (the
    // coordinator halted: "no checkpoint ... in the store") nor the
    // evidence of the copier's failed audit.
    // Method: two honest workers and a copier, audits delegated, one
    // segment (every audit replays the same steps, so the copier's answer
    // is its victim's in every round), 3 rounds.
    let rounds = 3;
    let mut network =
        Network::new(rounds, STEPS, 1.0, "min_workers = 3\ndeadline_ms = 60000\nreveal_ms = 3000");
    let config = std::fs::read_to_string(network.path("run.toml")).unwrap();
    std::fs::write(network.path("run.toml"), config.replace("segments = 4\n", "segments = 1\n")).unwrap();
    network.delegate_audits();
    let (ids, copier) = run_two_honest_workers_and_a_copier(&mut network);
    let verdicts = by_submission(&network, "audit", "verdict");
    let answers = by_submission(&network, "audit-answered", "answer");
    let mut shared = 0;
    for round in 0..rounds {
        for &worker in ids.keys() {
            let verdict = &verdicts[&(round, worker)];
            let answer = answers[&(round, worker)].as_str().unwrap();
            let file = network.path("state").join("audit-answers").join(format!("{answer}.answer"));
            if worker == copier {
                assert!(
                    verdict.get("failed").is_some(),
                    "round {round}: the copy fails its replay: {verdict}"
                );
                assert!(file.exists(), "round {round}: the failed audit's answer stays as evidence");
                shared += ids
                    .keys()
                    .filter(|&&other| answers[&(round, other)] == answers[&(round, worker)])
                    .count()
                    - 1;
            } else {
                assert_eq!(verdict, "passed", "round {round}, worker {worker}");
            }
        }
    }
    assert_eq!(shared as u64, rounds, "in every round the copier's answer was its victim's file");
}

#[test]
fn a_copy_is_caught_with_audits_off_and_its_original_is_never_refused() {
    // Goal: an honest worker is never refused because someone else
    // submitted its update first. The copier retrains its victim's
    // assignment, so its update is its victim's bit for bit, and commits it
    // as early as its victim does: before, the later of the two was refused
    // as the copy, and that was the victim whenever the copier won the race.
    // Method: two honest workers and a copier, audit probability 0 (no
    // random audit can catch the copy), 4 rounds: every round, both
    // commitments to the one update are audited, the copy fails its replay,
    // and both honest workers are credited.
    let rounds = 4;
    let mut network =
        Network::new(rounds, STEPS, 0.0, "min_workers = 3\ndeadline_ms = 60000\nreveal_ms = 5000");
    let (ids, copier) = run_two_honest_workers_and_a_copier(&mut network);
    let verdicts = by_submission(&network, "audit", "verdict");
    let credited = by_submission(&network, "work-accepted", "units");
    let refused = by_submission(&network, "update-refused", "reason");
    for round in 0..rounds {
        assert!(
            verdicts[&(round, copier)].get("failed").is_some(),
            "round {round}: the copy fails its replay: {:?}",
            verdicts[&(round, copier)]
        );
        assert!(!credited.contains_key(&(round, copier)), "round {round}: the copy earns nothing");
        let audited_honest = ids
            .keys()
            .filter(|&&worker| {
                worker != copier && verdicts.get(&(round, worker)).is_some_and(|v| v == "passed")
            })
            .count();
        assert_eq!(audited_honest, 1, "round {round}: the original is audited too, and passes");
        for &worker in ids.keys().filter(|&&worker| worker != copier) {
            assert!(credited.contains_key(&(round, worker)), "round {round}: honest {worker} is credited");
            assert!(!refused.contains_key(&(round, worker)), "round {round}: honest {worker} is not refused");
        }
    }
}

#[test]
fn a_near_copy_is_challenged_after_the_reveals_and_only_the_copy_is_refused_and_slashed() {
    // Goal (issue 14.5): of two nearly identical updates, the one that is
    // not its worker's own work is refused, whichever committed first. The
    // near-copier retrains its victim's assignment and adds noise at 10^-3
    // of the norm: no commitment names its victim's update, and it commits
    // as early as its victim (before it whenever it wins the race): by order
    // alone the later of the two was refused, the victim as often as the
    // copy. Its commitment names its victim's trace, though (the segment
    // boundaries it retrained): since s12 the draw contests both on that and
    // the coordinator audits both; a pair the draw missed is challenged
    // after the reveals, when the checks find the near copy.
    // Method: two honest workers and a near-copier, audit probability 0, 4
    // rounds: every round both are audited, the copy fails its replay and
    // is slashed, and both honest workers are credited their full verified
    // work.
    let rounds = 4;
    let mut network =
        Network::new(rounds, STEPS, 0.0, "min_workers = 3\ndeadline_ms = 60000\nreveal_ms = 20000");
    network.start_coordinator();
    for (index, behavior) in ["honest", "honest", "near-copy"].iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    network.wait_for(240, "the run to finish", finished_and_evaluated);
    let ids = network.behaviors_by_id();
    let copier =
        ids.iter().find(|(_, behavior)| behavior.as_str() == "near-copy").map(|(id, _)| *id).unwrap();
    let verdicts = by_submission(&network, "audit", "verdict");
    let credited = by_submission(&network, "work-accepted", "units");
    let refused = by_submission(&network, "update-refused", "reason");
    let slashed = by_submission(&network, "slash", "amount");
    let units = credited.values().next().cloned().expect("someone is credited");
    for round in 0..rounds {
        assert!(
            verdicts[&(round, copier)].get("failed").is_some(),
            "round {round}: the near copy fails its challenge: {:?}",
            verdicts.get(&(round, copier))
        );
        assert!(slashed.contains_key(&(round, copier)), "round {round}: the near-copier is slashed");
        assert!(!credited.contains_key(&(round, copier)), "round {round}: the copy earns nothing");
        let challenged_honest = ids
            .keys()
            .filter(|&&worker| {
                worker != copier && verdicts.get(&(round, worker)).is_some_and(|v| v == "passed")
            })
            .count();
        assert_eq!(challenged_honest, 1, "round {round}: its victim is challenged too, and passes");
        for &worker in ids.keys().filter(|&&worker| worker != copier) {
            assert_eq!(
                credited.get(&(round, worker)),
                Some(&units),
                "round {round}: honest {worker} is paid in full"
            );
            assert!(!refused.contains_key(&(round, worker)), "round {round}: honest {worker} is not refused");
            assert!(!slashed.contains_key(&(round, worker)), "round {round}: honest {worker} is not slashed");
        }
    }
}

/// Inner steps of the run below, replayed whole (one segment): a bet
/// includes the cheater only if its replay is still running when the last
/// answer arrives, and answers arrive spread over the workers' notice polls
/// (up to half a second apart). At 64 steps in four segments a replay took
/// milliseconds, and zero to two of a run's five bets included the cheater
/// (none in either run, once, in CI); replaying 256 steps, two to five do.
const STEPS_AHEAD: u64 = 256;

/// One run of three honest workers and one that trains on the wrong data,
/// everyone audited: its state hash, how many bets on a round's audits were
/// withdrawn, and the honest workers' credited rounds.
fn run_with_a_caught_cheater() -> (String, u64, Vec<u64>) {
    let mut network = Network::with_training(
        6,
        STEPS_AHEAD,
        1.0,
        "min_workers = 4\nquorum = 1\ndeadline_ms = 60000",
        "",
        1,
        "",
    );
    network.start_coordinator();
    // One at a time, so that the cheater has the same id (and shard) in
    // every run.
    for (index, behavior) in ["honest", "honest", "honest", "wrong-data"].iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
        network.wait_for(60, "the worker to register", |status| status.workers.len() > index);
    }
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    let behaviors = network.behaviors_by_id();
    let credited = by_submission(&network, "work-accepted", "units");
    let honest: Vec<u64> = behaviors
        .iter()
        .filter(|(_, behavior)| behavior.as_str() == "honest")
        .map(|(&worker, _)| (0..6).filter(|&round| credited.contains_key(&(round, worker))).count() as u64)
        .collect();
    let cheater = behaviors.iter().find(|(_, behavior)| behavior.as_str() == "wrong-data").unwrap().0;
    assert!(!credited.keys().any(|(_, worker)| worker == cheater), "the cheater is never credited");
    (status.state_hash, status.withdrawn_ahead, honest)
}

#[test]
fn a_round_opened_ahead_of_a_failing_audit_is_withdrawn_and_changes_nothing() {
    // Goal: opening the next round before the last verdicts are in (on the
    // model the round gives if they pass) changes no model and costs honest
    // workers no round when a verdict fails. Method: a cheater whose
    // replay fails, every round, next to three honest workers; twice, with
    // whatever timing each run gets: the same bits, every honest
    // submission credited, and bets withdrawn along the way.
    let (first, withdrawn_first, honest_first) = run_with_a_caught_cheater();
    let (second, withdrawn_second, honest_second) = run_with_a_caught_cheater();
    assert_eq!(first, second, "the same model whichever bets were made and withdrawn");
    assert_eq!(honest_first, vec![6; 3], "honest workers trained again on the model that counted");
    assert_eq!(honest_second, vec![6; 3]);
    assert!(withdrawn_first + withdrawn_second > 0, "no bet included the cheater: the test proves nothing");
}

#[test]
fn a_cheater_with_a_small_bond_is_slashed_until_its_bond_is_exhausted_and_then_refused_work() {
    // Goal: collateral that slashing really takes. Method: a bonded run
    // (`[admission] mode = "bond"`, every submission audited) with two
    // honest workers and one that skips all its steps, each registered with
    // a bond of two stakes and a bit: its first two slashes take its bond
    // (it never earns, so it has no escrow), the rest is less than a stake,
    // and it is refused work with a clear error.
    let mut network = Network::with_extra(
        8,
        STEPS,
        1.0,
        "min_workers = 3\nquorum = 1\ndeadline_ms = 60000",
        "[admission]\nmode = \"bond\"\n",
    );
    let stake = crowdtrain_protocol::audit::minimum_stake(STEPS * 32, 1.0).unwrap();
    let bond = 2 * stake + 100;
    let config = std::fs::read_to_string(network.path("run.toml")).unwrap();
    let config = config.replace("segments = 4\n", &format!("segments = 4\nbond = {bond}\n"));
    std::fs::write(network.path("run.toml"), config).unwrap();
    network.start_coordinator();
    network.start_worker_as(0, "honest", 1);
    network.start_worker_as(1, "honest", 1);
    network.start_worker_as(2, "lazy:1", 1);
    network.wait_for(300, "the run to finish", finished_and_evaluated);
    let outputs = network.join_workers();
    for honest in &outputs[..2] {
        assert!(honest.status.success(), "{}", String::from_utf8_lossy(&honest.stderr));
    }
    let refused = network.log("worker-2.log");
    assert!(!outputs[2].status.success(), "the cheater is refused: {refused}");
    assert!(refused.contains("bond is exhausted"), "{refused}");
    let deposits = entries(&network, "bond-deposited");
    assert_eq!(deposits.len(), 3);
    assert!(deposits.iter().all(|entry| entry["event"]["bond-deposited"]["amount"] == bond));
    let draws: Vec<Value> =
        entries(&network, "slash-drawn").iter().map(|entry| entry["event"]["slash-drawn"].clone()).collect();
    assert_eq!(draws.len(), 2, "slashed twice, then no more work: {draws:?}");
    let cheat = draws[0]["worker"].as_u64().unwrap();
    for draw in &draws {
        assert_eq!(draw["worker"], cheat);
        assert_eq!((draw["escrow"].as_u64(), draw["bond"].as_u64()), (Some(0), Some(stake)), "{draw}");
    }
    let rewards = network.rewards();
    for worker in rewards["workers"].as_array().unwrap() {
        if worker["worker"] == cheat {
            assert_eq!(worker["bond"], 100);
            assert_eq!((worker["vested"].as_u64(), worker["escrowed"].as_u64()), (Some(0), Some(0)));
        } else {
            // Honest: its bond untouched, its credits vested after four
            // rounds or still escrowed.
            assert_eq!(worker["bond"], bond);
            let (vested, escrowed) =
                (worker["vested"].as_u64().unwrap(), worker["escrowed"].as_u64().unwrap());
            assert!(vested > 0 && escrowed > 0, "{worker}");
            assert_eq!(vested + escrowed, worker["earned"].as_u64().unwrap(), "{worker}");
        }
    }
}
