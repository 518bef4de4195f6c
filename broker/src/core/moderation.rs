//! Reports and their moderation: what a report keeps as evidence, and the
//! life of a report in the queue (open, claimed by one moderator, resolved)
//! with an audit entry for every moderator action.
//!
//! The evidence is a copy of the reported message and the ones before it,
//! taken when the report is filed: unsending or editing the originals later
//! changes nothing in it (it is what the moderators need to see). It lives
//! in the moderation queue's partition, kept until the report is resolved
//! and then with it, as evidence of the decision.

use imsg_proto::v1::{AuditEntry, Report, ReportState, Resolution};

use crate::error::{Error, Result};

/// Messages of context kept before a reported one.
pub const EVIDENCE_BEFORE: u64 = 10;

/// The home key of the moderation queue and the audit log (one partition:
/// reports are rare, and one queue is what moderators work from).
pub const QUEUE_KEY: &str = "@moderation";

/// The seqs kept as evidence for a report of `seq` (0: the conversation,
/// so its newest) by a member who sees messages after `joined_after`.
pub fn evidence_range(seq: u64, joined_after: u64, last_seq: u64) -> std::ops::RangeInclusive<u64> {
    let last = if seq == 0 { last_seq } else { seq.min(last_seq) };
    let first = last.saturating_sub(EVIDENCE_BEFORE).max(joined_after + 1);
    first..=last
}

/// What a resolution asks to be done beyond the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consequence {
    None,
    RemoveMessage { conversation_id: String, seq: u64 },
    Suspend { user_id: String },
}

fn state(report: &Report) -> ReportState {
    ReportState::try_from(report.state).unwrap_or(ReportState::Unspecified)
}

/// A moderator takes a report: an open one, or one they hold already.
pub fn claim(report: &mut Report, moderator: &str) -> Result<bool> {
    match state(report) {
        ReportState::Open => {
            report.state = ReportState::Claimed as i32;
            report.moderator_id = moderator.to_owned();
            Ok(true)
        }
        ReportState::Claimed if report.moderator_id == moderator => Ok(false),
        ReportState::Claimed => {
            Err(Error::FailedPrecondition(format!("report {} is claimed by {}", report.report_id, report.moderator_id)))
        }
        _ => Err(Error::FailedPrecondition(format!("report {} is resolved", report.report_id))),
    }
}

/// The moderator who claimed a report decides it.
pub fn resolve(
    report: &mut Report,
    moderator: &str,
    resolution: Resolution,
    note: &str,
    user_id: &str,
    now_ms: i64,
) -> Result<Consequence> {
    if state(report) != ReportState::Claimed || report.moderator_id != moderator {
        return Err(Error::FailedPrecondition(format!("claim report {} before resolving it", report.report_id)));
    }
    let consequence = match resolution {
        Resolution::Unspecified => return Err(Error::invalid("resolution", "must be set")),
        Resolution::Dismiss => Consequence::None,
        Resolution::RemoveMessage if report.seq == 0 => {
            return Err(Error::invalid("resolution", "a conversation report names no message to remove"));
        }
        Resolution::RemoveMessage => {
            Consequence::RemoveMessage { conversation_id: report.conversation_id.clone(), seq: report.seq }
        }
        Resolution::SuspendUser => {
            let user = if user_id.is_empty() { reported_sender(report) } else { Some(user_id.to_owned()) };
            let user = user.ok_or_else(|| Error::invalid("user_id", "name whom to suspend"))?;
            report.suspended_user_id = user.clone();
            Consequence::Suspend { user_id: user }
        }
    };
    report.state = ReportState::Resolved as i32;
    report.resolution = resolution as i32;
    report.note = note.to_owned();
    report.resolve_time_ms = now_ms;
    Ok(consequence)
}

/// Who sent the reported message, from the evidence.
fn reported_sender(report: &Report) -> Option<String> {
    report.evidence.iter().find(|m| m.seq == report.seq).map(|m| m.sender_id.clone())
}

/// The audit entry of a moderator's action.
pub fn audit(moderator: &str, action: &str, report_id: &str, target: &str, note: &str, now_ms: i64) -> AuditEntry {
    AuditEntry {
        number: 0,
        time_ms: now_ms,
        moderator_id: moderator.to_owned(),
        action: action.to_owned(),
        report_id: report_id.to_owned(),
        target: target.to_owned(),
        note: note.to_owned(),
    }
}

/// The audit action a resolution is recorded as.
pub fn action_name(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Dismiss => "dismiss",
        Resolution::RemoveMessage => "remove_message",
        Resolution::SuspendUser => "suspend",
        Resolution::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use imsg_proto::v1::Message;

    use super::*;

    fn report(seq: u64) -> Report {
        Report {
            report_id: "rep_1".into(),
            conversation_id: "dm_1".into(),
            seq,
            state: ReportState::Open as i32,
            evidence: vec![Message { seq: 3, sender_id: "mallory".into(), ..Message::default() }],
            ..Report::default()
        }
    }

    #[test]
    fn evidence_is_the_message_and_ten_before_it_that_the_reporter_saw() {
        assert_eq!(evidence_range(15, 0, 20), 5..=15);
        assert_eq!(evidence_range(3, 0, 20), 1..=3);
        assert_eq!(evidence_range(15, 12, 20), 13..=15, "nothing from before the reporter joined");
        assert_eq!(evidence_range(0, 0, 20), 10..=20, "a conversation: its newest");
    }

    #[test]
    fn one_moderator_claims_and_only_they_resolve() {
        let mut report = report(3);
        assert!(claim(&mut report, "mod1").unwrap());
        assert!(!claim(&mut report, "mod1").unwrap(), "claiming again is a no-op");
        assert!(claim(&mut report, "mod2").is_err());
        assert!(resolve(&mut report, "mod2", Resolution::Dismiss, "", "", 1).is_err());
        assert_eq!(resolve(&mut report, "mod1", Resolution::Dismiss, "ok", "", 1).unwrap(), Consequence::None);
        assert_eq!(report.state, ReportState::Resolved as i32);
        assert!(claim(&mut report, "mod1").is_err(), "a resolved report stays resolved");
    }

    #[test]
    fn resolutions_remove_the_message_or_suspend_its_sender() {
        let mut removal = report(3);
        claim(&mut removal, "m").unwrap();
        let removed = resolve(&mut removal, "m", Resolution::RemoveMessage, "", "", 1).unwrap();
        assert_eq!(removed, Consequence::RemoveMessage { conversation_id: "dm_1".into(), seq: 3 });
        let mut suspension = report(3);
        claim(&mut suspension, "m").unwrap();
        let suspended = resolve(&mut suspension, "m", Resolution::SuspendUser, "", "", 1).unwrap();
        assert_eq!(suspended, Consequence::Suspend { user_id: "mallory".into() });
        let mut conversation = report(0);
        claim(&mut conversation, "m").unwrap();
        assert!(resolve(&mut conversation, "m", Resolution::RemoveMessage, "", "", 1).is_err());
    }
}
