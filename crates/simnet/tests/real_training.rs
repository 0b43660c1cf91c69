//! The simulator in model mode (`crowdtrain sim network --training model`)
//! as CI runs it: the coordinator driver with the real `ModelTraining`,
//! workers that really train the MLP on the bundled Fashion-MNIST subset
//! with the real worker's code, real commitments, answers and bit-exact
//! replays, under every fault (coordinator crashes and failed writes,
//! message loss, duplication and reordering, churn), attackers and a
//! near-copier. Each run checks every invariant, and that the model every
//! round recorded is the one a fault-free outer step of its credited
//! updates gives, bit for bit.

use crowdtrain_protocol::ledger::Event;
use crowdtrain_simnet::invariants;
use crowdtrain_simnet::model::Behaviour;
use crowdtrain_simnet::{Auditors, Faults, SimConfig, simulate};

/// Seeds 1 to 3: delegating audits to workers (odd seeds) or the
/// coordinator replaying, with bonds (seeds 2 and 3); ten times the default
/// coordinator crashes and failed writes, so that each run has some.
#[test]
fn model_mode_seeds_keep_every_invariant_with_real_training_and_faults() {
    let mut totals = (0, 0, 0, 0);
    for seed in 1..4 {
        let faults = Faults::parse("crash=0.5,write=0.5").unwrap();
        let config = SimConfig { faults, ..SimConfig::small_model(seed) };
        let finished = simulate(&config).unwrap_or_else(|failure| panic!("{failure}"));
        let summary = &finished.summary;
        assert_eq!(summary.tally.rounds_closed, config.rounds, "seed {seed}: {summary:?}");
        assert_eq!(summary.rounds_reproduced, config.rounds, "seed {seed}: reproduced fault-free");
        let final_model = finished.final_model.expect("the run finished");
        let events =
            invariants::check_ledger(&finished.store.ledger().unwrap(), &finished.coordinator).unwrap();
        let Some(Event::RunStarted { initial_model, .. }) = events.first() else { panic!("seed {seed}") };
        assert_ne!(final_model, *initial_model, "seed {seed}: the model trained");
        let near_copier = finished.behaviour_by_key.values().filter(|b| **b == Behaviour::NearCopier).count();
        assert_eq!(near_copier, 1, "seed {seed}");
        assert!(summary.crashes + summary.write_faults > 0, "seed {seed}: faults struck: {summary:?}");
        totals.0 += summary.crashes + summary.write_faults;
        totals.1 += summary.tally.attackers_slashed;
        totals.2 += summary.tally.updates_refused;
        totals.3 += summary.tally.delegated_verdicts;
        if config.auditors == Auditors::Workers {
            assert!(summary.tally.delegated_verdicts > 0, "seed {seed}: real replays by workers");
        }
    }
    let (_, slashed, refused, _) = totals;
    assert!(slashed > 0 && refused > 0, "real replays slash and real checks refuse: {totals:?}");
}

/// The same seed gives the same run, real training included: the summary
/// hash covers the ledger, whose last entry names the final checkpoint.
#[test]
fn a_model_mode_seed_is_reproducible_bit_for_bit() {
    let config = SimConfig { rounds: 2, ..SimConfig::small_model(7) };
    let first = crowdtrain_simnet::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    let again = crowdtrain_simnet::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(first.hash, again.hash);
    let hashed =
        crowdtrain_simnet::run(&SimConfig { training: crowdtrain_simnet::TrainingMode::Hash, ..config })
            .unwrap_or_else(|failure| panic!("{failure}"));
    assert_ne!(first.hash, hashed.hash, "real training is not the stand-in");
}

/// Pipelined rounds with real training (`--outer-delay 2`): three rounds
/// live at once under every fault, the workers training the next round's
/// real MLP while the earlier ones settle. Round r trains from the model
/// of round r - 2 (rounds 0 to 2 from the initial one), and every recorded
/// model and momentum checkpoint is what the real outer step applied to
/// the newest model (never to the round's stale base) with the credited
/// updates gives, bit for bit, the final one included.
#[test]
fn model_mode_pipelines_rounds_under_a_delayed_outer_update_bit_for_bit() {
    let delay = 2;
    let faults = Faults::parse("crash=0.5,write=0.5").unwrap();
    let config = SimConfig { outer_delay: delay, rounds: 5, faults, ..SimConfig::small_model(2) };
    let finished = simulate(&config).unwrap_or_else(|failure| panic!("{failure}"));
    let summary = &finished.summary;
    assert_eq!(summary.tally.rounds_closed, config.rounds, "{summary:?}");
    assert_eq!(summary.rounds_reproduced, config.rounds, "reproduced fault-free");
    let events = invariants::check_ledger(&finished.store.ledger().unwrap(), &finished.coordinator).unwrap();
    let Some(Event::RunStarted { initial_model, .. }) = events.first() else { panic!("a run") };
    // The models in order (the initial one, then each close's), and each
    // round's base.
    let mut models = vec![*initial_model];
    let mut bases = Vec::new();
    for event in &events {
        match event {
            Event::RoundOpened { round, base_model, .. } => bases.push((*round, *base_model)),
            Event::RoundClosed { result_model, .. } => models.push(*result_model),
            _ => {}
        }
    }
    assert_eq!(bases.len() as u64, config.rounds, "no round failed: {bases:?}");
    for (round, base) in bases {
        let expected = models[(round as usize).saturating_sub(delay as usize)];
        assert_eq!(base, expected, "round {round} trains from the model of round {round} - {delay}");
    }
    assert_eq!(finished.final_model, models.last().copied());
    assert_ne!(finished.final_model, Some(*initial_model), "the model trained");
}
