//! Valid inputs for each target, made with the real encoders: where
//! fuzzing starts, and what the corpus replay checks each target accepts
//! (a target that refuses valid input would fuzz only error paths).

use std::collections::BTreeMap;
use std::io::Write as _;

use crowdtrain_data::Sharding;
use crowdtrain_defense::AggregatorState;
use crowdtrain_protocol::coordinator::{Recorded, Verdict};
use crowdtrain_protocol::ledger::{Chain, Event, PayGate, Reward};
use crowdtrain_protocol::merkle;
use crowdtrain_protocol::wire::{
    ApiError, Assignment, AuditAnswer, AuditReport, AuditTask, AuditTaskRef, BodyDeclaration,
    DatasetFingerprint, ErrorCode, PROTOCOL_VERSION, Phase, Receipt, ReceiptStatus, RegisterRequest,
    Registration, RunInfo, RunStatus, Secret, Stage,
};
use crowdtrain_protocol::{
    Commitment, Digest, Identity, RequestAuth, RoundView, RunConfig, Signed, WorkerId,
};
use crowdtrain_store::checkpoint::{self, CheckpointKind};
use crowdtrain_store::delta::ModelDelta;
use crowdtrain_train::{AdamW, Codec, Encode, TrainState, TrainingRecipe};
use serde::Serialize;

use crate::fixtures::{MODEL_NAME, PARAMETERS, RUN, coordinator, layout};

const RUN_TOML: &str = include_str!("../../../examples/run.toml");
const SCENARIOS: &[&str] = &[
    include_str!("../../../examples/contracts/paper_s1.toml"),
    include_str!("../../../examples/contracts/consortium_merged.toml"),
    include_str!("../../../examples/contracts/sqrt_toy.toml"),
    include_str!("../../../examples/contracts/large_n1000_i10_spread.toml"),
];

fn tagged(tag: u8, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.extend_from_slice(body.as_ref());
    bytes
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("seeds serialise")
}

fn postcard<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("seeds encode")
}

fn values(count: usize) -> Vec<f32> {
    (0..count).map(|index| (index as f32 * 0.37).sin() * 2.5).collect()
}

/// A state of the fixture model at `step`.
fn state(step: u64) -> TrainState {
    let mut state = TrainState::new(MODEL_NAME.to_owned(), values(PARAMETERS));
    state.moments.first = values(PARAMETERS).iter().map(|value| value * 0.1).collect();
    state.moments.second = values(PARAMETERS).iter().map(|value| value * value).collect();
    state.step = step;
    state
}

/// A commitment to four segments of a worker's round, and an honest answer
/// to an audit of segment 2.
fn audit() -> (Commitment, AuditAnswer) {
    let boundaries: Vec<Digest> = (0..5).map(|step| Digest(state(step * 3).hash().0)).collect();
    let commitment = Commitment {
        merkle_root: merkle::root(&boundaries),
        payload: Digest::of(b"update"),
        segments: 4,
        residual_in: None,
        residual_out: None,
    };
    let answer = AuditAnswer {
        segment: 2,
        start_state: state(3).to_bytes(),
        start_proof: merkle::prove(&boundaries, 1),
        end_hash: boundaries[2],
        end_proof: merkle::prove(&boundaries, 2),
        residual_in: Vec::new(),
    };
    (commitment, answer)
}

pub fn coordinator_request() -> Vec<Vec<u8>> {
    let worker = Identity::from_seed([0x11; 32]);
    let header =
        RequestAuth::sign(&worker, &RUN, "POST", "/v1/rounds/3/commitments", 1_767_000_000_000_000, b"{}");
    let (commitment, answer) = audit();
    let report =
        AuditReport { end_hash: answer.end_hash, payload: Some(Digest::of(b"update")), residual_out: None };
    vec![
        tagged(0, header.to_header()),
        tagged(1, json(&commitment)),
        tagged(2, postcard(&answer)),
        tagged(3, postcard(&report)),
        tagged(3, postcard(&AuditReport { payload: None, ..report })),
        tagged(4, Digest::of(b"model").to_hex()),
        tagged(4, worker.public_key().to_hex()),
        tagged(4, String::from(header.signature)),
        tagged(5, BodyDeclaration::of(b"{}").to_header()),
        tagged(
            6,
            crowdtrain_protocol::admission::AdmissionToken::issue(
                &[7; 32],
                crowdtrain_protocol::admission::TokenId([3; 16]),
            )
            .to_string(),
        ),
        tagged(7, format!("# workers\n{}\n", worker.public_key().to_hex())),
        tagged(8, json(&RegisterRequest { class: "avx2-fma".into(), token: None, choice: None })),
    ]
}

fn assignment() -> Assignment {
    Assignment {
        run_id: RUN,
        round: 3,
        worker: WorkerId(1),
        slot: 0,
        slots: 2,
        base_model: Digest::of(b"model"),
        recipe: TrainingRecipe {
            inner_steps: 12,
            batch_size: 4,
            optimizer: AdamW::default(),
            codec: Codec::INT8,
            sharding: Sharding::Dirichlet { alpha: 0.5 },
            ..TrainingRecipe::with_seed(7)
        },
        segments: 4,
    }
}

pub fn worker_answer() -> Vec<Vec<u8>> {
    let identity = coordinator();
    let config = RunConfig::parse(RUN_TOML).expect("the example configuration is valid");
    let run = RunInfo {
        protocol_version: PROTOCOL_VERSION,
        run_id: RUN,
        coordinator: identity.public_key(),
        config,
        model_name: MODEL_NAME.to_owned(),
        parameters: PARAMETERS as u64,
        dataset: DatasetFingerprint { name: "fuzz".into(), train_examples: 10, digest: Digest::of(b"data") },
        initial_model: Digest::of(b"model"),
        admission: crowdtrain_protocol::config::AdmissionMode::Token,
    };
    let registration = Registration { run_id: RUN, worker: WorkerId(1), public_key: identity.public_key() };
    let view = RoundView {
        run_id: RUN,
        phase: Phase::Revealing,
        round: Some(3),
        completed_rounds: 3,
        model: Digest::of(b"model"),
        deadline_unix_ms: Some(1_767_000_000_000),
        secret_commitment: Some(Digest::of(b"secret")),
        secret: Some(Secret([9; 32])),
        assignment: Some(assignment()),
        committed: true,
        revealed: false,
        audit: Some(2),
        audit_answered: false,
        audit_task: Some(AuditTaskRef { worker: WorkerId(4), segment: 1 }),
        provisional: true,
        ahead: None,
    };
    let receipt = Receipt {
        run_id: RUN,
        round: 3,
        worker: WorkerId(1),
        stage: Stage::Commitment,
        status: ReceiptStatus::Accepted,
        digest: Digest::of(b"commitment"),
        received_unix_ms: 1_767_000_000_000,
        audit: Some(2),
    };
    let refusal = ApiError { error: ErrorCode::TooEarly, message: "the round is provisional".into() };
    let task = AuditTask {
        assignment: assignment(),
        segment: 2,
        start_state: state(3).to_bytes(),
        residual_in: Vec::new(),
    };
    let status = RunStatus {
        run_id: RUN,
        phase: Phase::Committing,
        round: Some(1),
        completed_rounds: 1,
        target_rounds: 20,
        model: Digest::of(b"model"),
        state_hash: state(0).hash().to_hex(),
        test_accuracy: Some(0.5),
        bytes_uploaded: 10,
        bytes_downloaded: 20,
        audit_answer_bytes: 30,
        workers: Vec::new(),
        rounds: Vec::new(),
        rounds_total: 0,
        max_participants: 8,
        admission: "token".into(),
        opened_ahead: 1,
        withdrawn_ahead: 0,
    };
    vec![
        tagged(0, json(&Signed::sign(identity, run))),
        tagged(1, json(&Signed::sign(identity, registration))),
        tagged(2, json(&Signed::sign(identity, view))),
        tagged(3, json(&Signed::sign(identity, receipt))),
        tagged(4, json(&refusal)),
        tagged(5, postcard(&Signed::sign(identity, task))),
        tagged(6, json(&status)),
    ]
}

pub fn ledger_entry() -> Vec<Vec<u8>> {
    let (commitment, _) = audit();
    let key = coordinator().public_key();
    let events = vec![
        Event::RunStarted {
            run_id: RUN,
            coordinator: key,
            config: Digest::of(b"c"),
            initial_model: Digest::of(b"m"),
            initial_momentum: Digest::of(b"z"),
        },
        Event::WorkerRegistered {
            worker: WorkerId(1),
            key,
            class: "avx2-fma".into(),
            registered_unix_ms: 4,
            token: Some(crowdtrain_protocol::admission::TokenId([1; 16])),
        },
        Event::RoundOpened {
            round: 0,
            base_model: Digest::of(b"m"),
            participants: vec![WorkerId(1), WorkerId(2)],
            opened_unix_ms: 4,
            commit_deadline_unix_ms: 5,
            secret_commitment: Digest::of(b"s"),
        },
        Event::Commitment {
            round: 0,
            worker: WorkerId(1),
            commitment,
            status: Recorded::Accepted,
            audit: Some(2),
            nonce: 6,
            received_unix_ms: 6,
        },
        Event::AuditDraw {
            round: 0,
            secret: [3; 32],
            beacon: Digest::of(b"b"),
            audits: vec![(WorkerId(1), 2)],
            auditors: vec![(WorkerId(1), WorkerId(2))],
            reveal_deadline_unix_ms: 9,
        },
        Event::Audit {
            round: 0,
            worker: WorkerId(1),
            segment: 2,
            verdict: Verdict::Failed("the end hash is not the one committed".into()),
            judged_by: Some(WorkerId(2)),
            sender: Some((WorkerId(2), 8)),
            decided_unix_ms: 8,
        },
        Event::Reward(Reward {
            round: 0,
            worker: WorkerId(1),
            score: 0.25,
            quality: 0.3,
            multiplier: 1.0,
            units: 200,
            credits: 200,
            deviation: Some(-0.4),
            gate: PayGate::Pass,
        }),
        Event::PayWithheld { round: 3, worker: WorkerId(2), first_round: 0, credits: 600 },
        model_rewarded(WorkerId(1), true),
        model_rewarded(WorkerId(2), false),
        Event::RoundClosed {
            round: 0,
            result_model: Digest::of(b"r"),
            result_momentum: Digest::of(b"z1"),
            result_aggregator: None,
            accepted: vec![WorkerId(1), WorkerId(2)],
            closed_unix_ms: 10,
        },
    ];
    let mut chain = Chain::empty();
    events.into_iter().map(|event| chain.append(coordinator(), 1_767_000_000_000, event).bytes).collect()
}

/// A participant's model reward: delivered (with its recipe) or withheld.
fn model_rewarded(worker: WorkerId, delivered: bool) -> Event {
    use crowdtrain_protocol::reward_model::{
        ModelReward, RewardOutcome, RewardRecipe, RunCheckpoint, Withheld,
    };
    let checkpoint = |round: Option<u64>, name: &[u8]| RunCheckpoint { round, model: Digest::of(name) };
    let outcome = if delivered {
        RewardOutcome::Delivered(RewardRecipe {
            model_name: MODEL_NAME.into(),
            metric: crowdtrain_protocol::reward_model::Metric::NegLoss { reference_loss: 4.17 },
            evaluation_set: Digest::of(b"test"),
            target: 0.81,
            tolerance: 0.005,
            lower: checkpoint(Some(2), b"r2"),
            upper: checkpoint(Some(3), b"r3"),
            coefficient: 0.5,
            reward_model: Digest::of(b"reward"),
            measured: 0.812,
            final_model: checkpoint(Some(9), b"r9"),
            final_measured: 0.86,
        })
    } else {
        RewardOutcome::Withheld(Withheld::UnderDelivered)
    };
    Event::ModelRewarded(ModelReward {
        worker,
        option: 1,
        coalition: vec![1, 2, 0],
        realised: 0.86,
        promised: 0.81,
        required_contribution: 1106,
        delivered_contribution: if delivered { 3200 } else { 640 },
        outcome,
    })
}

pub fn checkpoint() -> Vec<Vec<u8>> {
    let mut aggregator = AggregatorState { center: values(PARAMETERS), momenta: BTreeMap::new() };
    aggregator.momenta.insert(3, values(PARAMETERS).iter().map(|value| -value).collect());
    vec![
        tagged(0, checkpoint::encode(CheckpointKind::Params, MODEL_NAME, layout(), &values(PARAMETERS))),
        tagged(
            1,
            checkpoint::encode(CheckpointKind::OuterMomentum, MODEL_NAME, layout(), &values(PARAMETERS)),
        ),
        tagged(2, checkpoint::encode_aggregator(MODEL_NAME, &aggregator)),
        tagged(
            3,
            checkpoint::encode_outer(MODEL_NAME, layout(), &values(PARAMETERS), Some(&values(PARAMETERS))),
        ),
    ]
}

/// Deltas the held model rebuilds from: an int8 change, and an empty one.
pub fn model_delta() -> Vec<Vec<u8>> {
    let held = crate::fixtures::held_model();
    let encode = |params: &[f32]| checkpoint::encode(CheckpointKind::Params, MODEL_NAME, layout(), params);
    [values(PARAMETERS), vec![0.0; PARAMETERS]]
        .iter()
        .map(|change| {
            let change = Codec::INT8.encode(change).expect("finite values encode");
            let target =
                crowdtrain_train::diloco::apply_broadcast(&held, &change).expect("a small change applies");
            let (base, target) = (Digest::of(&encode(&held)), Digest::of(&encode(&target)));
            ModelDelta { round: 4, base, target, change }.encode()
        })
        .collect()
}

pub fn codec() -> Vec<Vec<u8>> {
    [
        ("f32", 5),
        ("int8", 5),
        ("int8", 300),
        ("q4", 70),
        ("q2", 70),
        ("topk:0.02+q4", 300),
        ("topk:0.01+q2", 300),
        ("topk:0.05", 300),
        ("topk:0.1+int8", 40),
    ]
    .into_iter()
    .map(|(codec, count)| {
        let codec: Codec = codec.parse().expect("a codec");
        codec.encode(&values(count)).expect("finite values encode")
    })
    .collect()
}

pub fn train_state() -> Vec<Vec<u8>> {
    vec![state(0).to_bytes(), state(9).to_bytes()]
}

pub fn idx() -> Vec<Vec<u8>> {
    let labels = crowdtrain_data::idx::encode_idx(&[6], &[0, 1, 2, 9, 4, 5]);
    let images = crowdtrain_data::idx::encode_idx(&[2, 3, 2], &[0, 255, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    let gzip = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("in memory");
        encoder.finish().expect("in memory")
    };
    vec![gzip(&labels), gzip(&images), labels, images]
}

pub fn run_config() -> Vec<Vec<u8>> {
    let dirichlet = RUN_TOML.replace("sharding = \"iid\"", "sharding = \"dirichlet:0.3\"");
    let contract = format!(
        "{RUN_TOML}\n[contract]\nparticipants = 4\nmetric = \"accuracy\"\n[contract.accuracy]\nkind = \"power-law\"\n\
         a_opt = 0.85\nb = 4.7\nc = 0.5\n[contract.valuation]\nscale = 100.0\n[[contract.types]]\ncost = 0.004\n\
         probability = 0.5\n[[contract.types]]\ncost = 0.0005\nprobability = 0.5\n"
    );
    let scenario_file = format!("{RUN_TOML}\n[contract]\nscenario = \"contracts/run.toml\"\n");
    vec![
        RUN_TOML.into(),
        dirichlet.into(),
        b"rounds = 5\n[training]\nseed = 3\n".to_vec(),
        contract.into_bytes(),
        scenario_file.into_bytes(),
    ]
}

pub fn scenario() -> Vec<Vec<u8>> {
    SCENARIOS.iter().map(|text| text.as_bytes().to_vec()).collect()
}

pub fn merkle_proof() -> Vec<Vec<u8>> {
    [(0u8, 0usize), (4, 3), (16, 16), (255, 100)]
        .into_iter()
        .map(|(count, index)| {
            let leaves: Vec<Digest> =
                (0..=u16::from(count)).map(|leaf| Digest::of(&leaf.to_le_bytes())).collect();
            tagged(count, postcard(&merkle::prove(&leaves, index)))
        })
        .collect()
}
