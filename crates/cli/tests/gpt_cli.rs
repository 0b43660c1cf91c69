//! The language model as a user runs it: `train --model gpt` on the
//! bundled Shakespeare, `sample` and `export` from its model file, `sim
//! diloco --model gpt`; a tiny configuration, so CI stays fast.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// 1 block, 2 heads, width 16, context 16: a few thousand parameters.
const TINY: &[&str] =
    &["--model", "gpt", "--layers", "1", "--heads", "2", "--width", "16", "--context", "16"];

fn crowdtrain(args: &[&str], env: &[(&str, &str)], cache: &std::path::Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crowdtrain"));
    command
        .args(args)
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("CROWDTRAIN_KERNELS")
        .env("CROWDTRAIN_CACHE_DIR", cache);
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

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/assets/shakespeare/shakespeare-subset.txt.gz")
}

fn train(extra: &[&str], env: &[(&str, &str)], cache: &std::path::Path) -> Value {
    let corpus = corpus();
    let mut args = vec!["train", "--steps", "12", "--batch", "4", "--evaluations", "1", "--json"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--data", corpus.to_str().unwrap()]);
    args.extend_from_slice(extra);
    json_of(&crowdtrain(&args, env, cache))
}

#[test]
fn training_reports_its_keys_and_the_same_bits_on_every_thread_count_and_kernel_path() {
    let cache = tempfile::tempdir().unwrap();
    let reference = train(&[], &[("RAYON_NUM_THREADS", "1")], cache.path());
    for key in ["val_loss", "tokens_per_sec", "parameters", "tokenizer", "state_hash", "train_loss"] {
        assert!(reference.get(key).is_some(), "missing {key} in {reference}");
    }
    assert!(reference.get("test_accuracy").is_none(), "no test set for text");
    assert_eq!(reference["model"], "gpt-l1-h2-c16-t16-v64");
    assert_eq!(reference["tokenizer"], "char (64 tokens)");
    let loss = reference["val_loss"].as_f64().unwrap();
    assert!(loss < 64f64.ln() && loss > 1.0, "12 steps move the loss below ln(64): {loss}");
    let hash = reference["state_hash"].as_str().unwrap();
    for (extra, env) in [
        (vec![], vec![("RAYON_NUM_THREADS", "2")]),
        (vec!["--threads", "3"], vec![]),
        (vec![], vec![("CROWDTRAIN_KERNELS", "portable")]),
        (vec![], vec![("CROWDTRAIN_KERNELS", "avx2-fma")]),
    ] {
        let other = train(&extra, &env, cache.path());
        assert_eq!(other["state_hash"], hash, "{extra:?} {env:?} ({})", other["kernels"]);
    }
    let other_seed = train(&["--seed", "1"], &[], cache.path());
    assert_ne!(other_seed["state_hash"], hash);
}

#[test]
fn a_trained_model_samples_deterministically_and_exports_for_pytorch() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.model");
    let report = train(&["--checkpoint-out", model.to_str().unwrap()], &[], cache.path());
    assert_eq!(report["checkpoint"], model.to_str().unwrap());
    let sample = |seed: &str| {
        let args = [
            "sample",
            "--checkpoint",
            model.to_str().unwrap(),
            "--prompt",
            "ROMEO:",
            "--tokens",
            "30",
            "--seed",
            seed,
            "--json",
        ];
        json_of(&crowdtrain(&args, &[], cache.path()))
    };
    let one = sample("3");
    assert_eq!(one["tokens"].as_array().unwrap().len(), 30);
    assert_eq!(one, sample("3"), "the same seed, the same text");
    assert_ne!(one["text"], sample("4")["text"]);
    let out = dir.path().join("export");
    let exported = json_of(&crowdtrain(
        &["export", "--checkpoint", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"],
        &[],
        cache.path(),
    ));
    assert_eq!(exported["parameters"], report["parameters"]);
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["n_layer"].as_u64(), config["n_embd"].as_u64(), config["block_size"].as_u64()),
        (Some(1), Some(16), Some(16))
    );
    // A damaged model file is refused with a reason, not a panic.
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&model, bytes).unwrap();
    let refused = crowdtrain(&["sample", "--checkpoint", model.to_str().unwrap()], &[], cache.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("could not read the model"));
}

/// `sim diloco` of the tiny GPT: 3 workers, 4 inner steps of 4 sequences,
/// `rounds` rounds on `threads` threads, with `extra` flags.
fn sim_diloco(rounds: &str, threads: &str, extra: &[&str], cache: &std::path::Path) -> Value {
    let corpus = corpus();
    let mut args = vec![
        "sim",
        "diloco",
        "--workers",
        "3",
        "--inner-steps",
        "4",
        "--rounds",
        rounds,
        "--batch",
        "4",
        "--json",
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--data", corpus.to_str().unwrap(), "--threads", threads]);
    args.extend_from_slice(extra);
    json_of(&crowdtrain(&args, &[], cache))
}

#[test]
fn diloco_on_text_reports_validation_losses_and_is_the_same_at_any_thread_count() {
    let cache = tempfile::tempdir().unwrap();
    let run = |threads: &str| sim_diloco("2", threads, &[], cache.path());
    let one = run("1");
    for key in ["final_val_loss", "baseline_val_loss", "bytes_ratio", "diloco_state_hash"] {
        assert!(one.get(key).is_some(), "missing {key}");
    }
    assert!(one["final_val_loss"].as_f64().unwrap() < 64f64.ln());
    let two = run("2");
    assert_eq!(one["diloco_state_hash"], two["diloco_state_hash"]);
    assert_eq!(one["baseline_state_hash"], two["baseline_state_hash"]);
    assert_eq!(one["final_val_loss"], two["final_val_loss"]);
}

#[test]
fn carried_inner_moments_change_every_round_after_the_first_and_nothing_else() {
    let cache = tempfile::tempdir().unwrap();
    let fresh = sim_diloco("3", "2", &[], cache.path());
    let carry = sim_diloco("3", "1", &["--inner-state", "carry"], cache.path());
    assert_eq!(carry["inner_state"], "carry");
    assert!(fresh.get("inner_state").is_none(), "a fresh run's report reads as before");
    // Round 1 starts from zero moments either way: the same bits.
    let (fresh_rounds, carry_rounds) =
        (fresh["rounds"].as_array().unwrap(), carry["rounds"].as_array().unwrap());
    assert_eq!(fresh_rounds[0], carry_rounds[0]);
    // Later rounds continue each worker's moments: another model.
    for round in 1..3 {
        assert_ne!(
            fresh_rounds[round]["diloco_test_loss"], carry_rounds[round]["diloco_test_loss"],
            "{round}"
        );
        assert_ne!(fresh_rounds[round]["diloco_train_loss"], carry_rounds[round]["diloco_train_loss"]);
    }
    assert_ne!(fresh["diloco_state_hash"], carry["diloco_state_hash"]);
    // The baseline never restarts, so it is the same run, and so are the
    // bytes on the network.
    assert_eq!(fresh["baseline_state_hash"], carry["baseline_state_hash"]);
    assert_eq!(fresh["bytes_diloco"], carry["bytes_diloco"]);
    // Carried moments are as reproducible as fresh ones.
    let again = sim_diloco("3", "2", &["--inner-state", "carry"], cache.path());
    assert_eq!(again["diloco_state_hash"], carry["diloco_state_hash"], "1 thread against 2");
    assert_eq!(again["rounds"], carry["rounds"]);
    let refused = crowdtrain(&["sim", "diloco", "--inner-state", "warm"], &[], cache.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("fresh or carry"));
}

#[test]
fn a_cached_baseline_is_reused_only_where_it_is_the_same_baseline() {
    let cache = tempfile::tempdir().unwrap();
    let baselines = tempfile::tempdir().unwrap();
    let dir = baselines.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--baseline-cache", dir];
        args.extend_from_slice(extra);
        sim_diloco("2", "2", &args, cache.path())
    };
    let baseline_of = |report: &Value| {
        let rounds = report["rounds"].as_array().unwrap();
        let fields =
            ["baseline_test_loss", "baseline_test_accuracy", "baseline_train_loss", "baseline_bytes"];
        let rounds: Vec<Vec<Value>> =
            rounds.iter().map(|round| fields.iter().map(|field| round[*field].clone()).collect()).collect();
        (rounds, report["baseline_state_hash"].clone(), report["baseline_val_loss"].clone())
    };
    let first = run(&[]);
    assert_eq!(first["baseline_cache"]["reused"], false, "an empty cache trains the baseline");
    let trained = baseline_of(&sim_diloco("2", "1", &[], cache.path()));
    assert_eq!(baseline_of(&first), trained, "the cache changes nothing in the run that fills it");
    // DiLoCo's side differs (outer step, inner state, codec): the same
    // baseline, read back, the same to the bit, and DiLoCo still trains.
    let other =
        run(&["--outer-lr", "1.0", "--outer-momentum", "0.5", "--inner-state", "carry", "--codec", "q4"]);
    assert_eq!(other["baseline_cache"]["reused"], true);
    assert_eq!(other["baseline_cache"]["path"], first["baseline_cache"]["path"]);
    assert_eq!(baseline_of(&other), trained);
    assert_ne!(other["diloco_state_hash"], first["diloco_state_hash"]);
    // DiLoCo's own inner learning rate is DiLoCo's side too: trained
    // without the cache, the baseline is the same bits, so it may be reused.
    let uncached = sim_diloco("2", "2", &["--inner-lr", "0.002"], cache.path());
    assert_eq!(baseline_of(&uncached), trained);
    let inner = run(&["--inner-lr", "0.002"]);
    assert_eq!(inner["baseline_cache"]["reused"], true);
    assert_eq!(inner["diloco_state_hash"], uncached["diloco_state_hash"]);
    // A change the baseline reads is another entry, trained afresh.
    let lr = run(&["--lr", "0.002"]);
    assert_eq!(lr["baseline_cache"]["reused"], false);
    assert_ne!(lr["baseline_cache"]["path"], first["baseline_cache"]["path"]);
    assert_ne!(lr["baseline_state_hash"], first["baseline_state_hash"]);
    // `--inner-lr` is the rate DiLoCo's workers train with, whatever the
    // baseline's: at the baseline's rate it is the run without it.
    assert_eq!(inner["diloco_state_hash"], lr["diloco_state_hash"]);
    assert_ne!(inner["diloco_state_hash"], first["diloco_state_hash"]);
    let default_inner = run(&["--lr", "0.002", "--inner-lr", "0.001"]);
    assert_eq!(default_inner["baseline_cache"]["reused"], true);
    assert_eq!(default_inner["diloco_state_hash"], first["diloco_state_hash"]);
    assert_eq!(default_inner["config"]["inner_lr"], 0.001);
    assert!(first["config"].get("inner_lr").is_none(), "a run without it reports as before");
    // A damaged entry is not believed: trained again, and replaced.
    let path = PathBuf::from(first["baseline_cache"]["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).unwrap();
    let damaged = run(&[]);
    assert_eq!(damaged["baseline_cache"]["reused"], false);
    assert_eq!(baseline_of(&damaged), trained);
    assert_eq!(run(&[])["baseline_cache"]["reused"], true, "the entry was written again");
}

/// `crowdtrain demo --model gpt` with the tiny GPT on the bundled text:
/// real coordinator and worker processes over HTTP, every submission
/// audited (by the coordinator, or delegated to `auditors`).
fn gpt_demo(workers: &str, cheaters: &str, auditors: &str, cache: &std::path::Path) -> Value {
    let mut args = vec![
        "demo",
        "--workers",
        workers,
        "--rounds",
        "3",
        "--inner-steps",
        "8",
        "--audit-probability",
        "1",
        "--timeout",
        "300",
        "--auditors",
        auditors,
        "--json",
    ];
    args.extend_from_slice(TINY);
    let corpus = corpus();
    args.extend_from_slice(&["--data", corpus.to_str().unwrap()]);
    if !cheaters.is_empty() {
        args.extend_from_slice(&["--cheaters", cheaters]);
    }
    json_of(&crowdtrain(&args, &[], cache))
}

#[test]
fn a_gpt_trains_over_the_network_with_every_submission_audited_bit_for_bit_as_the_simulation() {
    let cache = tempfile::tempdir().unwrap();
    let demo = gpt_demo("2", "", "coordinator", cache.path());
    assert_eq!(demo["dataset"]["name"], "shakespeare-subset");
    for worker in demo["workers"].as_array().unwrap() {
        assert_eq!(worker["submissions_accepted"], 3, "{worker}");
        assert_eq!(worker["audits_passed"], 3, "every round replayed bit for bit: {worker}");
        assert_eq!(worker["credits"], 3 * 8 * 12, "paid its verified work: {worker}");
    }
    let losses: Vec<f64> =
        demo["rounds"].as_array().unwrap().iter().map(|round| round["test_loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0] && losses[0] < 64f64.ln(), "the validation loss falls: {losses:?}");
    // `bytes_uploaded` is the revealed updates (every round's), and the six
    // audit answers are counted apart.
    let updates: u64 = demo["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|round| round["bytes_uploaded"].as_u64().unwrap())
        .sum();
    assert_eq!(demo["bytes_uploaded"].as_u64(), Some(updates));
    let answers =
        demo["bytes_uploaded_audit_answers"].as_u64().expect("the audit answers' bytes are reported");
    assert!(answers > 0, "six answers uploaded beside six updates ({updates} B)");
    // The in-process simulation with the same recipe and the coordinator's
    // aggregation rule reaches the same bits.
    let mut args = vec![
        "sim",
        "diloco",
        "--workers",
        "2",
        "--rounds",
        "3",
        "--inner-steps",
        "8",
        "--aggregator",
        "centered-clip",
        "--json",
    ];
    args.extend_from_slice(TINY);
    let corpus = corpus();
    args.extend_from_slice(&["--data", corpus.to_str().unwrap()]);
    let sim = json_of(&crowdtrain(&args, &[], cache.path()));
    assert_eq!(demo["state_hash"], sim["diloco_state_hash"]);
    assert_eq!(demo["final_val_loss"], sim["final_val_loss"], "the same model, the same whole-split loss");
}

#[test]
fn cheaters_on_text_are_caught_and_unpaid_as_on_images_with_audits_delegated_to_workers() {
    let cache = tempfile::tempdir().unwrap();
    let demo = gpt_demo("3", "lazy:0.9,copy", "workers", cache.path());
    let by_behavior = |behavior: &str| {
        demo["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|worker| worker["behavior"] == behavior)
            .unwrap_or_else(|| panic!("no {behavior} worker in {demo}"))
            .clone()
    };
    let (lazy, copy, honest) = (by_behavior("lazy:0.9"), by_behavior("copy"), by_behavior("honest"));
    assert_eq!(honest["audits_failed"], 0, "{honest}");
    assert_eq!(honest["credits"], 3 * 8 * 12, "{honest}");
    assert_eq!(copy["submissions_accepted"], 0, "a copy of another's update is refused: {copy}");
    // Skipping all but the first of 8 steps leaves no segment honest:
    // whichever one an audit draws, its replay differs.
    assert!(lazy["audits_failed"].as_u64().unwrap() >= 1, "{lazy}");
    for cheater in [&lazy, &copy] {
        assert!(cheater["slashed"].as_u64().unwrap() > 0, "{cheater}");
        assert!(cheater["credits"].as_i64().unwrap() < honest["credits"].as_i64().unwrap(), "{cheater}");
    }
}

#[test]
fn the_attack_battery_runs_on_the_gpt_bit_for_bit_on_any_thread_count() {
    // Goal: the defence is measured on a language model as on images: the
    // same attacks, checks, robust aggregation and pay gate, scored on
    // held-out text, and the run reproducible whatever the thread count.
    let cache = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let rounds = 3;
    let battery = |threads: &str| {
        let mut args = vec![
            "battery",
            "--workers",
            "5",
            "--attackers",
            "1",
            "--rounds",
            "3",
            "--inner-steps",
            "4",
            "--batch",
            "4",
            "--seeds",
            "1",
            "--attacks",
            "sign-flip,noise,alie,copy",
            "--json",
        ];
        args.extend_from_slice(TINY);
        args.extend_from_slice(&["--data", corpus.to_str().unwrap()]);
        json_of(&crowdtrain(&args, &[("RAYON_NUM_THREADS", threads)], cache.path()))
    };
    let report = battery("1");
    assert_eq!(report["dataset"]["name"], "shakespeare-subset");
    let names: Vec<&str> =
        report["attacks"].as_array().unwrap().iter().map(|a| a["attack"].as_str().unwrap()).collect();
    assert_eq!(names, ["sign-flip", "noise", "alie", "copy"]);
    let clean = &report["clean_runs"][0];
    assert_eq!(clean["diverged"], false);
    let clean_loss = report["clean_loss"].as_f64().unwrap();
    assert!(clean_loss < 64f64.ln(), "twelve steps a worker learn something: {clean_loss}");
    for attack in report["attacks"].as_array().unwrap() {
        let name = attack["attack"].as_str().unwrap();
        assert!(attack["attacked_loss"].as_f64().unwrap().is_finite(), "{name}");
        assert_eq!(attack["diverged"], false, "{name}: the defence holds");
        assert_eq!(attack["refused_honest"], 0, "{name}: no honest update refused");
    }
    let copy = &report["attacks"][3];
    assert_eq!(copy["refused_attacker"], rounds, "the later of two identical updates is refused every round");
    assert_eq!(copy["attacker_credits_vs_honest"], 0.0, "a copy earns nothing");
    // The same bits on two threads: every run's final state.
    let hashes = |report: &Value| -> Vec<String> {
        let attacked =
            report["attacks"].as_array().unwrap().iter().flat_map(|a| a["runs"].as_array().unwrap().clone());
        report["clean_runs"]
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .chain(attacked)
            .map(|run| run["state_hash"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(hashes(&battery("2")), hashes(&report));
    // Text has no labels to flip.
    let mut args = vec!["battery", "--attacks", "label-flip", "--json"];
    args.extend_from_slice(TINY);
    let refused = crowdtrain(&args, &[], cache.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no labels to flip"));
}
