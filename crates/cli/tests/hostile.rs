//! The coordinator on the open internet: what anyone who can reach its
//! port, or anyone admitted, can make it spend. Each test is one way to
//! stop a run that was found by probing it as an attacker would, with real
//! sockets against the real binary; each failed before the fix.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use crowdtrain_protocol::wire::{ErrorCode, Phase, RoundView};
use crowdtrain_protocol::{RequestAuth, Signed};

/// Connections from `127.0.0.<last>` (the whole 127/8 is loopback), so an
/// attacker is not the workers' address.
fn connect_from(last: u8, port: u16) -> Option<TcpStream> {
    let runtime = runtime();
    runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(format!("127.0.0.{last}:0").parse().unwrap()).ok()?;
            let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.ok()?;
            stream.into_std().ok()
        })
        .inspect(|stream| stream.set_nonblocking(false).unwrap())
}

/// Whether the server closed `stream` within `within` (a read returns end
/// of file or an error instead of timing out).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn idle_connections_cannot_take_the_descriptors_the_coordinator_needs() {
    // Goal: with the process's open files limited to 512, twelve hundred
    // idle connections from 20 addresses must neither make state I/O fail
    // (which halts the coordinator) nor keep the workers out. Method: open
    // them before the workers start and hold them through the run.
    let mut network = Network::new(3, 12, 0.0, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator_with_open_files(512);
    let mut idle = Vec::new();
    for source in 2..22u8 {
        for _ in 0..60 {
            if let Some(stream) = connect_from(source, network.port) {
                idle.push(stream);
            }
        }
    }
    network.start_worker(0);
    network.start_worker(1);
    let status = network.wait_for(90, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 3);
    for output in network.join_workers() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let still_open = idle
        .iter_mut()
        .map(|stream| !closed_within(stream, Duration::from_millis(1)))
        .filter(|open| *open)
        .count();
    assert!(still_open <= 512, "the coordinator held {still_open} idle connections with 512 descriptors");
    assert!(!network.log("coordinator.log").contains("halting"), "{}", network.log("coordinator.log"));
}

#[test]
fn slowloris_and_stalled_uploads_are_cut_off_and_unsigned_bodies_are_never_read() {
    let mut network = Network::with_extra(
        2,
        12,
        0.0,
        "min_workers = 2\ndeadline_ms = 60000",
        "[server]\nheader_timeout_ms = 1000\nbody_timeout_ms = 1000\nuploads_in_flight_per_key = 1\n\
         requests_per_second_per_address = 100000\n",
    );
    network.start_coordinator();
    let port = network.port;

    // Headers dribbled a byte at a time: closed at the header timeout.
    let mut slowloris = connect_from(2, port).unwrap();
    slowloris.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut cut_off = false;
    while started.elapsed() < Duration::from_secs(5) {
        if slowloris.write_all(b"X").is_err() || closed_within(&mut slowloris, Duration::from_millis(300)) {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a connection dribbling its headers was held for 5 s");
    assert!(started.elapsed() < Duration::from_secs(3), "closed at the 1 s header timeout");

    // An unsigned 64 MiB upload is refused on its headers: its body is
    // never read (nor held), however slowly it comes.
    let mut upload = connect_from(3, port).unwrap();
    let head = format!(
        "POST /v1/rounds/0/reveals?base_model={} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        "00".repeat(32),
        64 * 1024 * 1024
    );
    upload.write_all(head.as_bytes()).unwrap();
    upload.write_all(&vec![0u8; 256 * 1024]).unwrap();
    upload.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut answer = [0u8; 12];
    upload.read_exact(&mut answer).expect("an answer before the body is sent");
    assert_eq!(&answer, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&answer));

    // A signed upload that stalls holds its key's only upload slot until
    // the body timeout, then is cut off.
    let worker = HandWorker::join(&network, 21);
    let run = worker.run.run_id;
    let path = worker.path("reveals", 0, &worker.run.initial_model);
    let body = vec![7u8; 512 * 1024];
    let auth = RequestAuth::sign(&worker.identity, &run, "POST", &path, worker.nonce(), &body);
    let mut stalled = connect_from(4, port).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nx-crowdtrain-run: {}\r\nx-crowdtrain-auth: {}\r\n\
         x-crowdtrain-body: {}\r\n\r\n",
        body.len(),
        run.to_hex(),
        auth.to_header(),
        HandWorker::declare(&body)
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let second = refusal(&worker.send("POST", &path, worker.update(1e-3), worker.nonce(), run));
    assert_eq!(
        (second.0, second.1),
        (429, ErrorCode::RateLimited),
        "one upload at a time per key: {}",
        second.2
    );
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "a stalled upload is cut off: {answer}");
    assert!(answer.contains("timed-out"), "{answer}");
}

#[test]
fn registration_needs_admission_and_a_token_admits_one_key() {
    let mut network = Network::new(1, 8, 0.0, "min_workers = 3\ndeadline_ms = 60000");
    network.start_coordinator();
    let anyone = HandWorker::unregistered(&network, 31);
    let refused = refusal(&anyone.register(None));
    assert_eq!((refused.0, refused.1), (403, ErrorCode::NotAdmitted), "{}", refused.2);
    let forged = "ctadm1.00112233445566778899aabbccddeeff.".to_owned() + &"ab".repeat(32);
    assert_eq!(refusal(&anyone.register(Some(forged))).1, ErrorCode::NotAdmitted);
    for seed in 40..140u8 {
        let fresh = HandWorker::unregistered(&network, seed);
        assert_eq!(refusal(&fresh.register(None)).1, ErrorCode::NotAdmitted);
    }
    let status = network.status().unwrap();
    assert!(status.workers.is_empty(), "no refused registration added a worker");
    assert_eq!(status.admission, "token");

    let token = network.admission_token();
    assert_eq!(anyone.register(Some(token.clone())).0, 200);
    assert_eq!(anyone.register(None).0, 200, "a registered key registers again without its token");
    let other = HandWorker::unregistered(&network, 32);
    let reused = refusal(&other.register(Some(token)));
    assert_eq!((reused.0, reused.1), (403, ErrorCode::NotAdmitted), "{}", reused.2);
    assert_eq!(network.status().unwrap().workers.len(), 1);
}

#[test]
fn a_run_never_has_more_participants_than_its_data_supports_and_says_so() {
    // The subset: 2,000 images, 100 held out for validation, batches of
    // 32: room for 59 shards. The 60th worker is told the run is full.
    let mut network = Network::with_extra(
        1,
        8,
        0.0,
        "min_workers = 70\ndeadline_ms = 60000",
        "[admission]\nmode = \"open\"\n",
    );
    network.start_coordinator();
    assert_eq!(network.status().unwrap().max_participants, 59);
    for seed in 0..59u8 {
        let worker = HandWorker::unregistered(&network, seed + 1);
        let (status, body) = worker.register(None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let late = HandWorker::unregistered(&network, 100);
    let (status, code, message) = refusal(&late.register(None));
    assert_eq!((status, code), (503, ErrorCode::Full), "{message}");
    assert!(message.contains("59"), "the refusal names the room the data leaves: {message}");
    assert_eq!(network.status().unwrap().workers.len(), 59);
}

#[test]
fn workers_that_never_commit_do_not_stall_the_rounds() {
    // Admitted workers that register and poll for the round but never
    // train: a round must not wait its 20 s commit deadline for them.
    let mut network = Network::with_extra(
        5,
        6,
        0.0,
        "min_workers = 2\nquorum = 2\ndeadline_ms = 20000",
        "[admission]\nmode = \"open\"\n",
    );
    network.start_coordinator();
    let started = Instant::now();
    network.start_worker(0);
    network.start_worker(1);
    network.wait_for(30, "the workers to register", |status| status.workers.len() == 2);
    let idle: Vec<HandWorker> = (0..3).map(|seed| HandWorker::join_open(&network, 50 + seed)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = idle
        .into_iter()
        .map(|worker| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = "/v1/round?wait_ms=200";
                    let _ = worker.send_raw_signed("GET", path);
                }
            })
        })
        .collect();
    let status = network.wait_for(120, "the run to finish", finished_and_evaluated);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for poller in pollers {
        poller.join().unwrap();
    }
    assert_eq!(status.completed_rounds, 5);
    assert!(seconds < 20.0, "5 rounds took {seconds:.1} s: a round waited its deadline for idle workers");
}

#[test]
fn a_captured_signed_read_cannot_be_replayed() {
    let mut network = Network::new(1, 8, 0.0, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator();
    let worker = HandWorker::join(&network, 61);
    let run = worker.run.run_id;
    let nonce = worker.nonce();
    let first = worker.send("GET", "/v1/round", Vec::new(), nonce, run);
    assert_eq!(first.0, 200);
    let _: Signed<RoundView> = serde_json::from_slice(&first.1).unwrap();
    let replayed = refusal(&worker.send("GET", "/v1/round", Vec::new(), nonce, run));
    assert_eq!((replayed.0, replayed.1), (409, ErrorCode::Replayed), "{}", replayed.2);
    let body = serde_json::to_vec(&crowdtrain_protocol::wire::RegisterRequest {
        class: "avx2-fma".into(),
        token: None,
        choice: None,
    })
    .unwrap();
    let nonce = worker.nonce();
    assert_eq!(worker.send("POST", "/v1/workers", body.clone(), nonce, run).0, 200);
    let replayed = refusal(&worker.send("POST", "/v1/workers", body, nonce, run));
    assert_eq!(replayed.1, ErrorCode::Replayed, "{}", replayed.2);
}

#[test]
fn a_restarted_coordinator_resumes_a_stored_audit_replay_at_once() {
    // Goal: a coordinator killed while replaying an answer it stored must
    // judge it as soon as it is back, not at the reveal deadline (60 s
    // here). Method: long segments (2,000 steps in 4), every submission
    // audited; kill it the moment the answer is stored and unjudged.
    let mut network = Network::new(1, 2000, 1.0, "min_workers = 1\ndeadline_ms = 120000\nreveal_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    let database = network.path("state/coordinator.sqlite");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no answer was stored: {}", network.log("coordinator.log"));
        let pending = rusqlite::Connection::open(&database).ok().and_then(|connection| {
            connection
                .query_row(
                    "SELECT COUNT(*) FROM audits WHERE answer_digest IS NOT NULL AND verdict IS NULL",
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .ok()
        });
        if pending == Some(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    network.kill_coordinator();
    network.start_coordinator();
    let restarted = Instant::now();
    network.wait_for(45, "the stored answer's verdict", |status| {
        status.rounds.first().is_some_and(|round| round.status == RoundState::Closed)
    });
    assert!(restarted.elapsed() < Duration::from_secs(45));
    let status = network.wait_for(60, "the run to finish", finished_and_evaluated);
    assert!(status.workers.iter().all(|worker| worker.audits_passed == 1 && worker.slashed == 0));
}

#[test]
fn the_status_page_holds_a_page_of_rounds() {
    let mut network = Network::new(4, 6, 0.0, "min_workers = 1\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    let status = network.wait_for(60, "the run to finish", finished_and_evaluated);
    assert_eq!(status.rounds_total, 4);
    let latest: crowdtrain_protocol::wire::RunStatus =
        get_json(&format!("{}/v1/status?rounds_limit=2", network.url())).unwrap();
    assert_eq!(latest.rounds.iter().map(|round| round.round).collect::<Vec<_>>(), vec![2, 3]);
    let first: crowdtrain_protocol::wire::RunStatus =
        get_json(&format!("{}/v1/status?rounds_from=0&rounds_limit=2", network.url())).unwrap();
    assert_eq!(first.rounds.iter().map(|round| round.round).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(first.phase, Phase::Finished);
    for output in network.join_workers() {
        assert!(output.status.success());
    }
}

#[test]
fn workers_get_through_while_strangers_flood_the_connection_slots() {
    // Goal: strangers who reconnect as soon as they are closed, from 16
    // addresses, hold at most the slots not reserved for participants, are
    // refused at accept beyond that, and cannot keep a run's workers from
    // finishing it. Method: a coordinator of 64 connections (32 reserved);
    // the workers join, and once the first round closed the flood starts
    // and keeps at it through the rest of the run; it counts the
    // connections it holds that the coordinator answered.
    //
    // Not asserted: how soon a worker that has never authenticated gets in
    // during a flood. Before its first signed request nothing tells it from
    // a stranger, so it competes for the unreserved slots and gets in after
    // retries (4 to 67 s seen): a timing, not a promise.
    let rounds = 30;
    let mut network = Network::with_extra(
        rounds,
        12,
        0.0,
        "min_workers = 2\ndeadline_ms = 60000",
        "[server]\nmax_connections = 64\nmax_connections_per_address = 64\nreserved_connections = 32\n\
         connections_per_second_per_address = 50\nheader_timeout_ms = 2000\n\
         requests_per_second_per_address = 100000\nrequests_per_second_per_key = 100000\n",
    );
    network.start_coordinator();
    network.start_worker(0);
    network.start_worker(1);
    network.wait_for(120, "the first round to close", |status| status.completed_rounds >= 1);
    let flood = Flood::start(network.port, 2..18, 8);
    let status = network.wait_for(180, "the run to finish under the flood", finished_and_evaluated);
    let (served_max, opened) = flood.stop();
    assert_eq!(status.completed_rounds, rounds);
    for output in network.join_workers() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    // About 100 to 300 a second, with the machine's load.
    assert!(opened > 300, "the flood opened only {opened} connections: it did not keep at it");
    // It held the unreserved slots (the premise), and no more: 32 of them;
    // a few more counted while an evicted connection's close and its
    // successor's answer cross.
    assert!(
        served_max >= 24,
        "strangers held only {served_max} slots: the flood did not fill the unreserved 32"
    );
    assert!(served_max <= 36, "strangers held {served_max} of the 64 slots, 32 of them reserved");
    assert!(!network.log("coordinator.log").contains("halting"));
}

/// Strangers that each keep one connection: open it, ask `GET /v1/run`,
/// hold it idle until the coordinator closes it, and reconnect 50 ms
/// later.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(i64, u64)>,
}

impl Flood {
    fn start(port: u16, sources: std::ops::Range<u8>, per_source: usize) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let served = Arc::new(AtomicI64::new(0));
            let served_max = Arc::new(AtomicI64::new(0));
            let opened = Arc::new(AtomicU64::new(0));
            runtime().block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for source in sources {
                    for _ in 0..per_source {
                        let (stop, served, served_max, opened) =
                            (Arc::clone(&flag), Arc::clone(&served), Arc::clone(&served_max), Arc::clone(&opened));
                        tasks.spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            while !stop.load(Ordering::Relaxed) {
                                let connected = async {
                                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                                    socket.bind(format!("127.0.0.{source}:0").parse().unwrap()).ok()?;
                                    socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.ok()
                                };
                                if let Some(mut stream) = connected.await {
                                    opened.fetch_add(1, Ordering::Relaxed);
                                    let mut buffer = vec![0u8; 64 * 1024];
                                    let asked =
                                        stream.write_all(b"GET /v1/run HTTP/1.1\r\nHost: x\r\n\r\n").await.is_ok();
                                    let answered = asked
                                        && matches!(
                                            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await,
                                            Ok(Ok(read)) if read > 0 && buffer.starts_with(b"HTTP/1.1 200")
                                        );
                                    if answered {
                                        let now = served.fetch_add(1, Ordering::Relaxed) + 1;
                                        served_max.fetch_max(now, Ordering::Relaxed);
                                        // Held until the coordinator closes it.
                                        while !stop.load(Ordering::Relaxed) {
                                            match tokio::time::timeout(
                                                Duration::from_millis(200),
                                                stream.read(&mut buffer),
                                            )
                                            .await
                                            {
                                                Ok(Ok(0)) | Ok(Err(_)) => break,
                                                _ => {}
                                            }
                                        }
                                        served.fetch_sub(1, Ordering::Relaxed);
                                    }
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        });
                    }
                }
                while tasks.join_next().await.is_some() {}
            });
            (served_max.load(Ordering::Relaxed), opened.load(Ordering::Relaxed))
        });
        Self { stop, thread }
    }

    /// Stops the flood; the most connections it held answered at once, and
    /// the connections it opened.
    fn stop(self) -> (i64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
