//! The worker process: register, then round after round download the
//! global model, train on the assigned shard, and upload the pseudo-gradient,
//! until the run ends.
//!
//! A worker trusts nothing it is sent: the run description, registration,
//! round views and receipts must carry the coordinator's signature (pinned
//! from the first answer, or given with `--coordinator-key`); models must
//! hash to the digest the signed round view names; the data set must match
//! the run's fingerprint before any training happens.

pub use crowdtrain_coordinator::behavior;
mod client;
mod events;
mod models;
mod newest;
mod notices;
mod residual;
mod reward;

pub use models::ModelCache;
pub use reward::{FetchedReward, fetch_reward};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_protocol::config::AdmissionMode;
use crowdtrain_protocol::contract::{ContractChoice, ContractMenu};
use crowdtrain_protocol::wire::{
    CommittedAndRevealed, ErrorCode, PROTOCOL_VERSION, Phase, Receipt, ReceiptStatus, RegisterRequest,
    Registration, RunInfo, WorkerStatus, WorkerView,
};
use crowdtrain_protocol::{Digest, MAX_OUTER_DELAY, PublicKey, RoundId, RoundView, Shard, Signed, WorkerId};
use crowdtrain_train::Model;
use reqwest::Method;
use serde::{Deserialize, Serialize};

pub use behavior::{Behavior, Produced};
use behavior::{Work, produce, tampered};
pub use client::{Answer, Client, Sequence};
pub use events::{RoundSummary, Totals, Upload, WorkerEvent};
use residual::ResidualFile;

use crate::NodeError;
use crate::data::{RunData, Shards};
use crate::storage::{BlobKey, Bucket};

/// How soon a commitment refused as too early (its round is open ahead of
/// the previous round's last audit verdicts, which take a fraction of a
/// round) is sent again; each next try waits twice as long, up to
/// [`PROVISIONAL_RETRY_MAX`].
const PROVISIONAL_RETRY_START: Duration = Duration::from_millis(10);
const PROVISIONAL_RETRY_MAX: Duration = Duration::from_secs(1);

/// How a worker is started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The coordinator's base URL, e.g. `http://127.0.0.1:7070`.
    pub coordinator: String,
    pub key: PathBuf,
    pub data: Option<PathBuf>,
    /// How text is tokenised, when the run trains a language model: the
    /// run's tokenizer (the data fingerprint covers it).
    pub tokenizer: TokenizerSpec,
    /// Where downloaded models (and partial downloads) are kept.
    pub cache: PathBuf,
    /// Stop after the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// Trust only this coordinator key (else: the key of the first answer).
    pub coordinator_key: Option<PublicKey>,
    /// Threads for training (default: RAYON_NUM_THREADS, else one per core).
    pub threads: Option<usize>,
    /// Honest, or one of the cheaters the audits must catch.
    pub behavior: Behavior,
    /// The admission token the run's operator gave this worker, if the run
    /// admits by token.
    pub admission_token: Option<String>,
    /// How to choose from the run's contract menu, if it offers one.
    pub choose: Option<Choose>,
    /// Reveal each update as soon as its commitment is accepted (an early
    /// reveal), where the run has no bucket: the coordinator keeps it to
    /// itself until the round closes, and the round's reveal phase then
    /// waits for no upload. Through a bucket, or when false, an update is
    /// revealed once its round's commit phase is over.
    pub early_reveal: bool,
}

/// How a worker picks its option of a run's contract menu.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choose {
    /// Its private per-unit cost: it takes the option that maximises its
    /// own expected utility (ties to the higher contribution). The cost
    /// never leaves the worker.
    Cost(f64),
    /// This option, whatever it is worth.
    Option(u32),
}

/// What a worker did, reported when it exits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerSummary {
    pub worker: Option<WorkerId>,
    pub public_key: String,
    pub run_id: Option<Digest>,
    pub behavior: String,
    pub rounds_trained: u64,
    /// Rounds it trained while the round before was still revealed,
    /// audited and aggregated (`[outer] delay` >= 1).
    pub rounds_trained_ahead: u64,
    /// Commitments accepted in time.
    pub commitments: u64,
    /// Reveals that matched their commitments.
    pub reveals_accepted: u64,
    /// Updates revealed in the request that carried their commitment (one
    /// round trip for both; the rest went after their commitment's receipt,
    /// or through the run's bucket).
    pub reveals_with_commitment: u64,
    /// Own audit answers refused on receipt (proofs that do not hold).
    pub audits_failed: u64,
    /// Own audits the coordinator replays after answering (their verdicts
    /// are in the ledger).
    pub audits_answered: u64,
    /// Own audits whose replay was delegated to another worker (their
    /// verdicts are in the ledger).
    pub audits_delegated: u64,
    /// Other workers' segments this worker replayed as an auditor.
    pub audits_judged: u64,
    /// Requests the coordinator refused (with their reasons in the log).
    pub refused: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    /// Models downloaded whole (on joining, under a full broadcast, or when
    /// a delta was missing or did not rebuild the model).
    pub full_model_downloads: u64,
    /// Models rebuilt from the one held and a downloaded delta (`[outer]
    /// broadcast`).
    pub delta_model_downloads: u64,
    /// From registration to holding a first assignment and its model.
    pub join_ms: Option<u64>,
    /// The option of the contract menu it chose, if the run offers one.
    pub option: Option<u32>,
    /// Seconds spent training (the inner steps of its rounds).
    pub training_seconds: f64,
    /// Seconds from holding its first assignment and model to the end of
    /// the run: the time it could have been training.
    pub active_seconds: f64,
    /// `training_seconds / active_seconds`: the share of its time this
    /// worker trained rather than waited for the network or the
    /// coordinator (what overlap and compression are for).
    pub compute_utilisation: Option<f64>,
    /// Where the rest of `active_seconds` went, once it holds a first
    /// assignment.
    pub idle: IdleSeconds,
    pub finished: bool,
}

/// The seconds a worker did not train, by what it waited for (each
/// measured around the step in the worker's loop; what runs beside
/// training, such as a reveal sent in the background, is not idle time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleSeconds {
    /// Waiting for a round to train (the round's view, long-polled).
    pub round: f64,
    /// Downloading the model a round trains from, once the round is known.
    pub model: f64,
    /// Sending commitments, until their receipts are in.
    pub commit: f64,
    /// Reveals and audit answers sent before training goes on.
    pub upload: f64,
    /// Replaying other workers' segments as their auditor.
    pub auditing: f64,
}

impl WorkerSummary {
    /// Adds what a round settled in the background (its reveal and audit
    /// answer) counted.
    fn absorb(&mut self, other: &WorkerSummary) {
        self.commitments += other.commitments;
        self.bytes_uploaded += other.bytes_uploaded;
        self.reveals_accepted += other.reveals_accepted;
        self.reveals_with_commitment += other.reveals_with_commitment;
        self.refused += other.refused;
        self.audits_failed += other.audits_failed;
        self.audits_answered += other.audits_answered;
        self.audits_delegated += other.audits_delegated;
    }

    /// Closes the books on the time since `joined` (the first assignment).
    fn account_time(&mut self, joined: Option<Instant>) {
        if let Some(joined) = joined {
            self.active_seconds = joined.elapsed().as_secs_f64();
            self.compute_utilisation =
                (self.active_seconds > 0.0).then(|| (self.training_seconds / self.active_seconds).min(1.0));
        }
    }
}

/// Runs a worker until the run finishes (Ok) or it must give up (Err).
/// `on_event` sees what happens as it happens: training progress, uploads,
/// one summary per round once the round closes (see [`WorkerEvent`]).
pub async fn run_worker(
    options: WorkerOptions,
    mut on_event: impl FnMut(&WorkerEvent),
) -> Result<WorkerSummary, NodeError> {
    let identity = crate::files::load_identity(&options.key)?;
    let behavior = options.behavior;
    let mut summary = WorkerSummary {
        public_key: identity.public_key().to_hex(),
        behavior: behavior.to_string(),
        ..Default::default()
    };
    let mut client = Client::new(&options.coordinator, identity, options.give_up_after)?;

    let answer = client.request(Method::GET, "/v1/run", Vec::new(), &[]).await?;
    let signed: Signed<RunInfo> = expect_ok(&answer, "reading the run description")?.json()?;
    let coordinator = options.coordinator_key.unwrap_or(signed.body.coordinator);
    let run = signed
        .verify(&coordinator)
        .map_err(|_| {
            NodeError::Untrusted("the run description is not signed by the coordinator's key".into())
        })?
        .clone();
    if run.protocol_version != PROTOCOL_VERSION {
        return Err(NodeError::Untrusted(format!(
            "the coordinator speaks protocol {}, this worker {PROTOCOL_VERSION}",
            run.protocol_version
        )));
    }
    // The recipe decides what this worker allocates (a GPT's sizes): a
    // signed but invalid one is refused, not trusted to fit.
    run.config
        .training
        .validate()
        .map_err(|error| NodeError::Untrusted(format!("the run's training recipe is invalid: {error}")))?;
    let dataset = Arc::new(load_matching_data(options.data.as_deref(), &options.tokenizer, &run)?);
    let flipped = if behavior.flips_labels() {
        let flipped = dataset.flipped_labels().ok_or_else(|| {
            NodeError::Data(format!("the {behavior} behaviour flips image labels; this run trains on text"))
        })?;
        Some(Arc::new(flipped))
    } else {
        None
    };
    let model: Arc<dyn Model> = Arc::from(crowdtrain_train::build_model(run.config.training.model));
    if model.name() != run.model_name {
        return Err(NodeError::Untrusted(format!(
            "the run trains {}, which this build calls {}",
            run.model_name,
            model.name()
        )));
    }
    client.set_run(run.run_id);
    // Shared with a reveal sent in the background (delayed outer updates).
    let client = Arc::new(client);
    summary.run_id = Some(run.run_id);

    let choice = match options.choose {
        Some(choose) => {
            let (option, choice) = choose_option(&client, &run, &coordinator, choose, &mut on_event).await?;
            summary.option = Some(option);
            Some(choice)
        }
        None if run.config.contract.is_some() => {
            return Err(NodeError::Contract(
                "this run offers a contract: pass --cost C (your per-unit cost; the worker takes the option of \
                 the menu that is best for you) or --option K"
                    .into(),
            ));
        }
        None => None,
    };
    let registered_at = Instant::now();
    let mut joined_at: Option<Instant> = None;
    let registration =
        register(&client, &run, options.admission_token.as_deref(), choice, &mut on_event).await?;
    let registration: Signed<Registration> = registration.json()?;
    let registration = verified(&registration, &coordinator, "registration")?;
    if registration.public_key != client.identity().public_key() || registration.run_id != run.run_id {
        return Err(NodeError::Untrusted("the registration names another key or run".into()));
    }
    let me = registration.worker;
    summary.worker = Some(me);
    on_event(&WorkerEvent::Registered { worker: me, run_id: run.run_id });

    let pool = training_pool(options.threads)?;
    let mut models = ModelCache::new(&options.cache, model.as_ref())?;
    models.use_deltas(!run.config.outer.broadcast.is_full());
    // With a bucket (`[storage]`), models come from it and updates go to
    // it, with this worker's own credentials from its environment.
    let bucket = run.config.storage.as_ref().map(|section| Bucket::open(section, &run.run_id)).transpose()?;
    models.use_bucket(bucket.clone());
    // Through a bucket an early reveal could be read by other workers
    // before they commit: there, updates wait for the reveal phase.
    let early_reveal = options.early_reveal && bucket.is_none();
    let mut shards: HashMap<u32, Arc<Shards>> = HashMap::new();
    let mut last_done: Option<RoundId> = None;
    // Delegated audits already replayed, so a refused report is not retried forever.
    let mut audited: std::collections::HashSet<(RoundId, WorkerId)> = Default::default();
    // Rounds whose challenge (an audit drawn after the reveals) was answered.
    let mut challenged: std::collections::HashSet<RoundId> = Default::default();
    let mut current: Option<(RoundId, Arc<Produced>)> = None;
    // Provisional rounds trained for and then withdrawn, by base model and
    // shard (a round can open again on the same model with other
    // participants, which moves the shards).
    let mut withdrawn: std::collections::HashSet<(RoundId, Digest, Shard)> = Default::default();
    // Rounds this worker had committed to before it restarted, trained
    // again to reveal them (once each, whatever the coordinator says).
    let mut recovered: std::collections::HashSet<RoundId> = Default::default();
    let mut previous: Option<Arc<Produced>> = None;
    // The error-feedback residual this worker's next commitment starts
    // from (empty: zero), as its last accepted commitment left it.
    let codec = run.config.training.codec;
    let residual_file = ResidualFile::new(&options.cache, &run.run_id, me, run.parameters as usize);
    let mut residual = if codec.error_feedback() { residual_file.load() } else { Vec::new() };
    let mut summaries = Summaries { worker: me, pending: Default::default(), checked: None, reading: None };
    // Under a delayed outer update (`[outer] delay` >= 1) a committed round
    // is settled (audit answer, reveal) in the background while the next
    // round trains, and the next round's base is fetched during training.
    let pipelined = run.config.outer.delay > 0;
    let mut in_flight: Vec<InFlight> = Vec::new();
    // Each new model as soon as the round making it closes, so that it is
    // fetched ahead beside whatever this worker is training then.
    let mut newest =
        pipelined.then(|| newest::NewestModel::watch(Arc::clone(&client), coordinator, run.run_id));
    // The newest view seen beside a round's training: it names the next
    // round to train, so no request stands between two rounds' training.
    let mut next_view: Option<RoundView> = None;
    // What the fetch beside training had to say (round summaries), said
    // once the training is done.
    let mut said_beside: Vec<WorkerEvent> = Vec::new();
    // With a bucket, the round's notices there (see `notices` for the runs
    // that keep long-polling the coordinator), and the view last acted on.
    let simple_rounds = run.config.outer.delay == 0
        && run.config.audit.auditors == crowdtrain_protocol::config::Auditors::Coordinator;
    let mut notices = bucket
        .clone()
        .filter(|_| simple_rounds)
        .map(|bucket| notices::Notices::new(bucket, coordinator, run.run_id));
    let mut shown: Option<RoundView> = None;
    loop {
        settle_finished(&mut in_flight, false, &mut summary, &mut on_event).await?;
        summaries.collect(&mut on_event)?;
        let asked = Instant::now();
        let after = last_done.map_or(String::new(), |round| format!("&after={round}"));
        // With a bucket, wait on its round notice; else (and the first
        // time) long-poll the coordinator.
        let prefetched = next_view.take();
        let summarised = prefetched.is_some();
        let view = match (notices.as_mut(), shown.as_ref()) {
            _ if prefetched.is_some() => prefetched.expect("checked"),
            (Some(notices), Some(shown)) => {
                match notices.next(shown, current.as_ref().map(|(round, _)| *round)).await {
                    notices::Next::Act(view) => *view,
                    notices::Next::AskCoordinator => {
                        own_view(&client, &coordinator, run.run_id, &format!("/v1/round?wait_ms=0{after}"))
                            .await?
                    }
                }
            }
            _ => {
                own_view(&client, &coordinator, run.run_id, &format!("/v1/round?wait_ms=20000{after}"))
                    .await?
            }
        };
        if let Some(notices) = notices.as_mut() {
            notices.saw(&view);
        }
        shown = Some(view.clone());
        if !summarised {
            summaries.on_view(&client, &view, &mut on_event)?;
        }
        if joined_at.is_some() {
            summary.idle.round += asked.elapsed().as_secs_f64();
        }
        tracing::debug!(
            round = ?view.round,
            phase = ?view.phase,
            prefetched = summarised,
            waited_ms = asked.elapsed().as_millis() as u64,
            "view in hand"
        );
        // Another worker's segment to replay, in the open round or in one
        // opened ahead of it (each runs its own reveal phase and audits).
        let task = std::iter::successors(Some(&view), |view| view.ahead.as_deref())
            .take(1 + MAX_OUTER_DELAY as usize)
            .find_map(|live| Some((live.audit_task?, live.round?)));
        if let Some((task, round)) = task
            && behavior != Behavior::NoAnswer
            && audited.insert((round, task.worker))
        {
            let auditing = Auditing {
                client: &client,
                coordinator: &coordinator,
                run: &run,
                model: &model,
                dataset: &dataset,
                pool: &pool,
                lie: behavior == Behavior::LyingAuditor,
            };
            let replaying = Instant::now();
            let replayed = auditing.replay(&mut models, &mut shards, round, task).await?;
            summary.idle.auditing += replaying.elapsed().as_secs_f64();
            match replayed {
                Ok(status) => {
                    summary.audits_judged += 1;
                    on_event(&note(format!(
                        "round {round}: replayed {}'s segment {}: {status}",
                        task.worker, task.segment
                    )));
                }
                Err(reason) => {
                    summary.refused += 1;
                    on_event(&note(format!("round {round}: audit of {} refused: {reason}", task.worker)));
                }
            }
            continue;
        }
        if view.phase == Phase::Finished {
            settle_finished(&mut in_flight, true, &mut summary, &mut on_event).await?;
            summary.finished = true;
            summary.account_time(joined_at);
            let totals = summaries.flush(&client, &mut on_event).await?;
            on_event(&WorkerEvent::Finished {
                rounds: view.completed_rounds,
                model: view.model,
                totals: totals.as_ref().map(Totals::from),
            });
            break;
        }
        // Challenged after revealing: its update and another's were copies
        // no replay had told apart, and the answer proves which is its own
        // work. Due although this worker is done with the round (once: a
        // refused answer fails the challenge at once). Not while the round
        // is still settled in the background: its answer to an audit drawn
        // at commit goes beside its reveal, and may land after it.
        if let Some(((round, produced), segment)) = current
            .as_ref()
            .filter(|(held, _)| view.round == Some(*held) && view.committed && view.revealed)
            .zip(view.audit.filter(|_| view.phase == Phase::Revealing && !view.audit_answered))
        {
            let settling = in_flight.iter().any(|settling| settling.round == *round);
            if behavior != Behavior::NoAnswer && !settling && challenged.insert(*round) {
                let bucket = bucket.as_ref().map(|bucket| (bucket, me));
                let answering = Instant::now();
                answer_audit(
                    &client,
                    &coordinator,
                    bucket,
                    *round,
                    produced,
                    segment,
                    &mut summary,
                    &mut on_event,
                )
                .await?;
                summary.idle.upload += answering.elapsed().as_secs_f64();
            } else {
                // Not answering: the view says so until the deadline.
                tokio::time::sleep(SETTLING_POLL).await;
            }
            continue;
        }
        let (view, ahead) = round_to_work_on(view, last_done);
        let Some(assignment) =
            view.assignment.clone().filter(|assignment| Some(assignment.round) > last_done)
        else {
            continue;
        };
        if assignment.worker != me || assignment.run_id != run.run_id {
            return Err(NodeError::Untrusted("an assignment for another worker or run".into()));
        }
        let round = assignment.round;
        let base = assignment.base_model.to_hex();
        if current.as_ref().is_some_and(|(held, _)| *held != round) {
            previous = current.take().map(|(_, produced)| produced);
        }
        // Committed and drawn for audit, with the answer not yet in (a
        // delegated audit, drawn at commit but answered once its auditor is
        // named; or an answer a restart of ours or the coordinator's lost).
        if let Some(((_, produced), segment)) = current
            .as_ref()
            .filter(|(held, _)| *held == round && view.committed)
            .zip(view.audit.filter(|_| !view.audit_answered && behavior != Behavior::NoAnswer))
        {
            let bucket = bucket.as_ref().map(|bucket| (bucket, me));
            let answering = Instant::now();
            answer_audit(
                &client,
                &coordinator,
                bucket,
                round,
                produced,
                segment,
                &mut summary,
                &mut on_event,
            )
            .await?;
            summary.idle.upload += answering.elapsed().as_secs_f64();
        }
        // Committed, but the update is not in hand (this worker restarted,
        // its cache perhaps gone, between its commitment and its reveal):
        // training is deterministic, so train the assignment again and
        // commit it again. The coordinator takes only the very same
        // commitment (idempotently) and refuses any other as a duplicate,
        // so a differing result (a residual file newer than the round) is
        // never revealed: the worker then sits the round out, unslashed.
        let recover = view.committed
            && !view.revealed
            && matches!(view.phase, Phase::Committing | Phase::Revealing)
            && current.as_ref().is_none_or(|(held, _)| *held != round)
            && recovered.insert(round);
        if recover {
            on_event(&note(format!(
                "round {round}: committed before a restart; training the assignment again to reveal it"
            )));
        }
        match view.phase {
            phase if (phase == Phase::Committing && !view.committed) || recover => {
                let fetching = Instant::now();
                let params = models.get(&client, &assignment.base_model).await?;
                if summary.join_ms.is_none() {
                    summary.join_ms = Some(registered_at.elapsed().as_millis() as u64);
                    joined_at = Some(Instant::now());
                } else {
                    summary.idle.model += fetching.elapsed().as_secs_f64();
                }
                tracing::debug!(
                    round,
                    waited_ms = fetching.elapsed().as_millis() as u64,
                    "base model in hand"
                );
                let round_shards = shards_for(&mut shards, &assignment, &dataset)?;
                summaries.pending.insert(round);
                let steps = assignment.recipe.inner_steps;
                let batch = assignment.recipe.batch() as u64;
                on_event(&WorkerEvent::RoundStarted {
                    round,
                    steps,
                    batch,
                    slot: assignment.slot,
                    participants: assignment.slots,
                    base_model: assignment.base_model,
                });
                let started = Instant::now();
                let steps_done = Arc::new(AtomicU64::new(0));
                let mut reported = 0;
                let mut report_progress = |on_event: &mut dyn FnMut(&WorkerEvent)| {
                    let step = steps_done.load(Ordering::Relaxed);
                    if step != reported {
                        reported = step;
                        let seconds = started.elapsed().as_secs_f64().max(1e-9);
                        on_event(&WorkerEvent::Progress {
                            round,
                            step,
                            steps,
                            samples_per_second: (step * batch) as f64 / seconds,
                        });
                    }
                };
                let training_from = assignment.base_model;
                let produced = {
                    let (assignment, dataset, model, pool, previous, flipped, counter, residual) = (
                        assignment.clone(),
                        Arc::clone(&dataset),
                        Arc::clone(&model),
                        Arc::clone(&pool),
                        previous.clone(),
                        flipped.clone(),
                        Arc::clone(&steps_done),
                        residual.clone(),
                    );
                    let training = tokio::task::spawn_blocking(move || {
                        let work = Work {
                            model: model.as_ref(),
                            assignment: &assignment,
                            params: &params,
                            data: &dataset,
                            shards: &round_shards,
                            flipped: flipped.as_deref(),
                            steps_done: &counter,
                            residual: &residual,
                        };
                        pool.install(|| produce(behavior, &work, previous.as_deref()))
                    });
                    // Meanwhile, each new model is fetched ahead as the
                    // round making it closes, for the later rounds of this
                    // worker's that the views name; so are the summaries of
                    // the rounds closed meanwhile.
                    let said = &mut said_beside;
                    let seen = std::cell::Cell::new(None);
                    let trained_at = std::cell::Cell::new(None);
                    let in_hand = &view;
                    let follow = async {
                        let Some(newest) = newest.as_mut() else { return Ok(()) };
                        let beside = Beside { client: &client, seen: &seen };
                        let training = (round, &training_from);
                        beside.follow(newest, &mut models, &mut summaries, said, training, in_hand).await
                    };
                    let training = async {
                        let produced = while_ticking(training, || report_progress(&mut on_event)).await;
                        trained_at.set(Some(Instant::now()));
                        produced
                    };
                    let produced = beside(training, follow).await;
                    // Models fetched ahead are waited for, if at all, when
                    // the next round starts (`idle.model`).
                    let trained_at = trained_at.get().unwrap_or_else(Instant::now);
                    summary.idle.round += trained_at.elapsed().as_secs_f64();
                    // No newer model meanwhile: the view in hand is as new,
                    // and names the next round if this worker is behind the
                    // pipeline's head; at its head, the loop waits for one.
                    let seen = seen.take().or_else(|| names_round_after(&view, round).then(|| view.clone()));
                    tracing::debug!(
                        round,
                        trained_ms = trained_at.duration_since(started).as_millis() as u64,
                        then_waited_ms = trained_at.elapsed().as_millis() as u64,
                        next_view = seen.is_some(),
                        "trained"
                    );
                    summary.training_seconds += trained_at.duration_since(started).as_secs_f64();
                    next_view = seen;
                    for event in said_beside.drain(..) {
                        on_event(&event);
                    }
                    let produced = produced.expect("training does not panic")?;
                    report_progress(&mut on_event);
                    produced
                };
                summary.rounds_trained += 1;
                summary.rounds_trained_ahead += u64::from(ahead);
                let path = format!(
                    "/v1/rounds/{round}/commitments?base_model={base}&slot={}&slots={}",
                    assignment.slot, assignment.slots
                );
                if pipelined {
                    // Its commitment, audit answer and reveal go beside
                    // the next round's training: this worker is done with
                    // the round here.
                    let produced = Arc::new(produced);
                    current = Some((round, Arc::clone(&produced)));
                    let settling = Settling {
                        client: Arc::clone(&client),
                        coordinator,
                        run_id: run.run_id,
                        parameters: run.parameters as usize,
                        bucket: bucket.clone().map(|bucket| (bucket, me)),
                        behavior,
                        view: view.clone(),
                        commit_path: path,
                        assignment: assignment.clone(),
                        produced,
                        with_boundaries: replays_from_start(&run),
                        early_reveal,
                    };
                    in_flight.push(InFlight { round, task: tokio::spawn(settling.run()) });
                    last_done = Some(round);
                    continue;
                }
                let committing = Instant::now();
                let mut produced = produced;
                let (receipt, refusal, body, revealed) = loop {
                    let body = commit_body(&produced, replays_from_start(&run));
                    // With early reveals the update goes with its
                    // commitment, one round trip for both.
                    let with_reveal = match early_reveal {
                        true => {
                            let payload =
                                revealed_payload(behavior, &produced, &assignment, run.parameters as usize)?;
                            let sent = (client.as_ref(), &coordinator, round, path.as_str());
                            send_with_reveal(sent, &body, payload, &mut summary, &mut on_event).await?
                        }
                        false => WithReveal::Apart,
                    };
                    let (receipt, refusal, revealed) = match with_reveal {
                        WithReveal::Taken(receipt, revealed) => (Ok(receipt), None, revealed),
                        WithReveal::Refused(answer) => (Err(answer.reason()), answer.code(), false),
                        WithReveal::Apart => {
                            let answer = send_commitment(&client, &path, &body, &view).await?;
                            (receipt(&answer, &coordinator)?, answer.code(), false)
                        }
                    };
                    // The coordinator's chain does not end where ours does
                    // (our residual file is older than our last accepted
                    // commitment): start the error feedback again from zero.
                    if refusal == Some(ErrorCode::ResidualChain) && !produced.residual_in.is_empty() {
                        on_event(&note(format!(
                            "round {round}: {}; starting the error feedback again from zero",
                            receipt.expect_err("refused")
                        )));
                        residual.clear();
                        residual_file.save(&residual)?;
                        produced = produced.restarted(codec)?;
                        continue;
                    }
                    break (receipt, refusal, body, revealed);
                };
                summary.idle.commit += committing.elapsed().as_secs_f64();
                let status = receipt.as_ref().map(|receipt| receipt.status).map_err(Clone::clone);
                on_event(&uploaded(round, Upload::Commitment, body.len() as u64, status));
                match receipt {
                    Ok(receipt) if receipt.status == ReceiptStatus::Accepted => {
                        summary.commitments += 1;
                        // The chain moved on: the next commitment starts
                        // from what this one kept.
                        if codec.error_feedback() {
                            residual.clone_from(&produced.residual_out);
                            residual_file.save(&residual)?;
                        }
                        let produced = Arc::new(produced);
                        let audit = receipt.audit.filter(|_| behavior != Behavior::NoAnswer);
                        current = Some((round, Arc::clone(&produced)));
                        if let Some(segment) = audit {
                            // Drawn for audit: the answer goes first, at
                            // once, so that the coordinator replays while
                            // the others still train or reveal.
                            let answering = Instant::now();
                            answer_audit(
                                &client,
                                &coordinator,
                                bucket.as_ref().map(|bucket| (bucket, me)),
                                round,
                                &produced,
                                segment,
                                &mut summary,
                                &mut on_event,
                            )
                            .await?;
                            summary.idle.upload += answering.elapsed().as_secs_f64();
                        }
                        if early_reveal && !revealed {
                            let revealing = Instant::now();
                            let what = (round, &assignment, produced.as_ref());
                            send_reveal(
                                &client,
                                &coordinator,
                                None,
                                what,
                                (behavior, true),
                                run.parameters as usize,
                                &mut summary,
                                &mut on_event,
                            )
                            .await?;
                            summary.idle.upload += revealing.elapsed().as_secs_f64();
                        }
                    }
                    Ok(_) => last_done = Some(round),
                    Err(_) => {
                        summary.refused += 1;
                        // A provisional round withdrawn under us (an audit
                        // of the round before failed) opens again on
                        // another model, or on the same one with other
                        // shards: train again on that (once per model and
                        // shard, whatever the coordinator does).
                        let retrain = view.provisional
                            && refusal == Some(ErrorCode::StaleModel)
                            && withdrawn.insert((round, assignment.base_model, assignment.shard()));
                        if !retrain {
                            last_done = Some(round);
                        }
                    }
                }
            }
            Phase::Revealing => {
                let Some((_, produced)) =
                    current.as_ref().filter(|(held, _)| *held == round && view.committed)
                else {
                    // Nothing of ours counts in this round: wait for the next.
                    last_done = Some(round);
                    continue;
                };
                if !view.revealed {
                    let revealing = Instant::now();
                    let bucket = bucket.as_ref().map(|bucket| (bucket, me));
                    let parameters = run.parameters as usize;
                    let what = (round, &assignment, produced.as_ref());
                    send_reveal(
                        &client,
                        &coordinator,
                        bucket,
                        what,
                        (behavior, false),
                        parameters,
                        &mut summary,
                        &mut on_event,
                    )
                    .await?;
                    summary.idle.upload += revealing.elapsed().as_secs_f64();
                }
                last_done = Some(round);
            }
            _ => {}
        }
    }
    summary.bytes_downloaded = client.bytes_received.load(Ordering::Relaxed) + models.bytes_downloaded();
    (summary.full_model_downloads, summary.delta_model_downloads) = models.downloads();
    Ok(summary)
}

/// What follows the newest model beside a round's training (under a
/// delayed outer update, `[outer] delay` d >= 1, each round trains from the
/// model the round d before it makes).
struct Beside<'a> {
    client: &'a Arc<Client>,
    /// The newest view seen (not one of a finished run): the next round's.
    seen: &'a std::cell::Cell<Option<RoundView>>,
}

impl Beside<'_> {
    /// Fetches ahead the bases of this worker's rounds after `training`
    /// (trained now from `training_from`) that `in_hand` names, then those
    /// of each view naming a new model, as it comes, until the training
    /// ends and [`beside`] drops this (nothing here is a request: the watch
    /// asks, and summaries are read in the background). Every view seen is
    /// looked at for summaries (the rounds it shows closed), so the work
    /// loop acts on the newest without asking again.
    async fn follow(
        &self,
        newest: &mut newest::NewestModel,
        models: &mut ModelCache,
        summaries: &mut Summaries,
        said: &mut Vec<WorkerEvent>,
        (training, training_from): (RoundId, &Digest),
        in_hand: &RoundView,
    ) -> Result<(), NodeError> {
        // The bases of this worker's rounds after `training`, in round order.
        let upcoming = |view: &RoundView| {
            let mut bases: Vec<Digest> = Vec::new();
            let assignments = std::iter::successors(Some(view), |view| view.ahead.as_deref())
                .take(1 + MAX_OUTER_DELAY as usize)
                .filter_map(|view| view.assignment.as_ref())
                .filter(|assignment| assignment.round > training && assignment.base_model != *training_from);
            for assignment in assignments {
                if !bases.contains(&assignment.base_model) {
                    bases.push(assignment.base_model);
                }
            }
            bases
        };
        models.fetch_ahead(self.client, &upcoming(in_hand));
        while let Some(view) = newest.next().await {
            if view.phase == Phase::Finished {
                break;
            }
            models.fetch_ahead(self.client, &upcoming(&view));
            let mut say = |event: &WorkerEvent| said.push(event.clone());
            summaries.on_view(self.client, &view, &mut say)?;
            self.seen.set(Some(view));
        }
        Ok(())
    }
}

/// Whether `view`'s chain of live rounds assigns this worker a round after
/// `round`.
fn names_round_after(view: &RoundView, round: RoundId) -> bool {
    std::iter::successors(Some(view), |view| view.ahead.as_deref())
        .take(1 + MAX_OUTER_DELAY as usize)
        .any(|live| live.assignment.as_ref().is_some_and(|assignment| assignment.round > round))
}

/// Runs `main` to its end with `side` beside it, which is dropped when
/// `main` ends first. A `side` that ends first waits for `main`; its
/// failure is only logged (it is an optimisation: the work loop does it
/// again when it needs it).
async fn beside<T>(
    main: impl std::future::Future<Output = T>,
    side: impl std::future::Future<Output = Result<(), NodeError>>,
) -> T {
    let mut main = std::pin::pin!(main);
    tokio::select! {
        done = &mut main => done,
        result = side => {
            if let Err(error) = result {
                tracing::warn!(%error, "following the newest model beside training failed");
            }
            main.await
        }
    }
}

/// This worker's own view of the round (`GET {path}`: `/v1/round` and its
/// query), checked: signed by the coordinator, of this run.
async fn own_view(
    client: &Client,
    coordinator: &PublicKey,
    run_id: Digest,
    path: &str,
) -> Result<RoundView, NodeError> {
    let answer = client.request(Method::GET, path, Vec::new(), &[]).await?;
    let view: Signed<RoundView> = expect_ok(&answer, "asking for the round")?.json()?;
    let view = verified(&view, coordinator, "round view")?.clone();
    if view.run_id != run_id {
        return Err(NodeError::Untrusted("a round view for another run".into()));
    }
    Ok(view)
}

/// How often a round settled in the background asks again while its
/// view shows an audit answer due that it will not send (again).
const SETTLING_POLL: Duration = Duration::from_millis(250);

/// A committed round settled in the background (`[outer] delay` >= 1).
struct InFlight {
    round: RoundId,
    task: tokio::task::JoinHandle<Result<Settled, NodeError>>,
}

/// What settling a round in the background counted and reported.
struct Settled {
    summary: WorkerSummary,
    events: Vec<WorkerEvent>,
}

/// Accounts for the rounds settled in the background that are done (all
/// of them, waiting, when `all`): their counts and events join the
/// worker's, and a failure (the coordinator gone) is the worker's.
async fn settle_finished(
    in_flight: &mut Vec<InFlight>,
    all: bool,
    summary: &mut WorkerSummary,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<(), NodeError> {
    while let Some(index) = in_flight.iter().position(|round| all || round.task.is_finished()) {
        let InFlight { round, task } = in_flight.remove(index);
        let settled = task.await.map_err(|error| {
            NodeError::Untrusted(format!("settling round {round} in the background failed: {error}"))
        })??;
        summary.absorb(&settled.summary);
        for event in &settled.events {
            on_event(event);
        }
    }
    Ok(())
}

/// Whether `run` replays audits from the round's start (`audit.replay =
/// "from-start"`): then commitments carry their boundary leaves, and the
/// coordinator needs no answer to an audit (it records the leaves as its
/// answer at once, so no view asks for one).
fn replays_from_start(run: &RunInfo) -> bool {
    run.config.audit.replay == crowdtrain_protocol::config::AuditReplay::FromStart
}

/// The body of a commitment's request: the commitment, with its boundary
/// leaves `with_boundaries` ([`crowdtrain_protocol::wire::CommitBody`]).
fn commit_body(produced: &Produced, with_boundaries: bool) -> Vec<u8> {
    let boundaries = if with_boundaries { produced.hashes.clone() } else { Vec::new() };
    let body = crowdtrain_protocol::wire::CommitBody { commitment: produced.commitment(), boundaries };
    serde_json::to_vec(&body).expect("commitments serialise")
}

/// Everything a trained round needs to be settled beside the next round's
/// training: its commitment, its audit answer if drawn at commit, its
/// reveal once its commit phase is over, and a delegated audit's answer
/// once its auditor is named.
struct Settling {
    client: Arc<Client>,
    coordinator: PublicKey,
    run_id: Digest,
    parameters: usize,
    bucket: Option<(Bucket, WorkerId)>,
    behavior: Behavior,
    /// The view the round was trained from, and where its commitment goes.
    view: RoundView,
    commit_path: String,
    assignment: crowdtrain_protocol::Assignment,
    produced: Arc<Produced>,
    /// The commitment carries its boundary leaves ([`commit_body`]).
    with_boundaries: bool,
    /// Reveal once the commitment is accepted ([`WorkerOptions::early_reveal`]).
    early_reveal: bool,
}

impl Settling {
    /// Sends the answer to the round's audit of `segment`.
    async fn answer(
        &self,
        segment: u32,
        summary: &mut WorkerSummary,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Result<(), NodeError> {
        let bucket = self.bucket.as_ref().map(|(bucket, me)| (bucket, *me));
        let (client, coordinator, round) = (self.client.as_ref(), &self.coordinator, self.assignment.round);
        answer_audit(client, coordinator, bucket, round, &self.produced, segment, summary, on_event).await
    }

    /// Sends the commitment with its reveal in one request
    /// ([`send_with_reveal`]). Returns the commitment's receipt (or the
    /// coordinator's reason for refusing it) and whether the reveal was
    /// answered (and counted here); `None` when the coordinator took
    /// neither and the commitment is to go alone.
    async fn commit_with_reveal(
        &self,
        commitment: &[u8],
        summary: &mut WorkerSummary,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Result<Option<(Result<Receipt, String>, bool)>, NodeError> {
        let payload = revealed_payload(self.behavior, &self.produced, &self.assignment, self.parameters)?;
        let sent =
            (self.client.as_ref(), &self.coordinator, self.assignment.round, self.commit_path.as_str());
        Ok(match send_with_reveal(sent, commitment, payload, summary, on_event).await? {
            WithReveal::Apart => None,
            WithReveal::Refused(answer) => Some((Err(answer.reason()), false)),
            WithReveal::Taken(receipt, revealed) => Some((Ok(receipt), revealed)),
        })
    }

    /// Waits for the round's commit phase to end, then reveals (unless it
    /// was `revealed` with the commitment; at once with early reveals), and
    /// answers a delegated audit once its auditor is named (unless it was
    /// `answered` at commit). The round may be the open round or one
    /// opened ahead of it: each runs its own phases.
    async fn reveal_when_due(
        &self,
        mut answered: bool,
        revealed: bool,
        summary: &mut WorkerSummary,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Result<(), NodeError> {
        let (client, coordinator) = (self.client.as_ref(), &self.coordinator);
        let bucket = self.bucket.as_ref().map(|(bucket, me)| (bucket, *me));
        let round = self.assignment.round;
        let answers = self.behavior != Behavior::NoAnswer;
        if self.early_reveal && !revealed {
            let what = (round, &self.assignment, self.produced.as_ref());
            let how = (self.behavior, true);
            send_reveal(client, coordinator, bucket, what, how, self.parameters, summary, on_event).await?;
        }
        loop {
            let path = format!("/v1/round?wait_ms=20000&revealing={round}");
            let open = own_view(client, coordinator, self.run_id, &path).await?;
            if open.phase == Phase::Finished {
                return Ok(());
            }
            let chain = std::iter::successors(Some(&open), |view| view.ahead.as_deref());
            let Some(view) = chain.take(1 + MAX_OUTER_DELAY as usize).find(|view| view.round == Some(round))
            else {
                // Over (another round is the open round since), or not shown
                // yet: nothing of it is asked for any more, or ask again.
                if open.round.is_some_and(|open| open < round) {
                    continue;
                }
                return Ok(());
            };
            let audit_due = view.committed && !view.audit_answered && !answered && answers;
            if view.phase == Phase::Committing {
                // A delegated audit's answer is due once the auditor is
                // named.
                if let Some(segment) = view.audit.filter(|_| audit_due) {
                    self.answer(segment, summary, on_event).await?;
                    answered = true;
                } else if view.audit.is_some() && !view.audit_answered {
                    // Answered and refused (or not answering): the view
                    // says so at once, so ask less often.
                    tokio::time::sleep(SETTLING_POLL).await;
                }
                continue;
            }
            if !view.revealed && view.committed {
                let what = (round, &self.assignment, self.produced.as_ref());
                let how = (self.behavior, false);
                send_reveal(client, coordinator, bucket, what, how, self.parameters, summary, on_event)
                    .await?;
            }
            if let Some(segment) = view.audit.filter(|_| audit_due) {
                self.answer(segment, summary, on_event).await?;
            }
            return Ok(());
        }
    }

    async fn run(self) -> Result<Settled, NodeError> {
        let mut summary = WorkerSummary::default();
        let mut events = Vec::new();
        let mut on_event = |event: &WorkerEvent| events.push(event.clone());
        let (client, coordinator) = (self.client.as_ref(), &self.coordinator);
        let round = self.assignment.round;
        let answers = self.behavior != Behavior::NoAnswer;
        let body = commit_body(&self.produced, self.with_boundaries);
        let sending = Instant::now();
        let with_reveal = match self.early_reveal {
            true => self.commit_with_reveal(&body, &mut summary, &mut on_event).await?,
            false => None,
        };
        let (receipt, revealed) = match with_reveal {
            Some((receipt, revealed)) => (receipt, revealed),
            None => {
                let answer = send_commitment(client, &self.commit_path, &body, &self.view).await?;
                (receipt(&answer, coordinator)?, false)
            }
        };
        tracing::debug!(
            round,
            revealed,
            answered_ms = sending.elapsed().as_millis() as u64,
            "commitment sent"
        );
        let status = receipt.as_ref().map(|receipt| receipt.status).map_err(Clone::clone);
        on_event(&uploaded(round, Upload::Commitment, body.len() as u64, status));
        let audit = match receipt {
            Ok(receipt) if receipt.status == ReceiptStatus::Accepted => {
                summary.commitments += 1;
                receipt.audit.filter(|_| answers)
            }
            // Late: nothing more of it counts.
            Ok(_) => return Ok(Settled { summary, events }),
            Err(_) => {
                summary.refused += 1;
                return Ok(Settled { summary, events });
            }
        };
        // Drawn for audit at commit: the answer goes at once, so that the
        // coordinator replays while the round still commits and reveals,
        // and beside the reveal (on a connection of its own, see
        // `Client::request_counted`), so that the reveal, due as soon as
        // the round's commit phase ends, never waits behind a start state
        // many times its size: an audit delays only its own verdict, not
        // the round's reveal phase nor this worker's next commitment.
        let answering = async {
            let mut answered = Settled { summary: WorkerSummary::default(), events: Vec::new() };
            if let Some(segment) = audit {
                let Settled { summary, events } = &mut answered;
                self.answer(segment, summary, &mut |event: &WorkerEvent| events.push(event.clone())).await?;
            }
            Ok::<_, NodeError>(answered)
        };
        let revealing = self.reveal_when_due(audit.is_some(), revealed, &mut summary, &mut on_event);
        let (answered, revealed) = tokio::join!(answering, revealing);
        revealed?;
        let answered = answered?;
        summary.absorb(&answered.summary);
        events.extend(answered.events);
        Ok(Settled { summary, events })
    }
}

/// Reveals `produced`, this worker's update for `round` (`assignment`),
/// tampered with if `behavior` says so, directly or through the run's
/// bucket, and counts the answer. `early`: sent as soon as the commitment
/// was accepted, before the round's commit phase is over; a coordinator
/// that refuses that as too early (one that does not take early reveals)
/// is asked again when the reveal is due, and the refusal is not counted.
#[allow(clippy::too_many_arguments)] // the worker loop's state, one per argument
async fn send_reveal(
    client: &Client,
    coordinator: &PublicKey,
    bucket: Option<(&Bucket, WorkerId)>,
    (round, assignment, produced): (RoundId, &crowdtrain_protocol::Assignment, &Produced),
    (behavior, early): (Behavior, bool),
    parameters: usize,
    summary: &mut WorkerSummary,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<(), NodeError> {
    let payload = revealed_payload(behavior, produced, assignment, parameters)?;
    let bytes = payload.len() as u64;
    let sending = Instant::now();
    let path = format!("/v1/rounds/{round}/reveals?base_model={}", assignment.base_model.to_hex());
    let answer = match bucket {
        Some((bucket, me)) => {
            let key = BlobKey::Update { worker: me, digest: Digest::of(&payload) };
            post_through_bucket(client, bucket, key, (round, Upload::Reveal), &path, payload, on_event)
                .await?
        }
        None => upload(client, round, Upload::Reveal, &path, payload, on_event).await?,
    };
    tracing::debug!(round, early, answered_ms = sending.elapsed().as_millis() as u64, "reveal sent");
    if early && answer.code() == Some(ErrorCode::TooEarly) {
        tracing::debug!(round, "the coordinator takes no early reveal: revealing when due");
        return Ok(());
    }
    reveal_answered(receipt_status(&answer, coordinator)?, round, bytes, summary, on_event);
    Ok(())
}

/// What this worker reveals of `produced`: its update, tampered with if
/// `behavior` says so.
fn revealed_payload(
    behavior: Behavior,
    produced: &Produced,
    assignment: &crowdtrain_protocol::Assignment,
    parameters: usize,
) -> Result<Vec<u8>, NodeError> {
    if behavior == Behavior::TamperReveal {
        Ok(tampered(&produced.payload, assignment, parameters)?)
    } else {
        Ok(produced.payload.clone())
    }
}

/// Accounts for the coordinator's answer (`status`, or its reason for a
/// refusal) to this worker's reveal of `round` (`bytes` long).
fn reveal_answered(
    status: Result<ReceiptStatus, String>,
    round: RoundId,
    bytes: u64,
    summary: &mut WorkerSummary,
    on_event: &mut impl FnMut(&WorkerEvent),
) {
    summary.bytes_uploaded += bytes;
    if let Ok(status) = &status {
        summary.reveals_accepted += u64::from(*status == ReceiptStatus::Accepted);
    } else {
        summary.refused += 1;
    }
    on_event(&uploaded(round, Upload::Reveal, bytes, status));
}

/// What the coordinator made of a commitment sent with its reveal.
enum WithReveal {
    /// It took neither: refused as too early (a round open provisionally),
    /// as for another round (one shown by a coordinator that restarted
    /// before it was durable), or the two as over the run's upload limit
    /// together. The commitment goes alone (`send_commitment`, which waits
    /// out the first two), with its update revealed after it.
    Apart,
    /// The commitment refused (nothing was recorded): the answer says why.
    Refused(Answer),
    /// The commitment's receipt, and whether the reveal was answered (an
    /// accepted commitment's always is; a late one's is not taken).
    Taken(Receipt, bool),
}

/// Sends `commitment` to `commit_path` with `payload`, its update, in one
/// request (`?with_reveal=`; the coordinator takes the reveal as soon as it
/// takes the commitment, which early reveals allow), so that no round trip
/// stands between them, and counts the reveal's answer.
async fn send_with_reveal(
    (client, coordinator, round, commit_path): (&Client, &PublicKey, RoundId, &str),
    commitment: &[u8],
    payload: Vec<u8>,
    summary: &mut WorkerSummary,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<WithReveal, NodeError> {
    let bytes = payload.len() as u64;
    let path = format!("{commit_path}&with_reveal={bytes}");
    let mut body = Vec::with_capacity(commitment.len() + payload.len());
    body.extend_from_slice(commitment);
    body.extend_from_slice(&payload);
    let answer = upload(client, round, Upload::Reveal, &path, body, on_event).await?;
    if matches!(answer.code(), Some(ErrorCode::TooEarly | ErrorCode::WrongRound | ErrorCode::TooLarge)) {
        return Ok(WithReveal::Apart);
    }
    if !answer.status.is_success() {
        return Ok(WithReveal::Refused(answer));
    }
    let answered: CommittedAndRevealed = answer.json()?;
    let commitment = verified(&answered.commitment, coordinator, "receipt")?.clone();
    let Some(reveal) = answered.reveal else { return Ok(WithReveal::Taken(commitment, false)) };
    let status = match reveal {
        Ok(receipt) => Ok(verified(&receipt, coordinator, "receipt")?.status),
        Err(refusal) => Err(refusal.message),
    };
    reveal_answered(status, round, bytes, summary, on_event);
    summary.reveals_with_commitment += 1;
    Ok(WithReveal::Taken(commitment, true))
}

/// The first round opened ahead of the open one (`[outer] delay` d >= 1;
/// the view's `ahead` chain, d long at most) with work for this worker once
/// the rounds before it ask nothing more of it (it trained them, or has
/// nothing in them): it trains that round while those are revealed,
/// audited and aggregated, instead of waiting for the next model. Else
/// `view` itself. Says which it is (true: a round opened ahead).
fn round_to_work_on(mut view: RoundView, last_done: Option<RoundId>) -> (RoundView, bool) {
    let due = |view: &RoundView| {
        view.assignment.as_ref().is_some_and(|assignment| Some(assignment.round) > last_done)
    };
    let depth = std::iter::successors(Some(&view), |view| view.ahead.as_deref())
        .take(1 + MAX_OUTER_DELAY as usize)
        .position(due)
        .unwrap_or(0);
    for _ in 0..depth {
        view = *view.ahead.take().expect("the chain is that deep");
    }
    (view, depth > 0)
}

/// Sends a commitment until it is taken or refused for good; a commitment
/// refused as due later (see below) goes again, waiting longer each time.
async fn send_commitment(
    client: &Client,
    path: &str,
    body: &[u8],
    view: &RoundView,
) -> Result<Answer, NodeError> {
    let mut wait = PROVISIONAL_RETRY_START;
    loop {
        let answer = client
            .request(Method::POST, path, body.to_vec(), &[("content-type", "application/json".into())])
            .await?;
        // Opened ahead of the previous round's last verdicts (commitments
        // are taken once they are in), or shown before it was durable by a
        // coordinator that then restarted (it opens again once the round
        // before closes): the same commitment is due.
        let due_later = match answer.code() {
            Some(ErrorCode::TooEarly) => true,
            Some(ErrorCode::WrongRound) => {
                view.deadline_unix_ms.is_some_and(|deadline| crate::coordinator::now_unix_ms() < deadline)
            }
            _ => false,
        };
        if !due_later {
            return Ok(answer);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(PROVISIONAL_RETRY_MAX);
    }
}

/// Progress is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Awaits `task`, calling `tick` every [`PROGRESS_INTERVAL`] meanwhile.
async fn while_ticking<T>(task: impl std::future::Future<Output = T>, mut tick: impl FnMut()) -> T {
    let mut task = std::pin::pin!(task);
    let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut task => return done,
            _ = interval.tick() => tick(),
        }
    }
}

/// Sends an upload, reporting the bytes sent as they go.
async fn upload(
    client: &Client,
    round: RoundId,
    what: Upload,
    path: &str,
    body: Vec<u8>,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<Answer, NodeError> {
    let bytes = body.len() as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let mut reported = None;
    let headers = [("content-type", "application/octet-stream".to_owned())];
    // An audit answer (a start state, many times a reveal's size) goes
    // beside the worker's other posts, not in turn with them.
    let sequence = if what == Upload::AuditAnswer { Sequence::Beside } else { Sequence::InTurn };
    let request = client.request_counted(Method::POST, path, body, &headers, Some(&sent), sequence);
    while_ticking(request, || {
        let now = sent.load(Ordering::Relaxed);
        if reported != Some(now) {
            reported = Some(now);
            on_event(&WorkerEvent::Uploading { round, what, sent: now, bytes });
        }
    })
    .await
}

/// A reveal or an audit answer through the run's bucket: the bytes go to
/// `key` (this worker's own content-addressed key), and the signed post
/// names their digest (no body). An object the coordinator could not read
/// as named (`bad-object`: lost, or altered by someone with write access)
/// is uploaded again, a few times.
async fn post_through_bucket(
    client: &Client,
    bucket: &Bucket,
    key: BlobKey,
    (round, what): (RoundId, Upload),
    path: &str,
    payload: Vec<u8>,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<Answer, NodeError> {
    const ATTEMPTS: u32 = 3;
    let bytes = payload.len() as u64;
    let digest = Digest::of(&payload);
    let payload = object_store::PutPayload::from(payload);
    let separator = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{separator}object={}", digest.to_hex());
    let mut attempt = 0;
    loop {
        attempt += 1;
        on_event(&WorkerEvent::Uploading { round, what, sent: 0, bytes });
        put_patiently(bucket, &key, payload.clone(), client.give_up_after()).await?;
        on_event(&WorkerEvent::Uploading { round, what, sent: bytes, bytes });
        let answer = client.request(Method::POST, &path, Vec::new(), &[]).await?;
        if answer.code() != Some(ErrorCode::BadObject) || attempt == ATTEMPTS {
            return Ok(answer);
        }
        on_event(&note(format!("round {round}: {}; uploading it again", answer.reason())));
    }
}

/// Writes an object, retrying a bucket that is away for up to `give_up_after`.
async fn put_patiently(
    bucket: &Bucket,
    key: &BlobKey,
    bytes: object_store::PutPayload,
    give_up_after: Duration,
) -> Result<(), NodeError> {
    let started = Instant::now();
    loop {
        match bucket.put(key, bytes.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) if started.elapsed() < give_up_after => {
                tracing::warn!(%error, "could not write to the bucket; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The event for an upload's answer.
fn uploaded(round: RoundId, what: Upload, bytes: u64, status: Result<ReceiptStatus, String>) -> WorkerEvent {
    match status {
        Ok(status) => WorkerEvent::Uploaded { round, what, bytes, status: status.to_string(), reason: None },
        Err(reason) => {
            WorkerEvent::Uploaded { round, what, bytes, status: "refused".into(), reason: Some(reason) }
        }
    }
}

fn note(message: String) -> WorkerEvent {
    WorkerEvent::Note { message }
}

/// The rounds this worker trained for whose summaries are still due: each
/// is read from the coordinator (`GET /v1/workers/{id}`) once the round has
/// closed, so that it says what the ledger says.
struct Summaries {
    worker: WorkerId,
    pending: std::collections::BTreeSet<RoundId>,
    /// The round and phase last looked at (one look per change).
    checked: Option<(Option<RoundId>, Phase)>,
    /// A read of this worker's rounds under way in the background.
    reading: Option<tokio::task::JoinHandle<Result<Result<WorkerView, String>, NodeError>>>,
}

/// Summaries are read for at most this many rounds at once (the
/// coordinator's page size); older pending ones are dropped.
const SUMMARY_ROUNDS_MAX: u64 = 64;

/// At the run's end, the worker waits at most this long for its last
/// rounds to be scored before it reports its totals.
const SCORES_WAIT_MAX: Duration = Duration::from_secs(30);

/// At the run's end, one read of the worker's rounds gets at most this
/// long, retries included.
const FINISHED_READ_MAX: Duration = Duration::from_secs(5);

impl Summaries {
    /// Emits the summaries of pending rounds that have closed, once per
    /// change of round or phase, when the view is past one of them. The
    /// read goes in the background (its summaries are emitted when the
    /// work loop next looks: [`Summaries::collect`]): a summary is a report
    /// for whoever watches the worker, and must never hold up its training.
    fn on_view(
        &mut self,
        client: &Arc<Client>,
        view: &RoundView,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Result<(), NodeError> {
        self.collect(on_event)?;
        let key = (view.round, view.phase);
        let past_one = match (self.pending.first(), view.round) {
            (Some(first), Some(round)) => round > *first || view.phase == Phase::Finished,
            (Some(_), None) => true,
            (None, _) => false,
        };
        // One read at a time; a change seen meanwhile is looked at again.
        if !past_one || self.checked == Some(key) || self.reading.is_some() {
            return Ok(());
        }
        self.checked = Some(key);
        let (client, path, worker) = (Arc::clone(client), self.read_path(), self.worker);
        self.reading = Some(tokio::spawn(async move { read_rounds(&client, &path, worker).await }));
        Ok(())
    }

    /// Emits what the read in the background found, once it is done.
    fn collect(&mut self, on_event: &mut impl FnMut(&WorkerEvent)) -> Result<(), NodeError> {
        if !self.reading.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) {
            return Ok(());
        }
        let finished = self.reading.take().and_then(futures_util::FutureExt::now_or_never);
        match finished {
            Some(Ok(read)) => {
                if let Some(view) = Self::read_or_note(read?, on_event) {
                    self.emit(view, false, on_event);
                }
            }
            Some(Err(error)) => on_event(&note(format!("could not read this worker's rounds: {error}"))),
            None => {}
        }
        Ok(())
    }

    /// When the run has finished: waits (a little) for the last rounds'
    /// scores, so that the totals are the run's final ones, then emits
    /// every pending summary and returns the worker's totals.
    async fn flush(
        &mut self,
        client: &Client,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Result<Option<WorkerStatus>, NodeError> {
        // Read again below, for every pending round.
        if let Some(reading) = self.reading.take() {
            reading.abort();
        }
        let deadline = Instant::now() + SCORES_WAIT_MAX;
        loop {
            // A coordinator gone once the run has finished (stopped, or
            // killed) must not hold the worker for the client's whole
            // retry budget: the totals are a courtesy, the work is done.
            let read = tokio::time::timeout(FINISHED_READ_MAX, self.read(client, on_event)).await;
            let Ok(read) = read else {
                on_event(&note("the coordinator did not answer for this worker's totals".into()));
                return Ok(None);
            };
            let Some(view) = read? else { return Ok(None) };
            let scored = view.rounds.iter().all(|round| {
                round.scored || round.round_state != crowdtrain_protocol::coordinator::RoundState::Closed
            });
            if scored || Instant::now() >= deadline {
                return Ok(Some(self.emit(view, true, on_event)));
            }
            tokio::time::sleep(PROGRESS_INTERVAL).await;
        }
    }

    /// Reads this worker's pending rounds (or its latest, with none
    /// pending); `None` if the coordinator would not say.
    async fn read(
        &mut self,
        client: &Client,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Result<Option<WorkerView>, NodeError> {
        let path = self.read_path();
        Ok(Self::read_or_note(read_rounds(client, &path, self.worker).await?, on_event))
    }

    /// Where this worker's pending rounds are read (or its latest, with
    /// none pending); pending rounds beyond one page are dropped.
    fn read_path(&mut self) -> String {
        if let Some(&last) = self.pending.last() {
            self.pending.retain(|&round| round + SUMMARY_ROUNDS_MAX > last);
        }
        let from = self.pending.first().map_or(String::new(), |first| format!("rounds_from={first}&"));
        format!("/v1/workers/{}?{from}rounds_limit={SUMMARY_ROUNDS_MAX}", self.worker.0)
    }

    /// The rounds read, or a note saying why there are none.
    fn read_or_note(
        read: Result<WorkerView, String>,
        on_event: &mut impl FnMut(&WorkerEvent),
    ) -> Option<WorkerView> {
        read.inspect_err(|reason| on_event(&note(format!("could not read this worker's rounds: {reason}"))))
            .ok()
    }

    /// Emits the summaries of the pending rounds in `view` that have
    /// closed (all of them if `all`); returns the totals.
    fn emit(&mut self, view: WorkerView, all: bool, on_event: &mut impl FnMut(&WorkerEvent)) -> WorkerStatus {
        for round in &view.rounds {
            let closed = round.round_state != crowdtrain_protocol::coordinator::RoundState::Open;
            if (closed || all) && self.pending.remove(&round.round) {
                on_event(&WorkerEvent::RoundSummary(RoundSummary::new(round, &view.totals)));
            }
        }
        if all {
            self.pending.clear();
        }
        view.totals
    }
}

/// Worker `worker`'s rounds at `path`: the view, or why the coordinator
/// would not give it (a view, not the work: a coordinator that cannot
/// answer, busy or gone once the run has finished, costs a note, never the
/// worker's run); an error only for rounds of another worker.
async fn read_rounds(
    client: &Client,
    path: &str,
    worker: WorkerId,
) -> Result<Result<WorkerView, String>, NodeError> {
    let answer = match client.request(Method::GET, path, Vec::new(), &[]).await {
        Ok(answer) => answer,
        Err(error) => return Ok(Err(error.to_string())),
    };
    if !answer.status.is_success() {
        return Ok(Err(answer.reason()));
    }
    let view: WorkerView = answer.json()?;
    if view.totals.worker != worker {
        return Err(NodeError::Untrusted("the rounds of another worker".into()));
    }
    Ok(Ok(view))
}

/// Registration waits this long after a refusal that can pass (the run is
/// full for now; the key is not on the allow-list yet), doubling up to
/// [`REGISTRATION_RETRY_MAX`].
const REGISTRATION_RETRY_START: Duration = Duration::from_secs(1);
const REGISTRATION_RETRY_MAX: Duration = Duration::from_secs(30);

/// Registers with the coordinator: the successful answer. Refusals that
/// can pass later (a full run, a key not yet on the allow-list) are sent
/// again with backoff, for as long as it takes; the others end the worker
/// with the coordinator's reason.
/// Reads the run's signed menu and picks an option as `choose` says,
/// signed with this worker's key.
async fn choose_option(
    client: &Client,
    run: &RunInfo,
    coordinator: &PublicKey,
    choose: Choose,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<(u32, ContractChoice), NodeError> {
    if run.config.contract.is_none() {
        return Err(NodeError::Contract("this run offers no contract: drop --cost and --option".into()));
    }
    let answer = client.request(Method::GET, "/v1/contract", Vec::new(), &[]).await?;
    let signed: Signed<ContractMenu> =
        postcard::from_bytes(&expect_ok(&answer, "reading the contract menu")?.body)
            .map_err(|error| NodeError::Untrusted(format!("the contract menu does not decode: {error}")))?;
    let menu = verified(&signed, coordinator, "contract menu")?;
    let option = match choose {
        Choose::Cost(cost) => menu.choose(cost),
        Choose::Option(option) => menu.option(option as usize).map(|_| option as usize),
    }
    .map_err(|error| NodeError::Contract(error.to_string()))?;
    let chosen = &menu.options[option];
    let utility = match choose {
        Choose::Cost(cost) => format!(", expected utility {:.4}", chosen.utility_for(cost)),
        Choose::Option(_) => String::new(),
    };
    on_event(&note(format!(
        "chose option {option} of {}: deliver {} verified work units for a model reward of expected value {:.4}{utility}",
        menu.options.len(),
        chosen.required_contribution,
        chosen.expected_reward_value,
    )));
    let option = option as u32;
    Ok((option, ContractChoice::sign(client.identity(), run.run_id, option)))
}

async fn register(
    client: &Client,
    run: &RunInfo,
    token: Option<&str>,
    choice: Option<ContractChoice>,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<Answer, NodeError> {
    let class = crowdtrain_train::kernels::active_path().name();
    let request = RegisterRequest { class: class.to_owned(), token: token.map(str::to_owned), choice };
    let body = serde_json::to_vec(&request).expect("registrations serialise");
    let mut wait = REGISTRATION_RETRY_START;
    loop {
        let answer = client
            .request(
                Method::POST,
                "/v1/workers",
                body.clone(),
                &[("content-type", "application/json".into())],
            )
            .await?;
        let can_pass = match answer.code() {
            None => return Ok(answer),
            Some(ErrorCode::Full) => true,
            Some(ErrorCode::NotAdmitted) => run.admission == AdmissionMode::AllowList,
            Some(_) => false,
        };
        if !can_pass {
            let by_token = matches!(run.admission, AdmissionMode::Token | AdmissionMode::Bond);
            let hint = if by_token && token.is_none() {
                " (this run admits workers by token: pass --admission-token)"
            } else {
                ""
            };
            return Err(NodeError::Refused(format!("registering: {}{hint}", answer.reason())));
        }
        on_event(&note(format!(
            "not registered yet: {}; trying again in {} s",
            answer.reason(),
            wait.as_secs()
        )));
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(REGISTRATION_RETRY_MAX);
    }
}

/// Sends `produced`'s answer to its audit of `segment` in `round` (with a
/// bucket, `(bucket, this worker)`: through it), and counts what the
/// coordinator said of it.
#[allow(clippy::too_many_arguments)] // the worker loop's state, one per argument
async fn answer_audit(
    client: &Client,
    coordinator: &PublicKey,
    bucket: Option<(&Bucket, WorkerId)>,
    round: RoundId,
    produced: &Produced,
    segment: u32,
    summary: &mut WorkerSummary,
    on_event: &mut impl FnMut(&WorkerEvent),
) -> Result<(), NodeError> {
    // The segment comes from the coordinator (a receipt or a round view).
    let answer = produced.answer(segment).ok_or_else(|| {
        NodeError::Untrusted(format!(
            "an audit of segment {segment} in round {round}, which the commitment does not have"
        ))
    })?;
    let body = postcard::to_allocvec(&answer).expect("answers serialise");
    let bytes = body.len() as u64;
    summary.bytes_uploaded += bytes;
    let path = format!("/v1/rounds/{round}/audits");
    let answer = match bucket {
        Some((bucket, me)) => {
            let key = BlobKey::Answer { worker: me, digest: Digest::of(&body) };
            post_through_bucket(client, bucket, key, (round, Upload::AuditAnswer), &path, body, on_event)
                .await?
        }
        None => upload(client, round, Upload::AuditAnswer, &path, body, on_event).await?,
    };
    let status = receipt_status(&answer, coordinator)?;
    match &status {
        Ok(ReceiptStatus::Replaying) => summary.audits_answered += 1,
        Ok(ReceiptStatus::Delegated) => summary.audits_delegated += 1,
        Ok(_) => summary.audits_failed += 1,
        Err(_) => summary.refused += 1,
    }
    on_event(&uploaded(round, Upload::AuditAnswer, bytes, status));
    Ok(())
}

/// The status of a signed receipt, or the coordinator's reason for a
/// refusal (4xx). A receipt not signed by the coordinator is an error.
fn receipt_status(
    answer: &Answer,
    coordinator: &PublicKey,
) -> Result<Result<ReceiptStatus, String>, NodeError> {
    Ok(receipt(answer, coordinator)?.map(|receipt| receipt.status))
}

/// The signed receipt, or the coordinator's reason for a refusal (4xx).
fn receipt(answer: &Answer, coordinator: &PublicKey) -> Result<Result<Receipt, String>, NodeError> {
    if !answer.status.is_success() {
        return Ok(Err(answer.reason()));
    }
    let receipt: Signed<Receipt> = answer.json()?;
    Ok(Ok(verified(&receipt, coordinator, "receipt")?.clone()))
}

fn expect_ok<'a>(answer: &'a Answer, doing: &str) -> Result<&'a Answer, NodeError> {
    if answer.status.is_success() {
        Ok(answer)
    } else {
        Err(NodeError::Refused(format!("{doing}: {}", answer.reason())))
    }
}

fn verified<'a, T: crowdtrain_protocol::wire::SignedBody>(
    signed: &'a Signed<T>,
    key: &PublicKey,
    what: &str,
) -> Result<&'a T, NodeError> {
    signed
        .verify(key)
        .map_err(|_| NodeError::Untrusted(format!("the {what} is not signed by the coordinator")))
}

/// Loads the worker's data and checks it is the run's.
fn load_matching_data(
    dir: Option<&Path>,
    tokenizer: &TokenizerSpec,
    run: &RunInfo,
) -> Result<RunData, NodeError> {
    let data = RunData::load(dir, &run.config.training, tokenizer)?;
    let found = data.fingerprint();
    let expected = &run.dataset;
    if found.digest != expected.digest || found.train_examples != expected.train_examples {
        return Err(NodeError::DataMismatch {
            expected: expected.name.clone(),
            expected_examples: expected.train_examples,
            expected_digest: expected.digest.to_hex(),
            found: data.describe(),
            found_examples: found.train_examples,
            found_digest: found.digest.to_hex(),
        });
    }
    Ok(data)
}

/// The round's shards for `assignment.slots` participants, cached.
fn shards_for(
    cache: &mut HashMap<u32, Arc<Shards>>,
    assignment: &crowdtrain_protocol::Assignment,
    data: &RunData,
) -> Result<Arc<Shards>, NodeError> {
    if let Some(existing) = cache.get(&assignment.slots) {
        return Ok(Arc::clone(existing));
    }
    let made = Arc::new(data.shards(assignment)?);
    cache.insert(assignment.slots, Arc::clone(&made));
    Ok(made)
}

/// What a worker needs to replay another worker's segment for the
/// coordinator (a delegated audit).
struct Auditing<'a> {
    client: &'a Client,
    coordinator: &'a PublicKey,
    run: &'a RunInfo,
    model: &'a Arc<dyn Model>,
    dataset: &'a Arc<RunData>,
    pool: &'a Arc<rayon::ThreadPool>,
    /// Report a wrong end state (the `lying-auditor` behaviour).
    lie: bool,
}

impl Auditing<'_> {
    /// Fetches the task, replays the segment and reports the end state:
    /// the receipt's status, or the coordinator's reason for a refusal.
    async fn replay(
        &self,
        models: &mut ModelCache,
        shards: &mut HashMap<u32, Arc<Shards>>,
        round: RoundId,
        task: crowdtrain_protocol::wire::AuditTaskRef,
    ) -> Result<Result<ReceiptStatus, String>, NodeError> {
        let path = format!("/v1/rounds/{round}/audit-tasks/{}", task.worker.0);
        let answer = self.client.request(Method::GET, &path, Vec::new(), &[]).await?;
        if !answer.status.is_success() {
            return Ok(Err(answer.reason()));
        }
        let signed: Signed<crowdtrain_protocol::wire::AuditTask> = postcard::from_bytes(&answer.body)
            .map_err(|error| NodeError::Untrusted(format!("an audit task does not decode: {error}")))?;
        let task = verified(&signed, self.coordinator, "audit task")?.clone();
        if task.assignment.run_id != self.run.run_id || task.assignment.round != round {
            return Err(NodeError::Untrusted("an audit task for another run or round".into()));
        }
        let base = models.get(self.client, &task.assignment.base_model).await?;
        let round_shards = shards_for(shards, &task.assignment, self.dataset)?;
        let start = crowdtrain_train::TrainState::from_bytes(
            &task.start_state,
            &self.model.name(),
            self.run.parameters as usize,
        )
        .map_err(|error| {
            NodeError::Untrusted(format!("an audit task's start state does not parse: {error}"))
        })?;
        if !task.residual_in.is_empty() && task.residual_in.len() as u64 != self.run.parameters {
            return Err(NodeError::Untrusted("an audit task's residual is not the model's size".into()));
        }
        let (model, dataset, pool) =
            (Arc::clone(self.model), Arc::clone(self.dataset), Arc::clone(self.pool));
        let mut report = tokio::task::spawn_blocking(move || {
            pool.install(|| {
                crate::replay::replay_segment(
                    model.as_ref(),
                    &dataset,
                    &round_shards,
                    &task.assignment,
                    task.segment,
                    start,
                    &base,
                    &task.residual_in,
                )
            })
        })
        .await
        .expect("replays do not panic")?;
        if self.lie {
            report.end_hash.0[0] ^= 1;
        }
        let body = postcard::to_allocvec(&report).expect("reports encode");
        let answer = self
            .client
            .request(Method::POST, &path, body, &[("content-type", "application/octet-stream".into())])
            .await?;
        receipt_status(&answer, self.coordinator)
    }
}

fn training_pool(threads: Option<usize>) -> Result<Arc<rayon::ThreadPool>, NodeError> {
    let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|index| format!("train-{index}"));
    if let Some(threads) = threads {
        builder = builder.num_threads(threads.max(1));
    }
    builder
        .build()
        .map(Arc::new)
        .map_err(|error| NodeError::io("could not start the training threads", std::io::Error::other(error)))
}

/// Writes a fresh key file for a worker (used by `crowdtrain keygen`).
pub fn keygen(path: &Path) -> Result<PublicKey, NodeError> {
    let identity = crate::files::generate_identity()?;
    crate::files::save_identity(&identity, path)?;
    Ok(identity.public_key())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use tokio::time::{Instant, sleep};

    use super::*;

    /// What follows the newest model beside a round's training is dropped
    /// when the training ends (it only waits: nothing is lost), and one that
    /// ends first, or fails, waits for the training.
    #[tokio::test(start_paused = true)]
    async fn what_runs_beside_training_ends_with_it() {
        let training = || async {
            sleep(Duration::from_millis(60)).await;
            "trained"
        };
        let followed = Cell::new(0);
        let following = async {
            loop {
                sleep(Duration::from_millis(25)).await;
                followed.set(followed.get() + 1);
            }
            #[allow(unreachable_code)]
            Ok(())
        };
        let started = Instant::now();
        assert_eq!(beside(training(), following).await, "trained");
        assert_eq!(started.elapsed(), Duration::from_millis(60));
        assert_eq!(followed.get(), 2);
        let started = Instant::now();
        assert_eq!(beside(training(), async { Ok(()) }).await, "trained");
        assert_eq!(started.elapsed(), Duration::from_millis(60));
        let failing = async { Err(NodeError::Untrusted("refused".into())) };
        assert_eq!(beside(training(), failing).await, "trained");
        assert_eq!(started.elapsed(), Duration::from_millis(120));
    }
}
