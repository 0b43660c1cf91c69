//! A run with a bucket (`[storage] url = "s3://..."`), against a real
//! S3-compatible server (s3s-fs) on loopback: workers fetch models and
//! deltas from the bucket, upload their updates and audit answers to it and
//! wait on the round notices there; the coordinator serves only metadata,
//! checks every object it reads, and survives a SIGKILL.

mod common;

use common::*;
use crowdtrain_node::storage::{BlobKey, Bucket, RUN_DIGITS};
use crowdtrain_protocol::Digest;
use crowdtrain_protocol::config::StorageSection;
use crowdtrain_protocol::wire::{ErrorCode, Phase, Receipt, ReceiptStatus, RunStatus};
use crowdtrain_protocol::{RoundView, Signed};
use crowdtrain_train::{Broadcast, Codec, Nesterov};

/// A run of `rounds` rounds with its blobs in `server`'s bucket.
fn network_with_bucket(
    server: &S3Server,
    rounds: u64,
    inner_steps: u64,
    audit_probability: f64,
    round_section: &str,
) -> Network {
    let storage = S3Server::storage_section("runs");
    let mut network = Network::with_extra(rounds, inner_steps, audit_probability, round_section, &storage);
    network.env = server.env();
    network
}

/// The value of metric line `name` (with its labels), 0 if absent.
fn metric(network: &Network, name: &str) -> u64 {
    let text = get_text(&format!("{}/metrics", network.url())).1;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

/// The bucket of run `run` as a worker reaches it, with the credentials
/// it has.
fn worker_bucket(server: &S3Server, run: &Digest) -> Bucket {
    let section = StorageSection { url: format!("s3://{}/runs", S3Server::BUCKET) };
    Bucket::open_with_env(&section, run, server.env()).unwrap()
}

/// A one-round run for two hand-driven workers (keys of `seeds`, both
/// joined) with uploads of at most 300 kB (an int8 update of the
/// 0.2M-parameter MLP fits), its coordinator started, and its bucket.
fn hand_driven(
    server: &S3Server,
    audit_probability: f64,
    seeds: (u8, u8),
) -> (Network, HandWorker, HandWorker, Bucket) {
    let round_section = "min_workers = 2\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 60000";
    let extra = format!("{}[limits]\nmax_upload_bytes = 300000\n", S3Server::storage_section("runs"));
    let mut network = Network::with_extra(1, 8, audit_probability, round_section, &extra);
    network.env = server.env();
    network.start_coordinator();
    let (first, second) = (HandWorker::join(&network, seeds.0), HandWorker::join(&network, seeds.1));
    let bucket = worker_bucket(server, &first.run.run_id);
    (network, first, second, bucket)
}

#[test]
fn a_networked_run_through_a_bucket_reproduces_the_simulation_and_serves_no_model() {
    // Goal: with a bucket, the run's bits are the simulation's, workers
    // take every model from the bucket and put every update there, and the
    // coordinator sends no model byte (it refuses to). Method: three
    // honest workers, half the submissions audited.
    let server = S3Server::start();
    let mut network = network_with_bucket(&server, 3, 12, 0.5, "min_workers = 3\ndeadline_ms = 60000");
    let (status, summaries) = network.run_honest_workers(3);
    assert_eq!(status.completed_rounds, 3);
    assert_eq!(status.state_hash, simulated_state_hash(3, 3, 12), "the same bits as without a bucket");
    for summary in summaries {
        assert_eq!(summary["reveals_accepted"], 3, "{summary}");
        assert!(summary["bytes_downloaded"].as_u64().unwrap() > 0, "models came from the bucket: {summary}");
    }
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 3 && worker.slashed == 0));
    assert_eq!(metric(&network, "crowdtrain_served_bytes_total"), 0, "no model served by the coordinator");
    assert_eq!(metric(&network, "crowdtrain_sent_bytes_total{endpoint=\"/v1/models/{digest}\"}"), 0);
    assert!(metric(&network, "crowdtrain_sent_bytes_total{endpoint=\"/v1/round\"}") > 0, "egress is counted");
    // Every model the run trained from, and each worker's three updates,
    // under their keys in the bucket.
    let run_id = status.run_id;
    let models = server.objects(&format!("runs/{}/models", &run_id.to_hex()[..RUN_DIGITS]));
    assert!(models.len() >= 3, "{models:?}");
    for model in &models {
        let bytes = std::fs::read(model).unwrap();
        assert_eq!(
            Digest::of(&bytes).to_hex(),
            model.file_name().unwrap().to_string_lossy(),
            "content-addressed"
        );
    }
    let updates = server.objects(&format!("runs/{}/updates", &run_id.to_hex()[..RUN_DIGITS]));
    assert_eq!(updates.len(), 9, "{updates:?}");
    // And the coordinator refuses to serve a model itself.
    let (code, text) = get_text(&format!("{}/v1/models/{}", network.url(), status.model.to_hex()));
    assert_eq!(code, 404);
    assert!(text.contains("bucket"), "{text}");
}

#[test]
fn a_reveal_whose_object_is_missing_altered_or_not_committed_is_refused() {
    // Goal: the coordinator counts an update from the bucket only if it is
    // the object the signed reveal names, under the signer's own key, with
    // the digest it is named by and the one committed; anything else is a
    // clear refusal, and a bad or missing object changes nothing (the
    // worker can still reveal). Method: two hand-driven workers.
    let server = S3Server::start();
    let (network, honest, liar, bucket) = hand_driven(&server, 0.0, (21, 22));
    let runtime = runtime();
    let put = |key: BlobKey, bytes: Vec<u8>| runtime.block_on(bucket.put(&key, bytes)).unwrap();
    let assignment = honest.view().assignment.unwrap();
    let (round, base) = (assignment.round, assignment.base_model);
    let (honest_id, liar_id) = (assignment.worker, liar.view().assignment.unwrap().worker);
    let (good, other) = (honest.update(1e-3), liar.update(2e-3));
    assert_eq!(honest.commit(round, &base, &good).0, 200);
    assert_eq!(liar.commit(round, &base, &other).0, 200);
    let view = honest.view();
    assert_eq!(view.phase, Phase::Revealing, "{view:?}");
    let reveal = |worker: &HandWorker, object: Option<&Digest>, body: Vec<u8>| {
        let mut path = worker.path("reveals", round, &base);
        if let Some(object) = object {
            path.push_str(&format!("&object={}", object.to_hex()));
        }
        worker.send("POST", &path, body, worker.nonce(), worker.run.run_id)
    };
    let good_digest = Digest::of(&good);

    // Not uploaded yet.
    let (status, code, message) = refusal(&reveal(&honest, Some(&good_digest), Vec::new()));
    assert_eq!((status, code), (422, ErrorCode::BadObject), "{message}");
    assert!(message.contains("not in the bucket"), "{message}");
    // Under another worker's prefix: the coordinator reads only the signer's.
    put(BlobKey::Update { worker: liar_id, digest: good_digest }, good.clone());
    let (status, code, message) = refusal(&reveal(&honest, Some(&good_digest), Vec::new()));
    assert_eq!((status, code), (422, ErrorCode::BadObject), "{message}");
    assert!(message.contains("not in the bucket"), "{message}");
    // Altered: other bytes under the good update's key.
    put(BlobKey::Update { worker: honest_id, digest: good_digest }, other.clone());
    let (status, code, message) = refusal(&reveal(&honest, Some(&good_digest), Vec::new()));
    assert_eq!((status, code), (422, ErrorCode::BadObject), "{message}");
    assert!(message.contains("altered"), "{message}");
    // Larger than an upload may be: refused before it is read.
    let huge = vec![7u8; 300_001];
    let huge_digest = Digest::of(&huge);
    put(BlobKey::Update { worker: honest_id, digest: huge_digest }, huge);
    let (status, code, message) = refusal(&reveal(&honest, Some(&huge_digest), Vec::new()));
    assert_eq!((status, code), (422, ErrorCode::BadObject), "{message}");
    assert!(message.contains("at most 300000"), "{message}");
    // Inline, past the bucket.
    let (status, code, message) = refusal(&reveal(&honest, None, good.clone()));
    assert_eq!((status, code), (400, ErrorCode::BadRequest), "{message}");
    assert!(message.contains("bucket"), "{message}");
    let view = honest.view();
    assert!(!view.revealed, "nothing of the refused reveals was recorded");

    // The object as committed counts.
    put(BlobKey::Update { worker: honest_id, digest: good_digest }, good.clone());
    let answer = reveal(&honest, Some(&good_digest), Vec::new());
    assert_eq!(answer.0, 200, "{}", String::from_utf8_lossy(&answer.1));
    // A well-formed object that is not what was committed: refused and
    // recorded as rejected, like any reveal that contradicts its commitment
    // (and slashed by the run's stake, none here).
    let uncommitted = liar.update(3e-3);
    let uncommitted_digest = Digest::of(&uncommitted);
    put(BlobKey::Update { worker: liar_id, digest: uncommitted_digest }, uncommitted);
    let (status, code, message) = refusal(&reveal(&liar, Some(&uncommitted_digest), Vec::new()));
    assert_eq!((status, code), (409, ErrorCode::RevealMismatch), "{message}");

    let status = network.wait_for(60, "the round to close", |status| status.completed_rounds == 1);
    let worker = |key| status.workers.iter().find(|worker| worker.public_key == key).unwrap();
    let (honest_key, liar_key) = (honest.identity.public_key(), liar.identity.public_key());
    assert_eq!(worker(honest_key).submissions_accepted, 1, "{:?}", status.workers);
    assert_eq!(worker(liar_key).submissions_accepted, 0, "{:?}", status.workers);
    assert_eq!(worker(liar_key).submissions_rejected, 1, "refused as a mismatch: {:?}", status.workers);
}

/// Runs 4 rounds of 150 steps with two workers and half the submissions
/// audited, SIGKILLs the coordinator mid-round, calls `meanwhile` with the
/// status before the kill and the coordinator's state directory, restarts it, and checks that the run ends on the
/// uninterrupted run's bits with nothing accepted lost and its ledger
/// intact. Returns the network (for its logs).
fn killed_coordinator_ends_bit_identical(
    server: &S3Server,
    meanwhile: impl FnOnce(&RunStatus, &std::path::Path),
) -> Network {
    let mut network = network_with_bucket(server, 4, 150, 0.5, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    network.start_worker(1);
    let state = network.path("state");
    network.kill_coordinator_mid_round(|before| meanwhile(before, &state));
    let status = network.wait_for(180, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 4);
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 4), "{:?}", status.workers);
    assert_eq!(status.state_hash, simulated_state_hash(2, 4, 150), "same bits as an uninterrupted run");
    for output in network.join_workers() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert!(network.ledger(&["verify"]).status.success());
    network
}

#[test]
fn a_coordinator_killed_with_a_bucket_resumes_and_ends_bit_identical() {
    // Goal: a SIGKILLed coordinator of a run with a bucket loses nothing
    // accepted, publishes its latest model again if the kill took the
    // upload, and ends on the uninterrupted run's bits.
    let server = S3Server::start();
    killed_coordinator_ends_bit_identical(&server, |before, _| {
        // As if the kill took the latest model's upload: the restarted
        // coordinator must publish it again, or its workers wait in vain.
        let models = server.objects(&format!("runs/{}/models", &before.run_id.to_hex()[..RUN_DIGITS]));
        assert!(!models.is_empty());
        for model in models {
            std::fs::remove_file(model).unwrap();
        }
    });
}

#[test]
fn a_coordinator_that_kept_only_its_database_and_keys_resumes_from_the_bucket() {
    // Goal: with a bucket, the coordinator's state directory need keep only
    // its database (ledger, rounds, accepted updates) and its secrets: a
    // SIGKILLed coordinator whose checkpoints, deltas, audit answers and
    // uploads are gone reads back what it needs from the bucket and ends
    // on the uninterrupted run's bits, with nothing accepted lost.
    let server = S3Server::start();
    let network = killed_coordinator_ends_bit_identical(&server, |_, state| {
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(state).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let secret = name.ends_with(".key") || name.ends_with(".secret") || name.starts_with("admission");
            if name.starts_with("coordinator.sqlite") || secret {
                kept.push(name);
            } else if entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path()).unwrap();
            } else {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        assert!(kept.iter().any(|name| name == "coordinator.sqlite"), "{kept:?}");
    });
    // It could not have started without them (it loads the latest model
    // and optimizer state before it serves): they came from the bucket,
    // where every optimizer state is kept under its digest.
    let status = network.status().unwrap();
    let kept = server.objects(&format!("runs/{}/checkpoints", &status.run_id.to_hex()[..RUN_DIGITS]));
    assert!(kept.len() >= 4, "the first and each round's optimizer state: {kept:?}");
    for checkpoint in &kept {
        let name = checkpoint.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(Digest::of(&std::fs::read(checkpoint).unwrap()).to_hex(), name, "content-addressed");
    }
}
#[test]
fn a_run_through_a_bucket_with_deltas_and_audits_matches_the_simulation_and_asks_one_view_a_round() {
    // Goal: a compressed broadcast through a bucket: workers rebuild each
    // model from its delta in the bucket and end on the simulation's bits
    // with the same broadcast; every audit answer goes through the bucket;
    // workers wait on the bucket's round notice, so each asks the
    // coordinator for about one view a round. Method: three honest workers,
    // every submission audited, int8 deltas.
    let server = S3Server::start();
    let rounds = 4;
    let extra = format!("{}[outer]\nbroadcast = \"int8\"\n", S3Server::storage_section("runs"));
    let mut network = Network::with_extra(rounds, 30, 1.0, "min_workers = 3\ndeadline_ms = 60000", &extra);
    network.env = server.env();
    let (status, summaries) = network.run_honest_workers(3);
    assert_eq!(status.completed_rounds, rounds);
    let broadcast = Nesterov { broadcast: Broadcast::Delta(Codec::INT8), ..Nesterov::default() };
    let simulated = simulated_state_hash_of(3, rounds, 30, Default::default(), broadcast);
    assert_eq!(status.state_hash, simulated, "the same bits as the simulation with the same broadcast");
    for summary in &summaries {
        let (full, deltas) =
            (summary["full_model_downloads"].as_u64(), summary["delta_model_downloads"].as_u64());
        assert_eq!((full, deltas), (Some(1), Some(rounds - 1)), "one model whole, then deltas: {summary}");
        assert_eq!(summary["audits_answered"], rounds, "every submission audited: {summary}");
    }
    assert!(status.workers.iter().all(|worker| worker.audits_passed == rounds && worker.slashed == 0));
    let run = &status.run_id.to_hex()[..RUN_DIGITS];
    assert_eq!(
        server.objects(&format!("runs/{run}/answers")).len() as u64,
        3 * rounds,
        "answers in the bucket"
    );
    assert_eq!(
        server.objects(&format!("runs/{run}/deltas")).len() as u64,
        rounds,
        "a delta to each new model"
    );
    // The round notice: the coordinator's signed view of the run's end.
    let bucket = worker_bucket(&server, &status.run_id);
    let notice = runtime().block_on(bucket.get(&BlobKey::Notice, 16 * 1024)).unwrap();
    let notice: Signed<RoundView> = serde_json::from_slice(&notice).unwrap();
    let coordinator = HandWorker::unregistered(&network, 1).run.coordinator;
    let notice = notice.verify(&coordinator).expect("signed by the coordinator");
    assert_eq!((notice.phase, notice.completed_rounds), (Phase::Finished, rounds), "{notice:?}");
    assert_eq!(metric(&network, "crowdtrain_served_bytes_total"), 0, "no model served by the coordinator");
    // About one view a round (the round's assignment) besides the first
    // and the last, where a long-polling worker asks two or more.
    let views = metric(&network, "crowdtrain_answers_total{endpoint=\"/v1/round\"}");
    assert!(views <= 3 * (rounds + 3), "{views} round views for 3 workers and {rounds} rounds");
    let written = metric(&network, "crowdtrain_bucket_written_bytes_total");
    let model_bytes = (crowdtrain_train::build_model(Default::default()).layout().len() * 4) as u64;
    assert!(written > rounds * model_bytes, "the coordinator's egress to the bucket is counted: {written}");
}

#[test]
fn an_audit_answer_whose_object_is_missing_altered_or_oversized_is_refused_and_changes_nothing() {
    // Goal: an audit answer read from the bucket is the object the signed
    // post names, under the signer's own prefix, hashing to its name and
    // within the upload limit; anything else is a clear refusal that
    // records nothing (the audit is still unanswered), and the object that
    // is read goes through the same checks as an answer sent inline.
    // Method: two hand-driven workers, every commitment audited.
    let server = S3Server::start();
    let (_network, audited, other, bucket) = hand_driven(&server, 1.0, (31, 32));
    let runtime = runtime();
    let put = |key: BlobKey, bytes: Vec<u8>| runtime.block_on(bucket.put(&key, bytes)).unwrap();
    let assignment = audited.view().assignment.unwrap();
    let (round, base) = (assignment.round, assignment.base_model);
    let (audited_id, other_id) = (assignment.worker, other.view().assignment.unwrap().worker);
    let (status, body) = audited.commit(round, &base, &audited.update(1e-3));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let receipt: Signed<Receipt> = serde_json::from_slice(&body).unwrap();
    assert!(receipt.body.audit.is_some(), "drawn for audit at once: {:?}", receipt.body);
    let answer = |object: Option<&Digest>, body: Vec<u8>| {
        let mut path = format!("/v1/rounds/{round}/audits");
        if let Some(object) = object {
            path.push_str(&format!("?object={}", object.to_hex()));
        }
        audited.send("POST", &path, body, audited.nonce(), audited.run.run_id)
    };
    let unanswered = || {
        let view: RoundView = audited.view();
        view.audit.is_some() && !view.audit_answered
    };
    // Not a well-formed answer, but the bucket's checks come first.
    let bytes = b"an answer that does not decode".to_vec();
    let digest = Digest::of(&bytes);
    let refused = |expected: &str| {
        let (status, code, message) = refusal(&answer(Some(&digest), Vec::new()));
        assert_eq!((status, code), (422, ErrorCode::BadObject), "{message}");
        assert!(message.contains(expected), "{message}");
    };
    refused("not in the bucket");
    put(BlobKey::Answer { worker: other_id, digest }, bytes.clone());
    refused("not in the bucket");
    put(BlobKey::Update { worker: audited_id, digest }, bytes.clone());
    refused("not in the bucket");
    put(BlobKey::Answer { worker: audited_id, digest }, b"other bytes".to_vec());
    refused("altered");
    let huge = vec![9u8; 300_001];
    let huge_digest = Digest::of(&huge);
    put(BlobKey::Answer { worker: audited_id, digest: huge_digest }, huge);
    let (status, code, message) = refusal(&answer(Some(&huge_digest), Vec::new()));
    assert_eq!((status, code), (422, ErrorCode::BadObject), "{message}");
    assert!(message.contains("at most 300000"), "{message}");
    let (status, code, message) = refusal(&answer(None, bytes.clone()));
    assert_eq!((status, code), (400, ErrorCode::BadRequest), "{message}");
    assert!(message.contains("bucket"), "{message}");
    assert!(unanswered(), "nothing of the refused answers was recorded");
    // The object as named is read and judged like an inline answer: this
    // one does not decode, so the audit fails.
    put(BlobKey::Answer { worker: audited_id, digest }, bytes.clone());
    let (status, body) = answer(Some(&digest), Vec::new());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let receipt: Signed<Receipt> = serde_json::from_slice(&body).unwrap();
    assert_eq!(receipt.body.status, ReceiptStatus::Failed, "{:?}", receipt.body);
    assert_eq!(receipt.body.digest, digest, "the receipt names the object read");
    assert!(!unanswered(), "judged");
}

#[test]
fn forged_oversized_and_stale_round_notices_delay_a_worker_but_never_mislead_it() {
    // Goal: a round notice is untrusted: one not signed by the coordinator,
    // one too large to read, and a replay of an older one are ignored, so
    // whoever can write to the bucket can delay workers (they fall back on
    // asking the coordinator) but never make them act on a false state.
    // Method: a real worker and a hand-driven one that commits 4 s late;
    // meanwhile the notice is overwritten again and again with forged
    // "round 0 reveals" and "the run is over" views, an oversized object and
    // the run's first notice replayed. A worker that believed the forged
    // reveal would reveal before the coordinator takes reveals and lose its
    // round; this one waits, reveals when the round really reveals, and its
    // update is accepted.
    let server = S3Server::start();
    let round_section = "min_workers = 2\nquorum = 1\ndeadline_ms = 120000\nreveal_ms = 60000";
    let mut network = network_with_bucket(&server, 1, 12, 0.0, round_section);
    network.start_coordinator();
    let hand = HandWorker::join(&network, 41);
    let bucket = worker_bucket(&server, &hand.run.run_id);
    let runtime = runtime();
    let first = runtime.block_on(bucket.get(&BlobKey::Notice, 16 * 1024)).expect("published at start");
    let first_view = serde_json::from_slice::<Signed<RoundView>>(&first).unwrap().body;
    let forger = crowdtrain_protocol::Identity::from_seed([66; 32]);
    let secret = Some(crowdtrain_protocol::wire::Secret([0; 32]));
    let done = std::sync::atomic::AtomicBool::new(false);
    network.start_worker(0);
    let assignment = loop {
        if let Some(assignment) = hand.view().assignment {
            break assignment;
        }
    };
    let (round, base) = (assignment.round, assignment.base_model);
    let revealing =
        RoundView { phase: Phase::Revealing, round: Some(round), model: base, secret, ..first_view.clone() };
    let finished = RoundView { phase: Phase::Finished, completed_rounds: 1, ..first_view };
    let forged = |view| serde_json::to_vec(&Signed::sign(&forger, view)).unwrap();
    let bad = [forged(revealing), forged(finished), vec![b' '; 17 * 1024], first];
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for bytes in bad.iter().cycle() {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                runtime.block_on(bucket.put(&BlobKey::Notice, bytes.clone())).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        std::thread::sleep(std::time::Duration::from_secs(4));
        let update = hand.update(1e-3);
        assert_eq!(hand.commit(round, &base, &update).0, 200);
        let digest = Digest::of(&update);
        runtime.block_on(bucket.put(&BlobKey::Update { worker: assignment.worker, digest }, update)).unwrap();
        let path = format!("{}&object={}", hand.path("reveals", round, &base), digest.to_hex());
        let (status, body) = hand.send("POST", &path, Vec::new(), hand.nonce(), hand.run.run_id);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        network.wait_for(120, "the round to close", |status| status.completed_rounds == 1);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let output = network.join_workers().remove(0);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((&summary["reveals_accepted"], &summary["refused"]), (&1.into(), &0.into()), "{summary}");
}
