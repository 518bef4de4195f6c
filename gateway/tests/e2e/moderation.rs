//! Reports and moderation (`core::moderation`): evidence that outlives an
//! unsend, the moderators' queue, removal, suspension, the audit log.

use imsg_common::token::ROLE_MODERATOR;
use imsg_proto::v1::{
    ClaimReportRequest, LiftSuspensionRequest, ListAuditLogRequest, ListBlockedUsersRequest, ListReportsRequest,
    ReportReason, ReportRequest, ReportState, Resolution, ResolveReportRequest, UnsendMessageRequest, message::Content,
    open_stream_response::Frame,
};
use tonic::Code;

use crate::harness::{Client, TestServer};

async fn report(client: &Client, conversation: &str, seq: u64, reason: ReportReason, block: bool) -> String {
    let request = ReportRequest {
        conversation_id: conversation.into(),
        seq,
        reason: reason as i32,
        comment: "please look".into(),
        block,
    };
    client.api.clone().report(request).await.unwrap().into_inner().report_id
}

fn text_of(message: &imsg_proto::v1::Message) -> Option<&str> {
    match &message.content {
        Some(Content::Text(text)) => Some(&text.text),
        _ => None,
    }
}

async fn resolve(moderator: &Client, report_id: &str, resolution: Resolution) -> Result<(), tonic::Status> {
    let request = ResolveReportRequest {
        report_id: report_id.into(),
        resolution: resolution as i32,
        note: "decided".into(),
        user_id: String::new(),
    };
    moderator.moderation().resolve_report(request).await.map(drop)
}

#[tokio::test]
async fn a_report_keeps_its_evidence_and_moderators_remove_suspend_and_leave_an_audit_trail() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let mallory = server.client("mallory", "phone").await;
    let conversation = mallory.direct_with("alice").await;
    mallory.send(&conversation, "hello").await;
    let spam = mallory.send(&conversation, "buy coins now").await;
    let threat = mallory.send(&conversation, "you will regret this").await;

    // Two reports; the second blocks in the same step.
    let spam_report = report(&alice, &conversation, spam, ReportReason::Spam, false).await;
    let threat_report = report(&alice, &conversation, threat, ReportReason::Harassment, true).await;
    let blocked = alice.api.clone().list_blocked_users(ListBlockedUsersRequest {}).await.unwrap().into_inner();
    assert_eq!(blocked.user_ids, vec!["mallory".to_string()]);
    // The sender unsends; the evidence stays.
    let unsend = UnsendMessageRequest { conversation_id: conversation.clone(), seq: threat };
    mallory.api.clone().unsend_message(unsend).await.unwrap();
    assert!(alice.history(&conversation).await.iter().any(|m| m.seq == threat && m.unsent));

    // Only moderators see the queue.
    let list = ListReportsRequest { state: ReportState::Open as i32, ..Default::default() };
    assert_eq!(alice.moderation().list_reports(list.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    let moderator = alice.as_user("mod1", &[ROLE_MODERATOR]);
    let other_moderator = alice.as_user("mod2", &[ROLE_MODERATOR]);
    let open = moderator.moderation().list_reports(list).await.unwrap().into_inner().reports;
    assert_eq!(open.iter().map(|r| r.report_id.as_str()).collect::<Vec<_>>(), vec![&spam_report, &threat_report]);
    let evidence = &open[1].evidence;
    assert_eq!(evidence.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3], "the message and those before");
    assert_eq!(text_of(&evidence[2]), Some("you will regret this"), "evidence survives an unsend");
    assert_eq!((open[1].reporter_id.as_str(), open[1].reason), ("alice", ReportReason::Harassment as i32));

    // One moderator claims; only they resolve. Removal tombstones the message.
    let claim = |id: &str| ClaimReportRequest { report_id: id.into() };
    moderator.moderation().claim_report(claim(&spam_report)).await.unwrap();
    let taken = other_moderator.moderation().claim_report(claim(&spam_report)).await.unwrap_err();
    assert_eq!(taken.code(), Code::FailedPrecondition);
    assert_eq!(
        resolve(&other_moderator, &spam_report, Resolution::Dismiss).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    resolve(&moderator, &spam_report, Resolution::RemoveMessage).await.unwrap();
    let removed = alice.history(&conversation).await.into_iter().find(|m| m.seq == spam).unwrap();
    assert!(removed.unsent && removed.content.is_none(), "{removed:?}");

    // Suspension: the live stream ends saying why; calls and streams are refused.
    let mut stream = mallory.open(0).await;
    stream.ready().await;
    moderator.moderation().claim_report(claim(&threat_report)).await.unwrap();
    resolve(&moderator, &threat_report, Resolution::SuspendUser).await.unwrap();
    let goodbye = loop {
        match stream.frame().await {
            Some(Frame::Goodbye(goodbye)) => break goodbye,
            Some(_) => continue,
            None => panic!("the stream ended without a goodbye"),
        }
    };
    assert_eq!(goodbye.reason, "account suspended");
    let refused = mallory.try_send(&conversation, "m9", "let me back").await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (Code::PermissionDenied, "account suspended"));
    let mut reopened = mallory.open(0).await;
    match reopened.frame_within(crate::harness::PATIENCE).await {
        Some(Ok(Frame::Goodbye(goodbye))) => assert_eq!(goodbye.reason, "account suspended"),
        other => panic!("a suspended user's stream opened: {other:?}"),
    }

    // Lifted: mallory is back (alice still blocks her, so a group).
    let lift = LiftSuspensionRequest { user_id: "mallory".into(), note: "appeal granted".into() };
    moderator.moderation().lift_suspension(lift).await.unwrap();
    mallory.group("fresh start", &["carol"]).await;

    // Every action is in the audit log, in order.
    let audit = moderator.moderation().list_audit_log(ListAuditLogRequest::default()).await.unwrap().into_inner();
    let actions: Vec<(&str, &str, &str)> =
        audit.entries.iter().map(|e| (e.moderator_id.as_str(), e.action.as_str(), e.target.as_str())).collect();
    let removal_target = format!("{conversation}/{spam}");
    assert_eq!(
        actions,
        vec![
            ("mod1", "claim", ""),
            ("mod1", "remove_message", removal_target.as_str()),
            ("mod1", "claim", ""),
            ("mod1", "suspend", "mallory"),
            ("mod1", "lift_suspension", "mallory"),
        ]
    );
}
