//! Reports and the moderators' API: their rows of the command table and
//! their handlers (`core::moderation` holds the rules).
//!
//! A report starts at its conversation's partition, which copies the
//! evidence the reporter may see, and is filed on the moderation queue's
//! partition. The moderators' commands start there. Suspensions are kept on
//! the user's partition; every node caches a user's standing for a few
//! seconds ([`Broker::refuse_if_suspended`]), while a suspension closes the
//! user's live streams at once.

use imsg_common::token::ROLE_MODERATOR;
use imsg_proto::internal::v1::Caller;
use imsg_proto::v1::*;

use super::ClientCommand;
use crate::{
    Broker,
    config::Limits,
    core::moderation::{Consequence, QUEUE_KEY},
    error::{Error, Result},
    partition::{Command, ModerationOp, ModerationOutcome},
    validate::{self, conversation_id, id},
};

/// Longest report comment or moderator note, in bytes.
pub const MAX_NOTE_BYTES: usize = 1000;

fn note(field: &'static str, text: &str) -> Result<()> {
    if text.len() > MAX_NOTE_BYTES {
        return Err(Error::invalid(field, format!("longer than {MAX_NOTE_BYTES} bytes")));
    }
    Ok(())
}

fn moderator(caller: &Caller) -> Result<()> {
    if !caller.roles.iter().any(|r| r == ROLE_MODERATOR) {
        return Err(Error::PermissionDenied(format!("the moderation API needs the `{ROLE_MODERATOR}` role")));
    }
    Ok(())
}

fn report_id(value: &str) -> Result<()> {
    match value.strip_prefix("rep_").map(|n| n.parse::<u64>()) {
        Some(Ok(_)) => Ok(()),
        _ => Err(Error::invalid("report_id", "not a report id (rep_<n>)")),
    }
}

impl ClientCommand for ReportRequest {
    fn home_key(&self, _: &Caller) -> String {
        self.conversation_id.clone()
    }

    fn validate(&self, _: &Limits, _: &Caller) -> Result<()> {
        conversation_id("conversation_id", &self.conversation_id)?;
        match ReportReason::try_from(self.reason) {
            Ok(ReportReason::Unspecified) | Err(_) => Err(Error::invalid("reason", "say why")),
            Ok(_) => note("comment", &self.comment),
        }
    }
}

impl ClientCommand for ListReportsRequest {
    fn home_key(&self, _: &Caller) -> String {
        QUEUE_KEY.to_owned()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        moderator(caller)?;
        if ReportState::try_from(self.state).is_err() {
            return Err(Error::invalid("state", format!("unknown value {}", self.state)));
        }
        validate::page_size(self.page_size)?;
        validate::page_token(&self.page_token).map(drop)
    }
}

impl ClientCommand for ClaimReportRequest {
    fn home_key(&self, _: &Caller) -> String {
        QUEUE_KEY.to_owned()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        moderator(caller)?;
        report_id(&self.report_id)
    }
}

impl ClientCommand for ResolveReportRequest {
    fn home_key(&self, _: &Caller) -> String {
        QUEUE_KEY.to_owned()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        moderator(caller)?;
        report_id(&self.report_id)?;
        if Resolution::try_from(self.resolution).is_err() {
            return Err(Error::invalid("resolution", format!("unknown value {}", self.resolution)));
        }
        if !self.user_id.is_empty() {
            id("user_id", &self.user_id)?;
        }
        note("note", &self.note)
    }
}

impl ClientCommand for LiftSuspensionRequest {
    fn home_key(&self, _: &Caller) -> String {
        QUEUE_KEY.to_owned()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        moderator(caller)?;
        id("user_id", &self.user_id)?;
        note("note", &self.note)
    }
}

impl ClientCommand for ListAuditLogRequest {
    fn home_key(&self, _: &Caller) -> String {
        QUEUE_KEY.to_owned()
    }

    fn validate(&self, _: &Limits, caller: &Caller) -> Result<()> {
        moderator(caller)?;
        validate::page_size(self.page_size)?;
        validate::page_token(&self.page_token).map(drop)
    }
}

/// `(offset, limit)` of a page request.
fn page(page_size: i32, token: &str) -> Result<(usize, usize)> {
    Ok((validate::page_token(token)?.unwrap_or(0) as usize, validate::page_size(page_size)?))
}

fn next_token(offset: usize, taken: usize, more: bool) -> String {
    if more { (offset + taken).to_string() } else { String::new() }
}

impl Broker {
    pub(super) async fn report(
        &self,
        caller: Caller,
        conversation_id: String,
        request: ReportRequest,
    ) -> Result<ReportResponse> {
        let partition = self.partition_of(&conversation_id);
        let (caller_for_evidence, id, seq) = (caller.clone(), conversation_id.clone(), request.seq);
        let (evidence, member_ids) = self
            .call(partition, |reply| Command::Evidence { caller: caller_for_evidence, conversation_id: id, seq, reply })
            .await?;
        // Whom "report and block" blocks: the reported message's sender, or
        // the other member of a direct conversation.
        let offender = match request.seq {
            0 if member_ids.len() == 2 => member_ids.iter().find(|m| **m != caller.user_id).cloned(),
            0 => None,
            seq => evidence.iter().find(|m| m.seq == seq).map(|m| m.sender_id.clone()),
        }
        .filter(|offender| *offender != caller.user_id);
        let report = Report {
            reporter_id: caller.user_id.clone(),
            conversation_id,
            seq: request.seq,
            reason: request.reason,
            comment: request.comment,
            evidence,
            member_ids,
            ..Report::default()
        };
        let op = ModerationOp::File(Box::new(report));
        let report_id = match self.moderate(op).await? {
            ModerationOutcome::Filed(id) => id,
            other => return Err(Error::Internal(format!("filing a report answered {other:?}"))),
        };
        if request.block
            && let Some(offender) = offender
        {
            let home = caller.user_id.clone();
            self.block_user(caller, home, BlockUserRequest { user_id: offender }).await?;
        }
        Ok(ReportResponse { report_id })
    }

    pub(super) async fn list_reports(
        &self,
        _: Caller,
        _: String,
        request: ListReportsRequest,
    ) -> Result<ListReportsResponse> {
        let (offset, limit) = page(request.page_size, &request.page_token)?;
        let state = ReportState::try_from(request.state).unwrap_or(ReportState::Unspecified);
        match self.moderate(ModerationOp::List { state, offset, limit }).await? {
            ModerationOutcome::Reports { reports, more } => {
                let next_page_token = next_token(offset, reports.len(), more);
                Ok(ListReportsResponse { reports, next_page_token })
            }
            other => Err(Error::Internal(format!("listing reports answered {other:?}"))),
        }
    }

    pub(super) async fn claim_report(
        &self,
        caller: Caller,
        _: String,
        request: ClaimReportRequest,
    ) -> Result<ClaimReportResponse> {
        let op = ModerationOp::Claim { report_id: request.report_id, moderator: caller.user_id };
        match self.moderate(op).await? {
            ModerationOutcome::Report(report, _) => Ok(ClaimReportResponse { report: Some(*report) }),
            other => Err(Error::Internal(format!("a claim answered {other:?}"))),
        }
    }

    /// Records the decision (and its audit entry), then carries it out.
    pub(super) async fn resolve_report(
        &self,
        caller: Caller,
        _: String,
        request: ResolveReportRequest,
    ) -> Result<ResolveReportResponse> {
        let op = ModerationOp::Resolve {
            report_id: request.report_id,
            moderator: caller.user_id,
            resolution: Resolution::try_from(request.resolution).unwrap_or(Resolution::Unspecified),
            note: request.note,
            user_id: request.user_id,
        };
        let (report, consequence) = match self.moderate(op).await? {
            ModerationOutcome::Report(report, consequence) => (report, consequence),
            other => return Err(Error::Internal(format!("a resolution answered {other:?}"))),
        };
        match consequence {
            Consequence::None => {}
            Consequence::RemoveMessage { conversation_id, seq } => {
                let partition = self.partition_of(&conversation_id);
                self.call(partition, |reply| Command::RemoveMessage { conversation_id, seq, reply }).await?;
            }
            Consequence::Suspend { user_id } => {
                self.set_standing(&user_id, Some(true)).await?;
            }
        }
        Ok(ResolveReportResponse { report: Some(*report) })
    }

    pub(super) async fn lift_suspension(
        &self,
        caller: Caller,
        _: String,
        request: LiftSuspensionRequest,
    ) -> Result<LiftSuspensionResponse> {
        self.set_standing(&request.user_id, Some(false)).await?;
        let entry = crate::core::moderation::audit(
            &caller.user_id,
            "lift_suspension",
            "",
            &request.user_id,
            &request.note,
            crate::now_ms(),
        );
        self.moderate(ModerationOp::Audit(entry)).await?;
        Ok(LiftSuspensionResponse {})
    }

    pub(super) async fn list_audit_log(
        &self,
        _: Caller,
        _: String,
        request: ListAuditLogRequest,
    ) -> Result<ListAuditLogResponse> {
        let (offset, limit) = page(request.page_size, &request.page_token)?;
        match self.moderate(ModerationOp::ListAudit { offset, limit }).await? {
            ModerationOutcome::Audit { entries, more } => {
                let next_page_token = next_token(offset, entries.len(), more);
                Ok(ListAuditLogResponse { entries, next_page_token })
            }
            other => Err(Error::Internal(format!("listing the audit log answered {other:?}"))),
        }
    }

    async fn moderate(&self, op: ModerationOp) -> Result<ModerationOutcome> {
        let partition = self.partition_of(QUEUE_KEY);
        self.call(partition, |reply| Command::Moderation { op, reply }).await
    }
}
