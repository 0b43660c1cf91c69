//! How a worker behaves: honestly, or like one of the cheaters the audits
//! exist to catch. The cheaters are real code paths of the real worker, so
//! tests and demos exercise the protocol against exactly what a dishonest
//! participant could run. Plain computation without I/O: the worker process
//! (`crowdtrain_node::worker`) and the network simulator's real-training
//! mode (`crowdtrain_simnet`) produce their work with the same code.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crowdtrain_data::RngKey;
use crowdtrain_data::rng::{keyed_rng, standard_normal};
use crowdtrain_defense::{attack, linalg};
use crowdtrain_protocol::audit::residual_digest;
use crowdtrain_protocol::merkle;
use crowdtrain_protocol::wire::AuditAnswer;
use crowdtrain_protocol::{Assignment, Commitment, Digest};
use crowdtrain_train::diloco::{InnerRoundResult, inner_round_on, segment_range};
use crowdtrain_train::{
    Codec, Encode, InnerOptimizer, Model, TrainError, TrainState, Trainer, encode_with_feedback,
};

use crate::AssignedWork;
use crate::data::{RunData, Shards};

/// A worker's behaviour (`crowdtrain worker --behavior B`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// Trains as assigned.
    Honest,
    /// Skips the last fraction `F` of its inner steps (advancing the step
    /// counter without computing), saving that share of the work.
    Lazy(f64),
    /// Trains nothing: a random update of plausible size, random states.
    Fabricate,
    /// Trains on the next worker's shard instead of its own.
    WrongData,
    /// Resubmits its previous round's update and states.
    Stale,
    /// Submits exactly what the next worker submits (as if handed over by
    /// a colluder), bit for bit.
    Copy,
    /// Retrains the next worker's assignment and submits that update plus
    /// noise at 10^-3 of its norm: a near copy (another digest, so no
    /// commitment names its victim's update), refused by the checks. Order
    /// cannot say which of the two is the copy; the challenge that follows
    /// does, by replay.
    NearCopy,
    /// Commits honestly, then reveals a different update.
    TamperReveal,
    /// Trains honestly but never answers an audit.
    NoAnswer,
    /// Trains honestly, submits its update negated.
    SignFlip,
    /// Trains honestly, submits Gaussian noise at this many times its
    /// honest update's norm (a disguised free-rider at 1).
    Noise(f32),
    /// Trains on its shard with every label `y` replaced by `9 - y`.
    LabelFlip,
    /// "A little is enough": trains three replicas of its round (its own
    /// batches and two other streams) and submits their mean plus `z`
    /// standard deviations per coordinate.
    Alie(f32),
    /// Inner-product manipulation: trains honestly, submits `-epsilon` times
    /// its update.
    Ipm(f32),
    /// Trains honestly, commits to and submits an update with a
    /// not-a-number scale.
    Nan,
    /// Trains honestly, but as a delegated auditor reports a wrong end
    /// state for every segment it replays.
    LyingAuditor,
    /// Under a codec with error feedback: trains honestly, commits to the
    /// residual chain it really has, but encodes its update plus `SCALE`
    /// times that residual (mass it never trained for, as if it had kept
    /// more than its encoder left).
    InflateResidual(f32),
}

impl Behavior {
    /// Whether it trains on labels other than the real ones.
    pub fn flips_labels(self) -> bool {
        self == Self::LabelFlip
    }
}

/// The accepted names, for error messages and `--help`.
pub const BEHAVIOR_NAMES: &str = "honest, lazy:F, fabricate, wrong-data, stale, copy, near-copy, tamper-reveal, no-answer, \
    lying-auditor, sign-flip, noise[:SCALE], label-flip, alie[:Z], ipm[:EPSILON], nan, inflate-residual[:SCALE]";

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Honest => f.write_str("honest"),
            Self::Lazy(fraction) => write!(f, "lazy:{fraction}"),
            Self::Fabricate => f.write_str("fabricate"),
            Self::WrongData => f.write_str("wrong-data"),
            Self::Stale => f.write_str("stale"),
            Self::Copy => f.write_str("copy"),
            Self::NearCopy => f.write_str("near-copy"),
            Self::TamperReveal => f.write_str("tamper-reveal"),
            Self::NoAnswer => f.write_str("no-answer"),
            Self::SignFlip => f.write_str("sign-flip"),
            Self::Noise(scale) if *scale == 1.0 => f.write_str("noise"),
            Self::Noise(scale) => write!(f, "noise:{scale}"),
            Self::LabelFlip => f.write_str("label-flip"),
            Self::Alie(z) if *z == ALIE_Z => f.write_str("alie"),
            Self::Alie(z) => write!(f, "alie:{z}"),
            Self::Ipm(epsilon) if *epsilon == IPM_EPSILON => f.write_str("ipm"),
            Self::Ipm(epsilon) => write!(f, "ipm:{epsilon}"),
            Self::Nan => f.write_str("nan"),
            Self::LyingAuditor => f.write_str("lying-auditor"),
            Self::InflateResidual(scale) if *scale == INFLATE_SCALE => f.write_str("inflate-residual"),
            Self::InflateResidual(scale) => write!(f, "inflate-residual:{scale}"),
        }
    }
}

impl FromStr for Behavior {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, parameter) = match text.split_once(':') {
            Some((name, parameter)) => (name, Some(parameter)),
            None => (text, None),
        };
        let number = |default: f32, valid: fn(f32) -> bool, what: &str| -> Result<f32, String> {
            match parameter.map(str::parse::<f32>) {
                None => Ok(default),
                Some(Ok(value)) if valid(value) => Ok(value),
                Some(_) => Err(format!("in {text:?}, {what}")),
            }
        };
        let behavior = match name {
            "honest" => Self::Honest,
            "fabricate" => Self::Fabricate,
            "wrong-data" => Self::WrongData,
            "stale" => Self::Stale,
            "copy" => Self::Copy,
            "near-copy" => Self::NearCopy,
            "tamper-reveal" => Self::TamperReveal,
            "no-answer" => Self::NoAnswer,
            "sign-flip" => Self::SignFlip,
            "label-flip" => Self::LabelFlip,
            "nan" => Self::Nan,
            "lying-auditor" => Self::LyingAuditor,
            "lazy" => match parameter.map(str::parse::<f64>) {
                Some(Ok(fraction)) if (0.0..=1.0).contains(&fraction) => Self::Lazy(fraction),
                _ => return Err(format!("in {text:?}, F must be a fraction between 0 and 1")),
            },
            "noise" => {
                Self::Noise(number(1.0, |scale| scale.is_finite() && scale > 0.0, "SCALE must be positive")?)
            }
            "alie" => Self::Alie(number(ALIE_Z, |z| z.is_finite() && z >= 0.0, "Z must be non-negative")?),
            "inflate-residual" => Self::InflateResidual(number(
                INFLATE_SCALE,
                |scale| scale.is_finite() && scale > 0.0,
                "SCALE must be positive",
            )?),
            "ipm" => Self::Ipm(number(
                IPM_EPSILON,
                |epsilon| epsilon.is_finite() && epsilon > 0.0,
                "EPSILON must be positive",
            )?),
            _ => return Err(format!("unknown behavior {text:?}; expected one of {BEHAVIOR_NAMES}")),
        };
        let takes_parameter = matches!(
            behavior,
            Self::Lazy(_) | Self::Noise(_) | Self::Alie(_) | Self::Ipm(_) | Self::InflateResidual(_)
        );
        if parameter.is_some() && !takes_parameter {
            return Err(format!("{name} takes no parameter"));
        }
        Ok(behavior)
    }
}

/// What a worker hands in for a round: the states at its segment
/// boundaries and the encoded update, and under a codec with error
/// feedback the residual the encoding started from and the one it left.
#[derive(Debug, Clone)]
pub struct Produced {
    pub boundaries: Vec<TrainState>,
    pub hashes: Vec<Digest>,
    pub payload: Vec<u8>,
    /// The update before encoding, residual not included: a worker whose
    /// residual chain is refused encodes it again from zero
    /// ([`Produced::restarted`]).
    update: Vec<f32>,
    /// The residual the commitment says the encoding started from (empty:
    /// zero, and always empty without error feedback).
    pub residual_in: Vec<f32>,
    /// What the encoding lost: the worker's residual once the commitment
    /// is accepted (empty without error feedback).
    pub residual_out: Vec<f32>,
}

impl Produced {
    /// `update` encoded with `codec` from the residual `residual_in`.
    pub fn new(
        boundaries: Vec<TrainState>,
        update: Vec<f32>,
        codec: Codec,
        residual_in: &[f32],
    ) -> Result<Self, TrainError> {
        Self::encoded_from(boundaries, update, codec, residual_in, residual_in.to_vec())
    }

    /// `update` encoded with `codec` from the residual `start`, while the
    /// commitment names `residual_in`: honest when they are the same.
    fn encoded_from(
        boundaries: Vec<TrainState>,
        update: Vec<f32>,
        codec: Codec,
        residual_in: &[f32],
        start: Vec<f32>,
    ) -> Result<Self, TrainError> {
        let hashes = boundaries.iter().map(|state| Digest(state.hash().0)).collect();
        let mut residual_out = start;
        let payload = encode_with_feedback(codec, &update, &mut residual_out).map_err(TrainError::from)?;
        Ok(Self { boundaries, hashes, payload, update, residual_in: residual_in.to_vec(), residual_out })
    }

    /// The same work encoded again from the zero residual: what a worker
    /// commits after the coordinator refused its residual chain (its
    /// residual file lost, or a commitment it never heard was accepted).
    pub fn restarted(&self, codec: Codec) -> Result<Self, TrainError> {
        Self::new(self.boundaries.clone(), self.update.clone(), codec, &[])
    }

    pub fn commitment(&self) -> Commitment {
        let digest = |residual: &[f32]| (!residual.is_empty()).then(|| residual_digest(residual));
        Commitment {
            merkle_root: merkle::root(&self.hashes),
            payload: Digest::of(&self.payload),
            segments: (self.hashes.len() - 1) as u32,
            residual_in: digest(&self.residual_in),
            residual_out: digest(&self.residual_out),
        }
    }

    /// The answer to an audit of `segment` (counting from 1); `None` for a
    /// segment the commitment does not have.
    pub fn answer(&self, segment: u32) -> Option<AuditAnswer> {
        let end = segment as usize;
        if segment == 0 || end >= self.hashes.len() {
            return None;
        }
        let start = end - 1;
        Some(AuditAnswer {
            segment,
            // The first segment starts from the round's model, which the
            // auditor builds itself: no need to send it.
            start_state: if segment == 1 { Vec::new() } else { self.boundaries[start].to_bytes() },
            start_proof: merkle::prove(&self.hashes, start),
            end_hash: self.hashes[end],
            end_proof: merkle::prove(&self.hashes, end),
            // The last segment's replay re-encodes the update from it.
            residual_in: if end == self.hashes.len() - 1 { self.residual_in.clone() } else { Vec::new() },
        })
    }
}

/// The default `z` of `alie`: one standard deviation.
pub const ALIE_Z: f32 = 1.0;
/// The default `epsilon` of `ipm`.
pub const IPM_EPSILON: f32 = 0.5;
/// The default `SCALE` of `inflate-residual`.
pub const INFLATE_SCALE: f32 = 10.0;

/// Everything a worker uses to produce its round's work.
pub struct Work<'a> {
    pub model: &'a dyn Model,
    pub assignment: &'a Assignment,
    pub params: &'a [f32],
    pub data: &'a RunData,
    pub shards: &'a Shards,
    /// The same images with flipped labels, for `label-flip`.
    pub flipped: Option<&'a RunData>,
    /// Counts the inner steps trained so far (for the worker's progress).
    pub steps_done: &'a AtomicU64,
    /// The worker's error-feedback residual (empty: zero).
    pub residual: &'a [f32],
}

impl Work<'_> {
    /// The honest computation for `slot` (normally the worker's own): the
    /// shard that slot trains this round, with batches from `key_slot`'s
    /// streams.
    fn train_as(&self, slot: u32, key_slot: u32) -> Result<InnerRoundResult, TrainError> {
        self.train_on(self.data, slot, u64::from(key_slot))
    }

    fn train_on(&self, data: &RunData, slot: u32, key_slot: u64) -> Result<InnerRoundResult, TrainError> {
        let assignment = self.assignment;
        let key = RngKey { worker: key_slot, ..assignment.rng_key() };
        let source = self.shards.source(data, assignment, slot)?;
        inner_round_on(
            self.model,
            &assignment.recipe,
            self.params,
            source.as_ref(),
            key,
            assignment.segments,
            &mut || {
                self.steps_done.fetch_add(1, Ordering::Relaxed);
            },
        )
    }

    /// Honest states with `craft(honest update)` as the update: the
    /// attacks on the model that still look like work.
    fn disguised(&self, craft: impl FnOnce(&[f32]) -> Vec<f32>) -> Result<Produced, TrainError> {
        let slot = self.assignment.slot;
        let honest = self.train_as(slot, slot)?;
        let crafted = craft(&honest.pseudo_gradient);
        self.seal(honest.boundaries, crafted)
    }

    /// `update` encoded from the worker's residual.
    fn seal(&self, boundaries: Vec<TrainState>, update: Vec<f32>) -> Result<Produced, TrainError> {
        Produced::new(boundaries, update, self.assignment.recipe.codec, self.residual)
    }

    fn finish(&self, result: InnerRoundResult) -> Result<Produced, TrainError> {
        self.seal(result.boundaries, result.pseudo_gradient)
    }
}

/// This round's work under `behavior`; `previous` is what the worker handed
/// in last round (for the stale resubmitter).
pub fn produce(
    behavior: Behavior,
    work: &Work<'_>,
    previous: Option<&Produced>,
) -> Result<Produced, TrainError> {
    let slot = work.assignment.slot;
    let next = (slot + 1) % work.assignment.slots;
    match behavior {
        Behavior::Honest | Behavior::TamperReveal | Behavior::NoAnswer | Behavior::LyingAuditor => {
            work.finish(work.train_as(slot, slot)?)
        }
        Behavior::WrongData => work.finish(work.train_as(next, slot)?),
        Behavior::Copy => work.finish(work.train_as(next, next)?),
        Behavior::NearCopy => {
            let copied = work.train_as(next, next)?;
            let key = RngKey { worker: u64::from(slot), ..work.assignment.rng_key() };
            let noise = attack::noise(
                key,
                copied.pseudo_gradient.len(),
                1e-3 * linalg::norm(&copied.pseudo_gradient),
            );
            let near = copied.pseudo_gradient.iter().zip(noise).map(|(value, noise)| value + noise).collect();
            work.seal(copied.boundaries, near)
        }
        Behavior::Stale => match previous {
            Some(previous) => Ok(previous.clone()),
            None => work.finish(work.train_as(slot, slot)?),
        },
        Behavior::Lazy(fraction) => lazy(work, fraction),
        Behavior::Fabricate => fabricate(work),
        Behavior::SignFlip => work.disguised(attack::sign_flip),
        Behavior::Ipm(epsilon) => {
            work.disguised(|update| attack::inner_product_manipulation(update, epsilon))
        }
        Behavior::Noise(scale) => {
            let key = work.assignment.rng_key();
            work.disguised(|update| attack::noise(key, update.len(), f64::from(scale) * linalg::norm(update)))
        }
        Behavior::LabelFlip => {
            let flipped = work.flipped.expect("a label-flipping worker has flipped labels");
            work.finish(work.train_on(flipped, slot, u64::from(slot))?)
        }
        Behavior::Alie(z) => {
            // Its own round and two more on other batch streams of its
            // shard: three samples of what honest updates look like.
            let replicas = (0..3u64)
                .map(|replica| {
                    let key_slot =
                        u64::from(slot) + replica * u64::from(work.assignment.slots).max(1) * 1_000_003;
                    work.train_on(work.data, slot, key_slot)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let samples: Vec<&[f32]> =
                replicas.iter().map(|replica| replica.pseudo_gradient.as_slice()).collect();
            let crafted = attack::a_little_is_enough(&samples, z);
            let own = replicas.into_iter().next().expect("three replicas");
            work.seal(own.boundaries, crafted)
        }
        Behavior::InflateResidual(scale) => {
            let honest = work.train_as(slot, slot)?;
            let inflated = work.residual.iter().map(|value| value * scale).collect();
            Produced::encoded_from(
                honest.boundaries,
                honest.pseudo_gradient,
                work.assignment.recipe.codec,
                work.residual,
                inflated,
            )
        }
        Behavior::Nan => {
            let mut produced = work.finish(work.train_as(slot, slot)?)?;
            poison(&mut produced.payload);
            Ok(produced)
        }
    }
}

/// Overwrites the first value (or int8 scale) of an encoded update with
/// not-a-number: bytes no honest encoder writes, and no decoder accepts.
fn poison(payload: &mut [u8]) {
    use crowdtrain_train::codec::HEADER_BYTES;
    payload[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&f32::NAN.to_le_bytes());
}

/// Honest steps up to `(1 - fraction)` of the round, then the step counter
/// alone advances: the states look like a full round's, the work is not
/// there.
fn lazy(work: &Work<'_>, fraction: f64) -> Result<Produced, TrainError> {
    let assignment = work.assignment;
    let steps = assignment.recipe.inner_steps;
    let skipped = ((steps as f64) * fraction).round() as u64;
    let honest_until = steps - skipped.min(steps);
    let mut state = TrainState::new(work.model.name(), work.params.to_vec());
    let mut trainer =
        Trainer::new(work.model, InnerOptimizer::from(&assignment.recipe), assignment.recipe.batch());
    let source = work.shards.source(work.data, assignment, assignment.slot)?;
    let mut boundaries = vec![state.clone()];
    for segment in 1..=assignment.segments {
        let (_, end) = segment_range(steps, assignment.segments, segment);
        let honest = honest_until.saturating_sub(state.step).min(end - state.step);
        trainer.run_on(&mut state, source.as_ref(), assignment.rng_key(), honest, |_, _| {
            work.steps_done.fetch_add(1, Ordering::Relaxed);
        })?;
        state.step = end;
        boundaries.push(state.clone());
    }
    let update: Vec<f32> = work.params.iter().zip(&state.params).map(|(g, l)| g - l).collect();
    work.seal(boundaries, update)
}

/// Random states and a random update with a per-value spread typical of a
/// real one, computed in no time.
fn fabricate(work: &Work<'_>) -> Result<Produced, TrainError> {
    let assignment = work.assignment;
    let mut rng = keyed_rng("fabricate", assignment.rng_key());
    let mut noise = |scale: f64| -> Vec<f32> {
        work.params.iter().map(|_| (standard_normal(&mut rng) * scale) as f32).collect()
    };
    let update = noise(5e-3);
    let start = TrainState::new(work.model.name(), work.params.to_vec());
    let mut boundaries = vec![start.clone()];
    for segment in 1..=assignment.segments {
        let mut state = start.clone();
        for (param, delta) in state.params.iter_mut().zip(noise(1e-3)) {
            *param += delta;
        }
        state.step = segment_range(assignment.recipe.inner_steps, assignment.segments, segment).1;
        boundaries.push(state);
    }
    work.seal(boundaries, update)
}

/// What a tampering worker reveals instead of what it committed: its
/// update, doubled.
pub fn tampered(payload: &[u8], assignment: &Assignment, parameters: usize) -> Result<Vec<u8>, TrainError> {
    let (_, values) = crowdtrain_train::codec::decode(payload, parameters)?;
    let doubled: Vec<f32> = values.iter().map(|value| value * 2.0 + 1e-4).collect();
    Ok(assignment.recipe.codec.encode(&doubled)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_committed_segments_can_be_answered() {
        let states: Vec<TrainState> =
            (0..3).map(|value| TrainState::new("mlp".into(), vec![value as f32; 4])).collect();
        let produced = Produced::new(states, vec![0.5; 4], Codec::F32, &[]).unwrap();
        assert_eq!(produced.commitment().segments, 2);
        for segment in [0, 3, u32::MAX] {
            assert!(produced.answer(segment).is_none(), "segment {segment}");
        }
        let first = produced.answer(1).unwrap();
        assert!(first.start_state.is_empty(), "the auditor builds the first start state");
        let second = produced.answer(2).unwrap();
        assert_eq!(second.end_hash, produced.hashes[2]);
        assert!(!second.start_state.is_empty());
        assert!(second.residual_in.is_empty(), "no error feedback, no residual");
    }

    #[test]
    fn error_feedback_commits_both_residuals_and_the_last_answer_carries_the_first() {
        let states: Vec<TrainState> =
            (0..3).map(|value| TrainState::new("mlp".into(), vec![value as f32; 4])).collect();
        let codec: Codec = "q2".parse().unwrap();
        let update = vec![0.9, -0.2, 0.05, 0.4];
        let fresh = Produced::new(states.clone(), update.clone(), codec, &[]).unwrap();
        let commitment = fresh.commitment();
        assert_eq!(commitment.residual_in, None, "a fresh start names no residual");
        assert_eq!(commitment.residual_out, Some(residual_digest(&fresh.residual_out)));
        assert!(fresh.residual_out.iter().any(|&value| value != 0.0), "q2 loses something: {fresh:?}");

        let chained = Produced::new(states, update, codec, &fresh.residual_out).unwrap();
        assert_eq!(chained.commitment().residual_in, commitment.residual_out, "the chain goes on");
        assert_ne!(chained.payload, fresh.payload, "the residual is sent");
        assert_eq!(chained.answer(2).unwrap().residual_in, fresh.residual_out, "the last segment's answer");
        assert!(chained.answer(1).unwrap().residual_in.is_empty(), "other segments need none");

        let restarted = chained.restarted(codec).unwrap();
        assert_eq!(restarted.commitment(), commitment, "from zero again: the fresh encoding, bit for bit");
    }

    #[test]
    fn behaviours_parse_and_print_alike() {
        for text in [
            "honest",
            "lazy:0.25",
            "fabricate",
            "wrong-data",
            "stale",
            "copy",
            "near-copy",
            "tamper-reveal",
            "no-answer",
            "sign-flip",
            "noise",
            "noise:100",
            "label-flip",
            "alie",
            "alie:1.5",
            "ipm",
            "ipm:0.1",
            "nan",
            "lying-auditor",
            "inflate-residual",
            "inflate-residual:3",
        ] {
            assert_eq!(text.parse::<Behavior>().unwrap().to_string(), text);
        }
        assert_eq!("noise:100".parse::<Behavior>(), Ok(Behavior::Noise(100.0)));
        assert!("lazy:1.5".parse::<Behavior>().unwrap_err().contains("between 0 and 1"));
        assert!("lazy".parse::<Behavior>().is_err());
        assert!("noise:-1".parse::<Behavior>().unwrap_err().contains("positive"));
        assert!("nan:3".parse::<Behavior>().unwrap_err().contains("no parameter"));
        assert!("sneaky".parse::<Behavior>().unwrap_err().contains("unknown behavior"));
    }
}
