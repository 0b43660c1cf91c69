//! `GET /metrics`: the coordinator's numbers in the Prometheus text format
//! (`prometheus-client` writes the format), for the monitoring operators
//! already run.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `crowdtrain_rounds_closed_total` | counter | rounds closed with a result |
//! | `crowdtrain_rounds_failed_total` | counter | rounds that failed (no quorum) |
//! | `crowdtrain_round` | gauge | the open round (the last one if none is open) |
//! | `crowdtrain_round_duration_seconds` | histogram | from a round opening to its closing |
//! | `crowdtrain_coordinator_overhead_seconds` | histogram | from a round's last input to the next round being open: the coordinator's own share |
//! | `crowdtrain_submissions_total{outcome}` | counter | reveals by what became of them: `accepted`, `late`, `malformed` as recorded; then `credited` (aggregated and paid), `refused` (by the checks), `slashed` |
//! | `crowdtrain_audits_total{verdict}` | counter | audit verdicts: `passed`, `failed`, `unanswered` |
//! | `crowdtrain_received_bytes_total` | counter | bytes of revealed updates received |
//! | `crowdtrain_served_bytes_total` | counter | bytes of models served |
//! | `crowdtrain_sent_bytes_total{endpoint}` | counter | the coordinator's egress: bytes of every answer's body, by route (`/v1/round`, `/v1/models/{digest}`, ...; `other` for no route), headers not counted |
//! | `crowdtrain_answers_total{endpoint}` | counter | answers sent, by route: with the bytes, how often workers ask (polling) as well as how much |
//! | `crowdtrain_bucket_written_bytes_total` | counter | the coordinator's egress to its bucket (`[storage]`): bytes of every object it wrote (models, deltas, round notices) |
//! | `crowdtrain_workers_registered` | gauge | workers registered |
//! | `crowdtrain_workers_active` | gauge | workers that would be participants if a round opened now |
//!
//! Counters count from this process's start, as Prometheus expects (it
//! handles resets); the ledger is the record that survives a restart.
//! A scrape costs the coordinator a walk over the workers in memory and
//! the formatting, not a database read.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::{RoundId, Verdict};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// A route's pattern: one of the router's few, so the family stays small.
type EndpointLabel = [(&'static str, String); 1];

/// The coordinator's metrics, kept up to date from the events it records.
pub(crate) struct Metrics {
    registry: Registry,
    rounds_closed: Counter,
    rounds_failed: Counter,
    round: Gauge,
    round_duration: Histogram,
    overhead: Histogram,
    submissions: Family<Labels, Counter>,
    audits: Family<Labels, Counter>,
    received_bytes: Counter,
    served_bytes: Counter,
    sent_bytes: Family<EndpointLabel, Counter>,
    answers: Family<EndpointLabel, Counter>,
    /// Shared with the bucket's client, which counts what it writes.
    pub(crate) bucket_written_bytes: Counter,
    workers_registered: Gauge,
    workers_active: Gauge,
    /// When each round still open opened (ms), to time it when it closes.
    opened: Mutex<BTreeMap<RoundId, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let rounds_closed = Counter::default();
        let rounds_failed = Counter::default();
        let round = Gauge::default();
        // Rounds last from about a second (the demo) to hours: buckets
        // doubling from 0.25 s to 2.3 h; overheads from 1 ms to 33 s.
        let round_duration = Histogram::new(exponential_buckets(0.25, 2.0, 16));
        let overhead = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let submissions = Family::<Labels, Counter>::default();
        let audits = Family::<Labels, Counter>::default();
        let received_bytes = Counter::default();
        let served_bytes = Counter::default();
        let sent_bytes = Family::<EndpointLabel, Counter>::default();
        let answers = Family::<EndpointLabel, Counter>::default();
        let bucket_written_bytes = Counter::default();
        let workers_registered = Gauge::default();
        let workers_active = Gauge::default();
        let prefix = |name: &str| format!("crowdtrain_{name}");
        registry.register(prefix("rounds_closed"), "Rounds closed with a result", rounds_closed.clone());
        registry.register(prefix("rounds_failed"), "Rounds that failed (no quorum)", rounds_failed.clone());
        registry.register(prefix("round"), "The open round, or the last one if none is open", round.clone());
        registry.register(
            prefix("round_duration_seconds"),
            "From a round opening to its closing",
            round_duration.clone(),
        );
        registry.register(
            prefix("coordinator_overhead_seconds"),
            "From a round's last input to the next round being open",
            overhead.clone(),
        );
        registry.register(prefix("submissions"), "Submissions by outcome", submissions.clone());
        registry.register(prefix("audits"), "Audit verdicts", audits.clone());
        registry.register(
            prefix("received_bytes"),
            "Bytes of revealed updates received",
            received_bytes.clone(),
        );
        registry.register(prefix("served_bytes"), "Bytes of models served", served_bytes.clone());
        registry.register(
            prefix("sent_bytes"),
            "Bytes of answer bodies sent (the coordinator's egress), by route",
            sent_bytes.clone(),
        );
        registry.register(prefix("answers"), "Answers sent, by route", answers.clone());
        registry.register(
            prefix("bucket_written_bytes"),
            "Bytes of objects the coordinator wrote to its bucket (its egress there)",
            bucket_written_bytes.clone(),
        );
        registry.register(prefix("workers_registered"), "Workers registered", workers_registered.clone());
        registry.register(
            prefix("workers_active"),
            "Workers that would be participants if a round opened now",
            workers_active.clone(),
        );
        Self {
            registry,
            rounds_closed,
            rounds_failed,
            round,
            round_duration,
            overhead,
            submissions,
            audits,
            received_bytes,
            served_bytes,
            sent_bytes,
            answers,
            bucket_written_bytes,
            workers_registered,
            workers_active,
            opened: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Counts what a batch of recorded events says happened.
    pub(crate) fn observe(&self, events: &[Event], received_bytes: u64) {
        let submission = |outcome: &'static str| {
            self.submissions.get_or_create(&[("outcome", outcome)]).inc();
        };
        for event in events {
            match event {
                Event::RoundOpened { round, opened_unix_ms, .. } => {
                    self.round.set(i64::try_from(*round).unwrap_or(i64::MAX));
                    let mut opened = self.opened.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    opened.insert(*round, *opened_unix_ms);
                }
                Event::RoundClosed { round, closed_unix_ms, .. } => {
                    self.rounds_closed.inc();
                    let opened =
                        self.opened.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(round);
                    if let Some(opened) = opened {
                        self.round_duration.observe(closed_unix_ms.saturating_sub(opened) as f64 / 1e3);
                    }
                }
                Event::RoundFailed { round, .. } => {
                    self.rounds_failed.inc();
                    let mut opened = self.opened.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    opened.remove(round);
                }
                Event::Reveal { status, .. } => submission(status.as_str()),
                Event::WorkAccepted { .. } => submission("credited"),
                Event::UpdateRefused { .. } => submission("refused"),
                Event::Slash { .. } => submission("slashed"),
                Event::Audit { verdict, .. } => {
                    let name = match verdict {
                        Verdict::Passed => "passed",
                        Verdict::Failed(_) => "failed",
                        Verdict::Unanswered => "unanswered",
                    };
                    self.audits.get_or_create(&[("verdict", name)]).inc();
                }
                _ => {}
            }
        }
        self.received_bytes.inc_by(received_bytes);
    }

    pub(crate) fn overhead(&self, milliseconds: u64) {
        self.overhead.observe(milliseconds as f64 / 1e3);
    }

    pub(crate) fn served(&self, bytes: u64) {
        self.served_bytes.inc_by(bytes);
    }

    /// Counts an answer and its body, sent on `endpoint` (a route's pattern).
    pub(crate) fn sent(&self, endpoint: &str, bytes: u64) {
        let label = [("endpoint", endpoint.to_owned())];
        self.sent_bytes.get_or_create(&label).inc_by(bytes);
        self.answers.get_or_create(&label).inc();
    }

    /// The text a scrape gets, with the worker gauges as of now.
    pub(crate) fn render(&self, registered: u64, active: u64) -> String {
        self.workers_registered.set(i64::try_from(registered).unwrap_or(i64::MAX));
        self.workers_active.set(i64::try_from(active).unwrap_or(i64::MAX));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String does not fail");
        text
    }
}
