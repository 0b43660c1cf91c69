//! `crowdtrain bench hostile`: a demo run under attack, beside the same run
//! unattacked, in one invocation.
//!
//! The attacks are the ways anyone could stop a run (issue 19): idle
//! connections, slowloris connections that dribble their headers, unsigned
//! 64 MiB uploads that stall, and registrations from fresh keys without
//! admission. Each attacker holds its connection as long as the coordinator
//! lets it and opens a new one a second after it is closed (a persistent
//! attacker, not a flood), from its own loopback addresses (127.0.1.x,
//! 127.0.2.x; the whole 127/8 is loopback here), so that the workers'
//! address, 127.0.0.1, is not the attackers'. Only loopback is ever a
//! target, and every loop stops with the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use crowdtrain_protocol::RequestAuth;
use crowdtrain_protocol::wire::{AUTH_HEADER, BODY_HEADER, BodyDeclaration, RUN_HEADER, RegisterRequest};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::demo;
use crate::output;

#[derive(Debug, Args)]
pub struct HostileArgs {
    /// Honest workers (the demo's).
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Rounds of each run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,

    /// Inner steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,

    /// Directory with the Fashion-MNIST IDX files (default as for `demo`).
    #[arg(long, value_name = "DIR")]
    data: Option<std::path::PathBuf>,

    /// Idle connections to hold.
    #[arg(long, default_value_t = 20_000)]
    idle: usize,

    /// Slowloris connections (headers a line a second, never finished).
    #[arg(long, default_value_t = 1_000)]
    slowloris: usize,

    /// Unsigned uploads that declare 64 MiB, send 1 MiB and stall.
    #[arg(long, default_value_t = 64)]
    uploads: usize,

    /// Registrations from fresh keys, without an admission token.
    #[arg(long, default_value_t = 10_000)]
    registrations: usize,

    /// Admitted workers (each with a token of its own) that register and
    /// poll for the round all the time but never train.
    #[arg(long, default_value_t = 0)]
    idle_workers: usize,

    /// Loopback addresses the connection attackers spread over.
    #[arg(long, default_value_t = 64)]
    sources: u8,

    /// Pin the run (the coordinator, the workers and this process) to
    /// these CPUs, in both the unattacked and the attacked run, e.g. `1`
    /// (comma-separated CPU numbers); needs `--attack-cpus`. Without
    /// pinning the attackers' own loops take CPU from the workers, and the
    /// ratio measures the machine as much as the coordinator.
    #[arg(long, value_name = "CPUS", value_delimiter = ',', requires = "attack_cpus")]
    run_cpus: Vec<usize>,

    /// Pin the attacking processes to these CPUs, e.g. `0` (disjoint from
    /// `--run-cpus`).
    #[arg(long, value_name = "CPUS", value_delimiter = ',', requires = "run_cpus")]
    attack_cpus: Vec<usize>,

    /// Unattacked and attacked runs to pair, in alternating order (the
    /// first pair unattacked first, the second attacked first, ...), so
    /// that a shared machine's changing load falls on both sides; the
    /// ratio reported is the median of the pairs'.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    pairs: u32,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,

    /// Internal: attack the coordinator at this URL until stdin closes,
    /// then print the counts (the load is split over processes, each under
    /// its open-files limit).
    #[arg(long, hide = true, value_name = "URL")]
    attack: Option<String>,

    /// Internal: admission tokens for the idle workers, one per line.
    #[arg(long, hide = true, value_name = "FILE")]
    tokens: Option<std::path::PathBuf>,
}

/// Connections one attacking process holds at most.
const CONNECTIONS_PER_PROCESS: usize = 9_000;

#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct Attack {
    /// Connections the attackers held at once, at most (all kinds).
    connections_held_max: i64,
    /// Connections the attackers opened, in all (reconnections included).
    connections_opened: u64,
    /// Unsigned uploads answered before their body (with 401).
    uploads_refused_on_headers: u64,
    registrations_sent: u64,
    registrations_refused: u64,
    /// Registrations that got a worker id: must be 0.
    registrations_accepted: u64,
    idle_workers: usize,
}

#[derive(Debug, Serialize)]
struct Run {
    /// The machine's 1-minute load average as the run started and ended
    /// (the machine may be shared: a busy one slows both runs unevenly).
    load_average_start: f64,
    load_average_end: f64,
    rounds: usize,
    rounds_per_second: f64,
    round_seconds_median: Option<f64>,
    /// The coordinator's resident memory, sampled every 100 ms: the most.
    coordinator_rss_mb_max: f64,
    /// The coordinator's CPU time (user and system) over the run, and as
    /// a share of the run's wall time (1.0: one core all the time).
    coordinator_cpu_seconds: f64,
    coordinator_cpu_share: f64,
    final_test_accuracy: f64,
    state_hash: String,
    /// Workers the coordinator registered (the honest ones only, if
    /// admission held).
    participants: usize,
}

/// One unattacked run and one attacked run of the same demo.
#[derive(Debug, Serialize)]
struct Pair {
    /// Whether the attacked run went first.
    attacked_first: bool,
    unloaded: Run,
    loaded: Run,
    /// Loaded rounds per second over unloaded.
    rounds_per_second_ratio: f64,
    attack: Attack,
}

#[derive(Debug, Serialize)]
struct HostileReport {
    pairs: Vec<Pair>,
    /// The median of the pairs' ratios (loaded over unloaded rounds per
    /// second), and the lowest and highest.
    rounds_per_second_ratio: f64,
    rounds_per_second_ratio_min: f64,
    rounds_per_second_ratio_max: f64,
    /// The CPUs the run and the attackers were pinned to (empty: not
    /// pinned).
    run_cpus: Vec<usize>,
    attack_cpus: Vec<usize>,
}

pub fn run(args: HostileArgs) -> anyhow::Result<()> {
    if let Some(url) = args.attack.clone() {
        return attack_until_stdin_closes(url, &args);
    }
    let demo_args = demo::quiet_args(args.workers, args.rounds, args.inner_steps, args.data.as_deref());
    // Built before this process pins itself, which narrows what
    // sched_getaffinity then allows.
    let attack_mask = match args.attack_cpus.is_empty() {
        true => None,
        false => Some(cpu_mask(&args.attack_cpus).context("--attack-cpus")?),
    };
    if !args.run_cpus.is_empty() {
        anyhow::ensure!(
            args.run_cpus.iter().all(|cpu| !args.attack_cpus.contains(cpu)),
            "--run-cpus and --attack-cpus must not share a CPU"
        );
        // Everything this process starts from here on (the demo's
        // coordinator and workers, their threads) inherits the mask; the
        // attackers set theirs as they start.
        pin_to(&args.run_cpus).context("could not pin the run to --run-cpus")?;
    }

    let mut pairs = Vec::new();
    for index in 0..args.pairs {
        let attacked_first = index % 2 == 1;
        let (unloaded, loaded, attack) = if attacked_first {
            let (loaded, attack) = attacked(&demo_args, &args, attack_mask.as_ref())?;
            (measured(&demo_args, |_, _, _| Ok(None))?, loaded, attack)
        } else {
            let unloaded = measured(&demo_args, |_, _, _| Ok(None))?;
            let (loaded, attack) = attacked(&demo_args, &args, attack_mask.as_ref())?;
            (unloaded, loaded, attack)
        };
        let pair = Pair {
            attacked_first,
            rounds_per_second_ratio: loaded.rounds_per_second / unloaded.rounds_per_second,
            unloaded,
            loaded,
            attack,
        };
        if !args.json {
            print_pair(index, &pair);
        }
        pairs.push(pair);
    }
    let mut ratios: Vec<f64> = pairs.iter().map(|pair| pair.rounds_per_second_ratio).collect();
    ratios.sort_by(f64::total_cmp);
    let middle = ratios.len() / 2;
    let median =
        if ratios.len() % 2 == 1 { ratios[middle] } else { (ratios[middle - 1] + ratios[middle]) / 2.0 };
    let report = HostileReport {
        rounds_per_second_ratio: median,
        rounds_per_second_ratio_min: ratios[0],
        rounds_per_second_ratio_max: ratios[ratios.len() - 1],
        run_cpus: args.run_cpus.clone(),
        attack_cpus: args.attack_cpus.clone(),
        pairs,
    };
    if args.json {
        return output::print_json(&report);
    }
    if report.pairs.len() > 1 {
        println!(
            "over {} pairs: loaded at {:.0}% of unloaded (median; {:.0}% to {:.0}%)",
            report.pairs.len(),
            100.0 * report.rounds_per_second_ratio,
            100.0 * report.rounds_per_second_ratio_min,
            100.0 * report.rounds_per_second_ratio_max
        );
    }
    Ok(())
}

/// The demo run under the whole attack, and what the attackers counted.
fn attacked(
    demo_args: &demo::DemoArgs,
    args: &HostileArgs,
    attack_mask: Option<&libc::cpu_set_t>,
) -> anyhow::Result<(Run, Attack)> {
    let mut attackers = Vec::new();
    let loaded = measured(demo_args, |url, _, dir| {
        attackers = start_attackers(url, args, dir, attack_mask)?;
        Ok(None)
    });
    let mut attack = Attack::default();
    for attacker in attackers {
        let part = finish_attacker(attacker)?;
        attack.connections_held_max += part.connections_held_max;
        attack.connections_opened += part.connections_opened;
        attack.uploads_refused_on_headers += part.uploads_refused_on_headers;
        attack.registrations_sent += part.registrations_sent;
        attack.registrations_refused += part.registrations_refused;
        attack.registrations_accepted += part.registrations_accepted;
    }
    attack.idle_workers = args.idle_workers;
    Ok((loaded?, attack))
}

fn print_pair(index: u32, pair: &Pair) {
    println!(
        "pair {}{}:\nunloaded: {:.2} rounds/s, coordinator at most {:.0} MB (load average {:.1} to {:.1})\nloaded:   \
         {:.2} rounds/s ({:.0}% of unloaded), coordinator at most {:.0} MB, {} participants (load average {:.1} \
         to {:.1})\nattack: {} connections held at most ({} opened), {} unsigned uploads refused on their \
         headers, {} registrations ({} refused, {} accepted)",
        index + 1,
        if pair.attacked_first { " (attacked run first)" } else { "" },
        pair.unloaded.rounds_per_second,
        pair.unloaded.coordinator_rss_mb_max,
        pair.unloaded.load_average_start,
        pair.unloaded.load_average_end,
        pair.loaded.rounds_per_second,
        100.0 * pair.rounds_per_second_ratio,
        pair.loaded.coordinator_rss_mb_max,
        pair.loaded.participants,
        pair.loaded.load_average_start,
        pair.loaded.load_average_end,
        pair.attack.connections_held_max,
        pair.attack.connections_opened,
        pair.attack.uploads_refused_on_headers,
        pair.attack.registrations_sent,
        pair.attack.registrations_refused,
        pair.attack.registrations_accepted,
    );
}

type Attacking = Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>;

/// Starts the attacking processes (this binary, `--attack URL`): the idle
/// connections in parts of [`CONNECTIONS_PER_PROCESS`], everything else in
/// the first.
fn start_attackers(
    url: &str,
    args: &HostileArgs,
    dir: &std::path::Path,
    pinned: Option<&libc::cpu_set_t>,
) -> anyhow::Result<Vec<std::process::Child>> {
    let tokens = crowdtrain_node::coordinator::issue_admission_tokens(&dir.join("state"), args.idle_workers)?;
    let tokens_file = dir.join("idle-workers.tokens");
    std::fs::write(&tokens_file, tokens.iter().map(|token| format!("{token}\n")).collect::<String>())?;
    let binary = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut idle_left = args.idle;
    let mut first = true;
    while first || idle_left > 0 {
        let idle = idle_left.min(CONNECTIONS_PER_PROCESS);
        idle_left -= idle;
        let (slowloris, uploads, registrations) =
            if first { (args.slowloris, args.uploads, args.registrations) } else { (0, 0, 0) };
        let mut command = std::process::Command::new(&binary);
        command
            .args(["bench", "hostile", "--attack", url])
            .args(["--idle", &idle.to_string(), "--slowloris", &slowloris.to_string()])
            .args(["--uploads", &uploads.to_string(), "--registrations", &registrations.to_string()])
            .args(["--sources", &args.sources.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if first && args.idle_workers > 0 {
            command.arg("--tokens").arg(&tokens_file);
        }
        if let Some(&mask) = pinned {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec this only calls
            // sched_setaffinity on the child itself, with a mask built
            // before the fork.
            unsafe {
                command.pre_exec(move || set_affinity(&mask));
            }
        }
        children.push(command.spawn().context("could not start an attacker")?);
        first = false;
    }
    Ok(children)
}

/// Stops an attacking process (closes its stdin) and reads its counts.
fn finish_attacker(mut child: std::process::Child) -> anyhow::Result<Attack> {
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    serde_json::from_slice(&output.stdout).context("an attacker printed no counts")
}

/// `--attack URL`: runs the attackers until stdin closes, then prints
/// their counts as JSON.
fn attack_until_stdin_closes(url: String, args: &HostileArgs) -> anyhow::Result<()> {
    raise_open_files((args.idle + args.slowloris + args.uploads) as u64 + 1024)?;
    let tokens = match &args.tokens {
        Some(path) => std::fs::read_to_string(path)?.lines().map(str::to_owned).collect(),
        None => Vec::new(),
    };
    let counters = Arc::new(AttackCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let handle = spawn_attack(url, args, tokens, Arc::clone(&counters), Arc::clone(&stop))?;
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    output::print_json(&counters.report())
}

/// Runs the demo, sampling the coordinator's memory, with whatever
/// `on_start` starts beside it (stopped when the run ends).
fn measured(
    args: &demo::DemoArgs,
    mut on_start: impl FnMut(&str, u32, &std::path::Path) -> anyhow::Result<Attacking>,
) -> anyhow::Result<Run> {
    let rss_max = Arc::new(AtomicU64::new(0));
    let cpu_ticks = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let mut attacking: Attacking = None;
    let mut sampler = None;
    let load_average_start = load_average();
    let report = demo::execute(args, |url, pid, dir| {
        let (rss_max, cpu_ticks, sampling) =
            (Arc::clone(&rss_max), Arc::clone(&cpu_ticks), Arc::clone(&sampling));
        sampler = Some(std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kb) = resident_kb(pid) {
                    rss_max.fetch_max(kb, Ordering::Relaxed);
                }
                if let Some(ticks) = cpu_ticks_of(pid) {
                    cpu_ticks.fetch_max(ticks, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        attacking = on_start(url, pid, dir)?;
        Ok(())
    });
    sampling.store(false, Ordering::Relaxed);
    let load_average_end = load_average();
    if let Some((stop, handle)) = attacking {
        stop.store(true, Ordering::Relaxed);
        let _ = handle.join();
    }
    if let Some(sampler) = sampler {
        let _ = sampler.join();
    }
    let report = report?;
    let closed: Vec<_> = report
        .rounds
        .iter()
        .filter(|round| round.status == crowdtrain_protocol::coordinator::RoundState::Closed)
        .collect();
    let first = closed.iter().map(|round| round.opened_unix_ms).min().unwrap_or(0);
    let last = closed.iter().filter_map(|round| round.closed_unix_ms).max().unwrap_or(first + 1);
    // SAFETY: sysconf only reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let coordinator_cpu_seconds = cpu_ticks.load(Ordering::Relaxed) as f64 / ticks_per_second;
    Ok(Run {
        coordinator_cpu_seconds,
        coordinator_cpu_share: coordinator_cpu_seconds / report.seconds.max(1e-3),
        load_average_start,
        load_average_end,
        rounds: closed.len(),
        rounds_per_second: closed.len() as f64 / ((last - first).max(1) as f64 / 1000.0),
        round_seconds_median: report.round_seconds_median,
        coordinator_rss_mb_max: rss_max.load(Ordering::Relaxed) as f64 / 1024.0,
        final_test_accuracy: report.final_test_accuracy,
        state_hash: report.state_hash.clone(),
        participants: report.workers.len(),
    })
}

/// The machine's 1-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Pins the calling thread (and whatever it starts from now on) to `cpus`.
fn pin_to(cpus: &[usize]) -> anyhow::Result<()> {
    Ok(set_affinity(&cpu_mask(cpus)?)?)
}

/// The affinity mask of `cpus`, which must all be CPUs this process may
/// run on.
fn cpu_mask(cpus: &[usize]) -> anyhow::Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity and
    // CPU_SET/CPU_ISSET only touch the sets we own, within their size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut mask: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            anyhow::ensure!(
                cpu < libc::CPU_SETSIZE as usize && libc::CPU_ISSET(cpu, &allowed),
                "CPU {cpu} is not one this process may run on"
            );
            libc::CPU_SET(cpu, &mut mask);
        }
        Ok(mask)
    }
}

/// Sets the calling thread's CPU affinity (async-signal-safe: callable
/// between fork and exec).
fn set_affinity(mask: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: sched_setaffinity reads the mask we pass, of its own size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A process's CPU time (user and system) so far, in clock ticks.
fn cpu_ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses, which may hold
    // spaces): utime and stime are the 14th and 15th of the line.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

fn resident_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises this process's limit on open files to `wanted` (the hard limit
/// too, which root may); returns the limit in force.
fn raise_open_files(wanted: u64) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let raised =
            libc::rlimit { rlim_cur: wanted.max(limit.rlim_cur), rlim_max: wanted.max(limit.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            limit = raised;
        } else {
            let soft = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
                limit = soft;
            }
        }
    }
    anyhow::ensure!(
        limit.rlim_cur >= wanted,
        "the attackers need {wanted} open files and this process may open {}; raise `ulimit -n` (as root)",
        limit.rlim_cur
    );
    Ok(limit.rlim_cur)
}

#[derive(Default)]
struct AttackCounters {
    held: AtomicI64,
    held_max: AtomicI64,
    opened: AtomicU64,
    uploads_refused: AtomicU64,
    registrations_sent: AtomicU64,
    registrations_refused: AtomicU64,
    registrations_accepted: AtomicU64,
}

impl AttackCounters {
    fn report(&self) -> Attack {
        Attack {
            connections_held_max: self.held_max.load(Ordering::Relaxed),
            connections_opened: self.opened.load(Ordering::Relaxed),
            uploads_refused_on_headers: self.uploads_refused.load(Ordering::Relaxed),
            registrations_sent: self.registrations_sent.load(Ordering::Relaxed),
            registrations_refused: self.registrations_refused.load(Ordering::Relaxed),
            registrations_accepted: self.registrations_accepted.load(Ordering::Relaxed),
            idle_workers: 0,
        }
    }
}

/// Starts every attacker on a runtime of its own thread.
fn spawn_attack(
    url: String,
    args: &HostileArgs,
    tokens: Vec<String>,
    counters: Arc<AttackCounters>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let port: u16 =
        url.rsplit(':').next().and_then(|port| port.parse().ok()).context("the demo's URL has a port")?;
    let (idle, slowloris, uploads, registrations, sources) =
        (args.idle, args.slowloris, args.uploads, args.registrations, args.sources.max(1));
    Ok(std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let kinds = [(idle, Kind::Idle), (slowloris, Kind::Slowloris), (uploads, Kind::Upload)];
            let mut index = 0usize;
            for (count, kind) in kinds {
                for _ in 0..count {
                    let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (index % sources as usize) as u8);
                    index += 1;
                    let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
                    tasks.spawn(attacker(kind, source, port, counters, stop));
                }
                tokio::task::yield_now().await;
            }
            for token in tokens {
                tasks.spawn(idle_worker(url.clone(), token, Arc::clone(&stop)));
            }
            tasks.spawn(register_strangers(url, registrations, Arc::clone(&counters), Arc::clone(&stop)));
            while tasks.join_next().await.is_some() {}
        });
    }))
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Idle,
    Slowloris,
    Upload,
}

/// One attacker: holds a connection of its kind as long as it is let, and
/// opens another a second after it is closed, until `stop`.
async fn attacker(
    kind: Kind,
    source: std::net::Ipv4Addr,
    port: u16,
    counters: Arc<AttackCounters>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind((source, 0).into()).ok()?;
            socket.connect(([127, 0, 0, 1], port).into()).await.ok()
        };
        if let Some(mut stream) = connected.await {
            counters.opened.fetch_add(1, Ordering::Relaxed);
            let held = counters.held.fetch_add(1, Ordering::Relaxed) + 1;
            counters.held_max.fetch_max(held, Ordering::Relaxed);
            hold(kind, &mut stream, &counters, &stop).await;
            counters.held.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Does what `kind` does on `stream` until the coordinator closes it.
async fn hold(kind: Kind, stream: &mut tokio::net::TcpStream, counters: &AttackCounters, stop: &AtomicBool) {
    let mut buffer = [0u8; 1024];
    match kind {
        Kind::Idle => {}
        Kind::Slowloris => {
            if stream.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").await.is_err() {
                return;
            }
        }
        Kind::Upload => {
            let head = format!(
                "POST /v1/rounds/0/reveals?base_model={} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                "00".repeat(32),
                64 * 1024 * 1024
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let _ =
                tokio::time::timeout(Duration::from_secs(1), stream.write_all(&vec![0u8; 1024 * 1024])).await;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {
                if matches!(kind, Kind::Upload) && buffer.starts_with(b"HTTP/1.1 401") {
                    counters.uploads_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                if matches!(kind, Kind::Slowloris) && stream.write_all(b"X-a: b\r\n").await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An admitted worker that never trains: registers with `token`, then asks
/// for the round again and again (each a fresh signed read) until `stop`.
async fn idle_worker(url: String, token: String, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let Ok(run) = async {
        client
            .get(format!("{url}/v1/run"))
            .send()
            .await?
            .json::<crowdtrain_protocol::Signed<crowdtrain_protocol::wire::RunInfo>>()
            .await
    }
    .await
    else {
        return;
    };
    let run_id = run.body.run_id;
    let Ok(identity) = crowdtrain_node::files::generate_identity() else { return };
    let nonce = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64)
    };
    let send = |method: &'static str, path: &'static str, body: Vec<u8>| {
        let declared = BodyDeclaration::of(&body);
        let auth = RequestAuth::sign_declared(&identity, &run_id, method, path, nonce(), &declared);
        client
            .request(method.parse().expect("a method"), format!("{url}{path}"))
            .header(RUN_HEADER, run_id.to_hex())
            .header(AUTH_HEADER, auth.to_header())
            .header(BODY_HEADER, declared.to_header())
            .body(body)
            .send()
    };
    let body =
        serde_json::to_vec(&RegisterRequest { class: "avx2-fma".into(), token: Some(token), choice: None })
            .expect("json");
    if send("POST", "/v1/workers", body).await.is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        if send("GET", "/v1/round?wait_ms=200", Vec::new()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Registers `count` fresh keys without an admission token, 16 at a time,
/// from 127.0.2.1.
async fn register_strangers(url: String, count: usize, counters: Arc<AttackCounters>, stop: Arc<AtomicBool>) {
    let Ok(client) = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 2, 1])).build()
    else {
        return;
    };
    // Under the other attacks this address may wait for a connection the
    // coordinator accepts: ask until it answers (or the run ends).
    let run: crowdtrain_protocol::Signed<crowdtrain_protocol::wire::RunInfo> = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match async { client.get(format!("{url}/v1/run")).send().await?.json().await }.await {
            Ok(run) => break run,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let run_id = run.body.run_id;
    let body = serde_json::to_vec(&RegisterRequest { class: "avx2-fma".into(), token: None, choice: None })
        .expect("json");
    let declared = BodyDeclaration::of(&body);
    let mut sent = 0usize;
    let mut in_flight = tokio::task::JoinSet::new();
    while sent < count && !stop.load(Ordering::Relaxed) {
        while in_flight.len() < 16 && sent < count {
            sent += 1;
            let Ok(identity) = crowdtrain_node::files::generate_identity() else { return };
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_micros() as u64);
            let auth =
                RequestAuth::sign_declared(&identity, &run_id, "POST", "/v1/workers", nonce, &declared);
            let request = client
                .post(format!("{url}/v1/workers"))
                .header(RUN_HEADER, run_id.to_hex())
                .header(AUTH_HEADER, auth.to_header())
                .header(BODY_HEADER, declared.to_header())
                .body(body.clone());
            let counters = Arc::clone(&counters);
            in_flight.spawn(async move {
                counters.registrations_sent.fetch_add(1, Ordering::Relaxed);
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        counters.registrations_accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counters.registrations_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        in_flight.join_next().await;
    }
    while in_flight.join_next().await.is_some() {}
    let started = Instant::now();
    // Keep the task alive until the run ends, so the counts are final.
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(3600) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
