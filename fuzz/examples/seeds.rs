//! Writes the seed corpora, `fuzz/corpus/<target>/<name>`: a few small,
//! valid inputs per target (real requests, real WAL segments, real rows
//! and records, real tokens), each in its target's input layout
//! (`imsg_fuzz`). Rerun after changing a layout:
//!
//! ```sh
//! cd fuzz && cargo run --example seeds
//! ```
//!
//! Seeds are named `seed-*` and are rewritten; the other files are left
//! alone: `crash-*` are inputs that failed a target before a fix (kept so
//! the fix stays), hash-named ones what `cargo fuzz cmin` kept of the
//! long runs' corpora (RESULTS.md).

use std::path::{Path, PathBuf};

use imsg_broker::storage::shred;
use imsg_broker::storage::{
    ConversationRecord, MemberRecord, NotifyRecord, OutboxEvent, OutboxItem, OutboxRecord, OwnershipRecord,
    PartitionMeta, PushRecord, PushTargetRecord, ReactionEvent, ReactionsRecord, ReceiptEvent, ReceiptRecord,
    RelationRecord, SealedContent, SettingsRecord, UpdateBatchRecord, UpdateEntry, UpdateKind,
    wal::{Op, encode_record},
};
use imsg_common::token::testing;
use imsg_fuzz::{
    CONVERSATIONS, INTERNAL_MESSAGES, Output, PUBLIC_MESSAGES, RowKind, RowSeed, STORAGE_RECORDS, row_key, selector,
    tokens,
};
use imsg_proto::{internal::v1 as internal, v1};
use prost::Message as _;

const DM: &str = CONVERSATIONS[0];
const GROUP: &str = CONVERSATIONS[1];

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("creating a corpus directory");
        // Old seeds go (their names may have changed); minimized inputs stay.
        for entry in std::fs::read_dir(&dir).expect("listing a corpus").flatten() {
            if entry.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(entry.path()).expect("removing an old seed");
            }
        }
        Self { dir }
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    public_requests(&Corpus::new(&root, "public_requests"));
    internal_requests(&Corpus::new(&root, "internal_requests"));
    wal_records(&Corpus::new(&root, "wal_records"));
    storage_records(&Corpus::new(&root, "storage_records"));
    storage_rows(&Corpus::new(&root, "storage_rows"));
    tokens(&Corpus::new(&root, "tokens"));
    println!("seeds written under {}", root.display());
}

fn text(text: &str) -> v1::send_message_request::Content {
    v1::send_message_request::Content::Text(v1::TextContent { text: text.into() })
}

fn public_requests(corpus: &Corpus) {
    // (selector name, roles, tiny limits, message)
    let seed = |name: &str, table_name: &str, roles: u8, tiny: bool, message: Vec<u8>| {
        let mut out = Output::default();
        out.byte(selector(PUBLIC_MESSAGES, table_name)).byte(roles).byte(u8::from(tiny)).bytes(&message);
        corpus.write(name, &out.0);
    };
    let direct = v1::CreateConversationRequest {
        request_id: String::new(),
        kind: Some(v1::create_conversation_request::Kind::Direct(v1::DirectConversationSpec {
            peer_user_id: "bob".into(),
        })),
    };
    seed("create-direct", "CreateConversation", 0, false, direct.encode_to_vec());
    let group = v1::CreateConversationRequest {
        request_id: "req-1".into(),
        kind: Some(v1::create_conversation_request::Kind::Group(v1::GroupConversationSpec {
            title: "Lunch".into(),
            member_ids: vec!["bob".into(), "carol".into()],
        })),
    };
    seed("create-group", "CreateConversation", 0, false, group.encode_to_vec());
    seed("create-group-tiny-limits", "CreateConversation", 0, true, group.encode_to_vec());
    let get = v1::GetConversationRequest { conversation_id: DM.into() };
    seed("get-conversation", "GetConversation", 0, false, get.encode_to_vec());
    let list = v1::ListConversationsRequest { page_size: 20, page_token: "40".into(), ..Default::default() };
    seed("list-conversations", "ListConversations", 0, false, list.encode_to_vec());
    let send = |content| v1::SendMessageRequest {
        conversation_id: GROUP.into(),
        client_message_id: "c-1".into(),
        reply_to_seq: 3,
        content: Some(content),
    };
    seed("send-text", "SendMessage", 0, false, send(text("hello 👋")).encode_to_vec());
    seed("send-text-tiny-limits", "SendMessage", 0, true, send(text("hello there")).encode_to_vec());
    let shared = v1::send_message_request::Content::Shared(v1::SharedContent {
        kind: v1::SharedKind::Reel as i32,
        item_id: "r123".into(),
        url: "https://example.com/reel/r123".into(),
        author: "dave".into(),
        title: "A reel".into(),
        thumbnail_url: "https://cdn.example.com/t.jpg".into(),
        caption: "look".into(),
    });
    seed("send-shared", "SendMessage", 0, false, send(shared).encode_to_vec());
    let link = v1::send_message_request::Content::Link(v1::LinkContent {
        url: "http://example.org/a?b=c#d".into(),
        text: "read this".into(),
        preview: Some(v1::LinkPreview {
            title: "A page".into(),
            description: "About things".into(),
            image_url: "https://example.org/i.png".into(),
        }),
    });
    seed("send-link", "SendMessage", 0, false, send(link).encode_to_vec());
    let media = v1::send_message_request::Content::Media(v1::MediaContent {
        media_id: "m_0123456789abcdef0123456789abcdef".into(),
        caption: "a photo".into(),
        ..Default::default()
    });
    seed("send-media", "SendMessage", 0, false, send(media).encode_to_vec());
    let react = v1::ReactToMessageRequest { conversation_id: DM.into(), seq: 1, emoji: "👍🏽".into() };
    seed("react", "ReactToMessage", 0, false, react.encode_to_vec());
    let edit = v1::EditMessageRequest { conversation_id: DM.into(), seq: 2, text: "fixed".into() };
    seed("edit", "EditMessage", 0, false, edit.encode_to_vec());
    let forward = v1::ForwardMessageRequest {
        conversation_id: DM.into(),
        seq: 2,
        to_conversation_ids: vec![GROUP.into()],
        client_message_id: "f-1".into(),
    };
    seed("forward", "ForwardMessage", 0, false, forward.encode_to_vec());
    let page = v1::ListMessagesRequest { conversation_id: GROUP.into(), page_size: 50, ..Default::default() };
    seed("list-messages", "ListMessages", 0, false, page.encode_to_vec());
    let settings = v1::UpdateSettingsRequest {
        hide_read_receipts: Some(true),
        who_may_message: Some(1),
        notifications_muted_until_ms: Some(-1),
        ..Default::default()
    };
    seed("update-settings", "UpdateSettings", 0, false, settings.encode_to_vec());
    let presence = v1::GetPresenceRequest { user_ids: vec!["bob".into(), "carol".into()] };
    seed("get-presence", "GetPresence", 0, false, presence.encode_to_vec());
    let block = v1::BlockUserRequest { user_id: "mallory".into() };
    seed("block", "BlockUser", 0, false, block.encode_to_vec());
    let contacts =
        v1::DeclareContactsRequest { user_id: "bob".into(), contact_user_ids: vec!["carol".into()], withdraw: false };
    seed("declare-contacts", "DeclareContacts", 2, false, contacts.encode_to_vec());
    let push = v1::RegisterPushTargetRequest { platform: v1::PushPlatform::Fcm as i32, token: "tok-abc".into() };
    seed("register-push", "RegisterPushTarget", 0, false, push.encode_to_vec());
    let notify = v1::SetConversationNotificationsRequest {
        conversation_id: GROUP.into(),
        muted_until_ms: -1,
        hide_previews: true,
    };
    seed("mute", "SetConversationNotifications", 0, false, notify.encode_to_vec());
    let report = v1::ReportRequest {
        conversation_id: DM.into(),
        seq: 4,
        reason: v1::ReportReason::Spam as i32,
        comment: "spam".into(),
        block: true,
    };
    seed("report", "Report", 0, false, report.encode_to_vec());
    let resolve = v1::ResolveReportRequest {
        report_id: "rep_12".into(),
        resolution: v1::Resolution::SuspendUser as i32,
        note: "repeat".into(),
        user_id: "mallory".into(),
    };
    seed("resolve-report", "ResolveReport", 1, false, resolve.encode_to_vec());
    let list_reports = v1::ListReportsRequest { page_size: 10, ..Default::default() };
    seed("list-reports", "ListReports", 1, false, list_reports.encode_to_vec());
    for (name, frame) in [
        ("stream-hello", v1::open_stream_request::Frame::Hello(v1::Hello { cursor: 17 })),
        (
            "stream-typing",
            v1::open_stream_request::Frame::Typing(v1::TypingSignal { conversation_id: DM.into(), active: true }),
        ),
        ("stream-read", v1::open_stream_request::Frame::MarkRead(v1::MarkRead { conversation_id: DM.into(), seq: 9 })),
        ("stream-ping", v1::open_stream_request::Frame::Ping(v1::Ping { nonce: 5 })),
    ] {
        let request = v1::OpenStreamRequest { frame: Some(frame) };
        seed(name, "OpenStreamRequest", 0, false, request.encode_to_vec());
    }
    let download =
        v1::DownloadMediaRequest { conversation_id: DM.into(), seq: 3, thumbnail: true, ..Default::default() };
    seed("download", "DownloadMediaRequest", 0, false, download.encode_to_vec());
    // The rest: their empty message (mostly refused, which is a path too).
    for name in ["LeaveConversation", "DeleteAccount", "GetSettings", "ListAuditLog", "UploadMediaRequest"] {
        seed(&format!("empty-{name}"), name, 1, false, Vec::new());
    }
}

fn caller() -> internal::Caller {
    internal::Caller { user_id: "alice".into(), device_id: "phone".into(), roles: Vec::new() }
}

fn route() -> Option<internal::Route> {
    Some(internal::Route { partition: 3, epoch: 1 })
}

fn internal_requests(corpus: &Corpus) {
    let seed = |name: &str, table_name: &str, message: Vec<u8>| {
        let mut out = Output::default();
        out.byte(selector(INTERNAL_MESSAGES, table_name)).bytes(&message);
        corpus.write(name, &out.0);
    };
    use internal::execute_request::Command;
    let execute = |command| internal::ExecuteRequest { caller: Some(caller()), route: route(), command: Some(command) };
    let send = v1::SendMessageRequest {
        conversation_id: DM.into(),
        client_message_id: "c-9".into(),
        reply_to_seq: 0,
        content: Some(text("hi")),
    };
    seed("execute-send", "ExecuteRequest", execute(Command::SendMessage(send)).encode_to_vec());
    let media = internal::MessageMediaRequest { conversation_id: GROUP.into(), seq: 4 };
    seed("execute-message-media", "ExecuteRequest", execute(Command::MessageMedia(media)).encode_to_vec());
    let mark = v1::MarkDelivered { conversation_id: GROUP.into(), seq: 8 };
    seed("execute-mark", "ExecuteRequest", execute(Command::MarkDelivered(mark)).encode_to_vec());
    let session =
        internal::OpenSessionRequest { caller: Some(caller()), gateway_id: "gw-1".into(), cursor: 5, route: route() };
    seed("open-session", "OpenSessionRequest", session.encode_to_vec());
    seed("renew-lease", "RenewLeaseRequest", internal::RenewLeaseRequest { gateway_id: "gw-1".into() }.encode_to_vec());

    use internal::call_partition_request::Call;
    let calls = [
        ("user-context", Call::UserContext(internal::UserContextCall { user_id: "alice".into() })),
        (
            "summaries",
            Call::Summaries(internal::SummariesCall {
                viewer_user_id: "alice".into(),
                conversation_ids: vec![DM.into()],
                ..Default::default()
            }),
        ),
        ("messages", Call::Messages(internal::MessagesCall { conversation_id: DM.into(), seqs: vec![1, 2, 3] })),
        (
            "send-forwarded",
            Call::SendForwarded(internal::SendForwardedCall {
                caller: Some(caller()),
                conversation_id: GROUP.into(),
                client_message_id: "f-1".into(),
                message: Some(v1::Message {
                    content: Some(v1::message::Content::Text(v1::TextContent { text: "fwd".into() })),
                    ..Default::default()
                }),
            }),
        ),
        (
            "relations",
            Call::Relations(internal::RelationsCall {
                user_id: "alice".into(),
                other_user_ids: vec!["bob".into()],
                change: 1,
            }),
        ),
        (
            "create-conversation",
            Call::CreateConversation(internal::CreateConversationCall {
                caller: Some(caller()),
                conversation_id: GROUP.into(),
                request: Some(v1::CreateConversationRequest {
                    request_id: "r".into(),
                    kind: Some(v1::create_conversation_request::Kind::Group(v1::GroupConversationSpec {
                        title: "t".into(),
                        member_ids: vec!["bob".into()],
                    })),
                }),
                request_user_ids: vec!["bob".into()],
            }),
        ),
        (
            "push-ephemeral",
            Call::PushEphemeral(internal::PushEphemeralCall {
                user_ids: vec!["bob".into()],
                event: Some(internal::push_ephemeral_call::Event::Typing(v1::TypingUpdate {
                    conversation_id: DM.into(),
                    user_id: "alice".into(),
                    active: true,
                })),
            }),
        ),
        ("standing", Call::Standing(internal::StandingCall { user_id: "mallory".into(), suspend: Some(true) })),
        (
            "erase-sender",
            Call::EraseSender(internal::EraseSenderCall {
                conversation_id: GROUP.into(),
                user_id: "alice".into(),
                after_seq: 10,
            }),
        ),
    ];
    for (name, call) in calls {
        let request = internal::CallPartitionRequest { route: route(), call: Some(call) };
        seed(&format!("call-{name}"), "CallPartitionRequest", request.encode_to_vec());
    }
    use internal::logged_update::Event;
    let updates = internal::ApplyUpdatesCall {
        updates: vec![
            internal::LoggedUpdate {
                user_ids: vec!["bob".into()],
                event: Some(Event::Message(v1::Message { conversation_id: DM.into(), seq: 4, ..Default::default() })),
            },
            internal::LoggedUpdate {
                user_ids: vec!["bob".into(), "carol".into()],
                event: Some(Event::Receipt(internal::LoggedReceipt {
                    conversation_id: GROUP.into(),
                    user_id: "alice".into(),
                    delivered_seq: 5,
                    read_seq: 4,
                    hide_read: true,
                })),
            },
            internal::LoggedUpdate {
                user_ids: vec!["carol".into()],
                event: Some(Event::Change(internal::LoggedChange {
                    conversation: Some(v1::Conversation { conversation_id: GROUP.into(), ..Default::default() }),
                    removed_user_ids: vec!["dave".into()],
                })),
            },
            internal::LoggedUpdate {
                user_ids: vec!["bob".into()],
                event: Some(Event::Hidden(internal::LoggedHidden {
                    conversation_id: DM.into(),
                    user_id: "bob".into(),
                    seq: 2,
                })),
            },
        ],
    };
    let request = internal::CallPartitionRequest { route: route(), call: Some(Call::ApplyUpdates(updates)) };
    seed("call-apply-updates", "CallPartitionRequest", request.encode_to_vec());
    let freeze = internal::FreezePartitionRequest { route: route() };
    seed("freeze", "FreezePartitionRequest", freeze.encode_to_vec());
    let import = internal::ImportPartitionRequest {
        route: route(),
        source_url: "http://imsg-broker-1:7001".into(),
        source_epoch: 1,
    };
    seed("import", "ImportPartitionRequest", import.encode_to_vec());
    let rows = internal::ExportPartitionResponse {
        rows: vec![internal::PartitionRow { key: b"M".to_vec(), value: vec![0x10, 1] }],
    };
    seed("export-response", "ExportPartitionResponse", rows.encode_to_vec());
    let state = internal::GetClusterStateResponse {
        node_index: 1,
        partition_count: 64,
        claims: vec![internal::PartitionClaim { partition: 3, epoch: 2, ..Default::default() }],
        limits: Some(internal::ClientLimits { max_text_bytes: 16384, max_group_members: 250, max_title_bytes: 256 }),
    };
    seed("cluster-state-response", "GetClusterStateResponse", state.encode_to_vec());
}

fn ops() -> Vec<Op> {
    vec![
        Op::Put { key: b"cdm_0123".to_vec(), value: b"\x0a\x03abc".to_vec() },
        Op::Remove { key: b"o\x00\x00\x00\x00\x00\x00\x00\x01".to_vec() },
    ]
}

fn wal_records(corpus: &Corpus) {
    // Structured: records, then the cut and the flipped bit.
    let structured = |name: &str, records: &[(u32, Vec<Op>)], cut: u32, flip: u32, bit: u8| {
        let mut out = Output::default();
        out.byte(1).byte(records.len() as u8);
        for (tree, ops) in records {
            out.u32(*tree).byte(ops.len() as u8);
            for op in ops {
                match op {
                    Op::Put { key, value } => out.byte(0).piece(key).piece(value),
                    Op::Remove { key } => out.byte(1).piece(key),
                };
            }
        }
        out.u32(cut).u32(flip).byte(bit);
        corpus.write(name, &out.0);
    };
    structured("one-record", &[(0, ops())], 7, 3, 0);
    structured("three-records", &[(0, ops()), (5, Vec::new()), (63, ops()[..1].to_vec())], 40, 30, 7);
    // Raw: whole segments, a torn one and a corrupt one.
    let mut segment = Vec::new();
    encode_record(&mut segment, 1, &ops());
    encode_record(&mut segment, 2, &ops()[1..]);
    let raw = |name: &str, cut: u16, bytes: &[u8]| {
        let mut out = Output::default();
        out.byte(0).u16(cut).bytes(bytes);
        corpus.write(name, &out.0);
    };
    raw("raw-segment", 20, &segment);
    raw("raw-torn", 5, &segment[..segment.len() - 3]);
    let mut corrupt = segment.clone();
    corrupt[12] ^= 0x40;
    raw("raw-corrupt", 0, &corrupt);
}

fn message(seq: u64) -> v1::Message {
    v1::Message {
        conversation_id: GROUP.into(),
        seq,
        sender_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_message_id: format!("c-{seq}"),
        server_time_ms: 1_700_000_000_000 + seq as i64,
        ..Default::default()
    }
}

fn conversation_record() -> ConversationRecord {
    ConversationRecord {
        id: GROUP.into(),
        kind: 2,
        title: "Lunch".into(),
        create_time_ms: 1_700_000_000_000,
        members: vec![
            MemberRecord { user_id: "alice".into(), role: 2, joined_after_seq: 0, request: 0 },
            MemberRecord { user_id: "bob".into(), role: 1, joined_after_seq: 3, request: 1 },
        ],
        creator: "alice".into(),
        change_time_ms: 1_700_000_000_500,
        blocked_by: Vec::new(),
        request_sends: 0,
    }
}

fn outbox_record() -> OutboxRecord {
    let receipt = ReceiptEvent { user_id: "bob".into(), delivered_seq: 4, read_seq: 3, hide_read: false };
    OutboxRecord {
        items: vec![
            OutboxItem { conversation_id: GROUP.into(), event: Some(OutboxEvent::MessageSeq(4)) },
            OutboxItem { conversation_id: GROUP.into(), event: Some(OutboxEvent::Receipt(receipt)) },
            OutboxItem {
                conversation_id: DM.into(),
                event: Some(OutboxEvent::Reaction(ReactionEvent {
                    seq: 2,
                    user_id: "bob".into(),
                    emoji: "❤️".into(),
                    react_time_ms: 5,
                })),
            },
        ],
    }
}

fn update_batch_record() -> UpdateBatchRecord {
    UpdateBatchRecord {
        entries: vec![
            UpdateEntry {
                cursor: 10,
                user_id: "bob".into(),
                conversation_id: GROUP.into(),
                kind: Some(UpdateKind::MessageSeq(4)),
            },
            UpdateEntry {
                cursor: 11,
                user_id: "bob".into(),
                conversation_id: GROUP.into(),
                kind: Some(UpdateKind::ConversationRemoved(false)),
            },
            UpdateEntry {
                cursor: 12,
                user_id: "carol".into(),
                conversation_id: DM.into(),
                kind: Some(UpdateKind::HiddenSeq(2)),
            },
        ],
    }
}

fn settings_record() -> SettingsRecord {
    SettingsRecord {
        hide_read_receipts: true,
        hide_activity_status: false,
        who_may_message: 1,
        notifications_muted_until_ms: -1,
        hide_push_previews: true,
        suspended: false,
    }
}

fn push_record() -> PushRecord {
    PushRecord {
        idempotency_key: "p-1".into(),
        user_id: "bob".into(),
        device_id: "tablet".into(),
        platform: 2,
        token: "tok".into(),
        conversation_id: DM.into(),
        seq: 4,
        sender_id: "alice".into(),
        text: Some("hi".into()),
        created_ms: 1,
    }
}

fn report() -> v1::Report {
    v1::Report {
        report_id: "rep_1".into(),
        reporter_id: "bob".into(),
        conversation_id: DM.into(),
        seq: 4,
        reason: 1,
        evidence: vec![message(4)],
        member_ids: vec!["alice".into(), "bob".into()],
        ..Default::default()
    }
}

fn audit_entry() -> v1::AuditEntry {
    v1::AuditEntry {
        number: 1,
        time_ms: 2,
        moderator_id: "mod".into(),
        action: "suspend".into(),
        report_id: "rep_1".into(),
        target: "mallory".into(),
        note: "spam".into(),
    }
}

/// A message row as `WriteBatch::put_message` writes it, with the content
/// key it is sealed under: (row, key).
fn sealed_message(seq: u64, slot: u64) -> (Vec<u8>, [u8; 32]) {
    let key = [seq as u8 | 1; 32];
    let plain = v1::Message {
        content: Some(v1::message::Content::Text(v1::TextContent { text: format!("message {seq}") })),
        ..Default::default()
    }
    .encode_to_vec();
    let context = row_key(b'm', &[GROUP.as_bytes(), &seq.to_be_bytes()]);
    let mut row = message(seq).encode_to_vec();
    SealedContent { key_slot: Some(slot), sealed: shred::seal(&key, &context, &plain) }
        .encode(&mut row)
        .expect("encoding into a Vec");
    (row, key)
}

fn storage_records(corpus: &Corpus) {
    let seed = |name: &str, bytes: Vec<u8>| {
        let mut out = Output::default();
        out.byte(selector(STORAGE_RECORDS, name)).bytes(&bytes);
        corpus.write(name, &out.0);
    };
    seed("SealedContent", SealedContent { key_slot: Some(9), sealed: vec![1, 2, 3] }.encode_to_vec());
    let reactions = ReactionsRecord {
        reactions: vec![v1::Reaction { user_id: "bob".into(), emoji: "👍".into(), react_time_ms: 3 }],
    };
    seed("ReactionsRecord", reactions.encode_to_vec());
    seed("ConversationRecord", conversation_record().encode_to_vec());
    seed("ReceiptRecord", ReceiptRecord { delivered_seq: 5, read_seq: 4, hide_read: true }.encode_to_vec());
    seed("OutboxRecord", outbox_record().encode_to_vec());
    seed("UpdateBatchRecord", update_batch_record().encode_to_vec());
    seed("SettingsRecord", settings_record().encode_to_vec());
    seed("PushTargetRecord", PushTargetRecord { platform: 1, token: "apns-token".into() }.encode_to_vec());
    seed("NotifyRecord", NotifyRecord { muted_until_ms: -1, hide_previews: true }.encode_to_vec());
    seed("PushRecord", push_record().encode_to_vec());
    let relation = RelationRecord { blocks: true, blocked_by: false, contact: true, declared: false };
    seed("RelationRecord", relation.encode_to_vec());
    seed("PartitionMeta", PartitionMeta { next_outbox: 3, outbox_done: 2, next_cursor: 40 }.encode_to_vec());
    seed("OwnershipRecord", OwnershipRecord { epoch: 2, released: false }.encode_to_vec());
    seed("MessageRow", sealed_message(4, 0).0);
    seed("Report", report().encode_to_vec());
    seed("AuditEntry", audit_entry().encode_to_vec());
    seed("KeyRow", shred::key_row(258));
}

fn storage_rows(corpus: &Corpus) {
    // Query parameters after the rows: seq range, limit, cursor, own
    // conversation and user, scan start.
    let queries = |out: &mut Output| {
        out.u64(1).u64(10).byte(20).u64(10).piece(GROUP.as_bytes()).piece(b"bob").piece(b"m");
    };
    let seeds: Vec<(&str, Vec<(RowKind, RowSeed, Vec<u8>)>)> = vec![
        (
            "conversation",
            vec![
                (
                    RowKind::Conversation,
                    RowSeed { conversation: 1, ..Default::default() },
                    conversation_record().encode_to_vec(),
                ),
                (
                    RowKind::Receipt,
                    RowSeed { conversation: 1, user: 1, ..Default::default() },
                    ReceiptRecord { delivered_seq: 4, read_seq: 4, hide_read: false }.encode_to_vec(),
                ),
                (RowKind::Outbox, RowSeed { number: 2, ..Default::default() }, outbox_record().encode_to_vec()),
                (
                    RowKind::Meta,
                    RowSeed::default(),
                    PartitionMeta { next_outbox: 3, outbox_done: 2, next_cursor: 13 }.encode_to_vec(),
                ),
                (RowKind::Ownership, RowSeed::default(), OwnershipRecord { epoch: 1, released: false }.encode_to_vec()),
            ],
        ),
        ("messages", {
            let (row3, key3) = sealed_message(3, 7);
            let (row4, key4) = sealed_message(4, 8);
            vec![
                (RowKind::Message, RowSeed { conversation: 1, number: 3, ..Default::default() }, row3),
                (RowKind::KeySlot, RowSeed { number: 7, ..Default::default() }, key3.to_vec()),
                (RowKind::Message, RowSeed { conversation: 1, number: 4, ..Default::default() }, row4),
                (RowKind::KeySlot, RowSeed { number: 8, ..Default::default() }, key4.to_vec()),
                (
                    RowKind::Reactions,
                    RowSeed { conversation: 1, number: 4, ..Default::default() },
                    ReactionsRecord {
                        reactions: vec![v1::Reaction { user_id: "bob".into(), emoji: "🎉".into(), react_time_ms: 9 }],
                    }
                    .encode_to_vec(),
                ),
                (RowKind::Hidden, RowSeed { conversation: 1, user: 1, number: 3, ..Default::default() }, Vec::new()),
            ]
        }),
        (
            "users",
            vec![
                (RowKind::Settings, RowSeed { user: 1, ..Default::default() }, settings_record().encode_to_vec()),
                (RowKind::Inbox, RowSeed { user: 1, conversation: 0, ..Default::default() }, b"r".to_vec()),
                (RowKind::Inbox, RowSeed { user: 1, conversation: 1, ..Default::default() }, Vec::new()),
                (
                    RowKind::Relation,
                    RowSeed { user: 1, other_user: 2, ..Default::default() },
                    RelationRecord { blocks: false, blocked_by: false, contact: true, declared: true }.encode_to_vec(),
                ),
                (
                    RowKind::PushTarget,
                    RowSeed { user: 1, other_user: 0, ..Default::default() },
                    PushTargetRecord { platform: 2, token: "fcm".into() }.encode_to_vec(),
                ),
                (
                    RowKind::Notify,
                    RowSeed { user: 1, conversation: 1, ..Default::default() },
                    NotifyRecord { muted_until_ms: 5, hide_previews: false }.encode_to_vec(),
                ),
                (RowKind::Push, RowSeed { number: 1, ..Default::default() }, push_record().encode_to_vec()),
                (
                    RowKind::UpdateBatch,
                    RowSeed { number: 10, ..Default::default() },
                    update_batch_record().encode_to_vec(),
                ),
            ],
        ),
        (
            "moderation",
            vec![
                (RowKind::Report, RowSeed { number: 1, ..Default::default() }, report().encode_to_vec()),
                (RowKind::Audit, RowSeed { number: 1, ..Default::default() }, audit_entry().encode_to_vec()),
            ],
        ),
    ];
    for (name, rows) in seeds {
        let mut out = Output::default();
        out.byte(rows.len() as u8);
        for (kind, seed, value) in &rows {
            seed.write(&mut out, *kind, value);
        }
        queries(&mut out);
        corpus.write(name, &out.0);
    }
}

fn tokens(corpus: &Corpus) {
    let century = 100 * 365 * 24 * 3600;
    let hs256 = tokens::hs256();
    let mode0 = |name: &str, token: &str| {
        let mut out = Output::default();
        out.byte(0).bytes(token.as_bytes());
        corpus.write(name, &out.0);
    };
    mode0("hs256", &hs256.issue("alice", "phone", century).expect("issuing"));
    mode0("hs256-roles", &hs256.issue_with_roles("mod", "desk", century, &["moderator", "service"]).expect("issuing"));
    mode0("hs256-expired", &hs256.issue("alice", "phone", 0).expect("issuing"));
    let (key, jwk) = testing::ed25519(tokens::KEY_SEED, tokens::KEY_ID);
    let claims = serde_json::json!({
        "sub": "bob", "device": "laptop", "iat": 1, "exp": 4_000_000_000u64, "nbf": 1,
        "iss": tokens::ISSUER, "aud": [tokens::AUDIENCE, "other"], "roles": ["moderator", "root"],
    });
    mode0("eddsa", &testing::sign(&key, tokens::KEY_ID, &claims));
    mode0("malformed", "eyJhbGciOiJIUzI1NiJ9.e30.");
    // Mode 1: key sets.
    let mode1 = |name: &str, key_set: &str| {
        let mut out = Output::default();
        out.byte(1).bytes(key_set.as_bytes());
        corpus.write(name, &out.0);
    };
    mode1("jwks-eddsa", &tokens::key_set());
    let rsa = serde_json::json!({
        "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    });
    let ec = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    });
    mode1("jwks-rsa-ec", &testing::key_set(&[&rsa, &ec, &jwk]));
    mode1("jwks-oct", r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#);
    // Mode 2: a key set and a token.
    let mut out = Output::default();
    let token = testing::sign(
        &key,
        tokens::KEY_ID,
        &serde_json::json!({ "sub": "carol", "device": "d", "exp": 4_000_000_000u64 }),
    );
    out.byte(2).piece(tokens::key_set().as_bytes()).bytes(token.as_bytes());
    corpus.write("jwks-and-token", &out.0);
}
