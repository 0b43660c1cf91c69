//! Measures the noise of held-out scoring (docs/PAY.md): runs all-honest
//! DiLoCo rounds and writes, for every round, the per-example held-out
//! losses of the global model and of each update applied alone at its
//! share of the outer step (plus a noise update at the honest norm and the
//! negated honest mean), and linearised scores per 100-example chunk, so
//! any evaluation batch size can be resampled offline from one run.
//!
//! `cargo run --release -p crowdtrain-defense --example noise_probe -- WORKERS ROUNDS SEED VALIDATION_FRACTION OUT [subset]`
//!
//! Output, little-endian, per round: `round, updates, validation examples,
//! chunks, workers` (u32), the base losses (f32 per example), each update's
//! losses, then each update's linearised score per chunk.
use std::io::Write;

use crowdtrain_data::{Batch, DataSource, round_shard, split_validation};
use crowdtrain_defense::{Aggregator, CheckConfig, ModelDefense, attack, linalg};
use crowdtrain_train::codec::{self, Encode};
use crowdtrain_train::diloco::{
    Aggregate, WorkerUpdate, inner_round, mean_in_order, outer_step, round_key, shards,
};
use crowdtrain_train::{
    Nesterov, OuterState, TrainingRecipe, build_model, evaluate, example_losses, loss_and_grad,
};
use rayon::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let workers: usize = args[1].parse().unwrap();
    let rounds: u64 = args[2].parse().unwrap();
    let seed: u64 = args[3].parse().unwrap();
    let fraction: f64 = args[4].parse().unwrap();
    let out = &args[5];
    let data = if args.get(6).map(String::as_str) == Some("subset") {
        DataSource::Bundled
    } else {
        DataSource::resolve(None)
    };
    let dataset = data.load().unwrap();
    let recipe = TrainingRecipe { validation_fraction: fraction, ..TrainingRecipe::with_seed(seed) };
    let model = build_model(recipe.model);
    let outer = Nesterov::default();
    let (_, validation) = split_validation(dataset.train.len(), fraction, seed);
    let shards = shards(&recipe, &dataset.train.labels, workers).unwrap();
    let mut global = OuterState::new(model.name(), model.layout().initialize(seed));
    let mut defense = ModelDefense::new(CheckConfig::default(), Aggregator::default());
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let p = model.layout().len();
    let chunk = 100usize;
    for round in 0..rounds {
        let results: Vec<(Vec<f32>, Vec<u8>)> = (0..workers)
            .into_par_iter()
            .map(|slot| {
                let key = round_key(&recipe, round, slot as u32);
                let shard = &shards[round_shard(seed, round, slot as u32, workers as u32)];
                let r =
                    inner_round(model.as_ref(), &recipe, &global.params, &dataset, shard, key, 1).unwrap();
                let enc = recipe.codec.encode(&r.pseudo_gradient).unwrap();
                let (_, dec) = codec::decode(&enc, p).unwrap();
                (dec, enc)
            })
            .collect();
        let views: Vec<&[f32]> = results.iter().map(|(v, _)| v.as_slice()).collect();
        let mean = mean_in_order(&views);
        let norm = views.iter().map(|v| linalg::norm(v)).sum::<f64>() / workers as f64;
        let noise = attack::noise(round_key(&recipe, round, 999), p, norm);
        let flip = attack::sign_flip(&mean);
        let mut all: Vec<&[f32]> = views.clone();
        all.push(&noise);
        all.push(&flip);
        let step = outer.lr / workers as f32;
        let base = example_losses(model.as_ref(), &global.params, &dataset.train, &validation).unwrap();
        let per: Vec<Vec<f32>> = all
            .par_iter()
            .map(|u| {
                let local: Vec<f32> = global.params.iter().zip(*u).map(|(g, u)| g - step * u).collect();
                example_losses(model.as_ref(), &local, &dataset.train, &validation).unwrap()
            })
            .collect();
        let chunks: Vec<&[u32]> = validation.chunks(chunk).collect();
        let lin: Vec<Vec<f32>> = chunks
            .par_iter()
            .map(|indices| {
                let batch = Batch::of(&dataset.train, indices);
                let mut grad = vec![0.0f32; p];
                loss_and_grad(model.as_ref(), &global.params, &batch, &mut grad).unwrap();
                all.iter().map(|u| (step as f64 * linalg::dot(&grad, u)) as f32).collect::<Vec<f32>>()
            })
            .collect();
        let n = all.len();
        let header = [round as u32, n as u32, validation.len() as u32, chunks.len() as u32, workers as u32];
        for h in header {
            file.write_all(&h.to_le_bytes()).unwrap();
        }
        for v in &base {
            file.write_all(&v.to_le_bytes()).unwrap();
        }
        for row in &per {
            for v in row {
                file.write_all(&v.to_le_bytes()).unwrap();
            }
        }
        for i in 0..n {
            for c in &lin {
                file.write_all(&c[i].to_le_bytes()).unwrap();
            }
        }
        let updates: Vec<WorkerUpdate<'_>> = results
            .iter()
            .enumerate()
            .map(|(slot, (values, encoded))| WorkerUpdate { worker: slot as u64, values, encoded })
            .collect();
        if let Some(delta) = defense.aggregate(round, &updates) {
            outer_step(outer, &mut global, &delta).unwrap();
        }
        let acc = evaluate(model.as_ref(), &global.params, &dataset.test).unwrap().accuracy;
        eprintln!(
            "round {round} acc {acc:.4} base {:.4}",
            base.iter().map(|&x| x as f64).sum::<f64>() / base.len() as f64
        );
    }
}
