//! What the fuzz targets share with each other and with the seed generator
//! (`examples/seeds.rs`): the layout of each target's input, so that a seed
//! written there means the same thing here, and the servers' own decode
//! path for gRPC messages.
//!
//! Inputs are read with [`Input`], where every read succeeds (zeros past
//! the end): any byte string is a valid input, so libFuzzer's mutations
//! never fall off a parser of ours before they reach the code under test.

use bytes::{BufMut, Bytes, BytesMut};
use imsg_proto::{
    codec::CompactCodec,
    internal::v1::{self as internal, Caller, execute_request::Command},
    v1,
};
use tonic::{
    Status,
    codec::{Codec, Streaming},
};

/// Largest message decoded (tonic's default receive limit; the servers'
/// limits are at least this, and fuzz inputs are far smaller).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A cursor over a fuzz input. Reads past the end yield zeros (or empty
/// slices), so every input parses.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    pub fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A piece prefixed with its length (u16, little-endian).
    pub fn piece(&mut self) -> &'a [u8] {
        let len = self.u16() as usize;
        self.take(len)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Writes what [`Input`] reads (for seeds).
#[derive(Debug, Default)]
pub struct Output(pub Vec<u8>);

impl Output {
    pub fn byte(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }

    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn piece(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u16::try_from(bytes.len()).expect("a seed piece under 64 KiB");
        self.u16(len);
        self.bytes(bytes)
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
}

// ---- gRPC messages, decoded as the servers decode them ----

/// One uncompressed gRPC frame holding `message`.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// Decodes `message` the way a server decodes a request body: tonic's
/// `Streaming` over imsg's [`CompactCodec`] decoder (what the generated
/// servers use, `codec_path` in proto/build.rs), first message of the body.
pub fn decode_request<U>(message: &[u8]) -> Result<U, Status>
where
    U: prost::Message + Default + Send + 'static,
{
    let decoder = CompactCodec::<U, U>::default().decoder();
    let body = http_body_util::Full::new(grpc_frame(message));
    let mut stream = Streaming::new_request(decoder, body, None, Some(MAX_MESSAGE_BYTES));
    futures::executor::block_on(stream.message())?.ok_or_else(|| Status::internal("Missing request message."))
}

/// Decodes `message` the way a client of the internal API (a gateway, or
/// another node) decodes a response body.
pub fn decode_response<U>(message: &[u8]) -> Result<U, Status>
where
    U: prost::Message + Default + Send + 'static,
{
    let decoder = CompactCodec::<U, U>::default().decoder();
    let body = http_body_util::Full::new(grpc_frame(message));
    let mut stream = Streaming::new_response(decoder, body, http::StatusCode::OK, None, Some(MAX_MESSAGE_BYTES));
    futures::executor::block_on(stream.message())?.ok_or_else(|| Status::internal("Missing response message."))
}

/// The caller of a public request: what a verified token yields (ids that
/// pass `check_id`), with the roles the bits of `roles` grant.
pub fn caller(roles: u8) -> Caller {
    let mut granted = Vec::new();
    if roles & 1 != 0 {
        granted.push(imsg_common::token::ROLE_MODERATOR.to_owned());
    }
    if roles & 2 != 0 {
        granted.push(imsg_common::token::ROLE_SERVICE.to_owned());
    }
    Caller { user_id: "alice".into(), device_id: "phone".into(), roles: granted }
}

/// Writes the public and internal tables: the message types in selector
/// order, an enum of what decodes, and the decode function.
macro_rules! message_table {
    (
        $(#[$meta:meta])* $table:ident, $decoded:ident, $decode:ident;
        commands: $(($variant:ident, $command:ty)),* ;
        requests: $($request:ident),* ;
        responses: $($response:ident),* $(;)?
    ) => {
        $(#[$meta])*
        pub const $table: &[&str] = &[
            $(stringify!($variant),)* $(stringify!($request),)* $(stringify!($response),)*
        ];

        /// A message decoded as its server (or client) decodes it.
        #[derive(Debug)]
        pub enum $decoded {
            /// A unary public RPC: the gateway runs it as this command.
            Command(Command),
            $($request(Box<path_of!($request)>),)*
            $($response(Box<path_of!($response)>),)*
        }

        /// Decodes `message` as type number `selector` (modulo the count).
        #[allow(unused_assignments, unused_mut)]
        pub fn $decode(selector: u8, message: &[u8]) -> Result<$decoded, Status> {
            let mut index = selector as usize % $table.len();
            $(
                if index == 0 {
                    return decode_request::<$command>(message).map(Command::$variant).map($decoded::Command);
                }
                index -= 1;
            )*
            $(
                if index == 0 {
                    return decode_request::<path_of!($request)>(message).map(|m| $decoded::$request(Box::new(m)));
                }
                index -= 1;
            )*
            $(
                if index == 0 {
                    return decode_response::<path_of!($response)>(message).map(|m| $decoded::$response(Box::new(m)));
                }
                index -= 1;
            )*
            unreachable!("the index is below the table's length")
        }
    };
}

/// Public types are `v1::X`, internal ones `internal::X` (see the tables).
macro_rules! path_of {
    (OpenStreamRequest) => {
        v1::OpenStreamRequest
    };
    (UploadMediaRequest) => {
        v1::UploadMediaRequest
    };
    (GetUploadRequest) => {
        v1::GetUploadRequest
    };
    (DownloadMediaRequest) => {
        v1::DownloadMediaRequest
    };
    (ExportMyDataRequest) => {
        v1::ExportMyDataRequest
    };
    ($internal:ident) => {
        internal::$internal
    };
}

message_table! {
    /// Every request message of the public API (`MessagingService` and
    /// `ModerationService`), in selector order: the unary RPCs by their
    /// command (gateway/src/service.rs lists the same pairs), then the
    /// streaming and media requests the gateway handles itself.
    PUBLIC_MESSAGES, PublicMessage, decode_public;
    commands:
        (CreateConversation, v1::CreateConversationRequest),
        (GetConversation, v1::GetConversationRequest),
        (ListConversations, v1::ListConversationsRequest),
        (UpdateConversation, v1::UpdateConversationRequest),
        (AddConversationMembers, v1::AddConversationMembersRequest),
        (RemoveConversationMember, v1::RemoveConversationMemberRequest),
        (LeaveConversation, v1::LeaveConversationRequest),
        (SendMessage, v1::SendMessageRequest),
        (ListMessages, v1::ListMessagesRequest),
        (ReactToMessage, v1::ReactToMessageRequest),
        (EditMessage, v1::EditMessageRequest),
        (UnsendMessage, v1::UnsendMessageRequest),
        (DeleteMessageForMe, v1::DeleteMessageForMeRequest),
        (ForwardMessage, v1::ForwardMessageRequest),
        (GetSettings, v1::GetSettingsRequest),
        (UpdateSettings, v1::UpdateSettingsRequest),
        (GetPresence, v1::GetPresenceRequest),
        (BlockUser, v1::BlockUserRequest),
        (UnblockUser, v1::UnblockUserRequest),
        (ListBlockedUsers, v1::ListBlockedUsersRequest),
        (AcceptConversation, v1::AcceptConversationRequest),
        (DeclineConversation, v1::DeclineConversationRequest),
        (DeclareContacts, v1::DeclareContactsRequest),
        (RegisterPushTarget, v1::RegisterPushTargetRequest),
        (UnregisterPushTarget, v1::UnregisterPushTargetRequest),
        (SetConversationNotifications, v1::SetConversationNotificationsRequest),
        (Report, v1::ReportRequest),
        (DeleteAccount, v1::DeleteAccountRequest),
        (ListReports, v1::ListReportsRequest),
        (ClaimReport, v1::ClaimReportRequest),
        (ResolveReport, v1::ResolveReportRequest),
        (LiftSuspension, v1::LiftSuspensionRequest),
        (ListAuditLog, v1::ListAuditLogRequest);
    requests: OpenStreamRequest, UploadMediaRequest, GetUploadRequest, DownloadMediaRequest, ExportMyDataRequest;
    responses:;
}

message_table! {
    /// Every message of the internal broker API that crosses the network
    /// into a node or a gateway: the requests `BrokerService` serves, and
    /// the responses its clients (gateways, other nodes) decode.
    INTERNAL_MESSAGES, InternalMessage, decode_internal;
    commands:;
    requests: ExecuteRequest, OpenSessionRequest, RenewLeaseRequest, CallPartitionRequest, GetClusterStateRequest,
        FreezePartitionRequest, ThawPartitionRequest, ExportPartitionRequest, ImportPartitionRequest,
        ReleasePartitionRequest;
    responses: ExecuteResponse, OpenSessionResponse, RenewLeaseResponse, CallPartitionResponse,
        GetClusterStateResponse, ExportPartitionResponse, ImportPartitionResponse;
}

/// The selector of a table entry by name (for seeds).
pub fn selector(table: &[&str], name: &str) -> u8 {
    let index = table.iter().position(|n| *n == name).unwrap_or_else(|| panic!("{name} is not in the table"));
    u8::try_from(index).expect("tables are under 256 entries")
}

// ---- storage rows (the `storage_rows` target) ----

/// Conversation ids the row inputs pick from (or give their own).
pub const CONVERSATIONS: [&str; 2] = ["dm_0123456789abcdef0123456789abcdef", "g_fedcba9876543210fedcba9876543210"];
/// User ids the row inputs pick from (or give their own).
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The row kinds of a partition's tree (the layout table in
/// broker/src/storage/mod.rs), in selector order. `Raw` is any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Conversation,
    Message,
    Reactions,
    Hidden,
    KeySlot,
    Receipt,
    Outbox,
    UpdateBatch,
    Settings,
    Inbox,
    Relation,
    PushTarget,
    Notify,
    Push,
    Report,
    Audit,
    Meta,
    Ownership,
    Raw,
}

pub const ROW_KINDS: [RowKind; 19] = [
    RowKind::Conversation,
    RowKind::Message,
    RowKind::Reactions,
    RowKind::Hidden,
    RowKind::KeySlot,
    RowKind::Receipt,
    RowKind::Outbox,
    RowKind::UpdateBatch,
    RowKind::Settings,
    RowKind::Inbox,
    RowKind::Relation,
    RowKind::PushTarget,
    RowKind::Notify,
    RowKind::Push,
    RowKind::Report,
    RowKind::Audit,
    RowKind::Meta,
    RowKind::Ownership,
    RowKind::Raw,
];

/// An id for a row key: one of `known` (selector below 0x80) or the
/// input's own bytes.
fn row_id(input: &mut Input<'_>, known: &[&str]) -> Vec<u8> {
    match input.byte() {
        pick @ 0..0x80 => known[pick as usize % known.len()].as_bytes().to_vec(),
        _ => input.piece().to_vec(),
    }
}

/// `tag` then `parts` joined by `/`: the key layout of storage/rows.rs.
pub fn row_key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![tag];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(b'/');
        }
        key.extend_from_slice(part);
    }
    key
}

/// One row as the `storage_rows` input describes it: its key, built the
/// way the broker builds keys of that kind (with ids and numbers from the
/// input), and its value. Content-key slots are kept to what the broker
/// writes (small slots, 32-byte keys): they go to the key file, and a
/// malformed one stops the writer, which is not a decode path.
pub fn read_row(input: &mut Input<'_>) -> (RowKind, Vec<u8>, Vec<u8>) {
    let kind = ROW_KINDS[input.byte() as usize % ROW_KINDS.len()];
    let conversation = |input: &mut Input<'_>| row_id(input, &CONVERSATIONS);
    let user = |input: &mut Input<'_>| row_id(input, &USERS);
    let key = match kind {
        RowKind::Conversation => row_key(b'c', &[&conversation(input)]),
        RowKind::Message => row_key(b'm', &[&conversation(input), &input.u64().to_be_bytes()]),
        RowKind::Reactions => row_key(b'a', &[&conversation(input), &input.u64().to_be_bytes()]),
        RowKind::Hidden => row_key(b'h', &[&conversation(input), &user(input), &input.u64().to_be_bytes()]),
        RowKind::KeySlot => {
            let slot = u64::from(input.byte());
            let mut key = input.take(32).to_vec();
            key.resize(32, 0);
            return (kind, imsg_broker::storage::shred::key_row(slot), key);
        }
        RowKind::Receipt => row_key(b'r', &[&conversation(input), &user(input)]),
        RowKind::Outbox => row_key(b'o', &[&input.u64().to_be_bytes()]),
        RowKind::UpdateBatch => row_key(b'u', &[&input.u64().to_be_bytes()]),
        RowKind::Settings => row_key(b's', &[&user(input)]),
        RowKind::Inbox => row_key(b'i', &[&user(input), &conversation(input)]),
        RowKind::Relation => row_key(b'l', &[&user(input), &user(input)]),
        RowKind::PushTarget => row_key(b't', &[&user(input), &user(input)]),
        RowKind::Notify => row_key(b'n', &[&user(input), &conversation(input)]),
        RowKind::Push => row_key(b'P', &[&input.u64().to_be_bytes()]),
        RowKind::Report => row_key(b'R', &[&input.u64().to_be_bytes()]),
        RowKind::Audit => row_key(b'A', &[&input.u64().to_be_bytes()]),
        RowKind::Meta => b"M".to_vec(),
        RowKind::Ownership => b"O".to_vec(),
        RowKind::Raw => {
            let key = input.piece().to_vec();
            // Any key but a content-key slot's (see above).
            if key.first() == Some(&imsg_broker::storage::shred::KEY_ROW_TAG) { b"x".to_vec() } else { key }
        }
    };
    (kind, key, input.piece().to_vec())
}

/// Writes a row in [`read_row`]'s layout, for a kind whose key is one
/// conversation or user from the fixed lists and/or a number.
#[derive(Debug, Default)]
pub struct RowSeed {
    pub conversation: u8,
    pub user: u8,
    pub other_user: u8,
    pub number: u64,
}

impl RowSeed {
    pub fn write(&self, out: &mut Output, kind: RowKind, value: &[u8]) {
        let index = ROW_KINDS.iter().position(|k| *k == kind).expect("a row kind") as u8;
        out.byte(index);
        let (c, u, o, n) = (self.conversation, self.user, self.other_user, self.number);
        match kind {
            RowKind::Conversation => {
                out.byte(c);
            }
            RowKind::Message | RowKind::Reactions => {
                out.byte(c).u64(n);
            }
            RowKind::Hidden => {
                out.byte(c).byte(u).u64(n);
            }
            RowKind::KeySlot => {
                out.byte(n as u8).bytes(value);
                return;
            }
            RowKind::Receipt => {
                out.byte(c).byte(u);
            }
            RowKind::Outbox | RowKind::UpdateBatch | RowKind::Push | RowKind::Report | RowKind::Audit => {
                out.u64(n);
            }
            RowKind::Settings => {
                out.byte(u);
            }
            RowKind::Inbox | RowKind::Notify => {
                out.byte(u).byte(c);
            }
            RowKind::Relation | RowKind::PushTarget => {
                out.byte(u).byte(o);
            }
            RowKind::Meta | RowKind::Ownership => {}
            RowKind::Raw => unreachable!("raw rows are written by hand"),
        }
        out.piece(value);
    }
}

// ---- storage records (the `storage_records` target) ----

/// What a `storage_records` input's first byte picks (modulo the count):
/// each record type of broker/src/storage/records.rs, the two things a
/// message row decodes as, the moderation rows, and content-key row keys.
pub const STORAGE_RECORDS: &[&str] = &[
    "SealedContent",
    "ReactionsRecord",
    "ConversationRecord",
    "ReceiptRecord",
    "OutboxRecord",
    "UpdateBatchRecord",
    "SettingsRecord",
    "PushTargetRecord",
    "NotifyRecord",
    "PushRecord",
    "RelationRecord",
    "PartitionMeta",
    "OwnershipRecord",
    "MessageRow",
    "Report",
    "AuditEntry",
    "KeyRow",
];

// ---- tokens (the `tokens` target) ----

/// The authenticators the `tokens` target verifies with, and what its
/// seeds are signed with.
pub mod tokens {
    use imsg_common::token::{Authenticator, TokenRules, testing};

    /// The HS256 secret (local development's kind of authenticator).
    pub const SECRET: &str = "fuzz-secret-0123456789abcdef";
    /// The published key's seed and id (EdDSA, `testing::ed25519`).
    pub const KEY_SEED: u8 = 7;
    pub const KEY_ID: &str = "fuzz-key";
    /// The claims the keyed authenticator requires.
    pub const ISSUER: &str = "https://app.example";
    pub const AUDIENCE: &str = "imsg";

    /// HS256 with [`SECRET`], default rules.
    pub fn hs256() -> Authenticator {
        Authenticator::new(SECRET).expect("a long enough secret")
    }

    /// No secret; one published Ed25519 key; issuer and audience required.
    pub fn keyed() -> Authenticator {
        let rules = TokenRules { issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), leeway_secs: 5 };
        let auth = Authenticator::with_rules(None, rules).expect("no secret to check");
        auth.set_key_set(&key_set()).expect("the test key set");
        auth
    }

    /// The JWKS document of the published key.
    pub fn key_set() -> String {
        let (_, jwk) = testing::ed25519(KEY_SEED, KEY_ID);
        testing::key_set(&[&jwk])
    }
}
