//! The rules that judge an audit answer, and a delegated auditor's report:
//! protocol policy, kept here (not in the node that runs the replay) so
//! the seeded tests and the simulator reach the very code the coordinator
//! runs.
//!
//! A segment passes only if every one of these holds:
//!
//! 1. the answer is for the drawn segment;
//! 2. its start state hashes to leaf `segment - 1` of the committed Merkle
//!    root (for the first segment the auditor builds the start state itself
//!    from the round's base model, so a worker that trained from anything
//!    else fails here);
//! 3. the start state is at the segment's first step;
//! 4. its claimed end hash is leaf `segment` of the committed root;
//! 5. replaying the segment's steps on the worker's assigned shard, with the
//!    assigned seed and hyperparameters, gives exactly that end hash;
//! 6. for the last segment, the replayed final state yields, through the
//!    run's codec, exactly the committed pseudo-gradient;
//! 7. under a codec with error feedback, for the last segment: the answer
//!    carries the residual the worker started from, which hashes to the
//!    commitment's `residual_in` (or is absent when that is zero), and
//!    encoding the replayed update plus that residual leaves exactly the
//!    committed `residual_out`.
//!
//! Under `audit.replay = "from-start"` there is no answer: the commitment
//! carries its boundary leaves ([`check_boundaries`]: they must be the
//! ones its root is over), and the auditor replays the round from its
//! base model with a fresh optimizer through the drawn segment. It passes
//! only if every boundary it passes, the start included, is the committed
//! leaf, and for the last segment if 6 holds ([`from_start_verdict`]). A
//! worker that skipped, faked or borrowed any step up to the drawn
//! segment's end fails at the first boundary after it.
//!
//! [`check_answer`] is 1 to 4 and 7's digest, decided when the answer
//! arrives: an answer that fails them fails its audit without a replay.
//! [`replay_verdict`] is 5 to 7 given what a replay ended in (the replay
//! itself is training code, the node's). [`ReportCheck`] is what becomes of
//! a delegated auditor's report ([`Coordinator::audit_reported`]).
//!
//! [`Coordinator::audit_reported`]: crate::Coordinator::audit_reported

use crate::Commitment;
use crate::audit::{residual_digest, segment_range};
use crate::coordinator::Verdict;
use crate::ids::{Digest, RoundId, WorkerId};
use crate::merkle;
use crate::wire::{AuditAnswer, AuditReport};

/// What the driver made of an answer's start state: the state itself (its
/// type is the driver's: the protocol holds no training code), its hash
/// and the inner step it is at.
pub struct StartState<S> {
    pub state: S,
    pub hash: Digest,
    pub step: u64,
}

/// Checks 1 to 4, and 7's digest, of `answer` for `segment` of a
/// commitment to `inner_steps` steps of a model of `parameters` values:
/// the start state to replay from, or why the answer fails.
///
/// `start` builds the start state: for the first segment from the round's
/// base model (the answer's bytes are not used), else by parsing the
/// answer's; it runs after check 1, so an answer for another segment costs
/// no parsing.
pub fn check_answer<S>(
    commitment: &Commitment,
    segment: u32,
    inner_steps: u64,
    parameters: usize,
    answer: &AuditAnswer,
    start: impl FnOnce() -> Result<StartState<S>, String>,
) -> Result<S, String> {
    if answer.segment != segment {
        return Err(format!("answered segment {}, but segment {segment} was drawn", answer.segment));
    }
    let leaves = u64::from(commitment.segments) + 1;
    let start = start()?;
    if answer.start_proof.index != u64::from(segment) - 1 || answer.start_proof.leaves != leaves {
        return Err("the start proof is for another position in the commitment".into());
    }
    if !merkle::verify(&commitment.merkle_root, &start.hash, &answer.start_proof) {
        return Err(if segment == 1 {
            "the committed start state is not the round's base model with a fresh optimizer".into()
        } else {
            "the start state is not the one committed".into()
        });
    }
    if answer.end_proof.index != u64::from(segment) || answer.end_proof.leaves != leaves {
        return Err("the end proof is for another position in the commitment".into());
    }
    if !merkle::verify(&commitment.merkle_root, &answer.end_hash, &answer.end_proof) {
        return Err("the end hash is not the one committed".into());
    }
    check_residual_in(commitment, segment, parameters, &answer.residual_in)?;
    let (first, _) = segment_range(inner_steps, commitment.segments, segment);
    if start.step != first {
        return Err(format!(
            "the start state is at step {}, but segment {segment} starts at step {first}",
            start.step
        ));
    }
    Ok(start.state)
}

/// Check 7's first half: the residual an answer carries is the committed
/// `residual_in`, with the model's length, when the drawn segment is the
/// last and the commitment names one; otherwise the answer carries none
/// (so an answer's size stays what the audit needs).
fn check_residual_in(
    commitment: &Commitment,
    segment: u32,
    parameters: usize,
    residual: &[f32],
) -> Result<(), String> {
    match commitment.residual_in.filter(|_| segment == commitment.segments) {
        None if residual.is_empty() => Ok(()),
        None => Err("the answer carries a residual this audit does not use".into()),
        Some(_) if residual.len() != parameters => {
            Err(format!("the residual has {} values, the model {parameters}", residual.len()))
        }
        Some(committed) if residual_digest(residual) != committed => {
            Err("the residual is not the one committed (residual_in)".into())
        }
        Some(_) => Ok(()),
    }
}

/// Checks 5 to 7: what a replay of `segment` (of a commitment to
/// `inner_steps` steps) that ended in `report` says of `answer`'s claims.
/// The replayed end must be the committed end, and for the last segment
/// the update, and the error-feedback residual kept, must be the committed
/// ones.
pub fn replay_verdict(
    report: &AuditReport,
    answer: &AuditAnswer,
    commitment: &Commitment,
    inner_steps: u64,
    segment: u32,
) -> Verdict {
    let (first, last) = segment_range(inner_steps, commitment.segments, segment);
    if report.end_hash != answer.end_hash {
        return Verdict::Failed(format!(
            "replaying steps {first}..{last} gives state {}, not the committed {}",
            report.end_hash, answer.end_hash
        ));
    }
    if segment == commitment.segments && report.payload != Some(commitment.payload) {
        return Verdict::Failed(
            "the replayed final state does not produce the committed pseudo-gradient".into(),
        );
    }
    if segment == commitment.segments && report.residual_out != commitment.residual_out {
        return Verdict::Failed(
            "encoding the replayed update leaves another error-feedback residual than the committed one"
                .into(),
        );
    }
    Verdict::Passed
}

/// What the driver found of a delegated auditor's report, for
/// [`Coordinator::audit_reported`](crate::Coordinator::audit_reported).
///
/// The rule: a report that agrees with the commitment decides the audit
/// (the auditor vouches for it, and is named as its judge). One that does
/// not is never taken on the auditor's word: the coordinator replays the
/// segment itself, its verdict stands, and an auditor whose report its
/// replay contradicts is slashed. So a lying auditor can neither fail an
/// honest worker nor escape unpunished, and a worker's fate never depends
/// on a report the coordinator did not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportCheck {
    /// The report agrees with the commitment: the audit passes.
    Agrees,
    /// The report does not agree; the coordinator's own replay decided
    /// `verdict`, and `contradicts` says whether it ended anywhere other
    /// than the report.
    Rechecked { verdict: Verdict, contradicts: bool },
}

impl ReportCheck {
    /// What the driver makes of `reported` against the committed claims
    /// of `answer`: [`Agrees`](Self::Agrees) if it passes them; otherwise
    /// `recheck` is the coordinator's own replay (run only then), compared
    /// with the report and judged by [`replay_verdict`].
    pub fn of<E>(
        reported: &AuditReport,
        answer: &AuditAnswer,
        commitment: &Commitment,
        inner_steps: u64,
        segment: u32,
        recheck: impl FnOnce() -> Result<AuditReport, E>,
    ) -> Result<Self, E> {
        if replay_verdict(reported, answer, commitment, inner_steps, segment).passed() {
            return Ok(Self::Agrees);
        }
        let own = recheck()?;
        let verdict = replay_verdict(&own, answer, commitment, inner_steps, segment);
        Ok(Self::Rechecked { verdict, contradicts: own != *reported })
    }
}

/// Under `audit.replay = "from-start"`: whether `leaves`, sent with
/// `commitment`, are the boundary leaves its Merkle root is over (one more
/// than its segments; the root binds each one and their count). Checked
/// when the commitment arrives, so a replay compares against exactly what
/// the worker committed to; a commitment without them is refused.
pub fn check_boundaries(commitment: &Commitment, leaves: &[Digest]) -> Result<(), String> {
    let expected = u64::from(commitment.segments) + 1;
    if leaves.len() as u64 != expected || leaves.len() > merkle::LEAVES_MAX {
        return Err(format!(
            "the commitment carries {} boundary leaves; a commitment to {} segments under audit.replay = \
             \"from-start\" carries {expected}",
            leaves.len(),
            commitment.segments
        ));
    }
    if merkle::root(leaves) != commitment.merkle_root {
        return Err("the boundary leaves are not the ones the committed Merkle root is over".into());
    }
    Ok(())
}

/// What a replay from the round's start found: the state hash at each
/// boundary it reached (the start first), stopping at the first that is
/// not the committed leaf; and for the last segment, if it got there, the
/// digest of the update its end gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromStartReport {
    pub boundaries: Vec<Digest>,
    pub payload: Option<Digest>,
}

/// The verdict on an audit of `segment` replayed from the round's start
/// ([`FromStartReport`]) against the commitment's boundary `leaves`
/// (already [`check_boundaries`]-checked): the replay must reach every
/// boundary up to the segment's end at the committed leaf, and for the
/// last segment produce the committed pseudo-gradient.
pub fn from_start_verdict(
    report: &FromStartReport,
    leaves: &[Digest],
    commitment: &Commitment,
    inner_steps: u64,
    segment: u32,
) -> Verdict {
    for boundary in 0..=segment {
        let committed = leaves.get(boundary as usize);
        let replayed = report.boundaries.get(boundary as usize);
        if replayed.is_some() && replayed == committed {
            continue;
        }
        if boundary == 0 {
            return Verdict::Failed(
                "the committed start state is not the round's base model with a fresh optimizer".into(),
            );
        }
        let (first, last) = segment_range(inner_steps, commitment.segments, boundary);
        return Verdict::Failed(match (replayed, committed) {
            (Some(replayed), Some(committed)) => format!(
                "replaying from the round's start, steps {first}..{last} give state {replayed}, not the committed \
                 {committed}"
            ),
            _ => format!("the replay from the round's start stopped before step {last}"),
        });
    }
    if segment == commitment.segments && report.payload != Some(commitment.payload) {
        return Verdict::Failed(
            "the replayed final state does not produce the committed pseudo-gradient".into(),
        );
    }
    Verdict::Passed
}

/// Why an auditor is slashed: the ledger's reason, one wording for every
/// driver.
pub(crate) fn auditor_wrong_reason(audited: WorkerId, segment: u32, round: RoundId) -> String {
    format!("its replay of {audited}'s segment {segment} in round {round} was wrong")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Proof, prove, root};

    const STEPS: u64 = 12;
    const SEGMENTS: u32 = 3;
    const PARAMETERS: usize = 4;

    /// The boundary hashes of a commitment to `SEGMENTS` segments.
    fn boundaries() -> Vec<Digest> {
        (0..=SEGMENTS).map(|index| Digest::of(&[index as u8; 8])).collect()
    }

    fn commitment(residual_in: Option<Digest>) -> Commitment {
        Commitment {
            merkle_root: root(&boundaries()),
            payload: Digest::of(b"update"),
            segments: SEGMENTS,
            residual_in,
            residual_out: residual_in.map(|_| Digest::of(b"kept")),
        }
    }

    /// An honest answer for `segment`.
    fn answer(segment: u32) -> AuditAnswer {
        let leaves = boundaries();
        AuditAnswer {
            segment,
            start_state: vec![segment as u8],
            start_proof: prove(&leaves, segment as usize - 1),
            end_hash: leaves[segment as usize],
            end_proof: prove(&leaves, segment as usize),
            residual_in: Vec::new(),
        }
    }

    /// The start state an honest worker's answer to `segment` parses to.
    fn honest_start(segment: u32) -> Result<StartState<u32>, String> {
        let (first, _) = segment_range(STEPS, SEGMENTS, segment);
        Ok(StartState { state: segment, hash: boundaries()[segment as usize - 1], step: first })
    }

    fn check(commitment: &Commitment, segment: u32, answer: &AuditAnswer) -> Result<u32, String> {
        check_answer(commitment, segment, STEPS, PARAMETERS, answer, || honest_start(answer.segment))
    }

    #[test]
    fn an_honest_answer_passes_the_checks_for_every_segment() {
        for segment in 1..=SEGMENTS {
            assert_eq!(check(&commitment(None), segment, &answer(segment)), Ok(segment));
        }
    }

    #[test]
    fn each_false_claim_fails_with_its_reason_and_another_segment_is_never_parsed() {
        let commitment = commitment(None);
        let parsed = std::cell::Cell::new(false);
        let other = check_answer(&commitment, 2, STEPS, PARAMETERS, &answer(3), || {
            parsed.set(true);
            honest_start(3)
        });
        assert_eq!(other, Err("answered segment 3, but segment 2 was drawn".into()));
        assert!(!parsed.get(), "an answer to another segment costs no parsing");

        let unparsable = check_answer::<u32>(&commitment, 2, STEPS, PARAMETERS, &answer(2), || {
            Err("the start state does not parse: truncated".into())
        });
        assert_eq!(unparsable, Err("the start state does not parse: truncated".into()));

        let wrong_start = |segment| {
            check_answer(&commitment, segment, STEPS, PARAMETERS, &answer(segment), || {
                Ok(StartState { hash: Digest::of(b"another start"), ..honest_start(segment)? })
            })
        };
        assert_eq!(
            wrong_start(1),
            Err("the committed start state is not the round's base model with a fresh optimizer".into())
        );
        assert_eq!(wrong_start(2), Err("the start state is not the one committed".into()));

        let moved = AuditAnswer { start_proof: prove(&boundaries(), 0), ..answer(2) };
        assert_eq!(
            check(&commitment, 2, &moved),
            Err("the start proof is for another position in the commitment".into())
        );
        let resized = AuditAnswer {
            end_proof: Proof { leaves: u64::from(SEGMENTS) + 2, ..answer(2).end_proof },
            ..answer(2)
        };
        assert_eq!(
            check(&commitment, 2, &resized),
            Err("the end proof is for another position in the commitment".into())
        );
        let claimed = AuditAnswer { end_hash: Digest::of(b"a state never reached"), ..answer(2) };
        assert_eq!(check(&commitment, 2, &claimed), Err("the end hash is not the one committed".into()));

        let late = check_answer(&commitment, 2, STEPS, PARAMETERS, &answer(2), || {
            Ok(StartState { step: 5, ..honest_start(2)? })
        });
        assert_eq!(late, Err("the start state is at step 5, but segment 2 starts at step 4".into()));
    }

    #[test]
    fn the_residual_is_carried_only_for_the_last_segment_of_a_chained_commitment_and_must_be_the_committed_one()
     {
        let residual = vec![0.5_f32; PARAMETERS];
        let chained = commitment(Some(residual_digest(&residual)));
        let carrying =
            |segment, residual: &[f32]| AuditAnswer { residual_in: residual.to_vec(), ..answer(segment) };
        assert_eq!(check(&chained, SEGMENTS, &carrying(SEGMENTS, &residual)), Ok(SEGMENTS));
        assert_eq!(
            check(&chained, SEGMENTS, &carrying(SEGMENTS, &[0.25; PARAMETERS])),
            Err("the residual is not the one committed (residual_in)".into())
        );
        assert_eq!(
            check(&chained, SEGMENTS, &carrying(SEGMENTS, &residual[1..])),
            Err(format!("the residual has {} values, the model {PARAMETERS}", PARAMETERS - 1))
        );
        assert_eq!(
            check(&chained, 1, &carrying(1, &residual)),
            Err("the answer carries a residual this audit does not use".into()),
            "only the last segment re-encodes the update"
        );
        assert_eq!(
            check(&commitment(None), SEGMENTS, &carrying(SEGMENTS, &residual)),
            Err("the answer carries a residual this audit does not use".into()),
            "a fresh start carries no residual"
        );
    }

    fn report(end: Digest, payload: Option<Digest>, residual_out: Option<Digest>) -> AuditReport {
        AuditReport { end_hash: end, payload, residual_out }
    }

    #[test]
    fn a_replay_passes_only_at_the_committed_end_with_the_committed_update_and_residual() {
        let chained = commitment(Some(Digest::of(b"residual")));
        let last = answer(SEGMENTS);
        let honest = report(last.end_hash, Some(chained.payload), chained.residual_out);
        assert_eq!(replay_verdict(&honest, &last, &chained, STEPS, SEGMENTS), Verdict::Passed);
        let elsewhere = AuditReport { end_hash: Digest::of(b"elsewhere"), ..honest };
        let Verdict::Failed(reason) = replay_verdict(&elsewhere, &last, &chained, STEPS, SEGMENTS) else {
            panic!("another end state passed")
        };
        assert!(reason.starts_with("replaying steps 8..12 gives state "), "{reason}");
        let faked = AuditReport { payload: Some(Digest::of(b"another update")), ..honest };
        assert_eq!(
            replay_verdict(&faked, &last, &chained, STEPS, SEGMENTS),
            Verdict::Failed("the replayed final state does not produce the committed pseudo-gradient".into())
        );
        let injected = AuditReport { residual_out: None, ..honest };
        assert!(!replay_verdict(&injected, &last, &chained, STEPS, SEGMENTS).passed());
        // A middle segment's replay says nothing about the update.
        let middle = report(boundaries()[2], None, None);
        assert_eq!(replay_verdict(&middle, &answer(2), &chained, STEPS, 2), Verdict::Passed);
    }

    #[test]
    fn boundaries_must_be_the_committed_leaves_in_number_and_value() {
        let commitment = commitment(None);
        assert_eq!(check_boundaries(&commitment, &boundaries()), Ok(()));
        let short = &boundaries()[..SEGMENTS as usize];
        assert!(check_boundaries(&commitment, short).unwrap_err().contains("carries 3 boundary leaves"));
        assert!(check_boundaries(&commitment, &[]).is_err(), "none at all");
        let mut forged = boundaries();
        forged[2] = Digest::of(b"a state never reached");
        assert_eq!(
            check_boundaries(&commitment, &forged),
            Err("the boundary leaves are not the ones the committed Merkle root is over".into())
        );
    }

    #[test]
    fn a_replay_from_the_start_passes_only_through_every_committed_boundary() {
        let commitment = commitment(None);
        let leaves = boundaries();
        let honest = |segment: u32| FromStartReport {
            boundaries: leaves[..=segment as usize].to_vec(),
            payload: (segment == SEGMENTS).then_some(commitment.payload),
        };
        for segment in 1..=SEGMENTS {
            assert_eq!(
                from_start_verdict(&honest(segment), &leaves, &commitment, STEPS, segment),
                Verdict::Passed
            );
        }
        // Another start: the worker did not train from the round's model.
        let mut moved = honest(2);
        moved.boundaries[0] = Digest::of(b"another start");
        moved.boundaries.truncate(1);
        assert_eq!(
            from_start_verdict(&moved, &leaves, &commitment, STEPS, 2),
            Verdict::Failed(
                "the committed start state is not the round's base model with a fresh optimizer".into()
            )
        );
        // A prefix boundary off: caught there, even when a later segment is
        // drawn.
        let mut skipped = honest(3);
        skipped.boundaries[1] = Digest::of(b"what the steps really give");
        skipped.boundaries.truncate(2);
        let Verdict::Failed(reason) = from_start_verdict(&skipped, &leaves, &commitment, STEPS, 3) else {
            panic!("a wrong prefix passed")
        };
        assert!(reason.starts_with("replaying from the round's start, steps 0..4 give state "), "{reason}");
        // A replay that stopped short never passes.
        let short = FromStartReport { boundaries: leaves[..2].to_vec(), payload: None };
        assert!(!from_start_verdict(&short, &leaves, &commitment, STEPS, 2).passed());
        // The last segment must give the committed update too.
        let faked = FromStartReport { payload: Some(Digest::of(b"another update")), ..honest(SEGMENTS) };
        assert_eq!(
            from_start_verdict(&faked, &leaves, &commitment, STEPS, SEGMENTS),
            Verdict::Failed("the replayed final state does not produce the committed pseudo-gradient".into())
        );
    }

    #[test]
    fn a_report_that_disagrees_is_rechecked_and_only_a_contradicted_auditor_is_named() {
        let commitment = commitment(None);
        let answer = answer(2);
        let honest = report(answer.end_hash, None, None);
        let lie = report(Digest::of(b"a lie"), None, None);
        let never = || -> Result<AuditReport, ()> { panic!("an agreeing report is not replayed") };
        assert_eq!(ReportCheck::of(&honest, &answer, &commitment, STEPS, 2, never), Ok(ReportCheck::Agrees));
        // The auditor lies about an honest worker: the replay clears the
        // worker and contradicts the auditor.
        let cleared = ReportCheck::of(&lie, &answer, &commitment, STEPS, 2, || Ok::<_, ()>(honest));
        assert_eq!(cleared, Ok(ReportCheck::Rechecked { verdict: Verdict::Passed, contradicts: true }));
        // The auditor tells the truth about a cheat: the replay agrees with
        // the report, the worker fails, the auditor is not blamed.
        let Ok(ReportCheck::Rechecked { verdict, contradicts }) =
            ReportCheck::of(&lie, &answer, &commitment, STEPS, 2, || Ok::<_, ()>(lie))
        else {
            panic!("a disagreeing report is rechecked")
        };
        assert!(!verdict.passed() && !contradicts, "{verdict:?}");
        // A replay that fails to run is the driver's error, not a verdict.
        assert_eq!(
            ReportCheck::of(&lie, &answer, &commitment, STEPS, 2, || Err("no shard")),
            Err("no shard")
        );
    }
}
