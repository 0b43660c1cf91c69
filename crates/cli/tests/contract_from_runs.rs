//! The contract from real runs: `contract fit` on a simulation's output and
//! on a finished network run's state, and model rewards built from that
//! run's checkpoints (`contract reward-model`), checked by rebuilding them
//! (`contract check-reward`), with tampered recipes refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Network, binary, finished_and_evaluated, subset};
use crowdtrain_protocol::wire::RunStatus;

fn crowdtrain(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("stdout is exactly one JSON object")
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A scenario whose costs are per work unit (a sample through one inner
/// step), for the fitted accuracy to be put into.
const TEMPLATE: &str = "participants = 4\n[accuracy]\nkind = \"sqrt\"\n[valuation]\nscale = 100.0\n\
                        [[types]]\ncost = 2e-4\nprobability = 0.5\n[[types]]\ncost = 2e-5\nprobability = 0.5\n";

#[test]
fn a_simulated_learning_curve_is_fitted_and_predicts_a_held_out_run() {
    let dir = tempfile::tempdir().unwrap();
    let sim = |workers: &str, rounds: &str| -> PathBuf {
        let path = dir.path().join(format!("k{workers}r{rounds}.json"));
        let output = crowdtrain(&[
            "sim",
            "diloco",
            "--workers",
            workers,
            "--rounds",
            rounds,
            "--inner-steps",
            "10",
            "--batch",
            "32",
            "--data",
            text(&subset()),
            "--json",
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::write(&path, &output.stdout).unwrap();
        path
    };
    let (small, large) = (sim("2", "12"), sim("4", "12"));
    let plot = dir.path().join("fit.png");
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(&scenario, TEMPLATE).unwrap();
    let fitted = dir.path().join("fitted.toml");
    let report = json(&crowdtrain(&[
        "contract",
        "fit",
        text(&small),
        "--held-out",
        text(&large),
        "--scenario",
        text(&scenario),
        "--out",
        text(&fitted),
        "--plot",
        text(&plot),
        "--json",
    ]));
    assert_eq!(report["fit_points"], 12);
    assert_eq!(report["criterion"], "extrapolation", "12 points are enough to judge extrapolation");
    let fits = report["fits"].as_array().unwrap();
    assert_eq!(fits.len(), 2);
    assert_eq!(fits[0]["form"], report["chosen"]);
    for fit in fits {
        assert!(fit["rmse"].as_f64().unwrap() <= fit["max_error"].as_f64().unwrap());
        assert!(fit["rmse"].as_f64().unwrap() < 0.05, "{fit}");
        assert!(fit["extrapolation"]["rmse"].as_f64().unwrap() > 0.0);
        // The held-out run's final point is predicted.
        let prediction = &fit["predictions"][0];
        assert_eq!(prediction["source"], text(&large));
        let (predicted, measured) =
            (prediction["predicted"].as_f64().unwrap(), prediction["measured"].as_f64().unwrap());
        assert!((prediction["error"].as_f64().unwrap() - (predicted - measured)).abs() < 1e-12);
        assert_eq!(prediction["contribution"], 4.0 * 10.0 * 32.0 * 12.0, "M counts samples: K H B R");
    }
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000, "a plot was drawn");
    // The written scenario carries the fitted function, and the solver takes it.
    let written = std::fs::read_to_string(&fitted).unwrap();
    assert!(written.contains(&format!("kind = \"{}\"", report["chosen"].as_str().unwrap())), "{written}");
    let solved = json(&crowdtrain(&["contract", "solve", text(&fitted), "--json"]));
    assert!(solved["max_violation"].as_f64().unwrap() <= 1e-8, "{solved}");
    assert!(solved["expected_accuracy"].as_f64().unwrap() > 0.0);

    // A loss-based value fits too; a file that is not a simulation's output is refused by name.
    let loss = json(&crowdtrain(&["contract", "fit", text(&small), "--metric", "neg-loss", "--json"]));
    assert_eq!(loss["metric"], "neg-loss");
    assert!((loss["reference_loss"].as_f64().unwrap() - std::f64::consts::LN_10).abs() < 1e-12);
    std::fs::write(dir.path().join("bad.json"), "{\"rounds\": 3}").unwrap();
    let refused = crowdtrain(&["contract", "fit", text(&dir.path().join("bad.json"))]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("is not the JSON of `crowdtrain sim diloco --json`")
    );
}

/// A finished network run of 3 workers and 8 rounds on the bundled subset,
/// and its last status.
fn finished_run() -> (Network, RunStatus) {
    let mut network = Network::new(8, 20, 0.0, "min_workers = 3\ndeadline_ms = 60000");
    network.start_coordinator();
    for index in 0..3 {
        network.start_worker(index);
    }
    let status = network.wait_for(240, "the run to finish", finished_and_evaluated);
    network.join_workers();
    network.kill_coordinator();
    (network, status)
}

#[test]
fn reward_models_from_a_real_run_hit_their_targets_and_check() {
    let (network, status) = finished_run();
    let state = network.path("state");
    let data = subset();

    // The run's own learning curve fits, from its verified ledger.
    let curve = json(&crowdtrain(&["contract", "fit", text(&state), "--json"]));
    assert_eq!(curve["sources"][0]["kind"], "state");
    assert_eq!(curve["fit_points"], 8, "one point per closed, evaluated round");
    assert_eq!(
        curve["sources"][0]["final_contribution"],
        8.0 * 3.0 * 20.0 * 32.0,
        "M: rounds x workers x H x B"
    );

    // The values of the run's models, as the coordinator evaluated them.
    let values: Vec<f64> = status.rounds.iter().filter_map(|round| round.test_accuracy).collect();
    let last = *values.last().unwrap();
    let first = values[0];
    let build = |target: f64, extra: &[&str]| -> Output {
        let out = network.path(&format!("reward-{target}.safetensors"));
        Command::new(binary())
            .args(["contract", "reward-model", "--state", text(&state), "--accuracy", &target.to_string()])
            .args(["--data", text(&data), "--out", text(&out), "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let targets = [first + 0.3 * (last - first), 0.5 * (first + last), last - 0.003, last, values[1]];
    for &target in &targets {
        let report = json(&build(target, &[]));
        let recipe = &report["recipe"];
        let measured = recipe["measured"].as_f64().unwrap();
        assert!((measured - target).abs() <= 0.005, "target {target}: measured {measured}");
        assert!(measured <= recipe["final_measured"].as_f64().unwrap(), "never above the final model");
        assert_eq!(
            recipe["final_measured"].as_f64().unwrap(),
            last,
            "the final model measures as the run recorded"
        );
        let (lower, upper) = (recipe["lower"]["round"].as_u64(), recipe["upper"]["round"].as_u64());
        assert_eq!(upper, Some(lower.map_or(0, |round| round + 1)), "consecutive checkpoints");
        let file = network.path(&format!("reward-{target}.safetensors"));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            recipe["reward_model"],
            crowdtrain_protocol::Digest::of(&bytes).to_hex(),
            "named by its content"
        );
        // Anyone with the run's state rebuilds it and checks every claim.
        let recipe_file = network.path(&format!("recipe-{target}.json"));
        std::fs::write(&recipe_file, serde_json::to_vec(&report).unwrap()).unwrap();
        let check = json(&crowdtrain(&[
            "contract",
            "check-reward",
            "--state",
            text(&state),
            "--recipe",
            text(&recipe_file),
            "--model",
            text(&file),
            "--data",
            text(&data),
            "--json",
        ]));
        assert_eq!(check["ok"], true, "{check}");
        assert_eq!(check["measured"], recipe["measured"]);
    }

    // Deterministic: the same recipe and the same bytes at another thread
    // count and with the portable kernels.
    let target = targets[1];
    let reference = json(&build(target, &["--threads", "1"]))["recipe"].clone();
    let file = network.path(&format!("reward-{target}.safetensors"));
    let bytes = std::fs::read(&file).unwrap();
    let again = json(&build(target, &["--threads", "2"]))["recipe"].clone();
    assert_eq!(again, reference);
    let portable = Command::new(binary())
        .env("CROWDTRAIN_KERNELS", "portable")
        .args(["contract", "reward-model", "--state", text(&state), "--accuracy", &target.to_string()])
        .args(["--data", text(&data), "--out", text(&file), "--json"])
        .output()
        .unwrap();
    assert_eq!(json(&portable)["recipe"], reference);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // A reward is never worth more than the final model, nor less than the initial one.
    for (target, reason) in [(last + 0.01, "above the final model"), (0.01, "below the initial model")] {
        let refused = build(target, &[]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(reason), "{target}: {stderr}");
    }

    // Tampered recipes are refused, naming what is wrong.
    let tamper = |name: &str, change: &dyn Fn(&mut serde_json::Value), reason: &str| {
        let mut recipe = reference.clone();
        change(&mut recipe);
        let path = network.path(&format!("tampered-{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&recipe).unwrap()).unwrap();
        let output = crowdtrain(&[
            "contract",
            "check-reward",
            "--state",
            text(&state),
            "--recipe",
            text(&path),
            "--data",
            text(&data),
            "--json",
        ]);
        assert!(!output.status.success(), "{name} passed");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["ok"], false);
        let problem = report["problem"].as_str().unwrap();
        assert!(problem.contains(reason), "{name}: {problem}");
    };
    let coefficient = reference["coefficient"].as_f64().unwrap();
    tamper(
        "coefficient",
        &|r| r["coefficient"] = serde_json::json!((coefficient as f32 + 2f32.powi(-20)) as f64),
        "the rebuilt model hashes to",
    );
    tamper(
        "hash",
        &|r| r["reward_model"] = serde_json::json!("00".repeat(32)),
        "the rebuilt model hashes to",
    );
    tamper("measured", &|r| r["measured"] = serde_json::json!(0.99), "the reward model measures");
    tamper("target", &|r| r["target"] = serde_json::json!(target + 0.02), "from its target");
    tamper("final", &|r| r["final_measured"] = serde_json::json!(0.99), "the final model measures");
    tamper("lower", &|r| r["lower"]["round"] = serde_json::json!(7), "is not a checkpoint of this run");
    if reference["lower"]["round"].as_u64().map_or(0, |round| round + 1) + 1 < 8 {
        tamper("not consecutive", &|r| r["upper"] = r["final_model"].clone(), "not the one right after");
    }
    tamper("off-grid", &|r| r["coefficient"] = serde_json::json!(1e-9), "is not a multiple of 2^-24");
    tamper(
        "evaluation set",
        &|r| r["evaluation_set"] = serde_json::json!("11".repeat(32)),
        "measured on evaluation set",
    );
}
