//! Model downloads resume where they stopped and never accept bytes that do
//! not hash to the digest asked for. A real coordinator (in this process)
//! on loopback, real files.

use std::path::PathBuf;
use std::time::Duration;

use crowdtrain_node::coordinator::{Node, serve};
use crowdtrain_node::worker::{Client, ModelCache};
use crowdtrain_protocol::{Identity, RunConfig};

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/assets/fashion-mnist-subset")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_download_resumes_and_a_corrupt_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        RunConfig::parse(&format!("rounds = 1\n[training]\nseed = 1\n[data]\ndir = {:?}\n", subset()))
            .unwrap();
    let state = dir.path().join("state");
    let node = tokio::task::spawn_blocking(move || Node::open(config, &state)).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(node.clone(), listener, std::future::pending()));

    let digest = node.run_info().body.initial_model;
    let full =
        std::fs::read(dir.path().join(format!("state/checkpoints/{}.safetensors", digest.to_hex()))).unwrap();
    let half = full.len() / 2;
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let partial = cache.join(format!("{}.partial", digest.to_hex()));
    std::fs::write(&partial, &full[..half]).unwrap();

    let client = Client::new(&url, Identity::from_seed([1; 32]), Duration::from_secs(10)).unwrap();
    let model = crowdtrain_train::build_model(crowdtrain_train::ModelKind::Mlp);
    let mut models = ModelCache::new(&cache, model.as_ref()).unwrap();
    assert_eq!(models.fetch(&client, &digest).await.unwrap(), full);
    assert_eq!(
        models.bytes_downloaded(),
        (full.len() - half) as u64,
        "only the missing half crossed the network"
    );
    assert!(!partial.exists());

    // A partial file whose bytes are wrong: the resumed result fails its
    // hash check, so the worker starts over and ends with the right bytes.
    std::fs::remove_file(cache.join(format!("{}.safetensors", digest.to_hex()))).unwrap();
    std::fs::write(&partial, vec![0xAB; half]).unwrap();
    let mut models = ModelCache::new(&cache, model.as_ref()).unwrap();
    assert_eq!(models.fetch(&client, &digest).await.unwrap(), full);
    assert_eq!(models.bytes_downloaded(), (full.len() - half + full.len()) as u64);

    // A digest the coordinator does not have is refused, not retried forever.
    let unknown = crowdtrain_protocol::Digest::of(b"no such model");
    let error = models.fetch(&client, &unknown).await.unwrap_err();
    assert!(error.to_string().contains("no model"), "{error}");
}
