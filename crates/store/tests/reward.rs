//! Reward models on real checkpoint files, with a stand-in metric (the
//! mean of the parameters, rounded like a 10,000-example test set): the
//! builder's bookkeeping and every check of a recipe. The real metric, on a
//! real run, is `crates/cli/tests/contract_from_runs.rs`.

use crowdtrain_protocol::Digest;
use crowdtrain_protocol::reward_model::RunCheckpoint;
use crowdtrain_store::Checkpoints;
use crowdtrain_store::checkpoint::{CheckpointKind, encode};
use crowdtrain_store::reward::{BuildError, CheckError, RewardBuilder, check_reward_model};
use crowdtrain_train::reward::Metric;
use crowdtrain_train::{Model, ModelKind, TrainError};

fn mean(params: &[f32]) -> Result<f64, TrainError> {
    let sum: f64 = params.iter().map(|&p| f64::from(p)).sum();
    Ok((sum / params.len() as f64 * 1e4).round() / 1e4)
}

/// Checkpoints whose parameters are all `level` plus a seeded jitter.
fn run(store: &Checkpoints, model: &dyn Model, levels: &[f32]) -> Vec<RunCheckpoint> {
    let jitter = model.layout().initialize(7);
    levels
        .iter()
        .enumerate()
        .map(|(index, &level)| {
            let params: Vec<f32> = jitter.iter().map(|j| level + 0.01 * j).collect();
            let model_digest =
                store.put(&encode(CheckpointKind::Params, &model.name(), model.layout(), &params)).unwrap();
            RunCheckpoint { round: index.checked_sub(1).map(|round| round as u64), model: model_digest }
        })
        .collect()
}

/// A builder of accuracy rewards over `checkpoints`, with their `known` values.
fn accuracy_builder<'a>(
    store: &'a Checkpoints,
    model: &'a dyn Model,
    checkpoints: &[RunCheckpoint],
    known: &[Option<f64>],
    set: Digest,
) -> RewardBuilder<'a> {
    RewardBuilder::new(store, model, checkpoints.to_vec(), known.to_vec(), Metric::Accuracy, set).unwrap()
}

#[test]
fn a_built_reward_checks_and_every_wrong_claim_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Checkpoints::open(dir.path()).unwrap();
    let model = crowdtrain_train::build_model(ModelKind::Mlp);
    let levels = [0.1, 0.6, 0.7, 0.68, 0.75, 0.8];
    let checkpoints = run(&store, model.as_ref(), &levels);
    let set = Digest::of(b"test set");
    let known: Vec<Option<f64>> = vec![None, Some(0.6), None, Some(0.68), Some(0.75), Some(0.8)];
    let mut builder =
        RewardBuilder::new(&store, model.as_ref(), checkpoints.clone(), known, Metric::Accuracy, set)
            .unwrap();
    let evaluations = std::cell::Cell::new(0);
    let counted = |params: &[f32]| {
        evaluations.set(evaluations.get() + 1);
        mean(params)
    };
    let built = builder.build(0.72, 0.005, 0.001, counted).unwrap();
    let recipe = &built.recipe;
    assert!((recipe.measured - 0.72).abs() <= 0.001, "{recipe:?}");
    // The first crossing of 0.72 is rounds 2 -> 3 (0.68 -> 0.75).
    assert_eq!((recipe.lower.round, recipe.upper.round), (Some(2), Some(3)));
    assert_eq!(recipe.final_measured, 0.8);
    assert_eq!(recipe.reward_model, Digest::of(&built.file));
    // A second reward reuses what was measured: the final model is not measured again.
    let before = evaluations.get();
    builder.build(0.65, 0.005, 0.001, counted).unwrap();
    let second = evaluations.get() - before;
    assert!(second <= 3, "{second} evaluations");
    // The same promise again costs nothing and gives the same model.
    let before = evaluations.get();
    let again = builder.build(0.72, 0.005, 0.001, counted).unwrap();
    assert_eq!(
        (again.recipe, again.file, evaluations.get()),
        (built.recipe.clone(), built.file.clone(), before)
    );

    let check = |recipe: &crowdtrain_protocol::reward_model::RewardRecipe| {
        check_reward_model(&store, model.as_ref(), &checkpoints, recipe, set, mean)
    };
    let ok = check(recipe).unwrap();
    assert_eq!((ok.reward_model, ok.measured), (recipe.reward_model, recipe.measured));

    let mut wrong = recipe.clone();
    wrong.upper = checkpoints[5];
    assert!(matches!(check(&wrong), Err(CheckError::NotConsecutive)));
    let mut wrong = recipe.clone();
    wrong.final_model = checkpoints[2];
    assert!(matches!(check(&wrong), Err(CheckError::FinalTooEarly)));
    let mut wrong = recipe.clone();
    wrong.model_name = "cnn".into();
    assert!(matches!(check(&wrong), Err(CheckError::WrongModel { .. })));
    let mut wrong = recipe.clone();
    wrong.coefficient = 1.5;
    assert!(matches!(check(&wrong), Err(CheckError::Coefficient(_))));
    let mut wrong = recipe.clone();
    wrong.tolerance = 0.0;
    wrong.target = 0.7201;
    assert!(matches!(check(&wrong), Err(CheckError::OffTarget { .. })));
    // Checked against another run's checkpoints, nothing matches.
    let other = run(&store, model.as_ref(), &[0.1, 0.5, 0.9]);
    let error = check_reward_model(&store, model.as_ref(), &other, recipe, set, mean).unwrap_err();
    assert!(matches!(error, CheckError::NotInRun { which: "lower", .. }), "{error}");
    // A damaged checkpoint file is found.
    std::fs::write(store.path(&recipe.lower.model), b"damaged").unwrap();
    assert!(matches!(check(recipe), Err(CheckError::Checkpoint(_))));
}

#[test]
fn a_run_record_that_disagrees_with_the_measured_final_model_stops_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = Checkpoints::open(dir.path()).unwrap();
    let model = crowdtrain_train::build_model(ModelKind::Mlp);
    let checkpoints = run(&store, model.as_ref(), &[0.1, 0.5, 0.8]);
    let known = vec![None, Some(0.5), Some(0.81)];
    let mut builder =
        RewardBuilder::new(&store, model.as_ref(), checkpoints, known, Metric::Accuracy, Digest::of(b"set"))
            .unwrap();
    let error = builder.build(0.6, 0.005, 0.001, mean).unwrap_err();
    assert!(
        matches!(error, BuildError::FinalMismatch { recorded, measured } if recorded == 0.81 && measured == 0.8)
    );
}

#[test]
fn known_values_taken_as_measured_spare_every_checkpoint_evaluation_and_give_the_same_reward() {
    let dir = tempfile::tempdir().unwrap();
    let store = Checkpoints::open(dir.path()).unwrap();
    let model = crowdtrain_train::build_model(ModelKind::Mlp);
    let checkpoints = run(&store, model.as_ref(), &[0.1, 0.6, 0.7, 0.75, 0.8]);
    let set = Digest::of(b"test set");
    // The coordinator's own records: every checkpoint, measured with `mean`.
    let known: Vec<Option<f64>> = checkpoints
        .iter()
        .map(|checkpoint| {
            let bytes = store.get(&checkpoint.model).unwrap();
            let params = crowdtrain_store::checkpoint::decode(
                &bytes,
                CheckpointKind::Params,
                &model.name(),
                model.layout(),
            )
            .unwrap();
            Some(mean(&params).unwrap())
        })
        .collect();
    let build = |trusted: bool| {
        let builder = accuracy_builder(&store, model.as_ref(), &checkpoints, &known, set);
        let mut builder = if trusted { builder.known_values_are_measured() } else { builder };
        let built = builder.build(0.72, 0.005, 0.001, mean).unwrap();
        (built, builder.checkpoints_measured())
    };
    let (checked, measured_checked) = build(false);
    let (trusted, measured_trusted) = build(true);
    // Without trust the final model is measured again to check its record.
    assert_eq!((measured_checked, measured_trusted), (1, 0));
    assert_eq!(trusted, checked, "the same reward either way");
    // Trusting a wrong record is what the check exists for: the default keeps it.
    let mut wrong = known.clone();
    *wrong.last_mut().unwrap() = Some(0.81);
    let mut builder =
        RewardBuilder::new(&store, model.as_ref(), checkpoints.clone(), wrong, Metric::Accuracy, set)
            .unwrap();
    assert!(matches!(builder.build(0.72, 0.005, 0.001, mean), Err(BuildError::FinalMismatch { .. })));
}

#[test]
fn a_screened_build_checks_like_any_other_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Checkpoints::open(dir.path()).unwrap();
    let model = crowdtrain_train::build_model(ModelKind::Mlp);
    let checkpoints = run(&store, model.as_ref(), &[0.1, 0.6, 0.7, 0.75, 0.8]);
    let set = Digest::of(b"test set");
    let known: Vec<Option<f64>> = vec![None, Some(0.6), Some(0.7), Some(0.75), Some(0.8)];
    // The screen: the mean of every tenth parameter, a little off.
    let screen = |params: &[f32]| {
        let part: Vec<f32> = params.iter().step_by(10).copied().collect();
        mean(&part).map(|value| value + 0.002)
    };
    let build = |target: f64| {
        let mut builder = accuracy_builder(&store, model.as_ref(), &checkpoints, &known, set);
        builder.build_screened(target, 0.005, 0.001, screen, mean).unwrap()
    };
    for target in [0.3, 0.65, 0.8] {
        let built = build(target);
        assert!((built.recipe.measured - target).abs() <= 0.001, "{:?}", built.recipe);
        assert!(built.recipe.measured <= 0.8);
        // Anyone rebuilds and checks it on the full measure alone.
        let check =
            check_reward_model(&store, model.as_ref(), &checkpoints, &built.recipe, set, mean).unwrap();
        assert_eq!(check.reward_model, Digest::of(&built.file));
        assert_eq!(build(target).file, built.file, "the same inputs give the same model");
    }
}
