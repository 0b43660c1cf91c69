//! The optimizers' hyperparameters. Their fused, deterministic updates
//! live in `crowdtrain-train` (`crowdtrain_train::optim`).

use serde::{Deserialize, Serialize};

use crate::{Broadcast, RecipeError, check, check_positive};

/// AdamW (Loshchilov and Hutter), the inner optimizer, with PyTorch's
/// defaults and formula (decoupled weight decay applied before the step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamW {
    /// nanoGPT's for its Shakespeare model (`train_shakespeare_char.py`):
    /// betas 0.9 and 0.99, weight decay 0.1 (on matrices and embeddings
    /// only: the model's layout says which), at peak rate `lr`.
    pub fn nanogpt(lr: f32) -> Self {
        Self { lr, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 }
    }

    /// Checks the hyperparameters; fields are named `optimizer.*`.
    pub fn validate(&self) -> Result<(), RecipeError> {
        check_positive("optimizer.lr", self.lr)?;
        check("optimizer.beta1", (0.0..1.0).contains(&self.beta1), "must be in [0, 1)")?;
        check("optimizer.beta2", (0.0..1.0).contains(&self.beta2), "must be in [0, 1)")?;
        check_positive("optimizer.eps", self.eps)?;
        check(
            "optimizer.weight_decay",
            self.weight_decay.is_finite() && self.weight_decay >= 0.0 && self.lr * self.weight_decay < 1.0,
            "must be finite, non-negative and below 1 / optimizer.lr",
        )
    }
}

/// SGD with Nesterov momentum, the outer optimizer of DiLoCo, applied to
/// the aggregated pseudo-gradient (global minus local parameters), and how
/// its result is published (`[outer]` in `run.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nesterov {
    pub lr: f32,
    pub momentum: f32,
    /// How each new model reaches the workers. Left out of the serialised
    /// form when `full`, so configurations (and run ids, state hashes) from
    /// before it existed stay the same.
    #[serde(skip_serializing_if = "Broadcast::is_full")]
    pub broadcast: Broadcast,
    /// Rounds between a round's start and the newest outer step its base
    /// model includes: 0 (plain DiLoCo) trains round r from the model after
    /// round r - 1's outer step, so a worker waits for it; 1 trains round r
    /// from the model before it (after round r - 2's step), so a worker
    /// starts round r as soon as it has sent round r - 1's update and the
    /// network's round trip hides behind a round of compute. Round r's
    /// update, made against that older base, is still applied to the newest
    /// model (one-step-delayed outer updates, as in Streaming DiLoCo and
    /// Kale et al. 2025). d in general trains round r from the model after
    /// round r - d - 1's step, hiding d rounds of compute behind the chain
    /// from a commitment to its round's close; up to [`MAX_OUTER_DELAY`],
    /// in the simulation and in networked runs alike. Left out of the
    /// serialised form when 0, like `broadcast`.
    #[serde(skip_serializing_if = "is_zero")]
    pub delay: u32,
    /// What a delayed round (`delay = 1`) adds to its base to stand in for
    /// the outer step it does not wait for. Left out when `none`.
    #[serde(skip_serializing_if = "Eager::is_none")]
    pub eager: Eager,
    /// Outer steps over which the outer learning rate ramps up: outer step
    /// `k` (from 1) takes `lr * k / (warmup + 1)` while `k <= warmup`. The
    /// first pseudo-gradients of a run trained from scratch are the largest
    /// it sees, and the momentum carries them into every later step; a
    /// ramp keeps them from overshooting. 0 (no ramp) is left out of the
    /// serialised form, like `delay`.
    #[serde(skip_serializing_if = "is_zero")]
    pub warmup: u32,
}

/// The most rounds an outer update may be delayed by (`[outer] delay`,
/// `sim diloco --outer-delay`, `demo --outer-delay`), the one home of the
/// bound for the simulation and networked runs alike, so that every
/// networked run has a simulation to reproduce. It bounds memory: a
/// networked coordinator keeps `delay + 1` live rounds (each with its
/// commitments, draws and audit state) and the `delay` models before the
/// newest (the bases the rounds ahead train from, for their audits); a
/// simulation keeps `delay + 2` published models. 4 hides four rounds of
/// compute, what a small model's short rounds need over a slow link
/// (docs/BENCHMARKS.md, issue 18).
pub const MAX_OUTER_DELAY: u32 = 4;

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// What a round that starts before the previous round's outer step
/// (`[outer] delay = 1`) adds to its stale base, the model of two outer
/// steps ago, in place of the step it has not seen (`[outer] eager`).
/// Under `delay` d >= 2 it stands in for one of the d steps only (the
/// formulas below, with the base the round sees in place of θ_{r-1}).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Eager {
    /// Nothing: the stale base as published.
    #[default]
    None,
    /// The last published step repeated: base θ_{r-1} + (θ_{r-1} - θ_{r-2}).
    /// The outer momentum makes consecutive steps alike, and the base is
    /// still a function of published models only, the same for every
    /// worker, so an audit recomputes it.
    Trend,
    /// The worker's own last update as a stand-in for the round's mean
    /// (Kale et al.'s eager update, without momentum): base θ_{r-1} minus
    /// the outer learning rate times the pseudo-gradient the worker sent
    /// for round r - 1. Each worker's base is then its own.
    Own,
}

impl Eager {
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

impl std::fmt::Display for Eager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Trend => "trend",
            Self::Own => "own",
        })
    }
}

impl std::str::FromStr for Eager {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(Self::None),
            "trend" => Ok(Self::Trend),
            "own" => Ok(Self::Own),
            other => Err(format!("unknown eager stand-in {other:?}: none, trend or own")),
        }
    }
}

impl Default for Nesterov {
    /// DiLoCo's published setting, full models downloaded.
    fn default() -> Self {
        Self { lr: 0.7, momentum: 0.9, broadcast: Broadcast::Full, delay: 0, eager: Eager::None, warmup: 0 }
    }
}

impl Nesterov {
    /// The learning rate of outer step `step` (from 1): `lr`, ramped over
    /// the first `warmup` steps. Computed in f64 and rounded once, the same
    /// on every machine.
    pub fn lr_at(&self, step: u64) -> f32 {
        let warmup = u64::from(self.warmup);
        if step > warmup {
            return self.lr;
        }
        (f64::from(self.lr) * step as f64 / (warmup + 1) as f64) as f32
    }

    /// Checks the hyperparameters; fields are named `outer.*`.
    pub fn validate(&self) -> Result<(), RecipeError> {
        check_positive("outer.lr", self.lr)?;
        check("outer.momentum", (0.0..1.0).contains(&self.momentum), "must be in [0, 1)")?;
        check(
            "outer.delay",
            self.delay <= MAX_OUTER_DELAY,
            &format!("must be at most {MAX_OUTER_DELAY}: each round of delay keeps one more round live"),
        )?;
        check(
            "outer.eager",
            self.eager.is_none() || self.delay > 0,
            "needs outer.delay >= 1: only a delayed round has a step to stand in for",
        )
    }
}

/// How the learning rate changes over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[derive(Default)]
pub enum Schedule {
    /// The optimizer's rate at every step.
    #[default]
    Constant,
    /// Cosine decay from the full rate at step 1 to `final_fraction` of it
    /// at `total_steps` (and after).
    Cosine { total_steps: u64, final_fraction: f32 },
    /// nanoGPT's: a linear warmup over `warmup_steps`, then cosine decay to
    /// `final_fraction` at `total_steps`, and that fraction after.
    WarmupCosine { warmup_steps: u64, total_steps: u64, final_fraction: f32 },
    /// [`Schedule::WarmupCosine`] over the run, and every round after the
    /// first warms its fresh optimizer up again: step `s` of such a round
    /// is also scaled by `s / (round_warmup_steps + 1)` while `s <=
    /// round_warmup_steps`. A round restarts AdamW with zero moments, and
    /// bias correction makes its first steps full-size on every parameter
    /// (the first is the gradient's sign times the rate); the re-warming
    /// damps that shock. The factor is a function of the round and the step
    /// alone, so an audit replays it. Written last in the enum, so the
    /// binary form of the schedules before it does not change.
    WarmupCosineRewarm { warmup_steps: u64, total_steps: u64, final_fraction: f32, round_warmup_steps: u64 },
}

/// nanoGPT's warmup for its Shakespeare model (at most a tenth of a run).
pub const NANOGPT_WARMUP_STEPS: u64 = 100;

impl Schedule {
    /// nanoGPT's: [`NANOGPT_WARMUP_STEPS`] of warmup (at most a tenth of
    /// the run), then cosine decay to a tenth by `total_steps`.
    pub fn nanogpt(total_steps: u64) -> Self {
        Self::WarmupCosine {
            warmup_steps: NANOGPT_WARMUP_STEPS.min(total_steps / 10),
            total_steps: total_steps.max(1),
            final_fraction: 0.1,
        }
    }

    /// [`Schedule::nanogpt`], with every round after the first re-warmed
    /// over `round_warmup_steps` steps ([`Schedule::WarmupCosineRewarm`]).
    pub fn nanogpt_rewarm(total_steps: u64, round_warmup_steps: u64) -> Self {
        match Self::nanogpt(total_steps) {
            Self::WarmupCosine { warmup_steps, total_steps, final_fraction } => {
                Self::WarmupCosineRewarm { warmup_steps, total_steps, final_fraction, round_warmup_steps }
            }
            _ => unreachable!("nanoGPT's schedule warms up and decays"),
        }
    }

    /// The steps every round after the first re-warms over (0: none).
    pub fn round_warmup_steps(&self) -> u64 {
        match *self {
            Self::WarmupCosineRewarm { round_warmup_steps, .. } => round_warmup_steps,
            _ => 0,
        }
    }

    /// Checks the values the factor relies on; fields are named `schedule.*`.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let fraction_ok = |fraction: f32| (0.0..=1.0).contains(&fraction);
        match *self {
            Self::Constant => Ok(()),
            Self::Cosine { total_steps, final_fraction } => {
                check("schedule.total_steps", total_steps >= 1, "must be at least 1")?;
                check("schedule.final_fraction", fraction_ok(final_fraction), "must be in [0, 1]")
            }
            Self::WarmupCosine { warmup_steps, total_steps, final_fraction }
            | Self::WarmupCosineRewarm { warmup_steps, total_steps, final_fraction, .. } => {
                check(
                    "schedule.total_steps",
                    total_steps > warmup_steps,
                    "must be more than schedule.warmup_steps",
                )?;
                check("schedule.final_fraction", fraction_ok(final_fraction), "must be in [0, 1]")?;
                check(
                    "schedule.round_warmup_steps",
                    !matches!(self, Self::WarmupCosineRewarm { round_warmup_steps: 0, .. }),
                    "must be at least 1 (or use warmup-cosine)",
                )
            }
        }
    }

    /// The multiplier of the base rate at step `step` (from 1) of a round
    /// whose first step is run step `round_start + 1`: the run's
    /// [`Schedule::factor`], times the re-warming of
    /// [`Schedule::WarmupCosineRewarm`] in every round but the first
    /// (`round_start > 0`). A run that never restarts its optimizer (one
    /// process training alone, the synchronous baseline) is one round.
    pub fn factor_in_round(&self, round_start: u64, step: u64) -> f32 {
        let run = self.factor(round_start + step);
        let warmup = self.round_warmup_steps();
        if round_start == 0 || step > warmup {
            return run;
        }
        run * (step as f64 / (warmup + 1) as f64) as f32
    }

    /// The multiplier of the base rate at `step` (counting from 1),
    /// computed with the pure-Rust `libm` so every machine agrees.
    pub fn factor(&self, step: u64) -> f32 {
        match *self {
            Self::Constant => 1.0,
            Self::Cosine { total_steps, final_fraction } => {
                let span = total_steps.saturating_sub(1).max(1) as f64;
                let progress = (step.saturating_sub(1) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + libm::cos(std::f64::consts::PI * progress));
                (f64::from(final_fraction) + (1.0 - f64::from(final_fraction)) * cosine) as f32
            }
            Self::WarmupCosine { warmup_steps, total_steps, final_fraction }
            | Self::WarmupCosineRewarm { warmup_steps, total_steps, final_fraction, .. } => {
                // nanoGPT's get_lr counts iterations from 0.
                let iteration = step.saturating_sub(1);
                let final_fraction = f64::from(final_fraction);
                if iteration < warmup_steps {
                    return ((iteration + 1) as f64 / (warmup_steps + 1) as f64) as f32;
                }
                if iteration > total_steps || total_steps <= warmup_steps {
                    return final_fraction as f32;
                }
                let ratio = (iteration - warmup_steps) as f64 / (total_steps - warmup_steps) as f64;
                let cosine = 0.5 * (1.0 + libm::cos(std::f64::consts::PI * ratio));
                (final_fraction + cosine * (1.0 - final_fraction)) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_decays_from_one_to_the_final_fraction() {
        let schedule = Schedule::Cosine { total_steps: 101, final_fraction: 0.1 };
        assert_eq!(schedule.factor(1), 1.0);
        assert!((schedule.factor(51) - 0.55).abs() < 1e-6);
        assert!((schedule.factor(102) - 0.1).abs() < 1e-6);
        assert!((schedule.factor(500) - 0.1).abs() < 1e-6);
        assert_eq!(Schedule::Constant.factor(7), 1.0);
    }

    #[test]
    fn a_rewarmed_schedule_ramps_every_round_but_the_first_and_the_others_never() {
        let plain = Schedule::nanogpt(1000);
        let rewarm = Schedule::nanogpt_rewarm(1000, 9);
        assert_eq!(rewarm.round_warmup_steps(), 9);
        // Over the run, the same factors: the first round (and a run that
        // never restarts, like the synchronous baseline) is not re-warmed.
        for step in [1, 5, 50, 100, 101, 500, 1000, 1200] {
            assert_eq!(rewarm.factor(step), plain.factor(step));
            assert_eq!(rewarm.factor_in_round(0, step), plain.factor(step));
        }
        // Rounds after the first ramp their first 9 steps by s / 10.
        for round_start in [100, 900] {
            for step in 1..=9 {
                let expected = plain.factor(round_start + step) * (step as f32 / 10.0);
                assert!((rewarm.factor_in_round(round_start, step) - expected).abs() < 1e-7, "{step}");
            }
            for step in [10, 11, 100] {
                assert_eq!(rewarm.factor_in_round(round_start, step), plain.factor(round_start + step));
            }
        }
        // Every other schedule's factor in a round is its run factor, bit
        // for bit: the runs measured before re-warming keep their bits.
        for schedule in
            [Schedule::Constant, Schedule::Cosine { total_steps: 300, final_fraction: 0.1 }, plain]
        {
            for (start, step) in [(0, 1), (100, 1), (100, 7), (200, 100)] {
                assert_eq!(
                    schedule.factor_in_round(start, step).to_bits(),
                    schedule.factor(start + step).to_bits()
                );
            }
        }
        assert!(rewarm.validate().is_ok());
        let none = Schedule::WarmupCosineRewarm {
            warmup_steps: 10,
            total_steps: 100,
            final_fraction: 0.1,
            round_warmup_steps: 0,
        };
        assert_eq!(none.validate().unwrap_err().field, "schedule.round_warmup_steps");
    }

    #[test]
    fn the_schedules_before_rewarming_keep_their_binary_form() {
        // postcard: the variant's index, then its fields.
        let plain = Schedule::WarmupCosine { warmup_steps: 1, total_steps: 2, final_fraction: 0.0 };
        assert_eq!(postcard::to_allocvec(&plain).unwrap(), [2, 1, 2, 0, 0, 0, 0]);
        let rewarm = Schedule::nanogpt_rewarm(1000, 10);
        let bytes = postcard::to_allocvec(&rewarm).unwrap();
        assert_eq!(bytes[0], 3, "a new variant, written last");
        assert_eq!(postcard::from_bytes::<Schedule>(&bytes).unwrap(), rewarm);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Table {
            schedule: Schedule,
        }
        let text = toml::to_string(&Table { schedule: rewarm }).unwrap();
        assert!(text.contains("[schedule.warmup-cosine-rewarm]") && text.contains("round_warmup_steps = 10"));
        assert_eq!(toml::from_str::<Table>(&text).unwrap(), Table { schedule: rewarm });
    }

    #[test]
    fn an_outer_warmup_ramps_the_first_outer_steps_and_is_left_out_when_none() {
        let plain = Nesterov::default();
        for step in [1, 2, 100] {
            assert_eq!(plain.lr_at(step).to_bits(), plain.lr.to_bits(), "no ramp: the rate itself");
        }
        let ramped = Nesterov { warmup: 3, ..Nesterov::default() };
        assert_eq!(ramped.lr_at(1), (0.7f64 / 4.0) as f32);
        assert_eq!(ramped.lr_at(3), (0.7f64 * 3.0 / 4.0) as f32);
        assert_eq!(ramped.lr_at(4), 0.7);
        assert!(!serde_json::to_string(&plain).unwrap().contains("warmup"), "configurations keep their form");
        let json = serde_json::to_string(&ramped).unwrap();
        assert!(json.contains("\"warmup\":3"), "{json}");
        assert_eq!(serde_json::from_str::<Nesterov>(&json).unwrap(), ramped);
    }

    #[test]
    fn warmup_cosine_is_nanogpts_schedule() {
        // nanoGPT's get_lr(it) with lr 1, min_lr 0.1, warmup 100, decay 2000.
        let schedule = Schedule::WarmupCosine { warmup_steps: 100, total_steps: 2000, final_fraction: 0.1 };
        let nanogpt = |it: u64| -> f64 {
            if it < 100 {
                return (it + 1) as f64 / 101.0;
            }
            if it > 2000 {
                return 0.1;
            }
            let ratio = (it - 100) as f64 / 1900.0;
            0.1 + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * 0.9
        };
        for it in [0, 1, 50, 99, 100, 101, 1000, 1999, 2000, 2001, 5000] {
            assert!((f64::from(schedule.factor(it + 1)) - nanogpt(it)).abs() < 1e-6, "iteration {it}");
        }
    }
}
