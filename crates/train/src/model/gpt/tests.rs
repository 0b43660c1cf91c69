//! The GPT against an independent f64 implementation of the same network
//! (plain loops, exact `tanh` and `exp`), and its gradients against
//! central differences of that implementation.

use super::*;
use crate::model::Examples;
use crowdtrain_data::rng::{RngKey, keyed_rng, uniform_below};

/// A context over two causal blocks of attention, so that the blocks are checked too.
const TINY: GptConfig = GptConfig { layers: 2, heads: 2, width: 8, context: 21, vocab: 7 };

fn tokens(count: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = keyed_rng("test-tokens", RngKey::new(seed, 0, 0, 0));
    (0..count).map(|_| uniform_below(&mut rng, vocab as u64) as u32).collect()
}

/// Parameters with every tensor perturbed away from its initial value, so
/// that LayerNorm weights, biases and all are exercised.
fn perturbed(model: &Gpt, seed: u64) -> Vec<f32> {
    let mut params = model.layout().initialize(seed);
    let mut rng = keyed_rng("test-perturb", RngKey::new(seed, 0, 0, 0));
    for value in &mut params {
        *value += (crowdtrain_data::rng::standard_normal(&mut rng) * 0.3) as f32;
    }
    params
}

/// The network written out in f64: mean cross-entropy over all positions.
fn reference_loss(
    config: &GptConfig,
    model: &Gpt,
    params: &[f64],
    inputs: &[u32],
    targets: &[u32],
    sequences: usize,
) -> f64 {
    let c = config.width;
    let length = inputs.len() / sequences;
    let (heads, hs) = (config.heads, config.head_width());
    let r = &model.ranges;
    let p = |range: &Range<usize>| &params[range.clone()];
    let layer_norm = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
        let mean = x.iter().sum::<f64>() / c as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        x.iter().zip(w).zip(b).map(|((v, w), b)| (v - mean) * rstd * w + b).collect()
    };
    let linear = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
        let out = b.len();
        (0..out)
            .map(|j| b[j] + x.iter().enumerate().map(|(i, xi)| xi * w[i * out + j]).sum::<f64>())
            .collect()
    };
    let gelu =
        |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
    let mut total = 0.0;
    for s in 0..sequences {
        let seq = &inputs[s * length..(s + 1) * length];
        let mut x: Vec<Vec<f64>> = seq
            .iter()
            .enumerate()
            .map(|(t, &token)| {
                (0..c)
                    .map(|j| {
                        p(&r.token_embedding)[token as usize * c + j] + p(&r.position_embedding)[t * c + j]
                    })
                    .collect()
            })
            .collect();
        for block in &r.blocks {
            let h: Vec<Vec<f64>> =
                x.iter().map(|row| layer_norm(row, p(&block.ln1_weight), p(&block.ln1_bias))).collect();
            let qkv: Vec<Vec<f64>> =
                h.iter().map(|row| linear(row, p(&block.attn_weight), p(&block.attn_bias))).collect();
            let mut att = vec![vec![0.0; c]; length];
            for head in 0..heads {
                for i in 0..length {
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hs).map(|d| qkv[i][head * hs + d] * qkv[j][c + head * hs + d]).sum::<f64>()
                                / (hs as f64).sqrt()
                        })
                        .collect();
                    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for d in 0..hs {
                        att[i][head * hs + d] =
                            (0..=i).map(|j| exps[j] / sum * qkv[j][2 * c + head * hs + d]).sum::<f64>();
                    }
                }
            }
            for (row, a) in x.iter_mut().zip(&att) {
                let out = linear(a, p(&block.attn_proj_weight), p(&block.attn_proj_bias));
                row.iter_mut().zip(out).for_each(|(v, o)| *v += o);
            }
            for row in x.iter_mut() {
                let h = layer_norm(row, p(&block.ln2_weight), p(&block.ln2_bias));
                let hidden: Vec<f64> =
                    linear(&h, p(&block.fc_weight), p(&block.fc_bias)).into_iter().map(gelu).collect();
                let out = linear(&hidden, p(&block.fc_proj_weight), p(&block.fc_proj_bias));
                row.iter_mut().zip(out).for_each(|(v, o)| *v += o);
            }
        }
        for (t, row) in x.iter().enumerate() {
            let h = layer_norm(row, p(&r.lnf_weight), p(&r.lnf_bias));
            let logits: Vec<f64> = (0..config.vocab)
                .map(|v| (0..c).map(|j| h[j] * p(&r.token_embedding)[v * c + j]).sum::<f64>())
                .collect();
            let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = top + logits.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
            total += lse - logits[targets[s * length + t] as usize];
        }
    }
    total / inputs.len() as f64
}

#[test]
fn the_layout_names_every_tensor_and_counts_parameters() {
    let model = Gpt::new(TINY);
    assert_eq!(model.layout().len(), TINY.parameters());
    assert_eq!(model.name(), "gpt-l2-h2-c8-t21-v7");
    let names: Vec<String> = model.layout().iter().map(|(spec, _)| spec.name.clone()).collect();
    assert_eq!(names[0], "wte.weight");
    assert_eq!(names[2], "h.0.ln_1.weight");
    assert_eq!(names.last().unwrap(), "ln_f.bias");
    assert_eq!(names.len(), 2 + 12 * TINY.layers + 2);
    // nanoGPT's baby model on a character vocabulary: about 0.8M.
    let baby = GptConfig::baby(65);
    assert!((790_000..830_000).contains(&baby.parameters()), "{}", baby.parameters());
}

#[test]
fn initialisation_follows_gpt2() {
    let config = GptConfig { layers: 3, heads: 2, width: 64, context: 16, vocab: 50 };
    let model = Gpt::new(config);
    let params = model.layout().initialize(3);
    let std_of = |range: Range<usize>| {
        let values = &params[range];
        (values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
    };
    let r = &model.ranges;
    assert!((std_of(r.blocks[0].fc_weight.clone()) - 0.02).abs() < 0.001);
    let residual = 0.02 / 6f64.sqrt();
    assert!((std_of(r.blocks[1].fc_proj_weight.clone()) - residual).abs() < 0.0005);
    assert!(params[r.blocks[2].ln1_weight.clone()].iter().all(|&v| v == 1.0));
    assert!(params[r.blocks[2].fc_bias.clone()].iter().all(|&v| v == 0.0));
    let segments = model.layout().decay_segments();
    assert!(segments.iter().any(|(range, decay)| !decay && range.contains(&r.lnf_bias.start)));
    assert!(segments.iter().any(|(range, decay)| *decay && range.contains(&r.token_embedding.start)));
}

#[test]
fn the_forward_pass_matches_an_independent_f64_implementation() {
    let model = Gpt::new(TINY);
    let params = perturbed(&model, 1);
    let sequences = 3;
    let inputs = tokens(sequences * TINY.context, TINY.vocab, 1);
    let targets = tokens(sequences * TINY.context, TINY.vocab, 2);
    let examples = Examples::Tokens { inputs: &inputs, targets: &targets, sequences };
    let ours = model.loss_sum(&params, examples).unwrap();
    let wide: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
    let reference = reference_loss(&TINY, &model, &wide, &inputs, &targets, sequences);
    let mean = ours.loss / ours.count as f64;
    assert!((mean - reference).abs() < 1e-5 * reference.abs().max(1.0), "{mean} vs {reference}");
    // The training pass reports the same loss as evaluation.
    let mut grads = vec![0.0; params.len()];
    let trained = model.loss_and_grad(&params, examples, &mut grads).unwrap();
    assert_eq!(trained, mean as f32);
}

#[test]
fn gradients_match_central_differences_of_the_f64_network() {
    let model = Gpt::new(TINY);
    let params = perturbed(&model, 4);
    let sequences = 2;
    // Shorter than the context, to exercise a partial sequence length.
    let length = TINY.context - 1;
    let inputs = tokens(sequences * length, TINY.vocab, 5);
    let targets = tokens(sequences * length, TINY.vocab, 6);
    let mut grads = vec![f32::NAN; params.len()];
    model
        .loss_and_grad(
            &params,
            Examples::Tokens { inputs: &inputs, targets: &targets, sequences },
            &mut grads,
        )
        .unwrap();
    let wide: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
    let h = 1e-5;
    let mut worst = 0.0f64;
    for (spec, range) in model.layout().iter() {
        // A few entries of every tensor, first and last included.
        let picks =
            [range.start, range.start + range.len() / 3, range.start + range.len() / 2, range.end - 1];
        for index in picks {
            let mut plus = wide.clone();
            plus[index] += h;
            let mut minus = wide.clone();
            minus[index] -= h;
            let numeric = (reference_loss(&TINY, &model, &plus, &inputs, &targets, sequences)
                - reference_loss(&TINY, &model, &minus, &inputs, &targets, sequences))
                / (2.0 * h);
            let analytic = f64::from(grads[index]);
            let error = (numeric - analytic).abs() / (numeric.abs() + 1e-3);
            worst = worst.max(error);
            assert!(
                error < 2e-3,
                "{} [{}]: numeric {numeric}, ours {analytic}",
                spec.name,
                index - range.start
            );
        }
    }
    // Position rows past the sequence length get no gradient.
    let rows = &grads[model.ranges.position_embedding.clone()][length * TINY.width..];
    assert!(rows.iter().all(|&g| g == 0.0));
    assert!(worst > 0.0);
}

fn step_bits(config: GptConfig, threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let model = Gpt::new(config);
        let params = perturbed(&model, 9);
        let sequences = 4;
        let inputs = tokens(sequences * config.context, config.vocab, 10);
        let targets = tokens(sequences * config.context, config.vocab, 11);
        let mut grads = vec![0.0; params.len()];
        let loss = model
            .loss_and_grad(
                &params,
                Examples::Tokens { inputs: &inputs, targets: &targets, sequences },
                &mut grads,
            )
            .unwrap();
        let mut bits: Vec<u32> = grads.iter().map(|g| g.to_bits()).collect();
        bits.push(loss.to_bits());
        bits
    })
}

#[test]
fn a_step_gives_the_same_bits_at_any_thread_count() {
    // Big enough that the matrix products and row operations split.
    let config = GptConfig { layers: 2, heads: 4, width: 64, context: 32, vocab: 40 };
    let one = step_bits(config, 1);
    assert_eq!(one, step_bits(config, 2));
    assert_eq!(one, step_bits(config, 3));
    assert_eq!(one, step_bits(config, 1), "repeat");
}

#[test]
fn bad_tokens_and_shapes_are_errors_not_panics() {
    let model = Gpt::new(TINY);
    let params = model.layout().initialize(0);
    let mut grads = vec![0.0; params.len()];
    let mut run = |inputs: &[u32], targets: &[u32], sequences| {
        model.loss_and_grad(&params, Examples::Tokens { inputs, targets, sequences }, &mut grads).unwrap_err()
    };
    assert!(matches!(run(&[1, 2, 7], &[1, 2, 3], 1), TrainError::TokenOutOfRange { token: 7, .. }));
    assert!(matches!(run(&[1, 2, 3], &[1, 2, 9], 1), TrainError::TokenOutOfRange { token: 9, .. }));
    assert!(matches!(run(&[0; 22], &[0; 22], 1), TrainError::BadSequences { .. }), "longer than the context");
    assert!(matches!(run(&[0; 5], &[0; 4], 1), TrainError::BadSequences { .. }));
    assert!(matches!(run(&[0; 5], &[0; 5], 2), TrainError::BadSequences { .. }), "not whole sequences");
    assert!(matches!(run(&[], &[], 1), TrainError::BadSequences { .. }));
    let batch = crowdtrain_data::Batch { inputs: vec![0.0; 4], features: 4, targets: vec![0] };
    assert!(matches!(
        model.loss_and_grad(&params, Examples::Images(&batch), &mut grads),
        Err(TrainError::WrongExamples { .. })
    ));
    let bad = GptConfig { heads: 3, ..TINY };
    assert!(bad.validate().is_err());
    assert!(GptConfig { vocab: 1, ..TINY }.validate().is_err());
    assert!(GptConfig { layers: 0, ..TINY }.validate().is_err());
}

#[test]
fn logits_of_a_prefix_do_not_see_later_tokens() {
    let model = Gpt::new(TINY);
    let params = perturbed(&model, 2);
    let long = model.logits(&params, &[1, 2, 3, 4]).unwrap();
    let short = model.logits(&params, &[1, 2]).unwrap();
    assert_eq!(short.len(), 2 * TINY.vocab);
    // Causal: the first two positions' logits are those of the prefix.
    assert_eq!(&long[..2 * TINY.vocab], &short[..]);
}

#[test]
fn the_ten_million_parameter_configuration_builds_and_takes_a_step() {
    let config = GptConfig { layers: 6, heads: 6, width: 384, context: 256, vocab: 65 };
    let model = Gpt::new(config);
    assert!((10_000_000..11_000_000).contains(&model.layout().len()), "{}", model.layout().len());
    let params = model.layout().initialize(0);
    let inputs = tokens(config.context, config.vocab, 1);
    let targets = tokens(config.context, config.vocab, 2);
    let mut grads = vec![0.0; params.len()];
    let loss = model
        .loss_and_grad(
            &params,
            Examples::Tokens { inputs: &inputs, targets: &targets, sequences: 1 },
            &mut grads,
        )
        .unwrap();
    assert!((loss - (config.vocab as f32).ln()).abs() < 0.3, "about ln(vocab) at the start: {loss}");
    assert!(grads.iter().all(|g| g.is_finite()) && grads.iter().any(|&g| g != 0.0));
}
