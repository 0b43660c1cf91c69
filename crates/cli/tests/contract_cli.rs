//! Runs the built `crowdtrain` binary: `contract solve` and `contract
//! rewards` print exactly one JSON object with the keys the issue names, and
//! a bad scenario file exits non-zero naming the field.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crowdtrain"))
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/contracts").join(name)
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = bin().args(args).output().expect("binary runs");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON object")
}

#[test]
fn solve_json_has_the_required_keys() {
    let path = example("paper_s1.toml");
    let v = json_of(&["contract", "solve", path.to_str().expect("utf-8"), "--json"]);
    for key in
        ["types", "expected_accuracy", "expected_value", "max_violation", "kkt_residual", "solve_seconds"]
    {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let types = v["types"].as_array().expect("types is a list");
    assert_eq!(types.len(), 5);
    for t in types {
        for key in [
            "cost",
            "probability",
            "reservation_utility",
            "contribution",
            "expected_reward_value",
            "max_reward_value",
            "utility",
            "information_rent",
        ] {
            assert!(t[key].is_number(), "type is missing {key}");
        }
    }
    assert!(v["expected_value"].as_f64().expect("number") >= 86.4782760 - 1e-6);
    assert!(v["max_violation"].as_f64().expect("number") <= 1e-8);
    let ci = &v["baselines"]["complete_information"];
    assert!(ci["information_cost"].as_f64().expect("number") < 0.0);
}

#[test]
fn rewards_json_never_beats_the_trained_model() {
    let path = example("paper_s1.toml");
    let v =
        json_of(&["contract", "rewards", path.to_str().expect("utf-8"), "--outcome", "2,2,2,2,2", "--json"]);
    let trained = v["trained_accuracy"].as_f64().expect("number");
    assert!((trained - 0.8647880602).abs() < 1e-9);
    let types = v["types"].as_array().expect("list");
    assert_eq!(types.len(), 5);
    for t in types {
        assert!(t["reward_accuracy"].as_f64().expect("number") <= trained);
    }
}

#[test]
fn a_bad_file_fails_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example("paper_s1.toml")).expect("example").replacen(
        "cost = 0.16",
        "cost = -0.16",
        1,
    );
    std::fs::write(&path, text).expect("write");
    let out =
        bin().args(["contract", "solve", path.to_str().expect("utf-8"), "--json"]).output().expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("types[1].cost"), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for an error");
}

#[test]
fn every_contract_command_has_help() {
    for sub in ["solve", "rewards", "baselines", "paper", "bench"] {
        let out = bin().args(["contract", sub, "--help"]).output().expect("runs");
        assert!(out.status.success() && !out.stdout.is_empty(), "{sub} --help");
    }
}
