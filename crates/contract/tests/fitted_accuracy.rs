//! Accuracy functions fitted from data: the `[accuracy]` sections `contract
//! fit` writes parse back to the same function, and the solver finds a
//! certified optimal menu for them as it does for the paper's function.

use crowdtrain_contract::check::check;
use crowdtrain_contract::fit::{CurvePoint, fit_both};
use crowdtrain_contract::rewards::realize;
use crowdtrain_contract::scenario::{
    accuracy_from_table, accuracy_section, accuracy_table, replace_accuracy,
};
use crowdtrain_contract::{Accuracy, Method, Scenario, solve};

/// A scenario in work units: the power law below is about what a 4-worker
/// DiLoCo run of the MLP on Fashion-MNIST measures (`docs/CONTRACT.md`),
/// and costs are per work unit (a sample through one inner step).
const WORK_UNITS: &str = r#"
participants = 6
[accuracy]
kind = "power-law"
a_opt = 0.875
b = 10.6
c = 0.5
[valuation]
scale = 100.0
[[types]]
cost = 4e-5
probability = 0.3
[[types]]
cost = 1e-5
probability = 0.4
[[types]]
cost = 2e-6
probability = 0.3
"#;

#[test]
fn accuracy_sections_round_trip() {
    for accuracy in [
        Accuracy::PowerLaw { a_opt: 0.8751234567891, b: 10.6, c: 0.4999 },
        Accuracy::GeneralizationBound { a_opt: 0.9, k: 2.5, unit: 63.75 },
        Accuracy::generalization_bound(1.0, 1.0),
        Accuracy::Sqrt,
    ] {
        let table = accuracy_table(&accuracy);
        let text = toml::to_string(&table).unwrap();
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(accuracy_from_table(&parsed).unwrap(), accuracy, "{text}");
    }
    // The paper's function is written without a unit, as the examples are.
    assert!(!accuracy_table(&Accuracy::generalization_bound(1.0, 1.0)).contains_key("unit"));
    // The section as text starts with its kind and parses back.
    let accuracy = Accuracy::PowerLaw { a_opt: 0.875, b: 1e-3, c: 0.25 };
    let section = accuracy_section(&accuracy);
    assert!(section.starts_with("[accuracy]\nkind = \"power-law\"\n"), "{section}");
    let parsed: toml::Table = section.parse().unwrap();
    assert_eq!(accuracy_from_table(parsed["accuracy"].as_table().unwrap()).unwrap(), accuracy);
}

#[test]
fn invalid_fitted_parameters_are_named() {
    for (text, field) in [
        ("kind = \"power-law\"\na_opt = 0.9\nb = 1.0", "accuracy.c"),
        ("kind = \"power-law\"\na_opt = 0.9\nb = -1.0\nc = 0.5", "accuracy.b"),
        ("kind = \"power-law\"\na_opt = 0.9\nb = 1.0\nc = 0.5\nk = 1", "accuracy.k"),
        ("kind = \"generalization-bound\"\na_opt = 0.9\nk = 1.0\nunit = 0", "accuracy.unit"),
    ] {
        let table: toml::Table = text.parse().unwrap();
        let error = accuracy_from_table(&table).unwrap_err().to_string();
        assert!(error.starts_with(field), "{text}: {error}");
    }
}

#[test]
fn replacing_the_accuracy_keeps_the_rest_of_the_scenario() {
    let accuracy = Accuracy::GeneralizationBound { a_opt: 0.9, k: 2.0, unit: 64.0 };
    let replaced = Scenario::from_toml_str(&replace_accuracy(WORK_UNITS, &accuracy).unwrap()).unwrap();
    let original = Scenario::from_toml_str(WORK_UNITS).unwrap();
    assert_eq!(replaced.accuracy, accuracy);
    assert_eq!((replaced.participants, replaced.types.clone()), (original.participants, original.types));
    assert!(replace_accuracy("participants = 0", &accuracy).is_err(), "an invalid template is refused");
}

#[test]
fn the_solver_certifies_a_menu_for_a_fitted_power_law() {
    let scenario = Scenario::from_toml_str(WORK_UNITS).unwrap();
    for method in [Method::Enumerate, Method::Convolution] {
        let solution = solve(&scenario, method).unwrap();
        let violations =
            check(&scenario, &solution.contribution, &solution.expected_reward_value, Method::Enumerate)
                .unwrap();
        assert!(violations.max() <= 1e-9, "{method:?}: {violations:?}");
        // The most efficient type is asked for the most work, and contributions are monotone.
        assert!(
            solution.contribution.windows(2).all(|w| w[0] <= w[1] * (1.0 + 1e-9)),
            "{:?}",
            solution.contribution
        );
        assert!(solution.contribution[2] > 0.0);
        // Rewards never beat the trained model.
        let realized = realize(&scenario, &solution, &[2, 2, 2]);
        for t in &realized.types {
            assert!(t.reward_accuracy <= realized.trained_accuracy + 1e-12);
        }
    }
    let exact = solve(&scenario, Method::Enumerate).unwrap();
    let approx = solve(&scenario, Method::Convolution).unwrap();
    let relative = (exact.expected_value - approx.expected_value).abs() / exact.expected_value;
    assert!(relative < 1e-6, "{relative:e}");
}

#[test]
fn a_fitted_section_solves() {
    // From points to a solved menu, as `contract fit --scenario` then `contract solve` do.
    let truth = Accuracy::PowerLaw { a_opt: 0.875, b: 10.6, c: 0.5 };
    let points: Vec<CurvePoint> = (1..=30)
        .map(|round| {
            let m = 12_800.0 * round as f64;
            let wiggle = if round % 2 == 0 { 0.002 } else { -0.002 };
            CurvePoint { contribution: m, value: truth.value(m) + wiggle }
        })
        .collect();
    // Whichever form is chosen (on this curve they extrapolate equally
    // well), the solver takes it.
    let (candidates, _) = fit_both(&points).unwrap();
    for candidate in candidates {
        let accuracy = candidate.fit.accuracy;
        assert!(candidate.fit.errors.rmse < 0.0025, "{candidate:?}");
        let scenario = Scenario::from_toml_str(&replace_accuracy(WORK_UNITS, &accuracy).unwrap()).unwrap();
        assert_eq!(scenario.accuracy, accuracy);
        let solution = solve(&scenario, Method::Auto).unwrap();
        assert!(solution.expected_accuracy > 0.8 && solution.expected_accuracy < 0.88, "{solution:?}");
        let violations =
            check(&scenario, &solution.contribution, &solution.expected_reward_value, Method::Enumerate)
                .unwrap();
        assert!(violations.max() <= 1e-9, "{:?}: {violations:?}", candidate.fit.form);
    }
}
