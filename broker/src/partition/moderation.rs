//! The shell of moderation (`core::moderation`): the evidence a report
//! takes from its conversation's partition, a moderator's removal of a
//! message there, a user's standing on their partition, and the queue and
//! audit log on the moderation partition (loaded on first use: reports are
//! rare).

use std::collections::BTreeMap;

use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::{AuditEntry, Message, Report, ReportState};
use prost::Message as _;

use super::{ModerationOp, ModerationOutcome, Partition};
use crate::{
    core::moderation::{self, Consequence, evidence_range},
    error::{Error, Result},
    now_ms,
};

/// Largest report row: the oldest context is left out beyond it (the row
/// bound of storage; the reported message itself always fits).
const MAX_REPORT_BYTES: usize = 100 * 1024;

/// The moderation queue, on the one partition that holds it.
#[derive(Default)]
pub(super) struct Queue {
    reports: BTreeMap<u64, Report>,
    next_audit: u64,
}

fn report_number(id: &str) -> Result<u64> {
    id.strip_prefix("rep_").and_then(|n| n.parse().ok()).ok_or_else(|| Error::invalid("report_id", "not a report id"))
}

impl Partition {
    /// The reported message (0: the newest) and the ones before it that
    /// the reporter sees, as storage holds them now; and the members.
    pub(super) fn evidence(&mut self, caller: &Caller, id: &str, seq: u64) -> Result<(Vec<Message>, Vec<String>)> {
        let conversation = self.conversation(id)?;
        let joined_after = conversation.require_member(&caller.user_id)?.joined_after_seq;
        let (last_seq, members) = (conversation.published_seq(), conversation.member_ids());
        if seq > last_seq || (seq != 0 && seq <= joined_after) {
            return Err(Error::MessageNotFound { conversation_id: id.to_owned(), seq });
        }
        let range = evidence_range(seq, joined_after, last_seq);
        let mut messages = Vec::new();
        for seq in range {
            if let Some((message, _)) = self.stored_message(id, seq)? {
                messages.push((*message).clone());
            }
        }
        Ok((messages, members))
    }

    /// A moderator's removal: the same tombstone as an unsend.
    pub(super) fn remove_message(&mut self, id: &str, seq: u64) -> Result<()> {
        let stored = self.stored_message(id, seq)?.map(|(message, _)| message);
        let effects = self.conversation(id)?.remove(seq, stored.as_deref());
        self.apply_effects(effects)
    }

    pub(super) fn moderate(&mut self, op: ModerationOp) -> Result<ModerationOutcome> {
        if self.moderation.is_none() {
            let reports = self.store.reports()?.into_iter().collect();
            let next_audit = self.store.audit_entries()?.last().map_or(1, |(n, _)| n + 1);
            self.moderation = Some(Queue { reports, next_audit });
        }
        let now = now_ms();
        let queue = self.moderation.as_mut().expect("loaded above");
        Ok(match op {
            ModerationOp::File(mut report) => {
                let number = queue.reports.keys().next_back().map_or(1, |n| n + 1);
                report.report_id = format!("rep_{number}");
                report.state = ReportState::Open as i32;
                report.create_time_ms = now;
                while report.encoded_len() > MAX_REPORT_BYTES && report.evidence.len() > 1 {
                    report.evidence.remove(0);
                }
                self.batch.writes.put_report(number, &report);
                let id = report.report_id.clone();
                queue.reports.insert(number, *report);
                ModerationOutcome::Filed(id)
            }
            ModerationOp::List { state, offset, limit } => {
                let matching =
                    queue.reports.values().filter(|r| state == ReportState::Unspecified || r.state == state as i32);
                let mut page: Vec<Report> = matching.skip(offset).take(limit + 1).cloned().collect();
                let more = page.len() > limit;
                page.truncate(limit);
                ModerationOutcome::Reports { reports: page, more }
            }
            ModerationOp::Claim { report_id, moderator } => {
                let number = report_number(&report_id)?;
                let report =
                    queue.reports.get_mut(&number).ok_or_else(|| Error::invalid("report_id", "no such report"))?;
                if moderation::claim(report, &moderator)? {
                    self.batch.writes.put_report(number, report);
                    let entry = moderation::audit(&moderator, "claim", &report_id, "", "", now);
                    append_audit(queue, &mut self.batch.writes, entry);
                }
                let report = queue.reports[&number].clone();
                ModerationOutcome::Report(Box::new(report), Consequence::None)
            }
            ModerationOp::Resolve { report_id, moderator, resolution, note, user_id } => {
                let number = report_number(&report_id)?;
                let report =
                    queue.reports.get_mut(&number).ok_or_else(|| Error::invalid("report_id", "no such report"))?;
                let consequence = moderation::resolve(report, &moderator, resolution, &note, &user_id, now)?;
                self.batch.writes.put_report(number, report);
                let target = match &consequence {
                    Consequence::None => String::new(),
                    Consequence::RemoveMessage { conversation_id, seq } => format!("{conversation_id}/{seq}"),
                    Consequence::Suspend { user_id } => user_id.clone(),
                };
                let action = moderation::action_name(resolution);
                let entry = moderation::audit(&moderator, action, &report_id, &target, &note, now);
                append_audit(queue, &mut self.batch.writes, entry);
                ModerationOutcome::Report(Box::new(queue.reports[&number].clone()), consequence)
            }
            ModerationOp::Audit(entry) => {
                append_audit(queue, &mut self.batch.writes, entry);
                ModerationOutcome::Audited
            }
            ModerationOp::ListAudit { offset, limit } => {
                let mut entries: Vec<AuditEntry> =
                    self.store.audit_entries()?.into_iter().map(|(_, e)| e).skip(offset).take(limit + 1).collect();
                let more = entries.len() > limit;
                entries.truncate(limit);
                ModerationOutcome::Audit { entries, more }
            }
        })
    }

    /// Whether a user is suspended, after (un)suspending them; a suspension
    /// closes their live streams at once, saying why.
    pub(super) fn standing(&mut self, user: &str, suspend: Option<bool>) -> bool {
        let state = self.users.map.entry(user.to_owned()).or_default();
        if let Some(suspend) = suspend
            && state.settings.suspended != suspend
        {
            state.settings.suspended = suspend;
            let record = state.settings;
            self.batch.writes.put_settings(user, &record);
            if suspend {
                self.close_user_sessions(user, "account suspended");
            }
        }
        self.users.map.get(user).is_some_and(|s| s.settings.suspended)
    }
}

fn append_audit(queue: &mut Queue, writes: &mut crate::storage::WriteBatch, mut entry: AuditEntry) {
    entry.number = queue.next_audit;
    queue.next_audit += 1;
    writes.put_audit_entry(&entry);
}
