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
