//! Fuzz targets for every crowdtrain decoder of untrusted bytes.
//!
//! Each [`Target`] is one function from bytes to a [`Verdict`] that feeds
//! them to a public decoder and asserts what must hold of the result (see
//! [`targets`]); [`run`] calls it under a memory budget ([`budget`]). Two
//! drivers share the table:
//!
//! - `cargo test -p crowdtrain-fuzz-targets` replays every committed input
//!   (`corpus/<target>/` and `regressions/<target>/`) through every target,
//!   and checks that each target accepts its valid seeds: CI keeps every
//!   crash ever found fixed, in seconds;
//! - `scripts/fuzz.sh` builds the `crowdtrain-fuzz` binary (feature
//!   `libfuzzer`, coverage-instrumented on stable Rust) and fuzzes each
//!   target for a set time.
//!
//! Adding a target: write `fn(&[u8]) -> Verdict` in [`targets`], a seeds
//! function in [`seeds`] (valid inputs from the real encoders), and one
//! line in [`TARGETS`].

pub mod budget;
pub mod seeds;
pub mod targets;

/// What a target made of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The decoder accepted it (and every property held).
    Accepted,
    /// The decoder refused it with an error.
    Rejected,
}

/// One fuzz target.
pub struct Target {
    /// The name `scripts/fuzz.sh` and the corpus directories use.
    pub name: &'static str,
    /// What it decodes, for `--list` and the docs.
    pub decodes: &'static str,
    pub run: fn(&[u8]) -> Verdict,
    /// Valid inputs, made with the real encoders.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Memory the decoder may hold whatever its input: [`BUDGET_FLOOR`],
    /// or a cap the decoder documents.
    pub floor: usize,
    /// Bytes of memory one input byte may become, beyond the floor.
    pub expansion: usize,
}

/// Memory a decoder may hold whatever its input, unless it documents a
/// larger cap.
pub const BUDGET_FLOOR: usize = 64 << 20;

/// What most decoders may make of one input byte: a postcard `None` is
/// one byte and becomes a 33-byte `Option<Digest>`.
const EXPANSION: usize = 64;

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "coordinator-request",
        decodes: "auth header, commitment (JSON), audit answer with its proofs and start state, auditor report (postcard), hex digests in paths and queries",
        run: targets::coordinator_request,
        seeds: seeds::coordinator_request,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "worker-answer",
        decodes: "signed run info, registration, round view and receipt (JSON), refusals, signed audit task (postcard), run status",
        run: targets::worker_answer,
        seeds: seeds::worker_answer,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "ledger-entry",
        decodes: "ledger entries (postcard) as `crowdtrain ledger verify` reads them",
        run: targets::ledger_entry,
        seeds: seeds::ledger_entry,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "checkpoint",
        decodes: "safetensors checkpoints: parameters (the worker's model download), outer momentum, aggregator state, outer momentum with exact parameters",
        run: targets::checkpoint,
        seeds: seeds::checkpoint,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "codec",
        decodes: "encoded pseudo-gradients (reveal bodies), f32 and int8",
        run: targets::codec,
        seeds: seeds::codec,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "model-delta",
        decodes: "model deltas (`GET /v1/models/{digest}/delta`, `[outer] broadcast`), applied to the model a worker holds",
        run: targets::model_delta,
        seeds: seeds::model_delta,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "train-state",
        decodes: "`TrainState::from_bytes` (audit answers' and tasks' start states)",
        run: targets::train_state,
        seeds: seeds::train_state,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "idx",
        decodes: "IDX data files, raw or gzipped",
        run: targets::idx,
        seeds: seeds::idx,
        // The format's documented cap: a header may reserve that much
        // before the data is read (gzip can make it real from 256 KB).
        floor: BUDGET_FLOOR + crowdtrain_data::idx::IDX_PAYLOAD_BYTES_MAX as usize,
        expansion: EXPANSION,
    },
    Target {
        name: "run-config",
        decodes: "`run.toml` (RunConfig), and its JSON trip to workers",
        run: targets::run_config,
        seeds: seeds::run_config,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "scenario",
        decodes: "contract scenario files (TOML)",
        run: targets::scenario,
        seeds: seeds::scenario,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
    Target {
        name: "merkle-proof",
        decodes: "Merkle proofs chosen by the prover, verified against commitments",
        run: targets::merkle_proof,
        seeds: seeds::merkle_proof,
        floor: BUDGET_FLOOR,
        expansion: EXPANSION,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

/// Runs `target` over `data` within its memory budget.
pub fn run(target: &Target, data: &[u8]) -> Verdict {
    let budget = target.floor.saturating_add(target.expansion.saturating_mul(data.len()));
    budget::run_within(budget, || (target.run)(data))
}

/// The fixed world the targets decode in: a tiny model, a run, the
/// coordinator's key and a key that signs nothing.
pub mod fixtures {
    use std::sync::LazyLock;

    use crowdtrain_protocol::{Digest, Identity, PublicKey};
    use crowdtrain_train::{ParamLayout, ParamSpec};

    /// The model states and checkpoints are for.
    pub const MODEL_NAME: &str = "fuzz-2x3";
    /// Its parameter count: `w [3, 2]` and `b [2]`.
    pub const PARAMETERS: usize = 8;
    /// The run requests are signed for.
    pub const RUN: Digest = Digest([0x5a; 32]);

    /// The parameters a worker holds when it applies a model delta.
    pub fn held_model() -> Vec<f32> {
        (0..PARAMETERS).map(|i| (i as f32 * 0.7).sin()).collect()
    }

    /// The model's tensors.
    pub fn layout() -> &'static ParamLayout {
        static LAYOUT: LazyLock<ParamLayout> = LazyLock::new(|| {
            ParamLayout::new(vec![ParamSpec::new("b", &[2], 3), ParamSpec::new("w", &[3, 2], 3)])
        });
        &LAYOUT
    }

    /// The coordinator: it signs the seeds.
    pub fn coordinator() -> &'static Identity {
        static COORDINATOR: LazyLock<Identity> = LazyLock::new(|| Identity::from_seed([0xc0; 32]));
        &COORDINATOR
    }

    /// A valid key that never signs anything.
    pub fn stranger() -> PublicKey {
        static STRANGER: LazyLock<PublicKey> = LazyLock::new(|| Identity::from_seed([0x57; 32]).public_key());
        *STRANGER
    }
}
