//! One-step-delayed outer updates (`[outer] delay = 1`): the simulation
//! runs exactly the schedule a networked run will, so these tests write
//! that schedule out by hand, from the public pieces a coordinator and its
//! workers use (`inner_round`, the codec, `mean_in_order`, `outer_step`),
//! and hold `simulate` to it bit for bit. On the bundled subset.

use crowdtrain_data::{DataSource, Dataset, round_shard};
use crowdtrain_train::diloco::{
    self, DilocoConfig, DilocoReport, Mean, inner_round, mean_in_order, outer_step, round_base, round_key,
    simulate,
};
use crowdtrain_train::{
    Broadcast, Codec, Eager, Encode, Nesterov, OuterState, StateHash, TrainingRecipe, build_model,
};

fn dataset() -> Dataset {
    DataSource::Bundled.load().expect("the bundled subset loads")
}

/// 3 workers, 5 inner steps of 32, int8 updates (no error feedback), 4
/// rounds: enough for round 3 to train from a model two steps old.
fn config(delay: u32, eager: Eager, broadcast: Broadcast) -> DilocoConfig {
    DilocoConfig {
        recipe: TrainingRecipe {
            inner_steps: 5,
            batch_size: 32,
            codec: Codec::INT8,
            ..TrainingRecipe::with_seed(11)
        },
        workers: 3,
        rounds: 4,
        outer: Nesterov { delay, eager, broadcast, ..Nesterov::default() },
        inner_lr: None,
    }
}

fn run(config: &DilocoConfig, dataset: &Dataset, threads: usize) -> DilocoReport {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| simulate(config, dataset, &mut Mean, |_| {}).unwrap())
}

/// The schedule written out: round r trains from the published model of
/// outer step r - delay (the first one while there is none), moved by the
/// eager stand-in, and the round's mean update steps the newest model.
fn by_hand(config: &DilocoConfig, dataset: &Dataset) -> StateHash {
    let recipe = &config.recipe;
    let model = build_model(recipe.model);
    let shards = diloco::shards(recipe, &dataset.train.labels, config.workers).unwrap();
    let mut state = OuterState::new(model.name(), model.layout().initialize(recipe.seed));
    // published[k]: the model after k outer steps.
    let mut published = vec![state.params.clone()];
    let mut sent: Vec<Option<Vec<f32>>> = vec![None; config.workers];
    for round in 0..config.rounds {
        let seen = (round as usize).saturating_sub(config.outer.delay as usize);
        let before = seen.checked_sub(1).map(|k| published[k].as_slice());
        let updates: Vec<Vec<f32>> = (0..config.workers)
            .map(|worker| {
                let base = round_base(&config.outer, &published[seen], before, sent[worker].as_deref());
                let key = round_key(recipe, round, worker as u32);
                let shard = &shards[round_shard(recipe.seed, round, worker as u32, config.workers as u32)];
                let result = inner_round(model.as_ref(), recipe, &base, dataset, shard, key, 1).unwrap();
                let encoded = recipe.codec.encode(&result.pseudo_gradient).unwrap();
                crowdtrain_train::codec::decode(&encoded, base.len()).unwrap().1
            })
            .collect();
        let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        outer_step(config.outer, &mut state, &mean_in_order(&views)).unwrap();
        published.push(state.params.clone());
        sent = updates.into_iter().map(Some).collect();
    }
    state.hash()
}

#[test]
fn a_delayed_round_trains_from_the_model_before_the_previous_outer_step() {
    let dataset = dataset();
    let plain = config(0, Eager::None, Broadcast::Full);
    let delayed = config(1, Eager::None, Broadcast::Full);
    let (plain_report, delayed_report) = (run(&plain, &dataset, 2), run(&delayed, &dataset, 2));
    assert_eq!(plain_report.diloco_state_hash, by_hand(&plain, &dataset), "delay 0 is plain DiLoCo");
    assert_eq!(delayed_report.diloco_state_hash, by_hand(&delayed, &dataset));
    assert_ne!(plain_report.diloco_state_hash, delayed_report.diloco_state_hash);
    // Round 1 trains from the same model in both schedules; only later
    // rounds part (round 2 trains from θ_0 again under the delay).
    assert_eq!(plain_report.rounds[0], delayed_report.rounds[0]);
    assert_ne!(plain_report.rounds[1].diloco_train_loss, delayed_report.rounds[1].diloco_train_loss);
    // The delayed run still learns.
    assert!(delayed_report.rounds[3].diloco_test_accuracy > 0.5, "{:?}", delayed_report.rounds[3]);
}

#[test]
fn each_eager_stand_in_runs_its_schedule_on_any_thread_count() {
    let dataset = dataset();
    let mut hashes = Vec::new();
    for eager in [Eager::Trend, Eager::Own] {
        let config = config(1, eager, Broadcast::Full);
        let (one, two) = (run(&config, &dataset, 1), run(&config, &dataset, 2));
        assert_eq!(one.diloco_state_hash, two.diloco_state_hash, "{eager}");
        assert_eq!(one.rounds, two.rounds, "{eager}");
        assert_eq!(one.diloco_state_hash, by_hand(&config, &dataset), "{eager}");
        hashes.push(one.diloco_state_hash);
    }
    hashes.push(run(&config(1, Eager::None, Broadcast::Full), &dataset, 2).diloco_state_hash);
    assert!(hashes[0] != hashes[1] && hashes[1] != hashes[2] && hashes[0] != hashes[2], "{hashes:?}");
}

#[test]
fn under_a_compressed_broadcast_a_delayed_round_downloads_one_change_and_none_in_round_two() {
    let dataset = dataset();
    let int8 = Broadcast::Delta(Codec::INT8);
    let (plain, delayed) =
        (run(&config(0, Eager::None, int8), &dataset, 2), run(&config(1, Eager::None, int8), &dataset, 2));
    let downloaded = |report: &DilocoReport, round: usize| {
        report.rounds[round].diloco_download_bytes
            - round.checked_sub(1).map_or(0, |previous| report.rounds[previous].diloco_download_bytes)
    };
    // Round 1: the whole model, in both.
    assert_eq!(downloaded(&delayed, 0), downloaded(&plain, 0));
    // Round 2 trains from the model the workers hold already.
    assert_eq!(downloaded(&delayed, 1), 0);
    // Then one encoded change a round (int8's size is the model's, not the
    // change's), as in plain DiLoCo.
    for round in 2..4 {
        assert_eq!(downloaded(&delayed, round), downloaded(&plain, round), "round {round}");
        assert!(downloaded(&delayed, round) * 3 < downloaded(&plain, 0), "round {round}");
    }
    // The compressed broadcast composes with the delay: the workers' base
    // is the published model, as in the hand-written schedule.
    assert_eq!(delayed.diloco_state_hash, by_hand(&config(1, Eager::None, int8), &dataset));
}

/// `delay = 2` (simulation only; issue 18.3's deeper pipeline): round r
/// trains from the model of outer step r - 2, so rounds 1 and 2 both train
/// from the first model and download nothing under a compressed broadcast,
/// and the run is the hand-written schedule on any thread count.
#[test]
fn a_round_delayed_by_two_trains_from_the_model_two_outer_steps_before() {
    let dataset = dataset();
    let int8 = Broadcast::Delta(Codec::INT8);
    let (one, two) = (config(1, Eager::None, int8), config(2, Eager::None, int8));
    let (one_report, two_report) = (run(&one, &dataset, 2), run(&two, &dataset, 1));
    assert_eq!(two_report.diloco_state_hash, by_hand(&two, &dataset));
    assert_eq!(two_report.diloco_state_hash, run(&two, &dataset, 2).diloco_state_hash, "any thread count");
    assert_ne!(two_report.diloco_state_hash, one_report.diloco_state_hash);
    // Rounds 0 and 1 train from θ_0 under either delay; round 2 parts.
    assert_eq!(two_report.rounds[..2], one_report.rounds[..2]);
    assert_ne!(two_report.rounds[2].diloco_train_loss, one_report.rounds[2].diloco_train_loss);
    let downloads: Vec<u64> = two_report.rounds.iter().map(|round| round.diloco_download_bytes).collect();
    assert!(
        downloads[0] > 0 && downloads[1] == downloads[0] && downloads[2] == downloads[0],
        "{downloads:?}"
    );
    assert!(downloads[3] > downloads[2], "{downloads:?}");
    // The eager stand-ins run two rounds deep too, as written out by hand.
    let trend = config(2, Eager::Trend, Broadcast::Full);
    assert_eq!(run(&trend, &dataset, 2).diloco_state_hash, by_hand(&trend, &dataset));
}

/// Deeper pipelines (issue 18: a small model's short rounds need three or
/// four of them over a slow link): under `delay = 3` rounds 0 to 3 train
/// from the first model and round 4 from the first outer step's, and the
/// run, plain or with the worker's own update as a stand-in, is the
/// hand-written schedule, on any thread count.
#[test]
fn a_round_delayed_by_three_trains_from_the_model_three_outer_steps_before() {
    let dataset = dataset();
    let five_rounds = |delay, eager| DilocoConfig { rounds: 5, ..config(delay, eager, Broadcast::Full) };
    let (two, three) = (five_rounds(2, Eager::None), five_rounds(3, Eager::None));
    let (two_report, three_report) = (run(&two, &dataset, 2), run(&three, &dataset, 1));
    assert_eq!(three_report.diloco_state_hash, by_hand(&three, &dataset));
    assert_eq!(
        three_report.diloco_state_hash,
        run(&three, &dataset, 2).diloco_state_hash,
        "any thread count"
    );
    // Rounds 0 to 2 train from θ_0 under either delay; round 3 parts.
    assert_eq!(three_report.rounds[..3], two_report.rounds[..3]);
    assert_ne!(three_report.rounds[3].diloco_train_loss, two_report.rounds[3].diloco_train_loss);
    let own = five_rounds(3, Eager::Own);
    let own_hash = run(&own, &dataset, 2).diloco_state_hash;
    assert_eq!(own_hash, by_hand(&own, &dataset));
    assert_ne!(own_hash, three_report.diloco_state_hash);
}
