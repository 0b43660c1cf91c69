//! A run with a bucket (`[storage] url = "s3://..."`), against a real
//! S3-compatible server (s3s-fs) on loopback: workers fetch models from the
//! bucket and upload their updates to it, the coordinator serves only
//! metadata, checks every object it reads, and survives a SIGKILL.

mod common;

use common::*;
use crowdtrain_node::storage::{BlobKey, Bucket, RUN_DIGITS};
use crowdtrain_protocol::Digest;
use crowdtrain_protocol::config::StorageSection;
use crowdtrain_protocol::wire::{ErrorCode, Phase};

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
    let round_section = "min_workers = 2\nquorum = 1\ndeadline_ms = 60000\nreveal_ms = 60000";
    // Uploads of at most 300 kB: an int8 update of the 0.2M-parameter MLP fits.
    let extra = format!("{}[limits]\nmax_upload_bytes = 300000\n", S3Server::storage_section("runs"));
    let mut network = Network::with_extra(1, 8, 0.0, round_section, &extra);
    network.env = server.env();
    network.start_coordinator();
    let (honest, liar) = (HandWorker::join(&network, 21), HandWorker::join(&network, 22));
    let section = StorageSection { url: format!("s3://{}/runs", S3Server::BUCKET) };
    // The bucket as a worker reaches it, with the credentials it has.
    let bucket = Bucket::open_with_env(&section, &honest.run.run_id, server.env()).unwrap();
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

#[test]
fn a_coordinator_killed_with_a_bucket_resumes_and_ends_bit_identical() {
    // Goal: a SIGKILLed coordinator of a run with a bucket loses nothing
    // accepted, publishes its latest model again if the kill took the
    // upload, and ends on the uninterrupted run's bits.
    let server = S3Server::start();
    let mut network = network_with_bucket(&server, 4, 150, 0.5, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    network.start_worker(1);
    network.kill_coordinator_mid_round(|before| {
        // As if the kill took the latest model's upload: the restarted
        // coordinator must publish it again, or its workers wait in vain.
        let models = server.objects(&format!("runs/{}/models", &before.run_id.to_hex()[..RUN_DIGITS]));
        assert!(!models.is_empty());
        for model in models {
            std::fs::remove_file(model).unwrap();
        }
    });
    let status = network.wait_for(180, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 4);
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 4), "{:?}", status.workers);
    assert_eq!(status.state_hash, simulated_state_hash(2, 4, 150), "same bits as an uninterrupted run");
    for output in network.join_workers() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert!(network.ledger(&["verify"]).status.success());
}
