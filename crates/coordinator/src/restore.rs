//! Opening a driver on a store: the machine restored from the store's
//! events, the training opened (for a real model, the global model from
//! its checkpoints, rebuilt if a power loss took the latest), and the
//! defence with what it remembers. Anything that
//! drives a coordinator (the node, the in-process tests) opens one here, on
//! a new store or on the one a crashed process left.

use crowdtrain_defense::ModelDefense;
use crowdtrain_protocol::{Coordinator, Digest, RoundId, RunConfig};
use crowdtrain_store::{CheckpointKind, Checkpoints, RunRecord, Store, checkpoint};
use crowdtrain_train::diloco::outer_step;
use crowdtrain_train::{Model, OuterState};

use crate::CoordinatorError;
use crate::data::RunData;
use crate::driver::{Driver, Run};
use crate::training::{Opened, Training};

impl<T: Training> Driver<T> {
    /// The driver of the run `store` holds (created with its record, see
    /// `Node::open_with_clock`), where its events leave it: the machine
    /// restored at the clock's time with `run`'s settings and audit secret,
    /// the training opened from `setup` after the latest closed round
    /// ([`Training::open`]), and the defence with its memory of earlier
    /// updates and the aggregator state that round left.
    ///
    /// The machine's first actions (a round to open or close, a deadline
    /// passed while it was down) are left for the caller to carry out with
    /// its shell ([`Driver::carry_out`]).
    pub fn open(run: Run, setup: T::Setup, store: Store) -> Result<Self, CoordinatorError> {
        let record = store
            .run()?
            .ok_or_else(|| crowdtrain_store::StoreError::Corrupt("the store holds no run".into()))?;
        let Opened { training, aggregator } = T::open(setup, &store, &record, &run.aggregator)?;
        let machine = Coordinator::restore(
            run.settings.clone(),
            record.run_id,
            record.initial_model,
            run.audit_master,
            &store.events()?,
            run.clock.now_unix_ms(),
        );
        // The defence remembers every update of the rounds before the one it
        // decides next (the open one, if any), and the aggregator state the
        // latest closed round left.
        let next_decided = machine.open_round().map_or(i64::MAX as u64, |round| round.id);
        let defense = ModelDefense::restore(
            run.checks,
            run.aggregator,
            aggregator,
            store.earlier_digests(next_decided, crowdtrain_defense::RESUBMISSION_WINDOW_ROUNDS as u64)?,
        );
        Ok(Self::new(run, training, machine, store, defense))
    }
}

/// The most participants `config`'s rounds can have with `examples`
/// training examples: each shard needs a whole batch, from what the
/// validation split leaves (the Dirichlet sharding may need more; it says
/// so when a round's shards cannot be drawn).
pub(crate) fn max_participants(config: &RunConfig, data: &RunData) -> u32 {
    let supported = data.participants_supported(&config.training);
    (supported as u64).min(u64::from(config.limits.max_workers)) as u32
}

/// How often (in closed rounds) the aggregator's state is written out.
/// Between snapshots it is rebuilt on restart by replaying the aggregation
/// of the rounds since, from the stored submissions: a snapshot is a
/// worker's momentum per worker (MBs per round for the MLP), and writing it
/// every round would be most of the coordinator's time between rounds.
pub const AGGREGATOR_SNAPSHOT_ROUNDS: u64 = 16;

/// The global state after the latest closed round (or the initial one),
/// read back from its checkpoints, or rebuilt if a power loss took them.
pub(crate) fn load_global(
    store: &Store,
    record: &RunRecord,
    config: &RunConfig,
    model: &dyn Model,
    checkpoints: &Checkpoints,
) -> Result<(OuterState, Digest), CoordinatorError> {
    let Some(latest) = store.latest_result()? else {
        return read_global(checkpoints, model, (record.initial_model, record.initial_momentum), 0);
    };
    match read_global(checkpoints, model, (latest.model, latest.momentum), latest.closed) {
        Err(CoordinatorError::Checkpoint(
            error @ (crowdtrain_store::CheckpointError::Missing(_)
            | crowdtrain_store::CheckpointError::HashMismatch { .. }),
        )) => {
            tracing::warn!(round = latest.round, %error, "the latest round's checkpoints did not survive: rebuilding them");
            rebuild_latest_global(store, record, config, model, checkpoints, &latest)
        }
        result => result,
    }
}

/// The global state in checkpoints `(params, momentum)`, after `rounds`
/// closed rounds.
fn read_global(
    checkpoints: &Checkpoints,
    model: &dyn Model,
    (params, momentum): (Digest, Digest),
    rounds: u64,
) -> Result<(OuterState, Digest), CoordinatorError> {
    let name = model.name();
    let decode = |digest: &Digest, kind| -> Result<Vec<f32>, CoordinatorError> {
        Ok(checkpoint::decode(&checkpoints.get(digest)?, kind, &name, model.layout())?)
    };
    let (momentum, exact) = checkpoint::decode_outer(&checkpoints.get(&momentum)?, &name, model.layout())?;
    let state = OuterState {
        model: name.clone(),
        params: decode(&params, CheckpointKind::Params)?,
        momentum,
        round: rounds,
        exact,
    };
    Ok((state, params))
}

/// `state`'s published parameters and the outer optimizer's own state
/// (its momentum, and its exact parameters under a compressed broadcast),
/// encoded as checkpoints side by side (MBs each, on the path that closes a
/// round).
pub fn encode_global(model: &dyn Model, state: &OuterState) -> (Vec<u8>, Vec<u8>) {
    let name = model.name();
    rayon::join(
        || checkpoint::encode(CheckpointKind::Params, &name, model.layout(), &state.params),
        || checkpoint::encode_outer(&name, model.layout(), &state.momentum, state.exact.as_deref()),
    )
}

/// Rebuilds the checkpoints of the latest closed round, which are written
/// in the background and so the only ones a crash or a power loss can take
/// (see the driver's `aggregate`): its outer step is taken again, on the
/// previous round's state, with the aggregate of the updates it credited
/// and the aggregator state before it. Being deterministic, that gives the
/// bits the round recorded, which is checked before they are written.
fn rebuild_latest_global(
    store: &Store,
    record: &RunRecord,
    config: &RunConfig,
    model: &dyn Model,
    checkpoints: &Checkpoints,
    latest: &crowdtrain_store::LatestResult,
) -> Result<(OuterState, Digest), CoordinatorError> {
    let previous = match store.latest_result_before(latest.round)? {
        Some(previous) => (previous.model, previous.momentum),
        None => (record.initial_model, record.initial_momentum),
    };
    let (mut state, _) = read_global(checkpoints, model, previous, latest.closed - 1)?;
    let aggregator = config.defense().aggregator;
    let before = restore_aggregator(store, checkpoints, &aggregator, model, latest.round)?;
    let (aggregate, _) = replay_aggregation(store, &aggregator, &before, model, latest.round)?;
    outer_step(config.outer, &mut state, &aggregate).map_err(crowdtrain_train::TrainError::from)?;
    let (model_bytes, momentum_bytes) = encode_global(model, &state);
    let rebuilt = (checkpoints.put(&model_bytes)?, checkpoints.put(&momentum_bytes)?);
    if rebuilt != (latest.model, latest.momentum) {
        return Err(crowdtrain_store::StoreError::Corrupt(format!(
            "rebuilding round {}'s checkpoints gave model {} and momentum {}, not the recorded {} and {}",
            latest.round, rebuilt.0, rebuilt.1, latest.model, latest.momentum
        ))
        .into());
    }
    Ok((state, rebuilt.0))
}

/// The aggregator's state after the closed rounds before `before` (all of
/// them for [`RoundId::MAX`]): the latest snapshot among them, then the
/// aggregation of every closed round since replayed on the updates it
/// aggregated. Being deterministic, the replay gives the state the live
/// run had, bit for bit.
pub(crate) fn restore_aggregator(
    store: &Store,
    checkpoints: &Checkpoints,
    aggregator: &crowdtrain_defense::Aggregator,
    model: &dyn Model,
    before: RoundId,
) -> Result<crowdtrain_defense::AggregatorState, CoordinatorError> {
    if !aggregator.is_stateful() {
        return Ok(Default::default());
    }
    let parameters = model.layout().len();
    let snapshot = store.latest_aggregator_snapshot_before(before)?;
    let mut state = match snapshot {
        Some((_, digest)) => {
            checkpoint::decode_aggregator(&checkpoints.get(&digest)?, &model.name(), parameters)?
        }
        None => Default::default(),
    };
    for round in store.closed_rounds_after(snapshot.map(|(round, _)| round))? {
        if round >= before {
            break;
        }
        let (_, change) = replay_aggregation(store, aggregator, &state, model, round)?;
        state.apply(change);
    }
    Ok(state)
}

/// The aggregation closed `round` took, again: of the updates it credited
/// (in ascending worker order, as [`ModelDefense::decide`] aggregates
/// them), from aggregator state `state`.
fn replay_aggregation(
    store: &Store,
    aggregator: &crowdtrain_defense::Aggregator,
    state: &crowdtrain_defense::AggregatorState,
    model: &dyn Model,
    round: RoundId,
) -> Result<(Vec<f32>, crowdtrain_defense::StateChange), CoordinatorError> {
    let parameters = model.layout().len();
    let workers = store.credited(round)?;
    if workers.is_empty() {
        let problem = format!("closed round {round} credited no update");
        return Err(crowdtrain_store::StoreError::Corrupt(problem).into());
    }
    let payloads = store.payloads(round, &workers)?;
    let updates = payloads
        .iter()
        .map(|bytes| crowdtrain_train::codec::decode(bytes, parameters).map(|(_, values)| values))
        .collect::<Result<Vec<_>, _>>()
        .map_err(crowdtrain_train::TrainError::from)?;
    let views: Vec<(u64, &[f32])> =
        workers.iter().zip(&updates).map(|(worker, values)| (worker.0, values.as_slice())).collect();
    Ok(crowdtrain_defense::aggregate::aggregate(aggregator, state, &views))
}
