//! `crowdtrain demo --contract` (issue 15): the whole timeline in real
//! processes. Six workers with private costs drawn from three types choose
//! from the published menu, the run holds each to its contribution, each
//! fetches its model reward, and the outcome is what the contract promises:
//! every reward within half a point of its promise and never above the
//! trained model, IR as realised, IC against the menu.

mod common;

use std::process::Command;

use common::{binary, subset};

#[test]
fn the_demo_runs_the_whole_timeline_and_every_participant_gets_what_the_contract_promises() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/contracts/demo_mlp.toml");
    let output = Command::new(binary())
        .args([
            "demo",
            "--workers",
            "6",
            "--rounds",
            "6",
            "--inner-steps",
            "20",
            "--json",
            "--contract",
            scenario,
        ])
        .arg("--data")
        .arg(subset())
        .arg("--keep")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let contract = &report["contract"];
    let realised = contract["realised_accuracy"].as_f64().unwrap();
    assert_eq!(realised, report["final_test_accuracy"].as_f64().unwrap(), "a(n·m) is the trained model's");
    let participants = contract["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 6);
    let types: std::collections::BTreeSet<u64> =
        participants.iter().map(|p| p["type"].as_u64().unwrap()).collect();
    assert!(types.len() >= 3, "three types drawn: {types:?}");
    // The files the workers fetched, as `crowdtrain reward fetch` wrote them.
    let fetched: Vec<String> = (0..6)
        .map(|index| {
            let bytes = std::fs::read(dir.path().join(format!("reward-{index}.safetensors"))).unwrap();
            crowdtrain_protocol::Digest::of(&bytes).to_hex()
        })
        .collect();
    for p in participants {
        let promised = p["promised_accuracy"].as_f64().unwrap();
        let delivered = p["delivered_accuracy"].as_f64().unwrap();
        assert!((delivered - promised).abs() <= 0.005, "within half a point: {p}");
        assert!(delivered <= realised, "never above the trained model: {p}");
        assert!(p["delivered_contribution"].as_u64() >= p["required_contribution"].as_u64(), "{p}");
        // IR as realised: v(r) - c·m at its own cost, against f of its type.
        let utility =
            100.0 * delivered - p["cost"].as_f64().unwrap() * p["required_contribution"].as_f64().unwrap();
        assert!((utility - p["utility"].as_f64().unwrap()).abs() < 1e-9);
        assert!(utility >= p["reservation_utility"].as_f64().unwrap(), "IR: {p}");
        assert_eq!(p["individually_rational"], true);
        // IC: by its cost it took the option the menu makes best for it.
        assert_eq!(p["incentive_compatible"], true, "{p}");
        assert_eq!(p["option"], p["type"], "each type takes its own option here");
        assert!(fetched.iter().any(|hash| p["reward_model_hash"] == *hash), "{p}");
    }

    // Each worker's share of time training, and where the rest went.
    for worker in report["workers"].as_array().unwrap() {
        let utilisation = worker["compute_utilisation"].as_f64().unwrap();
        assert!(utilisation > 0.0 && utilisation <= 1.0, "{worker}");
        let idle = worker["idle"].as_object().unwrap();
        for key in ["round", "model", "commit", "upload", "auditing"] {
            let seconds = idle[key].as_f64().unwrap();
            assert!(seconds.is_finite() && seconds >= 0.0, "{key}: {worker}");
        }
    }

    // `crowdtrain rewards` shows the same outcome, from the ledger alone.
    let output = Command::new(binary())
        .args(["rewards", "--json", "--state"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rewards: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for row in rewards["workers"].as_array().unwrap() {
        let p = participants.iter().find(|p| p["worker"] == row["worker"]).unwrap();
        for key in [
            "option",
            "required_contribution",
            "delivered_contribution",
            "promised_accuracy",
            "delivered_accuracy",
            "utility",
            "reservation_utility",
            "reward_model_hash",
        ] {
            assert_eq!(row[key], p[key], "{key}");
        }
    }
}
