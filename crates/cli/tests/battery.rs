//! The attack battery's targets, as the user runs it: `crowdtrain battery
//! --json` on full Fashion-MNIST, 10 workers of which 2 attack, IID shards,
//! audits off, 3 seeds.
//!
//! The bundled 2,000-image subset cannot carry these claims: with 190
//! images a shard, refusing two workers removes a fifth of the training
//! data and costs more accuracy than any attack, and a 100-image validation
//! split cannot score anything. So this test needs the Debian package
//! `dataset-fashion-mnist` (what `scripts/install-prerequisites.sh`
//! installs, and CI has) and says so if it is missing.

mod common;

use std::process::Command;

use common::binary;
use crowdtrain_data::{DataSource, dataset::DEBIAN_FASHION_MNIST_DIR};
use serde_json::Value;

#[test]
fn every_attack_at_twenty_percent_is_bounded_and_attackers_are_not_paid() {
    assert_eq!(
        DataSource::resolve(None),
        DataSource::Directory(DEBIAN_FASHION_MNIST_DIR.into()),
        "the battery's targets are claims about full Fashion-MNIST; install it with \
         `bash scripts/install-prerequisites.sh` (Debian package dataset-fashion-mnist)"
    );
    let output = Command::new(binary()).args(["battery", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["dataset"]["name"], "fashion-mnist");
    assert_eq!(
        (report["config"]["workers"].as_u64(), report["config"]["attackers"].as_u64()),
        (Some(10), Some(2))
    );
    assert_eq!(report["seeds"], 3);

    let clean = report["clean_accuracy"].as_f64().unwrap();
    let clean_mean = report["clean_accuracy_mean"].as_f64().unwrap();
    assert!(clean >= clean_mean - 0.005, "robustness costs {:.2} points clean", 100.0 * (clean_mean - clean));
    for run in report["clean_runs"].as_array().unwrap() {
        assert!(run["honest_share_gap"].as_f64().unwrap() <= 0.10, "honest pay follows work, clean: {run}");
        assert_eq!(run["refused_honest"], 0);
    }

    let attacks: Vec<&Value> = report["attacks"].as_array().unwrap().iter().collect();
    let attack = |name: &str| {
        *attacks.iter().find(|attack| attack["attack"] == name).unwrap_or_else(|| panic!("{name}"))
    };
    for (name, bound) in [
        ("sign-flip", 1.0),
        ("noise", 1.0),
        ("noise:100", 1.0),
        ("label-flip", 1.0),
        ("copy", 1.0),
        ("alie", 2.0),
        ("ipm:0.5", 2.0),
    ] {
        let drop = attack(name)["drop_points"].as_f64().unwrap();
        assert!(drop <= bound, "{name}: accuracy drops {drop:.2} points (at most {bound})");
    }
    for attack in &attacks {
        let name = attack["attack"].as_str().unwrap();
        assert_eq!(attack["diverged"], false, "{name} made the model diverge");
        assert!(attack["attacked_accuracy"].as_f64().unwrap().is_finite());
        assert_eq!(attack["refused_honest"], 0, "{name}: an honest update was refused");
        assert!(
            attack["honest_share_gap"].as_f64().unwrap() <= 0.10,
            "{name}: honest pay follows work: {attack}"
        );
    }
    for name in ["copy", "stale"] {
        let pay = attack(name)["attacker_credits_vs_honest"].as_f64().unwrap();
        assert!(pay <= 0.01, "{name} earns {pay:.4} of an honest worker's credits");
    }
    for name in ["zero", "noise", "noise:100", "nan"] {
        assert_eq!(attack(name)["attacker_credit_share"].as_f64(), Some(0.0), "{name} earns nothing");
    }
}

#[test]
fn a_recorded_battery_is_paid_again_exactly_and_its_honest_rounds_resampled() {
    // Goal: `crowdtrain gate` judges what `battery --json` recorded, and a
    // replay under the recorded settings pays what the battery paid.
    // Method: a small battery on full Fashion-MNIST (6 workers, one
    // sign-flipper, 8 short rounds, one seed), written to a file; replayed
    // as recorded and with a lower threshold; its clean run resampled.
    assert_eq!(DataSource::resolve(None), DataSource::Directory(DEBIAN_FASHION_MNIST_DIR.into()));
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("battery.json");
    let output = Command::new(binary())
        .args(["battery", "--workers", "6", "--attackers", "1", "--rounds", "8", "--inner-steps", "3"])
        .args(["--seeds", "1", "--attacks", "sign-flip", "--no-mean-baseline", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(&recording, &output.stdout).unwrap();
    let battery: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(battery["clean_accuracy_mean"], Value::Null, "no mean baseline asked for");
    let flipped = &battery["attacks"][0]["runs"][0];
    assert_eq!(flipped["rounds"].as_array().unwrap().len(), 8);

    let gate = |args: &[&str]| {
        let output =
            Command::new(binary()).arg("gate").args(args).arg(&recording).arg("--json").output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let replayed = gate(&["replay"]);
    let attacks = replayed["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 2, "the clean run and the sign-flip run: {replayed}");
    let sign_flip = attacks.iter().find(|attack| attack["attack"] == "sign-flip").unwrap();
    let run = &sign_flip["runs"][0];
    assert_eq!(run["matches_recording"], true);
    assert_eq!(run["credits"], flipped["credits"], "the recorded settings pay what the battery paid");
    assert_eq!(run["attackers_below_median"], 1.0, "a sign-flip scores below every honest update");
    // A higher threshold can only pay the attacker as much or more.
    let lenient = gate(&["replay", "--threshold", "40"]);
    let lenient_run =
        lenient["attacks"].as_array().unwrap().iter().find(|attack| attack["attack"] == "sign-flip").unwrap()
            ["runs"][0]
            .clone();
    assert!(lenient_run["credits"][5].as_u64() >= flipped["credits"][5].as_u64(), "{lenient_run}");

    let errors = gate(&["errors", "--window", "6", "--block", "2", "--resamples", "200", "--outer", "10"]);
    let group = &errors["groups"][0];
    assert_eq!((group["workers"].as_u64(), group["honest"].as_u64()), (Some(6), Some(6)));
    assert_eq!(group["worker_windows"], 1200);
    assert!(group["rate"].as_f64().unwrap() <= 1.0);
    let refused =
        Command::new(binary()).args(["gate", "errors", "--window", "9"]).arg(&recording).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("fewer than the window of 9"));
}
