//! Scenario files are untrusted input: every invalid field must be rejected
//! with an error that names it, equal costs must be merged and reported, and
//! the committed example files must parse to the scenarios the code uses.

use crowdtrain_contract::paper::{MULTITYPE, multitype_scenario};
use crowdtrain_contract::{Accuracy, ContractError, Scenario};

const VALID: &str = r#"
participants = 10
[accuracy]
kind = "generalization-bound"
a_opt = 1.0
k = 1.0
[valuation]
scale = 100.0
[[types]]
cost = 0.2
probability = 0.5
[[types]]
cost = 0.1
probability = 0.5
"#;

fn field_error(text: &str) -> (String, String) {
    match Scenario::from_toml_str(text) {
        Err(ContractError::Field { field, message }) => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_valid_file_parses_in_canonical_order() {
    let s = Scenario::from_toml_str(VALID).expect("valid");
    assert_eq!(s.participants, 10);
    assert_eq!(s.accuracy, Accuracy::generalization_bound(1.0, 1.0));
    assert_eq!(s.costs(), vec![0.2, 0.1]);
    assert!(s.merges.is_empty());
}

#[test]
fn each_invalid_field_is_named() {
    // Goal: one case per rule of the issue (probabilities, costs, N, kinds,
    // unknown fields) plus types, finiteness and missing tables.
    let cases: &[(&str, &str, &str)] = &[
        ("participants = 10", "participants = 0", "participants"),
        ("participants = 10", "participants = -3", "participants"),
        ("participants = 10", "participants = 2.5", "participants"),
        ("cost = 0.2", "cost = -0.2", "types[0].cost"),
        ("cost = 0.1", "cost = 0.0", "types[1].cost"),
        ("cost = 0.2", "cost = inf", "types[0].cost"),
        ("cost = 0.2", "cost = nan", "types[0].cost"),
        ("cost = 0.2", "cost = \"cheap\"", "types[0].cost"),
        (
            "probability = 0.5\n[[types]]\ncost = 0.1",
            "probability = 0.0\n[[types]]\ncost = 0.1",
            "types[0].probability",
        ),
        (
            "probability = 0.5\n[[types]]\ncost = 0.1",
            "probability = -0.5\n[[types]]\ncost = 0.1",
            "types[0].probability",
        ),
        (
            "probability = 0.5\n[[types]]\ncost = 0.1",
            "probability = 0.6\n[[types]]\ncost = 0.1",
            "types[].probability",
        ),
        ("kind = \"generalization-bound\"", "kind = \"linear\"", "accuracy.kind"),
        ("a_opt = 1.0", "a_opt = -1.0", "accuracy.a_opt"),
        ("k = 1.0", "k = 1.0\nbeta = 2.0", "accuracy.beta"),
        ("scale = 100.0", "scale = 0.0", "valuation.scale"),
        ("scale = 100.0", "scale = 100.0\ncurrency = \"EUR\"", "valuation.currency"),
        ("participants = 10", "participants = 10\nseed = 4", "seed"),
        ("cost = 0.2", "cost = 0.2\nname = \"big\"", "types[0].name"),
        ("[valuation]\nscale = 100.0", "", "valuation"),
    ];
    for (from, to, field) in cases {
        assert!(VALID.contains(from), "case {field}: pattern not in the base file");
        let text = VALID.replacen(from, to, 1);
        let (got, message) = field_error(&text);
        assert_eq!(&got, field, "case {to:?}: message was {message}");
    }
    let (field, _) =
        field_error("participants = 10\n[accuracy]\nkind = \"sqrt\"\n[valuation]\nscale = 1.0\n");
    assert_eq!(field, "types");
    // A probability sum off by less than 1e-9 is accepted and renormalised.
    let s = Scenario::from_toml_str(&VALID.replacen("probability = 0.5", "probability = 0.5000000005", 1))
        .expect("within tolerance");
    assert!((s.probabilities().iter().sum::<f64>() - 1.0).abs() < 1e-15);
}

#[test]
fn malformed_and_oversized_input_is_rejected() {
    assert!(matches!(Scenario::from_toml_str("participants = [1"), Err(ContractError::Toml(_))));
    let huge = format!("{VALID}\n# {}\n", "x".repeat(70_000));
    assert!(matches!(Scenario::from_toml_str(&huge), Err(ContractError::TooLarge { .. })));
}

#[test]
fn equal_costs_are_merged_and_reported() {
    let text = VALID.replacen("probability = 0.5\n[[types]]\ncost = 0.1\nprobability = 0.5", "probability = 0.25\n[[types]]\ncost = 0.1\nprobability = 0.5\n[[types]]\ncost = 0.2\nprobability = 0.25", 1);
    let s = Scenario::from_toml_str(&text).expect("valid");
    assert_eq!(s.costs(), vec![0.2, 0.1]);
    assert_eq!(s.probabilities(), vec![0.5, 0.5]);
    assert_eq!(s.input_to_type, vec![0, 1, 0]);
    assert_eq!(s.merges.len(), 1);
    assert_eq!(s.merges[0].input_indices, vec![0, 2]);
    let notes = s.merge_notes();
    assert!(notes[0].contains("types[0], types[2]") && notes[0].contains("merged"), "{notes:?}");
}

#[test]
fn committed_paper_files_match_the_built_in_scenarios() {
    // The CLI's bench and paper commands build S1-S3 in code; the files a
    // user runs must be the same problems.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/contracts");
    for (k, published) in MULTITYPE.iter().enumerate() {
        let path = dir.join(format!("paper_s{}.toml", k + 1));
        let from_file = Scenario::load(&path).expect("committed file is valid");
        assert_eq!(from_file, multitype_scenario(&published.costs), "{}", path.display());
    }
    for entry in std::fs::read_dir(&dir).expect("examples exist") {
        let path = entry.expect("entry").path();
        Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
