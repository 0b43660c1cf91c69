//! The targets: each feeds its bytes to one public decoder (or, for the
//! request and answer targets, to the decoder its first byte picks) and
//! asserts what must hold of what comes out. A panic anywhere is a crash.
//!
//! Properties, beyond "no panic, bounded memory" (the budget in
//! [`crate::budget`]):
//! - what decodes re-encodes to a value that decodes to itself (postcard
//!   and JSON), or to exactly the input where the format is canonical
//!   (the f32 codec, train states, raw IDX files);
//! - signatures nobody made never verify, and a Merkle proof verifies only
//!   if it is exactly the honest proof for its leaf;
//! - validated configurations survive the trips they take (TOML back to
//!   TOML, JSON to the workers).

use std::io::Write as _;
use std::path::PathBuf;

use crowdtrain_contract::Scenario;
use crowdtrain_data::idx;
use crowdtrain_protocol::admission::{AdmissionToken, parse_allow_list};
use crowdtrain_protocol::identity::SignatureBytes;
use crowdtrain_protocol::ledger::{self, Chain, Entry};
use crowdtrain_protocol::merkle::{self, Proof};
use crowdtrain_protocol::wire::{
    ApiError, AuditAnswer, AuditReport, AuditTask, BodyDeclaration, Receipt, RegisterRequest, Registration,
    RunInfo, RunStatus, Secret, SignedBody,
};
use crowdtrain_protocol::{Commitment, Digest, PublicKey, RequestAuth, RoundView, RunConfig, Signed};
use crowdtrain_store::checkpoint::{self, CheckpointKind};
use crowdtrain_store::delta::ModelDelta;
use crowdtrain_train::{Encode, StateHash, TrainState};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Verdict::{self, Accepted, Rejected};
use crate::fixtures::{self, MODEL_NAME, PARAMETERS, RUN, coordinator, layout, stranger};

fn verdict<T, E>(result: Result<T, E>) -> Verdict {
    if result.is_ok() { Accepted } else { Rejected }
}

/// The canonical bytes of a value: what signatures and digests cover.
fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("decoded values encode")
}

/// Decodes postcard, and checks that the value's encoding decodes to the
/// same encoding (postcard accepts some non-minimal varints, so the input
/// itself need not be canonical).
fn postcard_value<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let value: T = postcard::from_bytes(bytes)?;
    let encoded = canonical(&value);
    let again: T = postcard::from_bytes(&encoded).expect("our own encoding decodes");
    assert_eq!(canonical(&again), encoded, "postcard re-encoding is stable");
    Ok(value)
}

/// Decodes JSON, and checks that the value written back as JSON reads as
/// the same value (compared by canonical bytes, which floats survive).
/// JSON cannot carry every value (an `f32` field read as 1e39 is
/// infinite); such a value must only fail to read back, not change.
fn json_value<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let value: T = serde_json::from_slice(bytes)?;
    let text = serde_json::to_vec(&value).expect("decoded values serialise");
    if let Ok(again) = serde_json::from_slice::<T>(&text) {
        assert_eq!(canonical(&again), canonical(&value), "a JSON round trip changed the value");
    }
    Ok(value)
}

/// A coordinator-signed JSON value as a worker reads it: parsed, then
/// checked against the pinned key. A key that signed nothing never
/// verifies; the coordinator's own verifies only what it signed.
fn signed_json<T: SignedBody>(bytes: &[u8]) -> Verdict {
    let Ok(signed) = json_value::<Signed<T>>(bytes) else { return Rejected };
    assert!(signed.verify(&stranger()).is_err(), "a signature nobody made verified");
    verdict(signed.verify(&coordinator().public_key()))
}

/// Everything a request to the coordinator carries that it decodes: the
/// auth header, a commitment (JSON), an audit answer or a delegated
/// auditor's report (postcard), and a digest in a path or query. The first
/// byte picks which.
pub fn coordinator_request(data: &[u8]) -> Verdict {
    let Some((&kind, body)) = data.split_first() else { return Rejected };
    match kind % 9 {
        0 => auth_header(body),
        1 => verdict(json_value::<Commitment>(body)),
        2 => audit_answer(body),
        3 => verdict(postcard_value::<AuditReport>(body)),
        4 => hex_values(body),
        5 => body_declaration(body),
        6 => admission_token(body),
        7 => allow_list(body),
        _ => verdict(json_value::<RegisterRequest>(body)),
    }
}

/// `x-crowdtrain-body`: `<length>:<blake3>`, read before the body.
fn body_declaration(body: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(body) else { return Rejected };
    let Ok(declared) = BodyDeclaration::parse_header(text) else { return Rejected };
    assert_eq!(BodyDeclaration::parse_header(&declared.to_header()), Ok(declared), "the header round trips");
    Accepted
}

/// An admission token, as a registering worker sends it.
fn admission_token(body: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(body) else { return Rejected };
    let Ok(token) = AdmissionToken::parse(text) else { return Rejected };
    let again = AdmissionToken::parse(&token.to_string()).expect("a parsed token prints as one");
    assert_eq!(again.id, token.id, "the token round trips");
    Accepted
}

/// An allow-list file of public keys (the operator's, re-read while the
/// coordinator runs).
fn allow_list(body: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(body) else { return Rejected };
    verdict(parse_allow_list(text))
}

/// `x-crowdtrain-auth`: `<public key>:<nonce>:<signature>`.
fn auth_header(body: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(body) else { return Rejected };
    let Ok(auth) = RequestAuth::parse_header(text) else { return Rejected };
    assert_eq!(RequestAuth::parse_header(&auth.to_header()), Ok(auth), "the header round trips");
    // No seed signs this path: only a forgery could verify.
    assert!(
        auth.verify(&RUN, "POST", "/v1/fuzz", &BodyDeclaration::of(b"")).is_err(),
        "a signature nobody made verified"
    );
    Accepted
}

/// An audit answer, then the checks the coordinator runs on its fields
/// before any replay (`crowdtrain_protocol::judge::check_answer`): the
/// start state parses for the run's model, and the proofs against the
/// commitment's root.
fn audit_answer(body: &[u8]) -> Verdict {
    let Ok(answer) = postcard_value::<AuditAnswer>(body) else { return Rejected };
    if let Ok(state) = TrainState::from_bytes(&answer.start_state, MODEL_NAME, PARAMETERS) {
        assert_eq!(state.to_bytes(), answer.start_state);
    }
    // A root the answer cannot know (it would have to contain its own hash).
    let root = Digest::of(body);
    assert!(!merkle::verify(&root, &Digest::of(&answer.start_state), &answer.start_proof));
    assert!(!merkle::verify(&root, &answer.end_hash, &answer.end_proof));
    Accepted
}

/// The hex values of paths, queries and headers: digests (`/v1/models/{digest}`,
/// `?base_model=`), keys, signatures, secrets and state hashes. Each that
/// parses prints back to a text that parses to it.
fn hex_values(body: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(body) else { return Rejected };
    let mut accepted = Rejected;
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_hex().parse::<Digest>(), Ok(digest));
        accepted = Accepted;
    }
    if let Ok(key) = text.parse::<PublicKey>() {
        assert_eq!(key.to_hex().parse::<PublicKey>(), Ok(key));
        accepted = Accepted;
    }
    if let Ok(signature) = text.parse::<SignatureBytes>() {
        assert_eq!(String::from(signature).parse::<SignatureBytes>(), Ok(signature));
        accepted = Accepted;
    }
    if let Ok(secret) = Secret::try_from(text.to_owned()) {
        assert_eq!(Secret::try_from(String::from(secret)), Ok(secret));
        accepted = Accepted;
    }
    if let Ok(hash) = text.parse::<StateHash>() {
        assert_eq!(hash.to_hex().parse::<StateHash>(), Ok(hash));
        accepted = Accepted;
    }
    accepted
}

/// Everything a worker decodes from the coordinator: the signed run
/// description, registration, round view and receipt (JSON), refusals
/// (JSON), a delegated audit task (postcard) and the status page the demo
/// polls. The first byte picks which.
pub fn worker_answer(data: &[u8]) -> Verdict {
    let Some((&kind, body)) = data.split_first() else { return Rejected };
    match kind % 7 {
        0 => signed_json::<RunInfo>(body),
        1 => signed_json::<Registration>(body),
        2 => signed_json::<RoundView>(body),
        3 => signed_json::<Receipt>(body),
        4 => verdict(json_value::<ApiError>(body)),
        5 => audit_task(body),
        _ => verdict(json_value::<RunStatus>(body)),
    }
}

/// `GET /v1/rounds/{round}/audit-tasks/{worker}`: a signed task, then its
/// start state for the run's model.
fn audit_task(body: &[u8]) -> Verdict {
    let Ok(signed) = postcard_value::<Signed<AuditTask>>(body) else { return Rejected };
    assert!(signed.verify(&stranger()).is_err(), "a signature nobody made verified");
    let Ok(task) = signed.verify(&coordinator().public_key()) else { return Rejected };
    verdict(TrainState::from_bytes(&task.start_state, MODEL_NAME, PARAMETERS))
}

/// A ledger entry's bytes, as `crowdtrain ledger show` and `verify` decode
/// them from the state database. A decoded entry, sealed into a chain,
/// verifies and decodes to the same bytes.
pub fn ledger_entry(data: &[u8]) -> Verdict {
    let Ok(entry) = Entry::from_bytes(data) else { return Rejected };
    let bytes = entry.to_bytes();
    assert_eq!(Entry::from_bytes(&bytes).map(|again| again.to_bytes()), Ok(bytes), "re-encoding is stable");
    let identity = coordinator();
    let sealed = Chain::empty().append(identity, entry.unix_ms, entry.event.clone());
    let verified = ledger::verify([&sealed], &identity.public_key()).expect("a sealed entry verifies");
    assert_eq!(canonical(&verified[0].event), canonical(&entry.event));
    Accepted
}

/// A safetensors checkpoint: the parameters workers download and the
/// coordinator's outer momentum, or its aggregator state. The first byte
/// picks which. What decodes re-encodes to a file that decodes to the
/// same bits.
pub fn checkpoint(data: &[u8]) -> Verdict {
    let Some((&kind, body)) = data.split_first() else { return Rejected };
    let kind = match kind % 4 {
        0 => CheckpointKind::Params,
        1 => CheckpointKind::OuterMomentum,
        3 => {
            let Ok((momentum, exact)) = checkpoint::decode_outer(body, MODEL_NAME, layout()) else {
                return Rejected;
            };
            let again = checkpoint::encode_outer(MODEL_NAME, layout(), &momentum, exact.as_deref());
            let (momentum_again, exact_again) =
                checkpoint::decode_outer(&again, MODEL_NAME, layout()).expect("our own checkpoint decodes");
            assert!(bits(&momentum_again) == bits(&momentum), "a round trip changed the momentum");
            assert!(
                exact_again.map(|e| bits(&e)) == exact.map(|e| bits(&e)),
                "a round trip changed the exact model"
            );
            return Accepted;
        }
        _ => {
            let Ok(state) = checkpoint::decode_aggregator(body, MODEL_NAME, PARAMETERS) else {
                return Rejected;
            };
            let again = checkpoint::encode_aggregator(MODEL_NAME, &state);
            assert_eq!(checkpoint::decode_aggregator(&again, MODEL_NAME, PARAMETERS).ok(), Some(state));
            return Accepted;
        }
    };
    let Ok(values) = checkpoint::decode(body, kind, MODEL_NAME, layout()) else { return Rejected };
    let again = checkpoint::encode(kind, MODEL_NAME, layout(), &values);
    let decoded = checkpoint::decode(&again, kind, MODEL_NAME, layout()).expect("our own checkpoint decodes");
    assert!(bits(&decoded) == bits(&values), "a checkpoint round trip changed values");
    Accepted
}

/// A model delta, applied to the model a worker holds (a fixed one,
/// named by its checkpoint's digest). The header's encoding is canonical;
/// a delta that applies makes exactly the model it names.
pub fn model_delta(data: &[u8]) -> Verdict {
    let Ok(delta) = ModelDelta::decode(data) else { return Rejected };
    assert_eq!(delta.encode(), data, "the delta's encoding is canonical");
    let held = fixtures::held_model();
    let held_digest = Digest::of(&checkpoint::encode(CheckpointKind::Params, MODEL_NAME, layout(), &held));
    let Ok((params, bytes)) = delta.rebuild(&held_digest, &held, MODEL_NAME, layout()) else {
        return Rejected;
    };
    assert_eq!(Digest::of(&bytes), delta.target, "a delta makes the model it names");
    assert!(params.iter().all(|value| value.is_finite()));
    Accepted
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

/// An encoded pseudo-gradient (a reveal's body). The expected size is the
/// model's to the coordinator; here it is the count the header declares
/// when an input of its length could hold it, so the fuzzer reaches the
/// values. What
/// decodes re-encodes to bytes that decode: the f32 encoding is canonical,
/// top-k keeps every value it decoded (at most its count per chunk are
/// nonzero), and a quantiser stays within half a level of its block (a
/// whole level for q2, which has no zero).
pub fn codec(data: &[u8]) -> Verdict {
    use crowdtrain_train::codec::{INT8_BLOCK, QUANT_BLOCK, TOPK_CHUNK, Values, decode};
    let declared = data.get(6..14).map_or(0, |word| u64::from_le_bytes(word.try_into().expect("8 bytes")));
    // The densest encoding, top-k at one value a chunk, holds at most
    // TOPK_CHUNK values a byte: a larger count cannot be the input's.
    let expected = usize::try_from(declared).unwrap_or(usize::MAX).min(data.len() * TOPK_CHUNK);
    let Ok((codec, values)) = decode(data, expected) else { return Rejected };
    assert_eq!(values.len(), expected);
    let again = codec.encode(&values).expect("decoded values are finite");
    let (found, requantised) = decode(&again, expected).expect("our own encoding decodes");
    assert_eq!(found, codec);
    let (block, top, levels) = match codec.values {
        Values::F32 => {
            if codec.topk.is_none() {
                assert_eq!(again, data, "the f32 encoding is canonical");
            }
            assert!(values == requantised, "top-k dropped a value it decoded");
            return Accepted;
        }
        Values::Int8 => (INT8_BLOCK, 127.0, 0.5001),
        Values::Q4 => (QUANT_BLOCK, 7.0, 0.5001),
        Values::Q2 => (QUANT_BLOCK, 3.0, 1.0001),
    };
    // Top-k stores its kept values in blocks of their own, whose scales are
    // at most the largest value's; dense blocks are the values' own.
    let block = if codec.topk.is_some() { values.len().max(1) } else { block };
    for (index, (ours, theirs)) in values.chunks(block).zip(requantised.chunks(block)).enumerate() {
        let scale = ours.iter().fold(0.0f32, |max, value| max.max(value.abs())) / top;
        for (a, b) in ours.iter().zip(theirs) {
            // Within the level bound, with room for the roundings of the
            // division and product, and for blocks so small that their
            // scale is subnormal (or zero).
            assert!((a - b).abs() <= scale * levels + 1e-30, "{codec} block {index}: {a} became {b}");
        }
    }
    Accepted
}

/// A training state's canonical bytes (audit answers and tasks carry them).
/// The parameter count is the one the input's length implies, so the
/// fuzzer reaches the values; a state that parses is exactly its input,
/// and its hash is the hash of its bytes.
pub fn train_state(data: &[u8]) -> Verdict {
    let fixed = 8 + MODEL_NAME.len() + 8 + 8;
    let parameters = data.len().saturating_sub(fixed) / 12;
    let _ = TrainState::from_bytes(data, MODEL_NAME, PARAMETERS);
    let Ok(state) = TrainState::from_bytes(data, MODEL_NAME, parameters) else { return Rejected };
    assert_eq!(state.to_bytes(), data, "the serialisation is canonical");
    assert_eq!(state.hash(), TrainState::hash_bytes(data), "the hash covers exactly the bytes");
    Accepted
}

thread_local! {
    /// Where [`idx`] writes its input: `read_idx` reads files.
    static IDX_FILE: (tempfile::TempDir, PathBuf) = {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("input-idx");
        (dir, path)
    };
}

/// An IDX file, raw or gzipped, read as images (rank 3) and as labels
/// (rank 1) the way `--data DIR` is. What is read has exactly the data
/// its dimensions declare, and a raw file is exactly its re-encoding.
pub fn idx(data: &[u8]) -> Verdict {
    IDX_FILE.with(|(_, path)| {
        let mut file = std::fs::File::create(path).expect("the input file can be written");
        file.write_all(data).expect("the input file can be written");
        drop(file);
        let mut accepted = Rejected;
        for rank in [1, 3] {
            let Ok(array) = idx::read_idx(path, rank) else { continue };
            assert_eq!(array.dims.len(), usize::from(rank));
            let size = array.dims.iter().map(|&dim| dim as usize).product::<usize>();
            assert_eq!(array.data.len(), size);
            if !data.starts_with(&[0x1f, 0x8b]) {
                assert_eq!(idx::encode_idx(&array.dims, &array.data), data);
            }
            accepted = Accepted;
        }
        accepted
    })
}

/// `run.toml`. A configuration that validates is written back as TOML
/// and reads as the same configuration; it also reaches workers as JSON
/// inside the signed run description, and must read back from that too.
pub fn run_config(data: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(data) else { return Rejected };
    let Ok(config) = RunConfig::parse(text) else { return Rejected };
    let written = toml::to_string(&config).expect("a valid configuration serialises as TOML");
    let reread = RunConfig::parse(&written).expect("a written configuration reads back");
    assert_eq!(canonical(&reread), canonical(&config), "TOML changed the configuration");
    let json = serde_json::to_vec(&config).expect("a valid configuration serialises as JSON");
    let from_json: RunConfig = serde_json::from_slice(&json).expect("workers read the configuration");
    assert_eq!(canonical(&from_json), canonical(&config), "JSON changed the configuration");
    Accepted
}

/// A contract scenario file (`crowdtrain contract solve FILE`). One that
/// validates is in canonical form: costs strictly decreasing, positive
/// probabilities summing to 1, every input type mapped to one of them.
pub fn scenario(data: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(data) else { return Rejected };
    let Ok(scenario) = Scenario::from_toml_str(text) else { return Rejected };
    let costs = scenario.costs();
    assert!(costs.windows(2).all(|pair| pair[0] > pair[1]), "costs not strictly decreasing: {costs:?}");
    assert!(scenario.types.iter().all(|t| t.cost > 0.0 && t.probability > 0.0 && t.cost.is_finite()));
    let sum: f64 = scenario.probabilities().iter().sum();
    assert!((sum - 1.0).abs() < 1e-9, "probabilities sum to {sum}");
    assert!(scenario.input_to_type.iter().all(|&index| index < scenario.type_count()));
    Accepted
}

/// Merkle proofs chosen by the attacker, against a tree of 1 to 256
/// leaves the input also picks. An attacker's proof verifies only if it
/// is the honest proof of that very leaf; honest proofs always verify.
pub fn merkle_proof(data: &[u8]) -> Verdict {
    let Some((&count, rest)) = data.split_first() else { return Rejected };
    let leaves: Vec<Digest> = (0..=u16::from(count)).map(|index| Digest::of(&index.to_le_bytes())).collect();
    let root = merkle::root(&leaves);
    let pick = usize::from(rest.first().copied().unwrap_or(0)) % leaves.len();
    assert!(merkle::verify(&root, &leaves[pick], &merkle::prove(&leaves, pick)));
    let Ok(proof) = postcard_value::<Proof>(rest) else { return Rejected };
    let claimed = usize::try_from(proof.index).ok().and_then(|index| leaves.get(index));
    for leaf in [claimed.copied(), Some(Digest::of(rest))].into_iter().flatten() {
        if merkle::verify(&root, &leaf, &proof) {
            let index = proof.index as usize;
            assert_eq!(Some(&leaf), leaves.get(index), "a proof verified for a leaf not in the tree");
            assert_eq!(proof, merkle::prove(&leaves, index), "a proof other than the honest one verified");
        }
    }
    Accepted
}
