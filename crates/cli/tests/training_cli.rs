//! The training commands as a user runs them: the real binary, real data
//! files (the subset bundled in the repository), JSON on stdout.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn subset_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/assets/fashion-mnist-subset")
}

fn crowdtrain(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crowdtrain"));
    command.args(args).env_remove("RAYON_NUM_THREADS").env_remove("CROWDTRAIN_KERNELS");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("stdout is not one JSON object ({error}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// `train` for 30 steps on the subset; `--seed` is 5 and `--evaluations`
/// is 1 unless `extra` says otherwise.
fn train_json(extra: &[&str], env: &[(&str, &str)]) -> Value {
    let data = subset_dir();
    let mut args = vec!["train", "--model", "mlp", "--steps", "30", "--json"];
    if !extra.contains(&"--seed") {
        args.extend_from_slice(&["--seed", "5"]);
    }
    if !extra.contains(&"--evaluations") {
        args.extend_from_slice(&["--evaluations", "1"]);
    }
    args.extend_from_slice(&["--data", data.to_str().unwrap()]);
    args.extend_from_slice(extra);
    json_of(&crowdtrain(&args, env))
}

#[test]
fn train_reports_the_documented_keys() {
    let report = train_json(&[], &[]);
    for key in ["test_accuracy", "state_hash", "steps", "samples_per_sec", "dataset"] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["steps"], 30);
    assert_eq!(report["dataset"]["train_examples"], 2000);
    assert_eq!(report["dataset"]["test_examples"], 500);
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5 && accuracy <= 1.0, "30 steps learn something: {accuracy}");
    assert_eq!(report["state_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn state_hash_is_the_same_at_one_and_two_threads_and_on_the_portable_kernels() {
    let one = train_json(&[], &[("RAYON_NUM_THREADS", "1")]);
    let two = train_json(&[], &[("RAYON_NUM_THREADS", "2")]);
    let flag = train_json(&["--threads", "2"], &[]);
    let portable = train_json(&[], &[("CROWDTRAIN_KERNELS", "portable")]);
    assert_eq!(one["threads"], 1);
    assert_eq!(two["threads"], 2);
    assert_eq!(portable["kernels"], "portable");
    for other in [&two, &flag, &portable] {
        assert_eq!(one["state_hash"], other["state_hash"]);
        assert_eq!(one["test_accuracy"], other["test_accuracy"]);
    }
    let other_seed = train_json(&["--seed", "6"], &[]);
    assert_ne!(one["state_hash"], other_seed["state_hash"]);
}

#[test]
fn sim_diloco_reports_rounds_and_bytes_for_both_runs() {
    let data = subset_dir();
    let output = crowdtrain(
        &[
            "sim",
            "diloco",
            "--workers",
            "4",
            "--inner-steps",
            "5",
            "--rounds",
            "3",
            "--seed",
            "1",
            "--json",
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let report = json_of(&output);
    for key in ["final_test_accuracy", "baseline_test_accuracy", "bytes_diloco", "bytes_baseline", "rounds"] {
        assert!(report.get(key).is_some(), "missing {key}");
    }
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    assert_eq!(rounds[2]["round"], 3);
    assert_eq!(rounds[2]["samples"], 3 * 4 * 5 * 64);
    // With H = 5 inner steps, synchronous training moves at least 5x the
    // bytes; the int8 codec makes it more.
    let (diloco, baseline) =
        (report["bytes_diloco"].as_u64().unwrap(), report["bytes_baseline"].as_u64().unwrap());
    assert!(baseline >= 5 * diloco, "{baseline} vs {diloco}");
    assert_eq!(report["final_test_accuracy"], rounds[2]["diloco_test_accuracy"]);
    // Under an int8 broadcast the workers download the full model in the
    // first round only, then the encoded change: fewer bytes, other bits.
    let args =
        ["sim", "diloco", "--workers", "4", "--inner-steps", "5", "--rounds", "3", "--seed", "1", "--json"];
    let data_args = ["--data", data.to_str().unwrap()];
    let broadcast = json_of(&crowdtrain(&[&args[..], &data_args, &["--broadcast", "int8"]].concat(), &[]));
    let downloads = |report: &serde_json::Value| report["bytes_diloco_download"].as_u64().unwrap();
    assert_eq!(broadcast["config"]["outer"]["broadcast"], "int8");
    assert!(
        3 * downloads(&broadcast) < 2 * downloads(&report),
        "{} vs {}",
        downloads(&broadcast),
        downloads(&report)
    );
    assert_eq!(broadcast["rounds"][0]["diloco_download_bytes"], report["rounds"][0]["diloco_download_bytes"]);
    assert_ne!(broadcast["diloco_state_hash"], report["diloco_state_hash"]);
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_crowdtrain"))
        .args([&args[..], &data_args, &["--broadcast", "f32"]].concat())
        .output()
        .unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("full"));
}

#[test]
fn bench_train_step_reports_throughput() {
    let report = json_of(&crowdtrain(
        &[
            "bench",
            "train-step",
            "--model",
            "mlp",
            "--batch",
            "64",
            "--threads",
            "1",
            "--steps",
            "20",
            "--warmup",
            "2",
            "--repeats",
            "1",
            "--json",
        ],
        &[],
    ));
    assert!(report["samples_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(report["threads"], 1);
    assert_eq!(report["batch"], 64);
}

#[test]
fn plots_are_written_as_png() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("curve.png");
    train_json(&["--plot", plot.to_str().unwrap(), "--evaluations", "3"], &[]);
    let bytes = std::fs::read(&plot).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn a_missing_data_directory_fails_with_its_name() {
    let output = crowdtrain(&["train", "--steps", "1", "--data", "/nonexistent/fashion"], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/fashion"), "{stderr}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["train", "--help"],
        &["sim", "diloco", "--help"],
        &["bench", "train-step", "--help"],
        &["bench", "audit", "--help"],
        &["bench", "defense", "--help"],
        &["bench", "dashboard", "--help"],
        &["battery", "--help"],
        &["report", "--help"],
        &["rewards", "--help"],
        &["demo", "--help"],
        &["coordinator", "--help"],
        &["worker", "--help"],
        &["keygen", "--help"],
        &["ledger", "verify", "--help"],
        &["ledger", "show", "--help"],
        &["contract", "fit", "--help"],
        &["contract", "reward-model", "--help"],
        &["contract", "check-reward", "--help"],
    ] {
        let output = crowdtrain(args, &[]);
        assert!(output.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"), "{args:?}");
    }
}

#[test]
fn the_battery_reports_each_attack_in_json_and_refuses_copies_on_any_data() {
    // A small battery on the bundled subset: the report's shape, and the
    // verdicts that hold at any scale (copies refused, never paid).
    let data = subset_dir();
    let output = crowdtrain(
        &[
            "battery",
            "--json",
            "--seeds",
            "1",
            "--rounds",
            "3",
            "--inner-steps",
            "4",
            "--workers",
            "5",
            "--attackers",
            "1",
            "--attacks",
            "copy,sign-flip",
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let report = json_of(&output);
    assert_eq!(report["dataset"]["name"], "fashion-mnist-subset");
    let attacks = report["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 2);
    for attack in attacks {
        for key in ["clean_accuracy", "attacked_accuracy", "drop_points", "attacker_credit_share"] {
            assert!(attack[key].is_number(), "{key} in {attack}");
        }
    }
    let copy = &attacks[0];
    assert_eq!(copy["attack"], "copy");
    assert_eq!(copy["refused_attacker"], 3, "the copy is refused every round");
    assert_eq!(copy["attacker_credit_share"], 0.0);
}

#[test]
fn sim_diloco_takes_a_compressing_codec_and_sim_codecs_plots_bytes_against_accuracy() {
    let data = subset_dir();
    let scratch = std::env::temp_dir().join(format!("crowdtrain-sim-codecs-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut reports = Vec::new();
    for codec in ["int8", "topk:0.02+q4"] {
        let output = crowdtrain(
            &[
                "sim",
                "diloco",
                "--workers",
                "2",
                "--inner-steps",
                "3",
                "--rounds",
                "2",
                "--codec",
                codec,
                "--json",
                "--data",
                data.to_str().unwrap(),
            ],
            &[],
        );
        let report = json_of(&output);
        assert_eq!(report["config"]["codec"], codec, "the codec is written as it was given");
        let path = scratch.join(format!("{}.json", reports.len()));
        std::fs::write(&path, &output.stdout).unwrap();
        reports.push((report, path));
    }
    let upload = |index: usize| reports[index].0["bytes_diloco_upload"].as_u64().unwrap();
    // topk:0.02+q4 keeps 5 of every 256 values at 4 bits and a byte of
    // position each: about 33x fewer upload bytes than int8.
    assert!(upload(0) > 30 * upload(1), "int8 {} vs topk:0.02+q4 {}", upload(0), upload(1));
    let plot = scratch.join("codecs.svg");
    let paths: Vec<&str> = reports.iter().map(|(_, path)| path.to_str().unwrap()).collect();
    let mut args = vec!["sim", "codecs", "--json", "--plot", plot.to_str().unwrap()];
    args.extend_from_slice(&paths);
    let table = json_of(&crowdtrain(&args, &[]));
    assert_eq!(table[1]["codec"], "topk:0.02+q4");
    assert_eq!(table[1]["bytes_diloco_upload"].as_u64().unwrap(), upload(1));
    assert!(std::fs::read_to_string(&plot).unwrap().contains("topk:0.02+q4"), "the legend names the codec");
    // A codec that does not parse is refused before any data is read, and
    // the message says what would.
    let bad = crowdtrain(&["sim", "diloco", "--codec", "topk:2+q4", "--json"], &[]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("below 1"), "{stderr}");
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn sim_diloco_runs_delayed_outer_updates_and_refuses_what_it_cannot() {
    let data = subset_dir();
    let args = ["sim", "diloco", "--workers", "2", "--inner-steps", "3", "--rounds", "3", "--json"];
    let data_args = ["--data", data.to_str().unwrap()];
    let plain = json_of(&crowdtrain(&[&args[..], &data_args].concat(), &[]));
    assert!(plain["config"]["outer"].get("delay").is_none(), "delay 0 is left out: {}", plain["config"]);
    let delayed = json_of(&crowdtrain(&[&args[..], &data_args, &["--outer-delay", "1"]].concat(), &[]));
    assert_eq!(delayed["config"]["outer"]["delay"], 1);
    assert_ne!(delayed["diloco_state_hash"], plain["diloco_state_hash"]);
    // The first round trains from the same model either way.
    assert_eq!(delayed["rounds"][0], plain["rounds"][0]);
    let trend = json_of(&crowdtrain(
        &[&args[..], &data_args, &["--outer-delay", "1", "--eager", "trend"]].concat(),
        &[],
    ));
    assert_eq!(trend["config"]["outer"]["eager"], "trend");
    assert_ne!(trend["diloco_state_hash"], delayed["diloco_state_hash"]);
    // Two rounds deep (and up to four, as in a networked run).
    let deeper = json_of(&crowdtrain(&[&args[..], &data_args, &["--outer-delay", "2"]].concat(), &[]));
    assert_eq!(deeper["config"]["outer"]["delay"], 2);
    assert_ne!(deeper["diloco_state_hash"], delayed["diloco_state_hash"]);
    assert_eq!(deeper["rounds"][0], plain["rounds"][0]);
    // Refused before any data is read, naming the flag: deeper than four,
    // or a stand-in without a delay.
    for (bad, flag) in [(&["--outer-delay", "5"][..], "--outer-delay"), (&["--eager", "own"][..], "--eager")]
    {
        let refused = crowdtrain(&[&args[..], bad].concat(), &[]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains(flag), "{bad:?}: {stderr}");
    }
}
