//! `crowdtrain bench ...`: micro-benchmarks whose figures go into
//! `docs/BENCHMARKS.md`, always beside a baseline measured in the same run.

use std::time::Instant;

use clap::{Args, Subcommand};
use crowdtrain_data::rng::{RngKey, keyed_rng, standard_normal, uniform_below};
use crowdtrain_data::{Batch, round_shard};
use crowdtrain_train::kernels::active_path;
use crowdtrain_train::{
    AdamW, InnerOptimizer, ModelKind, Schedule, StepBatch, TrainState, Trainer, build_model,
};
use serde::Serialize;

use crate::model_args::{GptArgs, ModelName, gpt_recipe};
use crate::output;

/// Measure how fast the training core runs.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Training steps per second (forward, backward, AdamW) on fixed
    /// synthetic batches, as bench/pytorch_train_step.py measures PyTorch.
    TrainStep(TrainStepArgs),
    /// What proof-of-training costs beside the training it proves: the
    /// worker's commitment (hashing its segment-boundary states) and the
    /// auditor's replay of one segment, as fractions of a round's training;
    /// and the same audit replayed from the round's start (`audit.replay =
    /// "from-start"`).
    Audit(AuditArgs),
    /// What the defence costs beside a round's training: the checks, the
    /// robust aggregation and the held-out scoring of every update, as a
    /// fraction of the compute of the workers' inner steps.
    Defense(DefenseArgs),
    /// A demo run under attack beside the same run unattacked: idle and
    /// slowloris connections, stalled unsigned uploads, registrations
    /// without admission; the coordinator's memory and the honest rounds
    /// per second.
    Hostile(super::hostile::HostileArgs),
    /// What watching a run costs the coordinator: the same demo with and
    /// without the dashboard open in headless Chromium, alternately; the
    /// coordinator's CPU time per round.
    Dashboard(super::watch_bench::DashboardBenchArgs),
}

#[derive(Debug, Args)]
struct DefenseArgs {
    /// Workers in the round.
    #[arg(long, default_value_t = 16)]
    workers: usize,

    /// Inner steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,

    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch: u32,

    /// The aggregation rule (default: the coordinator's).
    #[arg(long, default_value_t = crowdtrain_defense::Aggregator::default())]
    aggregator: crowdtrain_defense::Aggregator,

    /// Rounds timed; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,

    /// Untimed rounds of training first (at least 1, so that the
    /// aggregator has its momenta and centre): more measures the scores
    /// late in training, where honest improvements are small.
    #[arg(long, default_value_t = 1)]
    warmup_rounds: u64,

    /// Examples in each round's evaluation batch.
    #[arg(long, default_value_t = crowdtrain_defense::QualityConfig::default().eval_examples)]
    eval_examples: usize,

    #[command(flatten)]
    runtime: crate::output::RuntimeArgs,
}

/// The two scoring rules side by side in the timed rounds: cost, agreement
/// on the honest updates, and where two attacks stand.
#[derive(Debug, Serialize)]
struct ScoreComparison {
    /// The linearised score (one forward and backward pass, a dot product
    /// per update) on the same batch, median.
    linear_scoring_seconds: f64,
    /// `scoring_seconds / linear_scoring_seconds`.
    exact_over_linear: f64,
    /// Pearson correlation of the two rules' scores of the honest updates,
    /// per timed round.
    honest_correlation: Vec<f64>,
    /// Where a sign-flipped honest mean and a noise update at the honest
    /// norm stand, in the round's robust spreads below its median
    /// (`quality::deviations` over the honest updates and both attacks),
    /// per timed round: exact, then linear. Honest updates sit within
    /// about one spread either side.
    sign_flip_exact: Vec<f64>,
    sign_flip_linear: Vec<f64>,
    noise_exact: Vec<f64>,
    noise_linear: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct DefenseReport {
    dataset: crowdtrain_data::DatasetInfo,
    workers: usize,
    inner_steps: u64,
    batch: u32,
    aggregator: String,
    eval_examples: usize,
    threads: usize,
    /// Every worker's inner steps for one round, one after another, median.
    training_seconds: f64,
    /// Decoding the round's updates from the wire, median.
    decode_seconds: f64,
    /// The checks on every update, median.
    checks_seconds: f64,
    /// The robust aggregation, median.
    aggregation_seconds: f64,
    /// Scoring every update on the held-out batch, median.
    scoring_seconds: f64,
    /// `(decode + checks + aggregation + scoring) / training`.
    defense_fraction: f64,
    /// The same with the linearised score.
    defense_fraction_linear: f64,
    score_rules: ScoreComparison,
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// Inner steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,

    /// Segments a round is cut into for commitments and audits.
    #[arg(long, default_value_t = 4)]
    segments: u32,

    /// Audit probability.
    #[arg(long, default_value_t = 0.1)]
    probability: f64,

    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch: u32,

    /// Rounds timed; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,

    #[command(flatten)]
    runtime: crate::output::RuntimeArgs,
}

#[derive(Debug, Serialize)]
struct AuditReport {
    dataset: crowdtrain_data::DatasetInfo,
    inner_steps: u64,
    segments: u32,
    probability: f64,
    threads: usize,
    /// One round's training (H inner steps), median.
    training_seconds: f64,
    /// The worker's commitment: copying and hashing the segment-boundary
    /// states and building the Merkle root, median.
    commitment_seconds: f64,
    /// Judging one audit answer: parsing and hashing the start state,
    /// replaying the segment, hashing the end (and, for the last segment,
    /// re-encoding the update); the mean over the segments, median over
    /// repeats.
    replay_seconds: f64,
    /// Bytes of one audit answer (the start state and two proofs).
    answer_bytes: usize,
    /// The same audit under `audit.replay = "from-start"`: building the
    /// round's start (the base model, a fresh optimizer), replaying every
    /// segment up to the drawn one's end and hashing each boundary against
    /// the commitment's leaves (and for the last segment re-encoding the
    /// update); the mean over the segments, median over repeats. No answer.
    from_start_replay_seconds: f64,
    /// `probability * from_start_replay_seconds / training_seconds`.
    from_start_audit_fraction: f64,
    /// `from_start_replay_seconds / replay_seconds`, timed in the same run.
    from_start_over_segment: f64,
    /// `commitment_seconds / training_seconds`.
    commitment_fraction: f64,
    /// Expected audit compute per submission relative to its training:
    /// `probability * replay_seconds / training_seconds`.
    audit_fraction: f64,
    /// Both together.
    total_fraction: f64,
}

#[derive(Debug, Args)]
struct TrainStepArgs {
    /// Model architecture.
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelName,

    /// Examples per step: images (default 64), or sequences of --context
    /// tokens for the GPT (default 12, nanoGPT's).
    #[arg(long)]
    batch: Option<usize>,

    #[command(flatten)]
    gpt: GptArgs,

    /// The GPT's vocabulary (random tokens; 65 is Shakespeare's characters).
    #[arg(long, default_value_t = 65)]
    vocab: usize,

    /// Worker threads (default: RAYON_NUM_THREADS, else one per core).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,

    /// Timed steps per repetition.
    #[arg(long, default_value_t = 2000)]
    steps: u64,

    /// Untimed steps first, to warm caches and the allocator.
    #[arg(long, default_value_t = 200)]
    warmup: u64,

    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct TrainStepReport {
    model: String,
    batch: usize,
    threads: usize,
    kernels: &'static str,
    steps: u64,
    repeats: usize,
    /// Median over the repetitions.
    samples_per_sec: f64,
    samples_per_sec_min: f64,
    samples_per_sec_max: f64,
    ms_per_step: f64,
    /// For the GPT: sequences per second times the context.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_sec: Option<f64>,
}

/// Distinct synthetic batches cycled through, as in the PyTorch script.
const BATCHES: u64 = 16;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::TrainStep(args) => output::on_thread_pool(args.threads, || train_step(args)),
        BenchCommand::Audit(args) => args.runtime.clone().on_thread_pool(|| audit(args)),
        BenchCommand::Defense(args) => args.runtime.clone().on_thread_pool(|| defense(args)),
        BenchCommand::Hostile(args) => super::hostile::run(args),
        BenchCommand::Dashboard(args) => super::watch_bench::run(args),
    }
}

fn defense(args: DefenseArgs) -> anyhow::Result<()> {
    use crowdtrain_defense::{CheckConfig, ModelDefense, QualityConfig, ScoreMethod, Submission, quality};
    use crowdtrain_train::diloco::{inner_round, outer_step, round_key, shards};
    use crowdtrain_train::{Encode, TrainingRecipe, codec};

    anyhow::ensure!(
        args.workers >= 2 && args.repeats >= 1 && args.batch >= 1 && args.warmup_rounds >= 1,
        "workers >= 2; repeats, batch, warmup rounds >= 1"
    );
    let dataset = args.runtime.load_data()?;
    let recipe = TrainingRecipe {
        inner_steps: args.inner_steps,
        batch_size: args.batch,
        ..TrainingRecipe::with_seed(0)
    };
    let model = build_model(recipe.model);
    let quality_config = QualityConfig { eval_examples: args.eval_examples, ..QualityConfig::default() };
    quality_config.validate().map_err(|(field, reason)| anyhow::anyhow!("{field}: {reason}"))?;
    let shards = shards(&recipe, &dataset.train.labels, args.workers)?;
    let (_, validation) =
        crowdtrain_data::split_validation(dataset.train.len(), recipe.validation_fraction, recipe.seed);
    let mut global = crowdtrain_train::OuterState::new(model.name(), model.layout().initialize(0));
    let mut defense = ModelDefense::new(CheckConfig::default(), args.aggregator);
    let outer = crowdtrain_train::Nesterov::default();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (mut training, mut decoding, mut checking, mut aggregating, mut scoring, mut linear_scoring) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut comparison = ScoreComparison {
        linear_scoring_seconds: 0.0,
        exact_over_linear: 0.0,
        honest_correlation: Vec::new(),
        sign_flip_exact: Vec::new(),
        sign_flip_linear: Vec::new(),
        noise_exact: Vec::new(),
        noise_linear: Vec::new(),
    };
    // Untimed rounds first, so the aggregator has a centre and momenta as
    // in every round but the first (and, with more, late in training).
    let rounds = args.warmup_rounds + args.repeats as u64;
    let progress = output::progress_bar(rounds, "rounds");
    for round in 0..rounds {
        let started = Instant::now();
        let payloads = (0..args.workers)
            .map(|slot| -> anyhow::Result<Vec<u8>> {
                let key = round_key(&recipe, round, slot as u32);
                let shard = &shards[round_shard(recipe.seed, round, slot as u32, args.workers as u32)];
                let result = inner_round(model.as_ref(), &recipe, &global.params, &dataset, shard, key, 1)?;
                Ok(recipe.codec.encode(&result.pseudo_gradient)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let trained = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let parameters = global.params.len();
        let updates = payloads
            .iter()
            .map(|bytes| codec::decode(bytes, parameters).map(|(_, values)| values))
            .collect::<Result<Vec<_>, _>>()?;
        let decoded = started.elapsed().as_secs_f64();
        let submissions: Vec<Submission<'_>> = updates
            .iter()
            .zip(&payloads)
            .enumerate()
            .map(|(worker, (values, bytes))| Submission {
                worker: worker as u64,
                values,
                digest: crowdtrain_protocol::Digest::of(bytes).0,
                proven: false,
            })
            .collect();
        let started = Instant::now();
        let verdicts =
            crowdtrain_defense::checks::screen(&submissions, parameters, &|_| false, &CheckConfig::default());
        let checked = started.elapsed().as_secs_f64();
        anyhow::ensure!(verdicts.iter().all(Option::is_none), "honest updates pass the checks: {verdicts:?}");
        let started = Instant::now();
        let decision = defense.decide(&submissions, parameters);
        // `decide` runs the checks again; only the aggregation is new.
        let aggregated = (started.elapsed().as_secs_f64() - checked).max(0.0);
        let timed = round >= args.warmup_rounds;
        let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        let eval = quality::round_eval_indices(&validation, quality_config.eval_examples, recipe.seed, round);
        let step = quality::score_step(outer.lr, views.len());
        if timed {
            let started = Instant::now();
            let batch = (&dataset.train, eval.as_slice());
            let exact =
                quality::scores(model.as_ref(), &global.params, &views, step, batch, ScoreMethod::Exact)?;
            scoring.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            let linear =
                quality::scores(model.as_ref(), &global.params, &views, step, batch, ScoreMethod::Linear)?;
            linear_scoring.push(started.elapsed().as_secs_f64());
            comparison.honest_correlation.push(pearson(&exact, &linear));
            // The two attacks, scored beside the honest updates (untimed).
            let mean = crowdtrain_train::diloco::mean_in_order(&views);
            let honest_norm = views.iter().map(|view| crowdtrain_defense::linalg::norm(view)).sum::<f64>()
                / views.len() as f64;
            let flipped = crowdtrain_defense::attack::sign_flip(&mean);
            let noise =
                crowdtrain_defense::attack::noise(RngKey::new(0, round, 999, 0), mean.len(), honest_norm);
            let mut all = views.clone();
            all.extend([flipped.as_slice(), noise.as_slice()]);
            let step = quality::score_step(outer.lr, all.len());
            let examples = eval.len();
            // Where the two attacks stand by `method`, in the round's spreads.
            let stand = |method: ScoreMethod| -> anyhow::Result<(f64, f64)> {
                let scores = quality::scores(model.as_ref(), &global.params, &all, step, batch, method)?;
                let round = quality::deviations(&scores, examples, &quality_config)
                    .ok_or_else(|| anyhow::anyhow!("the round has no power"))?;
                let n = round.deviations.len();
                Ok((round.deviations[n - 2], round.deviations[n - 1]))
            };
            let (flip, noisy) = stand(ScoreMethod::Exact)?;
            comparison.sign_flip_exact.push(flip);
            comparison.noise_exact.push(noisy);
            let (flip, noisy) = stand(ScoreMethod::Linear)?;
            comparison.sign_flip_linear.push(flip);
            comparison.noise_linear.push(noisy);
        }
        let delta = decision.aggregate.clone().expect("honest updates aggregate");
        defense.commit(decision);
        outer_step(outer, &mut global, &delta)?;
        if timed {
            training.push(trained);
            decoding.push(decoded);
            checking.push(checked);
            aggregating.push(aggregated);
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let (training, decode, checks, aggregation, scoring, linear_scoring) = (
        median(&mut training),
        median(&mut decoding),
        median(&mut checking),
        median(&mut aggregating),
        median(&mut scoring),
        median(&mut linear_scoring),
    );
    comparison.linear_scoring_seconds = linear_scoring;
    comparison.exact_over_linear = scoring / linear_scoring;
    let report = DefenseReport {
        dataset: dataset.info.clone(),
        workers: args.workers,
        inner_steps: args.inner_steps,
        batch: args.batch,
        aggregator: args.aggregator.to_string(),
        eval_examples: quality_config.eval_examples,
        threads: rayon::current_num_threads(),
        training_seconds: training,
        decode_seconds: decode,
        checks_seconds: checks,
        aggregation_seconds: aggregation,
        scoring_seconds: scoring,
        defense_fraction: (decode + checks + aggregation + scoring) / training,
        defense_fraction_linear: (decode + checks + aggregation + linear_scoring) / training,
        score_rules: comparison,
    };
    if args.runtime.json {
        return output::print_json(&report);
    }
    println!(
        "{} workers x {} steps: training {:.0} ms; decode {:.1} ms, checks {:.1} ms, aggregation ({}) {:.1} ms, \
         scoring {:.1} ms: the defence is {:.2}% of the round's training ({} threads)",
        report.workers,
        report.inner_steps,
        1e3 * report.training_seconds,
        1e3 * report.decode_seconds,
        1e3 * report.checks_seconds,
        report.aggregator,
        1e3 * report.aggregation_seconds,
        1e3 * report.scoring_seconds,
        100.0 * report.defense_fraction,
        report.threads,
    );
    let rules = &report.score_rules;
    let list =
        |values: &[f64]| values.iter().map(|value| format!("{value:.2}")).collect::<Vec<_>>().join(" ");
    println!(
        "linearised scoring {:.1} ms ({:.1}x cheaper; the defence {:.2}% of training); honest scores' correlation \
         with the exact rule {}; spreads from the median, exact / linear: sign-flip {} / {}, noise {} / {}",
        1e3 * rules.linear_scoring_seconds,
        rules.exact_over_linear,
        100.0 * report.defense_fraction_linear,
        list(&rules.honest_correlation),
        list(&rules.sign_flip_exact),
        list(&rules.sign_flip_linear),
        list(&rules.noise_exact),
        list(&rules.noise_linear),
    );
    Ok(())
}

/// The Pearson correlation of `a` and `b` (NaN if either is constant).
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (mean_a, mean_b) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let covariance: f64 = a.iter().zip(b).map(|(x, y)| (x - mean_a) * (y - mean_b)).sum();
    let spread = |values: &[f64], mean: f64| values.iter().map(|x| (x - mean).powi(2)).sum::<f64>().sqrt();
    covariance / (spread(a, mean_a) * spread(b, mean_b))
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<()> {
    let gpt = match args.model {
        ModelName::Gpt => Some(args.gpt.config(args.vocab)?),
        _ => None,
    };
    let batch_size = args.batch.unwrap_or(if gpt.is_some() { 12 } else { 64 });
    anyhow::ensure!(
        batch_size >= 1 && args.steps >= 1 && args.repeats >= 1,
        "batch, steps and repeats must be positive"
    );
    let threads = rayon::current_num_threads();
    let (model, batches, optimizer): (Box<dyn crowdtrain_train::Model>, Vec<StepBatch>, InnerOptimizer) =
        match (args.model.image_model(), gpt) {
            (Some(kind), _) => (build_model(kind), image_batches(batch_size), AdamW::default().into()),
            (None, Some(config)) => {
                // nanoGPT's optimizer and clipping at a constant rate: the
                // schedule costs nothing, and PyTorch's timing keeps its
                // rate constant too.
                let recipe = InnerOptimizer { schedule: Schedule::Constant, ..gpt_recipe(1e-3, 1, 0) };
                (build_model(ModelKind::Gpt(config)), token_batches(config, batch_size), recipe)
            }
            (None, None) => unreachable!("a GPT has a configuration"),
        };
    let mut state = TrainState::new(model.name(), model.layout().initialize(0));
    let mut trainer = Trainer::new(model.as_ref(), optimizer, batch_size);
    let mut step = |state: &mut TrainState| -> anyhow::Result<()> {
        let batch = &batches[(state.step % BATCHES) as usize];
        trainer.step_on(state, batch.examples())?;
        Ok(())
    };
    for _ in 0..args.warmup {
        step(&mut state)?;
    }
    let progress = output::progress_bar(args.repeats as u64, "repeats");
    let mut rates = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let started = Instant::now();
        for _ in 0..args.steps {
            step(&mut state)?;
        }
        rates.push((args.steps as f64 * batch_size as f64) / started.elapsed().as_secs_f64());
        progress.inc(1);
    }
    progress.finish_and_clear();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let report = TrainStepReport {
        model: model.name(),
        batch: batch_size,
        threads,
        kernels: active_path().name(),
        steps: args.steps,
        repeats: args.repeats,
        samples_per_sec: median,
        samples_per_sec_min: rates[0],
        samples_per_sec_max: rates[rates.len() - 1],
        ms_per_step: 1000.0 * batch_size as f64 / median,
        tokens_per_sec: gpt.map(|config| median * config.context as f64),
    };
    if args.json {
        return output::print_json(&report);
    }
    let tokens = report.tokens_per_sec.map(|rate| format!(" ({rate:.0} tokens/s)")).unwrap_or_default();
    println!(
        "{}: {:.0} samples/s{tokens} (median of {}; min {:.0}, max {:.0}), {:.3} ms/step, batch {}, {} threads, {} kernels",
        report.model,
        report.samples_per_sec,
        report.repeats,
        report.samples_per_sec_min,
        report.samples_per_sec_max,
        report.ms_per_step,
        report.batch,
        report.threads,
        report.kernels
    );
    Ok(())
}

/// Fixed random images with random labels.
fn image_batches(batch_size: usize) -> Vec<StepBatch> {
    let features = 784;
    (0..BATCHES)
        .map(|index| {
            let mut rng = keyed_rng("bench", RngKey::new(0, 0, 0, index));
            StepBatch::Images(Batch {
                inputs: (0..batch_size * features).map(|_| standard_normal(&mut rng) as f32).collect(),
                features,
                targets: (0..batch_size).map(|_| uniform_below(&mut rng, 10) as u32).collect(),
            })
        })
        .collect()
}

/// Fixed random token sequences, each target the next input.
fn token_batches(config: crowdtrain_train::GptConfig, sequences: usize) -> Vec<StepBatch> {
    (0..BATCHES)
        .map(|index| {
            let mut rng = keyed_rng("bench-tokens", RngKey::new(0, 0, 0, index));
            let mut batch = crowdtrain_data::text::TokenBatch {
                sequences,
                context: config.context,
                ..Default::default()
            };
            for _ in 0..sequences {
                let row: Vec<u32> = (0..=config.context)
                    .map(|_| uniform_below(&mut rng, config.vocab as u64) as u32)
                    .collect();
                batch.inputs.extend_from_slice(&row[..config.context]);
                batch.targets.extend_from_slice(&row[1..]);
            }
            StepBatch::Tokens(batch)
        })
        .collect()
}

fn audit(args: AuditArgs) -> anyhow::Result<()> {
    use crowdtrain_protocol::{Digest, merkle};
    use crowdtrain_train::diloco::{inner_round, replay, round_key, segment_range};
    use crowdtrain_train::{Encode, TrainingRecipe};

    anyhow::ensure!(
        args.segments >= 1 && u64::from(args.segments) <= args.inner_steps,
        "need 1 <= segments <= steps"
    );
    anyhow::ensure!(args.repeats >= 1 && args.batch >= 1, "repeats and batch must be positive");
    let dataset = args.runtime.load_data()?;
    let recipe = TrainingRecipe {
        inner_steps: args.inner_steps,
        batch_size: args.batch,
        ..TrainingRecipe::with_seed(7)
    };
    let model = build_model(recipe.model);
    let shard: Vec<u32> = (0..dataset.train.len() as u32).collect();
    let params = model.layout().initialize(0);
    let (mut training, mut commitment, mut replaying) = (Vec::new(), Vec::new(), Vec::new());
    let mut from_start = Vec::new();
    let mut answer_bytes = 0;
    let progress = output::progress_bar(args.repeats as u64, "repeats");
    for repeat in 0..args.repeats as u64 {
        let key = round_key(&recipe, repeat, 0);
        let started = Instant::now();
        let plain = inner_round(model.as_ref(), &recipe, &params, &dataset, &shard, key, 1)?;
        training.push(started.elapsed().as_secs_f64());
        std::hint::black_box(&plain);
        let round = inner_round(model.as_ref(), &recipe, &params, &dataset, &shard, key, args.segments)?;
        let started = Instant::now();
        let copies: Vec<TrainState> = round.boundaries.to_vec();
        let hashes: Vec<Digest> = copies.iter().map(|state| Digest(state.hash().0)).collect();
        let root = merkle::root(&hashes);
        commitment.push(started.elapsed().as_secs_f64());
        let mut total = 0.0;
        for segment in 1..=args.segments {
            let start_bytes = round.boundaries[segment as usize - 1].to_bytes();
            answer_bytes = start_bytes.len();
            let start_proof = merkle::prove(&hashes, segment as usize - 1);
            let started = Instant::now();
            let start = TrainState::from_bytes(&start_bytes, &model.name(), params.len())?;
            anyhow::ensure!(merkle::verify(&root, &Digest(start.hash().0), &start_proof), "proof");
            let (first, last) = segment_range(args.inner_steps, args.segments, segment);
            let end = replay(model.as_ref(), &recipe, &dataset, &shard, key, start, last - first)?;
            anyhow::ensure!(
                Digest(end.hash().0) == hashes[segment as usize],
                "the replay matches the commitment"
            );
            if segment == args.segments {
                let update: Vec<f32> = params.iter().zip(&end.params).map(|(g, l)| g - l).collect();
                std::hint::black_box(recipe.codec.encode(&update)?);
            }
            total += started.elapsed().as_secs_f64();
        }
        replaying.push(total / f64::from(args.segments));
        let mut total = 0.0;
        for segment in 1..=args.segments {
            let started = Instant::now();
            let mut state = TrainState::new(model.name(), params.clone());
            anyhow::ensure!(Digest(state.hash().0) == hashes[0], "the round starts from the base model");
            for boundary in 1..=segment {
                let (first, last) = segment_range(args.inner_steps, args.segments, boundary);
                state = replay(model.as_ref(), &recipe, &dataset, &shard, key, state, last - first)?;
                anyhow::ensure!(
                    Digest(state.hash().0) == hashes[boundary as usize],
                    "every boundary matches"
                );
            }
            if segment == args.segments {
                let update: Vec<f32> = params.iter().zip(&state.params).map(|(g, l)| g - l).collect();
                std::hint::black_box(recipe.codec.encode(&update)?);
            }
            total += started.elapsed().as_secs_f64();
        }
        from_start.push(total / f64::from(args.segments));
        progress.inc(1);
    }
    progress.finish_and_clear();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (training, commitment, replay) =
        (median(&mut training), median(&mut commitment), median(&mut replaying));
    let from_start = median(&mut from_start);
    let report = AuditReport {
        dataset: dataset.info.clone(),
        inner_steps: args.inner_steps,
        segments: args.segments,
        probability: args.probability,
        threads: rayon::current_num_threads(),
        training_seconds: training,
        commitment_seconds: commitment,
        replay_seconds: replay,
        answer_bytes: answer_bytes + 2 * 32 * (args.segments as usize + 1),
        from_start_replay_seconds: from_start,
        from_start_audit_fraction: args.probability * from_start / training,
        from_start_over_segment: from_start / replay,
        commitment_fraction: commitment / training,
        audit_fraction: args.probability * replay / training,
        total_fraction: (commitment + args.probability * replay) / training,
    };
    if args.runtime.json {
        return output::print_json(&report);
    }
    println!(
        "H = {}, {} segments, p = {}: training {:.1} ms per round; commitment {:.2} ms ({:.2}%); one audit replay \
         {:.1} ms, expected {:.2}% of training; total {:.2}%; replayed from the round's start {:.1} ms ({:.2}x), \
         expected {:.2}% of training, no answer",
        report.inner_steps,
        report.segments,
        report.probability,
        1e3 * report.training_seconds,
        1e3 * report.commitment_seconds,
        100.0 * report.commitment_fraction,
        1e3 * report.replay_seconds,
        100.0 * report.audit_fraction,
        100.0 * report.total_fraction,
        1e3 * report.from_start_replay_seconds,
        report.from_start_over_segment,
        100.0 * report.from_start_audit_fraction
    );
    Ok(())
}
