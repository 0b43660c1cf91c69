//! The defence over the network: worker processes attacking the model
//! with audits off, so only the checks, the robust aggregator and the pay
//! gate stand in their way; what they earned, read back from the signed
//! ledger with `crowdtrain rewards`.

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;

/// `crowdtrain rewards --state <state> --json`, parsed.
fn rewards(network: &Network) -> Value {
    network.rewards()
}

/// The ledger's entries of `kind`, as JSON events.
fn events(network: &Network, kind: &str) -> Vec<Value> {
    let output = network.ledger(&["show", "--json", "--kind", kind]);
    assert!(output.status.success());
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["verified"], true);
    shown["entries"].as_array().unwrap().iter().map(|entry| entry["event"][kind].clone()).collect()
}

const ROUNDS: u64 = 6;

#[test]
fn model_attackers_are_refused_or_earn_nothing_and_honest_workers_are_paid_for_their_work() {
    // Goal: with no audits, the checks refuse what no honest update looks
    // like (a 100x noise update), a malformed committed update is recorded
    // and rejected without stalling the round, a harmful update that looks
    // like work (sign-flip) is aggregated only within the honest spread and
    // earns nothing, and honest workers are credited in full.
    // Method: three honest workers and one of each attacker train for six
    // rounds with a reveal deadline far longer than the whole test may take.
    // The bundled subset's validation split (100 images) is below the
    // gate's default floor for power; the test lowers it so the gate judges.
    let mut network = Network::with_extra(
        ROUNDS,
        16,
        0.0,
        "min_workers = 6\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 120000",
        "[quality]\nmin_eval_examples = 100",
    );
    network.start_coordinator();
    let behaviors = ["honest", "honest", "honest", "sign-flip", "noise:100", "nan"];
    for (index, behavior) in behaviors.iter().enumerate() {
        network.start_worker_as(index, behavior, 1);
    }
    let started = Instant::now();
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    assert!(
        started.elapsed().as_secs() < 100,
        "no round waited for the reveal deadline of a malformed update ({} s)",
        started.elapsed().as_secs()
    );
    let ids = network.behaviors_by_id();
    let behavior = |worker: &Value| ids[&worker.as_u64().unwrap()].clone();

    // The checks refused the outsized noise, every round, saying why.
    let refused = events(&network, "update-refused");
    assert!(!refused.is_empty());
    for event in &refused {
        assert_eq!(behavior(&event["worker"]), "noise:100", "{event}");
        assert!(event["reason"].as_str().unwrap().contains("median norm"), "{event}");
    }
    assert_eq!(refused.len() as u64, ROUNDS);
    // The malformed committed update was recorded as such, never slashed.
    let malformed: Vec<Value> =
        events(&network, "reveal").into_iter().filter(|event| event["status"] == "malformed").collect();
    assert_eq!(malformed.len() as u64, ROUNDS);
    assert!(malformed.iter().all(|event| behavior(&event["worker"]) == "nan"));
    assert!(events(&network, "slash").is_empty(), "the checks refuse; only proofs slash");

    let report = rewards(&network);
    assert_eq!(report["verified"], true);
    assert_eq!(
        (report["rounds_closed"].as_u64(), report["rounds_scored"].as_u64()),
        (Some(ROUNDS), Some(ROUNDS))
    );
    let work = ROUNDS * 16 * 32;
    for worker in report["workers"].as_array().unwrap() {
        let (verified, credits) =
            (worker["verified_work"].as_u64().unwrap(), worker["credits"].as_i64().unwrap());
        match behavior(&worker["worker"]).as_str() {
            "honest" => {
                assert_eq!(verified, work, "every honest round is verified work");
                assert_eq!(credits as u64, work, "honest work is paid in full: {worker}");
                assert_eq!(worker["gate"], "pass", "{worker}");
            }
            "sign-flip" => {
                assert_eq!(verified, work, "it passes the checks, so it counts as work ...");
                assert_eq!(credits, 0, "... and its harm on held-out data earns it nothing: {worker}");
                assert_eq!(worker["gate"], "deny", "{worker}");
                assert_eq!(worker["rounds_judged"], ROUNDS, "the gate judged every round: {worker}");
            }
            "noise:100" | "nan" => assert_eq!((verified, credits), (0, 0), "{worker}"),
            other => panic!("unexpected {other}"),
        }
        assert_eq!(worker["slashed"], 0);
    }
    // The model survived: it learned, and is finite.
    let accuracy = status.test_accuracy.unwrap();
    assert!(accuracy.is_finite() && accuracy > 0.6, "test accuracy {accuracy}");
    // What the status page says agrees with the ledger.
    for worker in &status.workers {
        let from_ledger = report["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["worker"] == worker.worker.0)
            .unwrap();
        assert_eq!(worker.credits, from_ledger["credits"].as_i64().unwrap());
        assert_eq!(worker.verified_work, from_ledger["verified_work"].as_u64().unwrap());
    }
}

#[test]
fn a_coordinator_restarted_after_an_aggregator_snapshot_resumes_bit_identical() {
    // Goal: worker momenta survive a crash. They are written out every 16
    // rounds and rebuilt in between by replaying the aggregation of the
    // rounds since; either way the run must end with the bits of an
    // uninterrupted one. Method: kill the coordinator with SIGKILL after
    // the snapshot of round 16, restart it, and compare the final state
    // with the in-process simulation.
    let mut network = Network::new(19, 6, 0.0, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    network.start_worker(1);
    network.wait_for(120, "round 17 to close", |status| status.completed_rounds >= 17);
    network.kill_coordinator();
    network.start_coordinator();
    let status = network.wait_for(120, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 19);
    assert_eq!(status.state_hash, simulated_state_hash(2, 19, 6), "same bits as an uninterrupted run");
    for output in network.join_workers() {
        assert!(output.status.success());
    }
}

#[test]
fn the_aggregation_rule_of_run_toml_is_the_one_the_coordinator_applies() {
    // Goal: `[aggregation]` is not decoration. Method: a run with the
    // coordinate-wise median ends with exactly the bits of the simulation
    // with the median, and not with those of the default rule.
    let mut network = Network::with_extra(
        3,
        8,
        0.0,
        "min_workers = 3\ndeadline_ms = 60000",
        "[aggregation]\nrule = \"median\"\n",
    );
    network.start_coordinator();
    for index in 0..3 {
        network.start_worker(index);
    }
    let status = network.wait_for(120, "the run to finish", finished_and_evaluated);
    let median = simulated_state_hash_with(3, 3, 8, crowdtrain_defense::Aggregator::Median);
    assert_eq!(status.state_hash, median);
    assert_ne!(status.state_hash, simulated_state_hash(3, 3, 8), "the rule changes the model");
    for output in network.join_workers() {
        assert!(output.status.success());
    }
}
