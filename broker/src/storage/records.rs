//! On-disk record types, encoded with prost so the format is compact,
//! versionable (new fields get new tags) and independent of Rust layout.
//! Messages themselves are stored as the public `imsg.v1.Message` without
//! its content, followed by a [`SealedContent`] (see `shred`).

/// The sealed content of a message row. Its tags are far above the
/// message's own, so one row decodes both as `imsg.v1.Message` (which skips
/// these) and as this (which skips the message's fields). Rows written
/// before sealing have neither and keep their content in the clear.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealedContent {
    /// The slot of the key in the partition's key file.
    #[prost(uint64, optional, tag = "1001")]
    pub key_slot: Option<u64>,
    /// The message's `content`, encoded as an `imsg.v1.Message` holding
    /// only it, sealed under that key.
    #[prost(bytes = "vec", tag = "1002")]
    pub sealed: Vec<u8>,
}

/// The reactions to one message, one per member, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReactionsRecord {
    #[prost(message, repeated, tag = "1")]
    pub reactions: Vec<imsg_proto::v1::Reaction>,
}

/// A conversation's durable metadata (members, title). Written only when
/// membership or the title changes, never per message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConversationRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    /// `imsg.v1.ConversationKind`.
    #[prost(int32, tag = "2")]
    pub kind: i32,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(int64, tag = "4")]
    pub create_time_ms: i64,
    #[prost(message, repeated, tag = "5")]
    pub members: Vec<MemberRecord>,
    #[prost(string, tag = "6")]
    pub creator: String,
    #[prost(int64, tag = "7")]
    pub change_time_ms: i64,
    /// Direct conversations: the members who block the other (a copy of
    /// their block, kept here so that a send needs no other partition).
    #[prost(string, repeated, tag = "8")]
    pub blocked_by: Vec<String>,
    /// Direct conversations: messages sent while the other member has not
    /// accepted the request.
    #[prost(uint32, tag = "9")]
    pub request_sends: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberRecord {
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// `imsg.v1.MemberRole`.
    #[prost(int32, tag = "2")]
    pub role: i32,
    #[prost(uint64, tag = "3")]
    pub joined_after_seq: u64,
    /// [`RequestState`]: whether the member has accepted the conversation.
    #[prost(int32, tag = "4")]
    pub request: i32,
}

/// Where a member stands on a conversation they were brought into by
/// someone who is not their contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum RequestState {
    /// Accepted (or never a request).
    Accepted = 0,
    /// A message request, in the member's requests folder.
    Pending = 1,
    /// Declined: hidden from the member, who hears nothing more of it; the
    /// other side is not told.
    Declined = 2,
}

/// One member's receipt watermarks in one conversation.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ReceiptRecord {
    #[prost(uint64, tag = "1")]
    pub delivered_seq: u64,
    #[prost(uint64, tag = "2")]
    pub read_seq: u64,
    /// The member's hide-read-receipts setting as of their last mark.
    #[prost(bool, tag = "3")]
    pub hide_read: bool,
}

/// What a conversation partition must fan out to members' update logs after
/// one write batch: the transactional outbox. Kept until every target
/// partition has durably appended it, re-sent after a crash.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxRecord {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<OutboxItem>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxItem {
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    #[prost(oneof = "OutboxEvent", tags = "2, 3, 4, 5, 6, 7")]
    pub event: Option<OutboxEvent>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OutboxEvent {
    /// A message; recipients are the members at re-send time.
    #[prost(uint64, tag = "2")]
    MessageSeq(u64),
    #[prost(message, tag = "3")]
    Receipt(ReceiptEvent),
    #[prost(message, tag = "4")]
    Changed(ChangedEvent),
    #[prost(message, tag = "5")]
    Reaction(ReactionEvent),
    /// An edited or unsent message; re-read by seq, as it is then.
    #[prost(uint64, tag = "6")]
    MessageUpdatedSeq(u64),
    #[prost(message, tag = "7")]
    Hidden(HiddenEvent),
}

impl OutboxEvent {
    /// The seq of the stored message this event is re-sent with, if any.
    pub fn message_seq(&self) -> Option<u64> {
        match self {
            Self::MessageSeq(seq) | Self::MessageUpdatedSeq(seq) => Some(*seq),
            _ => None,
        }
    }
}

/// A member's reaction to a message (empty emoji: removed).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReactionEvent {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(string, tag = "2")]
    pub user_id: String,
    #[prost(string, tag = "3")]
    pub emoji: String,
    #[prost(int64, tag = "4")]
    pub react_time_ms: i64,
}

/// A user deleted a message for themselves.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HiddenEvent {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReceiptEvent {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(uint64, tag = "2")]
    pub delivered_seq: u64,
    #[prost(uint64, tag = "3")]
    pub read_seq: u64,
    #[prost(bool, tag = "4")]
    pub hide_read: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangedEvent {
    /// Members who were removed (or left) by this change: they are told too.
    #[prost(string, repeated, tag = "1")]
    pub removed_user_ids: Vec<String>,
}

/// One batch of a user partition's update log: the entries of every user of
/// the partition appended in one write, keyed by the first entry's cursor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateBatchRecord {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<UpdateEntry>,
}

/// One entry of a user's update log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateEntry {
    #[prost(uint64, tag = "1")]
    pub cursor: u64,
    #[prost(string, tag = "2")]
    pub user_id: String,
    #[prost(string, tag = "3")]
    pub conversation_id: String,
    #[prost(oneof = "UpdateKind", tags = "4, 5, 6, 7, 8, 9")]
    pub kind: Option<UpdateKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum UpdateKind {
    #[prost(uint64, tag = "4")]
    MessageSeq(u64),
    /// Already filtered for this user (read hidden = 0).
    #[prost(message, tag = "5")]
    Receipt(ReceiptEvent),
    /// The conversation changed; `true` when this user was removed.
    #[prost(bool, tag = "6")]
    ConversationRemoved(bool),
    #[prost(message, tag = "7")]
    Reaction(ReactionEvent),
    /// A message was edited or unsent; replayed as it is then.
    #[prost(uint64, tag = "8")]
    MessageUpdatedSeq(u64),
    /// This user deleted the message for themselves.
    #[prost(uint64, tag = "9")]
    HiddenSeq(u64),
}

impl UpdateKind {
    /// The seq of the stored message a replay of this entry needs, if any.
    pub fn message_seq(&self) -> Option<u64> {
        match self {
            Self::MessageSeq(seq) | Self::MessageUpdatedSeq(seq) => Some(*seq),
            _ => None,
        }
    }
}

/// A user's privacy settings.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct SettingsRecord {
    #[prost(bool, tag = "1")]
    pub hide_read_receipts: bool,
    #[prost(bool, tag = "2")]
    pub hide_activity_status: bool,
    /// `imsg.v1.WhoMayMessage`.
    #[prost(int32, tag = "3")]
    pub who_may_message: i32,
    /// No push notification until then; -1: until unmuted.
    #[prost(int64, tag = "4")]
    pub notifications_muted_until_ms: i64,
    #[prost(bool, tag = "5")]
    pub hide_push_previews: bool,
    /// Suspended by a moderator: every call and stream is refused.
    #[prost(bool, tag = "6")]
    pub suspended: bool,
}

/// Where one device of a user gets push notifications.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushTargetRecord {
    /// `imsg.v1.PushPlatform`.
    #[prost(int32, tag = "1")]
    pub platform: i32,
    #[prost(string, tag = "2")]
    pub token: String,
}

/// A user's notification settings for one conversation.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct NotifyRecord {
    /// Muted until then; -1: until unmuted; 0: not muted.
    #[prost(int64, tag = "1")]
    pub muted_until_ms: i64,
    #[prost(bool, tag = "2")]
    pub hide_previews: bool,
}

/// One push notification waiting in a user partition's push outbox until
/// the webhook took it (see `crate::push`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRecord {
    /// The same for every attempt at this notification: the receiver drops
    /// repeats by it.
    #[prost(string, tag = "1")]
    pub idempotency_key: String,
    #[prost(string, tag = "2")]
    pub user_id: String,
    #[prost(string, tag = "3")]
    pub device_id: String,
    #[prost(int32, tag = "4")]
    pub platform: i32,
    #[prost(string, tag = "5")]
    pub token: String,
    #[prost(string, tag = "6")]
    pub conversation_id: String,
    #[prost(uint64, tag = "7")]
    pub seq: u64,
    #[prost(string, tag = "8")]
    pub sender_id: String,
    /// The preview, when the user's and the conversation's settings allow.
    #[prost(string, optional, tag = "9")]
    pub text: Option<String>,
    #[prost(int64, tag = "10")]
    pub created_ms: i64,
}

impl SettingsRecord {
    /// Default settings but these two (tests of what they hide).
    pub const fn with_privacy(hide_read_receipts: bool, hide_activity_status: bool) -> Self {
        Self {
            hide_read_receipts,
            hide_activity_status,
            who_may_message: 0,
            notifications_muted_until_ms: 0,
            hide_push_previews: false,
            suspended: false,
        }
    }

    /// The record of settings as the API shows them.
    pub fn from_view(view: &imsg_proto::v1::Settings) -> Self {
        Self {
            hide_read_receipts: view.hide_read_receipts,
            hide_activity_status: view.hide_activity_status,
            who_may_message: view.who_may_message,
            notifications_muted_until_ms: view.notifications_muted_until_ms,
            hide_push_previews: view.hide_push_previews,
            suspended: false,
        }
    }

    /// The settings as the API shows them.
    pub fn view(&self) -> imsg_proto::v1::Settings {
        imsg_proto::v1::Settings {
            hide_read_receipts: self.hide_read_receipts,
            hide_activity_status: self.hide_activity_status,
            who_may_message: self.who_may_message,
            notifications_muted_until_ms: self.notifications_muted_until_ms,
            hide_push_previews: self.hide_push_previews,
        }
    }
}

/// How a user stands toward one other user (kept on the user's partition).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RelationRecord {
    /// The user blocks the other.
    #[prost(bool, tag = "1")]
    pub blocks: bool,
    /// The other blocks the user.
    #[prost(bool, tag = "2")]
    pub blocked_by: bool,
    /// The user accepted or wrote to the other.
    #[prost(bool, tag = "3")]
    pub contact: bool,
    /// The host application declared the pair related.
    #[prost(bool, tag = "4")]
    pub declared: bool,
}

impl RelationRecord {
    /// No block either way: presence, typing and read receipts pass.
    pub fn separated(&self) -> bool {
        self.blocks || self.blocked_by
    }

    pub fn is_contact(&self) -> bool {
        self.contact || self.declared
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The relation as partitions tell each other.
    pub fn view(&self, other: &str) -> imsg_proto::internal::v1::Relation {
        imsg_proto::internal::v1::Relation {
            other_user_id: other.to_owned(),
            blocks: self.blocks,
            blocked_by: self.blocked_by,
            contact: self.contact,
            declared: self.declared,
        }
    }

    pub fn from_view(view: &imsg_proto::internal::v1::Relation) -> Self {
        Self { blocks: view.blocks, blocked_by: view.blocked_by, contact: view.contact, declared: view.declared }
    }
}

/// Per-partition bookkeeping, rewritten with each batch that changes it.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct PartitionMeta {
    // Tag 1 (an ownership epoch) moved to `OwnershipRecord`.
    /// Next outbox batch number to assign.
    #[prost(uint64, tag = "2")]
    pub next_outbox: u64,
    /// Every outbox batch below this is fanned out and deleted.
    #[prost(uint64, tag = "3")]
    pub outbox_done: u64,
    /// Next update-log cursor to assign (cursors start at 1).
    #[prost(uint64, tag = "4")]
    pub next_cursor: u64,
}

/// Whether this node owns a partition, and at which epoch (invariant 8).
/// Written only by ownership changes (first start, import, release), each
/// time through the write-ahead log and waited on until durable.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct OwnershipRecord {
    /// Bumped on every ownership change; the highest claim wins.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// The partition was moved to another node at `epoch`: never serve it.
    #[prost(bool, tag = "2")]
    pub released: bool,
}
