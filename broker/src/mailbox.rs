//! What partitions are sent: the [`Command`]s a partition task takes, the
//! queues they arrive on, and the types they carry. Kept apart from the
//! partition itself so the router and the cluster wire (which deliver
//! commands) do not depend on the partition (which uses the router).

use std::sync::Arc;

use imsg_proto::internal::v1::{Caller, RelationChange, RelationsResult};
use imsg_proto::v1::{
    ConversationSummary, CreateConversationResponse, EditMessageResponse, ListMessagesRequest, ListMessagesResponse,
    Message, OpenStreamResponse, Presence, SendMessageResponse, Settings, UpdateSettingsRequest, message::Content,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    core::{MarkKind, MembershipChange, NewConversation, NewMessage, Viewer},
    error::Result,
    events::{Ephemeral, UpdateItem},
    storage::{Owed, UpdateEntry},
};

/// Where a command's result goes.
pub type Reply<T> = oneshot::Sender<Result<T>>;

/// A user's state other partitions need: settings and conversations.
#[derive(Debug, Clone)]
pub struct UserContext {
    pub settings: Settings,
    pub conversation_ids: Arc<[String]>,
    /// Users the user blocks or is blocked by.
    pub separated: Vec<String>,
    /// Conversations the user muted, and until when.
    pub muted: Vec<(String, i64)>,
}

impl UserContext {
    /// The user as a viewer of conversations.
    pub fn viewer(&self, user_id: &str) -> Viewer {
        Viewer {
            user_id: user_id.to_owned(),
            hide_read_receipts: self.settings.hide_read_receipts,
            separated: self.separated.clone(),
        }
    }
}

/// A device session, as the user partition holds it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub user_id: String,
    /// The device: one with a live session gets no push notification.
    pub device_id: String,
    pub gateway_id: String,
    /// Boxed: a queue allocates slots 32 at a time, and an idle session
    /// should hold 32 pointers, not 32 frames.
    pub frames: mpsc::Sender<Box<OpenStreamResponse>>,
    /// Set before the partition drops the session, so its stream can tell
    /// the device why it ends.
    pub close_reason: Arc<std::sync::Mutex<Option<String>>>,
}

/// What can be done to a sent message (`crate::core::reactions`,
/// `crate::core::edits`).
#[derive(Debug, Clone)]
pub enum MessageAction {
    React {
        emoji: String,
    },
    Edit {
        text: String,
    },
    Unsend,
    DeleteForMe,
    /// Read its content to forward it (nothing changes).
    ReadForForward,
}

/// What a deleted account's partition held that points elsewhere.
#[derive(Debug, Default)]
pub struct Forgotten {
    pub conversations: Vec<String>,
    /// Users it blocked (their partitions and direct conversations keep
    /// copies of the block).
    pub blocked: Vec<String>,
}

/// What one `EraseSender` call did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Erased {
    pub messages: u64,
    /// Call again after this seq; 0 when done.
    pub more_after: u64,
}

/// Most messages one `EraseSender` call erases.
pub const ERASE_BATCH: u64 = 500;

/// What is done to the moderation queue or the audit log.
#[derive(Debug, Clone)]
pub enum ModerationOp {
    File(Box<imsg_proto::v1::Report>),
    List {
        state: imsg_proto::v1::ReportState,
        offset: usize,
        limit: usize,
    },
    Claim {
        report_id: String,
        moderator: String,
    },
    Resolve {
        report_id: String,
        moderator: String,
        resolution: imsg_proto::v1::Resolution,
        note: String,
        user_id: String,
    },
    /// An action outside the queue (lifting a suspension).
    Audit(imsg_proto::v1::AuditEntry),
    ListAudit {
        offset: usize,
        limit: usize,
    },
}

/// What a [`ModerationOp`] answers.
#[derive(Debug)]
pub enum ModerationOutcome {
    Filed(String),
    Reports { reports: Vec<imsg_proto::v1::Report>, more: bool },
    Report(Box<imsg_proto::v1::Report>, crate::core::moderation::Consequence),
    Audited,
    Audit { entries: Vec<imsg_proto::v1::AuditEntry>, more: bool },
}

/// A change to a user's notification setup.
#[derive(Debug, Clone)]
pub enum NotificationChange {
    /// A device's push target (`None`: unregistered).
    Target { device_id: String, target: Option<crate::storage::PushTargetRecord> },
    /// The user's settings for one conversation.
    Conversation { conversation_id: String, record: crate::storage::NotifyRecord },
}

/// What a [`MessageAction`] answers.
#[derive(Debug)]
pub enum MessageOutcome {
    Done,
    Edited(EditMessageResponse),
    Content(Content),
}

/// Everything a partition does. Client commands arrive on the bounded
/// queue; partition-to-partition traffic on the internal one.
pub enum Command {
    // ---- conversation role ----
    CreateConversation {
        caller: Caller,
        conversation_id: String,
        spec: NewConversation,
        /// Members who join as message requests.
        requests: Vec<String>,
        reply: Reply<CreateConversationResponse>,
    },
    /// A member accepts (`Some` view) or declines (`None`) their request.
    Respond {
        caller: Caller,
        conversation_id: String,
        accept: bool,
        reply: Reply<Option<imsg_proto::v1::Conversation>>,
    },
    /// A block's copy in the pair's direct conversation.
    PairBlock {
        conversation_id: String,
        blocker: String,
        blocked: bool,
        reply: Reply<()>,
    },
    GetConversation {
        viewer: Viewer,
        conversation_id: String,
        reply: Reply<imsg_proto::v1::Conversation>,
    },
    ChangeMembership {
        caller: Caller,
        conversation_id: String,
        change: MembershipChange,
        reply: Reply<imsg_proto::v1::Conversation>,
    },
    /// A client's message, or a forwarded copy (which may come from
    /// another node).
    Send {
        caller: Caller,
        conversation_id: String,
        message: NewMessage,
        reply: Reply<SendMessageResponse>,
    },
    /// Something done to one sent message.
    ActOnMessage {
        caller: Caller,
        conversation_id: String,
        seq: u64,
        action: MessageAction,
        reply: Reply<MessageOutcome>,
    },
    ListMessages {
        caller: Caller,
        request: ListMessagesRequest,
        reply: Reply<ListMessagesResponse>,
    },
    Typing {
        caller: Caller,
        conversation_id: String,
        active: bool,
        reply: Reply<()>,
    },
    Mark {
        caller: Caller,
        conversation_id: String,
        seq: u64,
        kind: MarkKind,
        hide_read: bool,
        reply: Reply<()>,
    },
    /// Inbox rows for the viewer's conversations held here.
    Summaries {
        viewer: Viewer,
        conversation_ids: Vec<String>,
        reply: Reply<Vec<ConversationSummary>>,
    },
    /// Message bodies for a replay (the user partition already checked
    /// that these belong to the user's log).
    Messages {
        conversation_id: String,
        seqs: Vec<u64>,
        reply: Reply<Vec<Message>>,
    },
    /// Current snapshots (watermarks zeroed) for a replay.
    Snapshots {
        conversation_ids: Vec<String>,
        reply: Reply<Vec<imsg_proto::v1::Conversation>>,
    },
    /// A user's presence changed: tell the members of these conversations.
    PresenceFanout {
        presence: Presence,
        conversation_ids: Vec<String>,
    },
    /// A user's read-receipt setting changed.
    HideReadChanged {
        user_id: String,
        hide_read: bool,
        conversation_ids: Vec<String>,
    },
    /// Every target partition durably appended this outbox batch.
    FanoutDone {
        batch: u64,
    },

    // ---- user role ----
    ApplyUpdates {
        items: Vec<UpdateItem>,
        /// The generation of the batch on this node that logged them at
        /// their source (0: durable already): the target shows nothing
        /// before it is durable (`storage::durability`, one round per
        /// message).
        after: u64,
        /// The appends the writer waits for; paid at the target's commit.
        owed: Vec<Owed>,
        done: oneshot::Sender<()>,
    },
    PushEphemeral {
        user_ids: Vec<String>,
        event: Ephemeral,
    },
    OpenSession {
        session: SessionHandle,
        after_cursor: u64,
        replayed: u64,
        page: usize,
        reply: Reply<OpenStep>,
    },
    CloseSession {
        user_id: String,
        session_id: u64,
    },
    DropGateway {
        gateway_id: String,
    },
    UserContext {
        user_id: String,
        reply: Reply<UserContext>,
    },
    UpdateSettings {
        user_id: String,
        request: UpdateSettingsRequest,
        reply: Reply<Settings>,
    },
    /// A gateway leases up to `want` of a user's request tokens.
    AcquireBudget {
        user_id: String,
        want: u32,
        reply: Reply<crate::core::budget::Grant>,
    },
    /// The evidence of a report: the message (0: the newest) and those
    /// before it that the reporter sees, and the members.
    Evidence {
        caller: Caller,
        conversation_id: String,
        seq: u64,
        reply: Reply<(Vec<Message>, Vec<String>)>,
    },
    /// A moderator's removal of a message for everyone.
    RemoveMessage {
        conversation_id: String,
        seq: u64,
        reply: Reply<()>,
    },
    /// Whether a user is suspended, after suspending (`Some(true)`) or
    /// reinstating them.
    Standing {
        user_id: String,
        suspend: Option<bool>,
        reply: Reply<bool>,
    },
    /// A deleted account: answers what its partition holds that other
    /// partitions must clean up, closing its sessions; with `erase`, the
    /// state itself goes (the last step, so a retry still finds the rest).
    Forget {
        user_id: String,
        erase: bool,
        reply: Reply<Forgotten>,
    },
    /// A deleted account's messages here after `after_seq` become
    /// tombstones (at most `ERASE_BATCH` per call), and it leaves a group
    /// with the last call.
    EraseSender {
        conversation_id: String,
        user_id: String,
        after_seq: u64,
        reply: Reply<Erased>,
    },
    /// The moderation queue and the audit log (on their one partition).
    Moderation {
        op: ModerationOp,
        reply: Reply<ModerationOutcome>,
    },
    /// A user's push targets and per-conversation notification settings.
    Notifications {
        user_id: String,
        change: NotificationChange,
        reply: Reply<()>,
    },
    /// The webhook took these push notifications: remove them.
    PushDelivered {
        numbers: Vec<u64>,
    },
    /// How a user stands toward others, after `change` (answered once
    /// durable).
    Relations {
        user_id: String,
        others: Vec<String>,
        change: RelationChange,
        reply: Reply<RelationsResult>,
    },
    /// Presence of `user_ids` as seen by `viewer`, who is in
    /// `viewer_conversations`.
    PresenceQuery {
        viewer: String,
        user_ids: Vec<String>,
        viewer_conversations: Arc<[String]>,
        reply: Reply<Vec<Presence>>,
    },

    // ---- node ----
    /// Make everything durable, reply, and stop.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// A move: stop taking writes, wait until everything is durable and the
    /// outbox confirmed, close the sessions, reply, and stop (see `freeze`).
    Freeze {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// Client commands that would write; refused while freezing.
    pub(crate) fn writes_as_client(&self) -> bool {
        matches!(
            self,
            Self::CreateConversation { .. }
                | Self::Respond { .. }
                | Self::PairBlock { .. }
                | Self::Relations { .. }
                | Self::Notifications { .. }
                | Self::RemoveMessage { .. }
                | Self::Standing { .. }
                | Self::Moderation { .. }
                | Self::Forget { .. }
                | Self::EraseSender { .. }
                | Self::ChangeMembership { .. }
                | Self::Send { .. }
                | Self::ActOnMessage { .. }
                | Self::Typing { .. }
                | Self::Mark { .. }
                | Self::UpdateSettings { .. }
                | Self::OpenSession { .. }
        )
    }
}

/// A command and the span it was queued in: the partition handles it
/// inside that span, so its work shows in the caller's trace
/// ([`crate::telemetry`]).
pub struct Traced {
    pub command: Command,
    pub span: tracing::Span,
}

impl Traced {
    /// `command` in the current span (when spans are exported).
    pub fn new(command: Command) -> Self {
        Self { command, span: crate::telemetry::carried() }
    }
}

/// Queues of one partition.
pub struct Mailbox {
    pub commands: mpsc::Receiver<Traced>,
    pub internal: mpsc::UnboundedReceiver<Traced>,
}

/// One step of opening a session: a page of missed entries, or live.
#[derive(Debug)]
pub enum OpenStep {
    /// The cursor is older than what is retained (or unknown): reload state
    /// and reconnect with `cursor`.
    Resync { cursor: u64 },
    /// Entries after the requested cursor; ask again after the last one.
    Page { entries: Vec<UpdateEntry> },
    /// Caught up: the session is registered and `Ready` is queued on it.
    Live,
}
