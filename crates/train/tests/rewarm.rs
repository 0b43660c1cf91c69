//! A round that re-warms its fresh optimizer (`warmup-cosine-rewarm`) is
//! still a function of public inputs: an auditor replays any segment of it
//! from the segment's start state, bit for bit.

use crowdtrain_data::text::{TokenWidth, Tokens};
use crowdtrain_train::diloco::{inner_round_on, replay_on, round_key};
use crowdtrain_train::text::TextShard;
use crowdtrain_train::{Schedule, TrainingRecipe, build_model};
use tiny_text::{INNER_STEPS, ROUNDS, tokens};

mod tiny_text;

fn recipe(schedule: Schedule) -> TrainingRecipe {
    TrainingRecipe { schedule, ..tiny_text::recipe() }
}

#[test]
fn every_segment_of_a_rewarmed_round_replays_bit_for_bit_and_only_later_rounds_are_rewarmed() {
    let bytes = tokens();
    let source = TextShard::whole(Tokens::new(&bytes, TokenWidth::U16), 8);
    let rewarmed = recipe(Schedule::nanogpt_rewarm(INNER_STEPS * ROUNDS, 3));
    let plain = recipe(Schedule::nanogpt(INNER_STEPS * ROUNDS));
    assert_eq!(rewarmed.validate(), Ok(()));
    let model = build_model(rewarmed.model);
    let global = model.layout().initialize(rewarmed.seed);
    let round = |recipe: &TrainingRecipe, round: u64| {
        let key = round_key(recipe, round, 1);
        inner_round_on(model.as_ref(), recipe, &global, &source, key, 4, &mut || {}).unwrap()
    };
    // The first round warms up with the run's schedule alone.
    assert_eq!(round(&rewarmed, 0).pseudo_gradient, round(&plain, 0).pseudo_gradient);
    let later = round(&rewarmed, 2);
    assert_ne!(later.pseudo_gradient, round(&plain, 2).pseudo_gradient, "round 2 re-warms");
    // Each segment replays from its start state to the worker's next
    // boundary, as an audit does.
    let key = round_key(&rewarmed, 2, 1);
    for (segment, pair) in later.boundaries.windows(2).enumerate() {
        let steps = pair[1].step - pair[0].step;
        let replayed = replay_on(model.as_ref(), &rewarmed, &source, key, pair[0].clone(), steps).unwrap();
        assert_eq!(replayed.hash(), pair[1].hash(), "segment {}", segment + 1);
    }
}

#[test]
fn a_round_cannot_rewarm_for_longer_than_it_lasts() {
    let too_long = recipe(Schedule::nanogpt_rewarm(INNER_STEPS * ROUNDS, INNER_STEPS));
    assert_eq!(too_long.validate().unwrap_err().field, "schedule.round_warmup_steps");
}
