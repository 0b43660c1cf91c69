//! The contract inside a real run (issue 15): a coordinator with
//! `[contract]` solves the menu when the run starts, records it once in the
//! ledger and serves it signed at `GET /v1/contract`; the same menu survives
//! a SIGKILL; a run without a contract has none; an unsolvable `[contract]`
//! starts nothing.

mod common;

use std::process::Command;

use common::{Network, binary, get_json};
use crowdtrain_protocol::Signed;
use crowdtrain_protocol::contract::ContractMenu;
use crowdtrain_protocol::wire::RunInfo;

/// Three types, per-unit costs per verified work unit, a saturating power
/// law in work units: the shape `crowdtrain contract fit` writes.
const SCENARIO: &str = "participants = 6\n[accuracy]\nkind = \"power-law\"\na_opt = 0.85\nb = 4.7\nc = 0.5\n\
                        [valuation]\nscale = 100.0\n\
                        [[types]]\ncost = 0.001\nprobability = 0.3\n\
                        [[types]]\ncost = 0.004\nprobability = 0.3\n\
                        [[types]]\ncost = 0.0005\nprobability = 0.4\n";

fn fetch_menu(network: &Network) -> (Signed<ContractMenu>, RunInfo) {
    let run: Signed<RunInfo> = get_json(&format!("{}/v1/run", network.url())).unwrap();
    let url = format!("{}/v1/contract", network.url());
    let bytes = common::runtime().block_on(async { reqwest::get(url).await.unwrap().bytes().await.unwrap() });
    let menu: Signed<ContractMenu> =
        postcard::from_bytes(&bytes).expect("the menu is postcard, as in the ledger");
    let coordinator = run.body.coordinator;
    menu.verify(&coordinator).expect("the menu is signed by the run's coordinator");
    (menu, run.body)
}

fn published_entries(network: &Network) -> Vec<serde_json::Value> {
    let output = network.ledger(&["show", "--kind", "contract-published", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["verified"], true);
    report["entries"].as_array().unwrap().clone()
}

#[test]
fn the_coordinator_solves_records_and_serves_the_menu_signed() {
    let mut network =
        Network::with_extra(3, 10, 0.0, "min_workers = 2", "[contract]\nscenario = \"scenario.toml\"\n");
    std::fs::write(network.path("scenario.toml"), SCENARIO).unwrap();
    network.start_coordinator();
    let (signed, run) = fetch_menu(&network);
    let menu = signed.body.clone();

    // The menu is the solver's, certified, in canonical order (highest cost first).
    let solved = Command::new(binary())
        .args(["contract", "solve", network.path("scenario.toml").to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let solved: serde_json::Value = serde_json::from_slice(&solved.stdout).unwrap();
    let types = solved["types"].as_array().unwrap();
    assert_eq!(menu.participants, 6);
    assert_eq!(menu.options.len(), 3);
    assert!(menu.max_violation <= 1e-8 && menu.kkt_residual <= 1e-6, "{menu:?}");
    for (option, solved) in menu.options.iter().zip(types) {
        assert_eq!(option.cost, solved["cost"].as_f64().unwrap());
        let m = solved["contribution"].as_f64().unwrap();
        assert!((option.contribution - m).abs() <= 1e-6 * m.max(1.0), "{option:?} against {solved}");
        assert_eq!(option.required_contribution, option.contribution.ceil() as u64);
        assert!(option.utility >= option.reservation_utility - 1e-9, "IR: {option:?}");
        assert!((0.0..=1.0).contains(&option.reward_ratio));
    }
    assert!(menu.options.windows(2).all(|pair| pair[0].cost > pair[1].cost));
    assert!(menu.options.windows(2).all(|pair| pair[0].contribution <= pair[1].contribution + 1e-9));
    // The scenario is part of the run's identity, published inline.
    let contract = run.config.contract.expect("the published configuration carries the contract");
    assert!(contract.scenario.is_none());
    assert_eq!(contract.types.len(), 3);

    // Recorded once, before any worker could register.
    let entries = published_entries(&network);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["index"], 1, "right after run-started");
    assert_eq!(entries[0]["event"]["contract-published"]["menu"]["options"].as_array().unwrap().len(), 3);

    // A SIGKILL changes nothing: the same menu, recorded once.
    network.kill_coordinator();
    network.start_coordinator();
    let (again, _) = fetch_menu(&network);
    assert_eq!(again.body, menu);
    assert_eq!(published_entries(&network).len(), 1);
}

#[test]
fn a_run_without_a_contract_serves_none_and_a_bad_contract_starts_nothing() {
    let mut plain = Network::new(2, 10, 0.0, "min_workers = 1");
    plain.start_coordinator();
    let response = common::runtime()
        .block_on(async { reqwest::get(format!("{}/v1/contract", plain.url())).await.unwrap().status() });
    assert_eq!(response.as_u16(), 404);
    assert!(published_entries(&plain).is_empty());

    // Probabilities that do not sum to 1: refused by field, no run created.
    let bad = SCENARIO.replace("probability = 0.4", "probability = 0.5");
    let network =
        Network::with_extra(2, 10, 0.0, "min_workers = 1", &format!("[contract]\n{}", inline(&bad)));
    let output = network.run_coordinator_to_exit();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("contract.") && stderr.contains("probabilit"), "{stderr}");
    assert!(!network.path("state/coordinator.sqlite").exists(), "an unsolvable contract creates no run");

    // Both a file and inline types: refused when the file is read.
    let both = Network::with_extra(
        2,
        10,
        0.0,
        "min_workers = 1",
        "[contract]\nscenario = \"scenario.toml\"\nparticipants = 3\n",
    );
    let output = both.run_coordinator_to_exit();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("contract.scenario"));
}

/// A scenario file's text as the inside of `[contract]`: the top-level keys
/// stay, the sections move under `contract.`.
fn inline(scenario: &str) -> String {
    scenario
        .replace("[accuracy]", "[contract.accuracy]")
        .replace("[valuation]", "[contract.valuation]")
        .replace("[[types]]", "[[contract.types]]")
}

#[test]
fn an_inline_contract_is_the_same_menu_as_its_scenario_file() {
    let mut network =
        Network::with_extra(2, 10, 0.0, "min_workers = 2", &format!("[contract]\n{}", inline(SCENARIO)));
    network.start_coordinator();
    let (inline_menu, _) = fetch_menu(&network);
    let mut file = Network::with_extra(2, 10, 0.0, "min_workers = 2", "[contract]\nscenario = \"s.toml\"\n");
    std::fs::write(file.path("s.toml"), SCENARIO).unwrap();
    file.start_coordinator();
    let (file_menu, _) = fetch_menu(&file);
    assert_eq!(inline_menu.body, file_menu.body);
}

/// Workers choose at registration: by their private cost (the option that
/// maximises their utility under the signed menu) or explicitly; the
/// choices are signed by their keys and recorded; a cost of no type and a
/// worker that does not choose are refused with a clear error.
#[test]
fn workers_choose_by_cost_or_explicitly_and_the_ledger_keeps_their_signed_choices() {
    let mut network =
        Network::with_extra(2, 10, 0.0, "min_workers = 3", &format!("[contract]\n{}", inline(SCENARIO)));
    network.start_coordinator();
    let (signed, run) = fetch_menu(&network);
    let menu = signed.body;
    // Refused before they register: a cost of no type, and no choice at all.
    network.start_worker_args(3, &["--cost", "0.3"]);
    network.start_worker_args(4, &[]);
    // The coordinator refuses a registration without a choice too.
    let hand = common::HandWorker::unregistered(&network, 40);
    let (status, body) = hand.register(Some(network.admission_token()));
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("offers a contract"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    network.start_worker_args(0, &["--cost", "0.004"]);
    network.start_worker_args(1, &["--cost", "0.0005"]);
    network.start_worker_args(2, &["--option", "1"]);
    network.wait_for(300, "the run to finish", |status| {
        status.phase == crowdtrain_protocol::wire::Phase::Finished
    });
    let outputs = network.join_workers();
    for (index, needle) in [(0, "not one of this run's types"), (1, "offers a contract: pass --cost")] {
        assert!(!outputs[index].status.success());
        let log = network.log(&format!("worker-{}.log", index + 3));
        assert!(log.contains(needle), "worker {}: {log}", index + 3);
    }
    let expected = [menu.choose(0.004).unwrap() as u32, menu.choose(0.0005).unwrap() as u32, 1];
    let mut chosen = Vec::new();
    for (index, output) in outputs[2..].iter().enumerate() {
        assert!(output.status.success(), "{}", network.log(&format!("worker-{index}.log")));
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["option"], expected[index], "worker {index}");
        chosen.push((summary["public_key"].as_str().unwrap().to_owned(), expected[index]));
    }
    // IC, as the worker applied it: the highest-cost type takes option 0, the lowest the last.
    assert_eq!(expected[0], 0);
    assert_eq!(expected[1] as usize, menu.options.len() - 1);

    // The ledger holds each choice once, signed by the worker's own key.
    let output = network.ledger(&["show", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["verified"], true);
    let entries = report["entries"].as_array().unwrap();
    let key_of = |worker: &serde_json::Value| {
        entries
            .iter()
            .find(|entry| {
                entry["kind"] == "worker-registered"
                    && entry["event"]["worker-registered"]["worker"] == *worker
            })
            .map(|entry| entry["event"]["worker-registered"]["key"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let choices: Vec<&serde_json::Value> =
        entries.iter().filter(|entry| entry["kind"] == "option-chosen").collect();
    assert_eq!(choices.len(), 3);
    for entry in choices {
        let event = &entry["event"]["option-chosen"];
        let key: crowdtrain_protocol::PublicKey = key_of(&event["worker"]).parse().unwrap();
        let choice: crowdtrain_protocol::contract::ContractChoice =
            serde_json::from_value(event["choice"].clone()).unwrap();
        choice.verify(&key, run.run_id).expect("signed by the worker that chose");
        assert!(chosen.contains(&(key.to_hex(), choice.option)), "{event}");
    }

    // `crowdtrain rewards` shows each chooser's option, what it requires and what it delivered.
    let report = network.rewards();
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    for worker in workers {
        let option = worker["option"].as_u64().unwrap() as usize;
        let key = worker["public_key"].as_str().unwrap();
        assert!(chosen.contains(&(key.to_owned(), option as u32)));
        assert_eq!(worker["required_contribution"], menu.options[option].required_contribution);
        assert_eq!(worker["delivered_contribution"], worker["verified_work"]);
        assert!(worker["delivered_contribution"].as_u64().unwrap() > 0, "{worker}");
    }
}
