//! `crowdtrain tokenizer` as a user runs it: the real binary on the
//! Shakespeare subset in the repository, a token cache in a temporary
//! directory, JSON on stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/assets/shakespeare/shakespeare-subset.txt.gz")
}

fn crowdtrain(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crowdtrain"))
        .args(args)
        .env("CROWDTRAIN_CACHE_DIR", cache)
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .expect("the binary runs")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("stdout is not one JSON object ({error}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

#[test]
fn train_reports_the_vocabulary_tokens_and_bytes_per_token_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let corpus = corpus();
    let train = |out: &Path, threads: &str| {
        let args = ["tokenizer", "train", "--vocab", "400", "--data", corpus.to_str().unwrap()];
        json_of(&crowdtrain(
            &[&args[..], &["--out", out.to_str().unwrap(), "--threads", threads, "--json"]].concat(),
            &cache,
        ))
    };
    let (first, second) = (dir.path().join("one.json"), dir.path().join("two.json"));
    let report = train(&first, "1");
    train(&second, "2");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
        "1 and 2 threads, byte for byte"
    );

    assert_eq!(report["vocab_size"], 400);
    assert_eq!(report["tokenizer"], "bpe");
    assert_eq!(report["text_bytes"], 1_189_010);
    let tokens = report["tokens"].as_u64().unwrap();
    let bytes_per_token = report["bytes_per_token"].as_f64().unwrap();
    assert!((bytes_per_token - 1_189_010.0 / tokens as f64).abs() < 1e-9);
    assert!(bytes_per_token > 1.5 && bytes_per_token < 4.0, "{bytes_per_token}");
    assert_eq!(report["data"]["name"], "shakespeare-subset");

    // The saved file is a tokenizer.json the library reads back as it was.
    let loaded = crowdtrain_data::text::Tokenizer::load(&first).unwrap();
    assert_eq!(crowdtrain_data::text::hex_digest(&loaded.hash()), report["tokenizer_hash"].as_str().unwrap());
    let json: Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");

    // Encoding with it reuses the tokens the training command cached.
    let encoded = json_of(&crowdtrain(
        &[
            "tokenizer",
            "encode",
            "--tokenizer",
            first.to_str().unwrap(),
            "--data",
            corpus.to_str().unwrap(),
            "--json",
        ],
        &cache,
    ));
    assert_eq!(encoded["tokens"].as_u64(), Some(tokens));
    assert_eq!(encoded["data"]["cache"]["status"], "reused");
    assert_eq!(encoded["width"], "u16");
}

#[test]
fn encode_writes_a_token_file_and_ids_decode_back_to_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let corpus = corpus();
    let data = corpus.to_str().unwrap();
    let out = dir.path().join("tokens.bin");
    let report = json_of(&crowdtrain(
        &["tokenizer", "encode", "--data", data, "--out", out.to_str().unwrap(), "--json"],
        &cache,
    ));
    assert_eq!((report["tokens"].as_u64(), report["vocab_size"].as_u64()), (Some(1_189_010), Some(64)));
    assert_eq!(
        (report["train_tokens"].as_u64(), report["validation_tokens"].as_u64()),
        (Some(1_070_109), Some(118_901))
    );
    assert_eq!(report["data"]["cache"]["status"], "built");
    assert_eq!(report["fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 2 * 1_189_010);
    let again = json_of(&crowdtrain(&["tokenizer", "encode", "--data", data, "--json"], &cache));
    assert_eq!(again["data"]["cache"]["status"], "reused");
    assert_eq!(again["fingerprint"], report["fingerprint"]);

    // The character tokenizer as a file: what `--tokenizer char` builds.
    let chars = dir.path().join("chars.json");
    let saved = json_of(&crowdtrain(
        &["tokenizer", "train", "--chars", "--data", data, "--out", chars.to_str().unwrap(), "--json"],
        &cache,
    ));
    assert_eq!((saved["tokenizer"].as_str(), saved["vocab_size"].as_u64()), (Some("char"), Some(64)));
    let from_file = json_of(&crowdtrain(
        &["tokenizer", "encode", "--data", data, "--tokenizer", chars.to_str().unwrap(), "--json"],
        &cache,
    ));
    assert_eq!(from_file["fingerprint"], report["fingerprint"]);

    let ids = json_of(&crowdtrain(
        &["tokenizer", "encode", "--data", data, "--text", "ROMEO:\nO!", "--json"],
        &cache,
    ));
    let ids: Vec<String> = ids["ids"].as_array().unwrap().iter().map(|id| id.to_string()).collect();
    assert_eq!(ids.len(), 9);
    let decoded = json_of(&crowdtrain(
        &[
            &["tokenizer", "decode", "--data", data, "--json"],
            &ids.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
        &cache,
    ));
    assert_eq!(decoded["text"], "ROMEO:\nO!");
}

#[test]
fn bad_inputs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let corpus = corpus();
    let failure = |args: &[&str]| {
        let output = crowdtrain(args, &cache);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(output.stdout.is_empty(), "nothing on stdout");
        String::from_utf8(output.stderr).unwrap()
    };
    let out = dir.path().join("t.json");
    let message = failure(&[
        "tokenizer",
        "train",
        "--vocab",
        "100",
        "--data",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        message.contains("must hold 256 to 1048576 tokens") && message.contains("asked for 100"),
        "{message}"
    );
    assert!(!out.exists());
    let missing = dir.path().join("missing.txt");
    let message = failure(&["tokenizer", "encode", "--data", missing.to_str().unwrap(), "--json"]);
    assert!(message.contains("missing.txt does not exist"), "{message}");
    let binary = dir.path().join("binary.dat");
    std::fs::write(&binary, b"text then \xff\xfe").unwrap();
    let message = failure(&["tokenizer", "encode", "--data", binary.to_str().unwrap()]);
    assert!(message.contains("binary.dat is not UTF-8 text: invalid byte at offset 10"), "{message}");
    let message = failure(&["tokenizer", "encode", "--data", corpus.to_str().unwrap(), "--text", "naïve"]);
    assert!(message.contains("'ï' (U+00EF) at byte 2 is not in the tokenizer's vocabulary"), "{message}");
    let message = failure(&["tokenizer", "decode", "--data", corpus.to_str().unwrap(), "3,64"]);
    assert!(message.contains("token id 64 is not below the vocabulary size 64"), "{message}");
}
