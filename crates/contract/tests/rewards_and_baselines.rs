//! Rewards as users receive them, and the two baselines, checked against
//! brute force.

#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use crowdtrain_contract::baselines::{complete_information_total, no_contract};
use crowdtrain_contract::outcomes::Enumeration;
use crowdtrain_contract::paper::{MULTITYPE, PAPER_ACCURACY, multitype_scenario};
use crowdtrain_contract::reservation::reservation;
use crowdtrain_contract::rewards::{parse_outcome, realize};
use crowdtrain_contract::{Method, Scenario, solve};

#[test]
fn rewards_never_beat_the_trained_model_and_reproduce_t() {
    // Goal: over every outcome of S1-S3, r_i(n) <= a(n.m), and the
    // conditional expectation of v(r_i(n)) is exactly t_i (so IR and IC of
    // the first-moment menu carry over to the real reward distributions).
    for published in MULTITYPE {
        let scenario = multitype_scenario(&published.costs);
        let s = solve(&scenario, Method::Auto).expect("solves");
        let outcomes = Enumeration::new(10, &scenario.probabilities(), 10_000).expect("small");
        let mut expected = [0.0; 5];
        for k in 0..outcomes.len() {
            let (n, p) = outcomes.outcome(k);
            let r = realize(&scenario, &s, n);
            for (i, t) in r.types.iter().enumerate() {
                assert!(t.reward_accuracy <= r.trained_accuracy, "{}: type {i} at {n:?}", published.name);
                assert!(t.reward_accuracy >= 0.0);
                if n[i] > 0 {
                    expected[i] += p * t.reward_value / outcomes.present_mass()[i];
                }
            }
        }
        for i in 0..5 {
            assert!(
                (expected[i] - s.expected_reward_value[i]).abs() < 1e-9,
                "{}: E[v(r_{i})] {} vs t {}",
                published.name,
                expected[i],
                s.expected_reward_value[i]
            );
        }
    }
}

#[test]
fn outcomes_are_read_in_file_order_and_validated() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/contracts/consortium_merged.toml"
    ))
    .expect("example exists");
    let scenario = Scenario::from_toml_str(&text).expect("valid");
    // File order: 0.05, 0.3, 0.05, 0.012, 0.12 -> canonical 0.3, 0.12, 0.05 (merged), 0.012.
    assert_eq!(parse_outcome(&scenario, "1,2,3,4,2").expect("valid"), vec![2, 2, 4, 4]);
    assert!(parse_outcome(&scenario, "1,2,3").is_err(), "wrong length");
    assert!(parse_outcome(&scenario, "1,2,3,4,1").is_err(), "wrong sum");
    assert!(parse_outcome(&scenario, "1,2,x,4,2").is_err(), "not a number");
}

#[test]
fn no_contract_closed_form_matches_brute_force() {
    // The free-riding equilibrium per outcome: the most efficient present
    // type trains its standalone amount, split among its members; everyone
    // gets that model. Sum it over all outcomes and compare with the
    // closed form (which needs no enumeration).
    for costs in [[0.2, 0.16, 0.12, 0.08, 0.04], [0.5, 0.4, 0.03, 0.02, 0.001], [1.0, 0.85, 0.7, 0.55, 0.4]] {
        let scenario = multitype_scenario(&costs);
        let res: Vec<_> = costs.iter().map(|&c| reservation(&PAPER_ACCURACY, 100.0, c)).collect();
        let closed = no_contract(&scenario, &res);
        let outcomes = Enumeration::new(10, &scenario.probabilities(), 10_000).expect("small");
        let (mut value, mut utility) = (0.0, [0.0; 5]);
        for k in 0..outcomes.len() {
            let (n, p) = outcomes.outcome(k);
            let top = (0..5).rev().find(|&j| n[j] > 0).expect("someone is present");
            let v = 100.0 * PAPER_ACCURACY.value(res[top].contribution);
            value += p * v;
            for i in 0..5 {
                if n[i] > 0 {
                    let cost = if i == top { costs[i] * res[i].contribution / n[i] as f64 } else { 0.0 };
                    utility[i] += p * (v - cost) / outcomes.present_mass()[i];
                }
            }
        }
        assert!((closed.expected_value - value).abs() < 1e-9, "{} vs {}", closed.expected_value, value);
        for i in 0..5 {
            assert!(
                (closed.utility[i] - utility[i]).abs() < 1e-9,
                "type {i}: {} vs {}",
                closed.utility[i],
                utility[i]
            );
        }
    }
}

#[test]
fn complete_information_handles_no_collaboration() {
    // One prohibitive-cost participant cannot be paid anything: no model.
    let f = reservation(&PAPER_ACCURACY, 100.0, 1.0).utility;
    assert_eq!(complete_information_total(&PAPER_ACCURACY, 100.0, 1.0, f), 0.0);
    // One participant with a profitable standalone point: exactly that point.
    let r = reservation(&PAPER_ACCURACY, 100.0, 0.02);
    let total = complete_information_total(&PAPER_ACCURACY, 100.0, 1.0 / 0.02, r.utility / 0.02);
    assert!((total - r.contribution).abs() / r.contribution < 1e-3, "{total} vs {}", r.contribution);
}
