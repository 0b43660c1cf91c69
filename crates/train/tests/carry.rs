//! A round whose worker kept its AdamW moments from its previous round
//! (`sim diloco --inner-state carry`) is still replayable, segment by
//! segment, from the segment's start state and the number of AdamW steps
//! the moments took before the round: what an audit would need if carried
//! moments became committed state (docs/INNER-STATE.md).

use crowdtrain_data::text::{TokenWidth, Tokens};
use crowdtrain_train::build_model;
use crowdtrain_train::diloco::{CarriedMoments, inner_round_from, inner_round_on, replay_carried, round_key};
use crowdtrain_train::text::TextShard;
use tiny_text::{INNER_STEPS, recipe, tokens};

mod tiny_text;

#[test]
fn every_segment_of_a_round_with_carried_moments_replays_from_its_start_and_prior_steps() {
    let bytes = tokens();
    let source = TextShard::whole(Tokens::new(&bytes, TokenWidth::U16), 8);
    let recipe = recipe();
    let model = build_model(recipe.model);
    let global = model.layout().initialize(recipe.seed);
    let first =
        inner_round_on(model.as_ref(), &recipe, &global, &source, round_key(&recipe, 0, 1), 1, &mut || {})
            .unwrap();
    // Nothing carried is a fresh round, bit for bit.
    let none = inner_round_from(
        model.as_ref(),
        &recipe,
        &global,
        None,
        &source,
        round_key(&recipe, 0, 1),
        1,
        &mut || {},
    )
    .unwrap();
    assert_eq!(none, first);
    let carried = CarriedMoments { moments: first.final_state().moments.clone(), steps: INNER_STEPS };
    let key = round_key(&recipe, 1, 1);
    let fresh = inner_round_on(model.as_ref(), &recipe, &global, &source, key, 4, &mut || {}).unwrap();
    let kept =
        inner_round_from(model.as_ref(), &recipe, &global, Some(&carried), &source, key, 4, &mut || {})
            .unwrap();
    assert_ne!(kept.pseudo_gradient, fresh.pseudo_gradient, "the moments steer the round");
    // The round starts from the global model with the carried moments, and
    // its own step count from 0 (the schedule's and the batches' place).
    assert_eq!(kept.boundaries[0].moments, carried.moments);
    assert_eq!(kept.boundaries[0].step, 0);
    assert_eq!(kept.final_state().step, INNER_STEPS);
    for (segment, pair) in kept.boundaries.windows(2).enumerate() {
        let steps = pair[1].step - pair[0].step;
        let replay = |prior| {
            replay_carried(model.as_ref(), &recipe, &source, key, pair[0].clone(), prior, steps)
                .unwrap()
                .hash()
        };
        assert_eq!(replay(INNER_STEPS), pair[1].hash(), "segment {}", segment + 1);
        // The bias correction continues: a replay that restarts it differs.
        assert_ne!(replay(0), pair[1].hash(), "segment {} without its prior steps", segment + 1);
    }
    // The invariant docs/INNER-STATE.md proposes auditors check on carried
    // moments: honest AdamW keeps |m| <= C sqrt(v) in every element.
    let (b1, b2) = (f64::from(recipe.optimizer.beta1), f64::from(recipe.optimizer.beta2));
    let bound = (1.0 - b1) / ((1.0 - b2) * (1.0 - b1 * b1 / b2)).sqrt();
    for state in [first.final_state(), kept.final_state()] {
        let moments = &state.moments;
        assert!(moments.first.iter().any(|&m| m != 0.0));
        for (&m, &v) in moments.first.iter().zip(&moments.second) {
            let (m, v) = (f64::from(m), f64::from(v));
            assert!(
                v >= 0.0 && m.abs() <= bound * v.sqrt() * (1.0 + 1e-5) + 1e-30,
                "m {m}, v {v}, C {bound}"
            );
        }
    }
}
