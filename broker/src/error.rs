//! The broker's typed errors. Domain code returns these; the one mapping to
//! gRPC status codes lives at the edge, in [`crate::grpc`].

/// Why a command was refused, named after the cause. A refused command
/// changed nothing. Whether a retry of the same request can succeed is part
/// of the cause ([`Error::retry_after`]); the one mapping to gRPC codes
/// lives at the edge, in [`crate::grpc`], and tells clients through
/// `google.rpc.RetryInfo` (see `imsg_common::retry`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("conversation {0} not found")]
    ConversationNotFound(String),
    /// Not a member: answered exactly as a conversation that does not
    /// exist, so that nobody learns which conversations exist.
    #[error("conversation {0} not found")]
    NotMember(String),
    /// A user does not accept messages from the caller: their privacy
    /// setting or their block (the caller cannot tell which).
    #[error("{0} does not accept messages from you")]
    Refused(String),
    /// No such message the caller may see (the same answer whether it
    /// never existed or predates their joining).
    #[error("no message {seq} in conversation {conversation_id}")]
    MessageNotFound { conversation_id: String, seq: u64 },
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well formed but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A group would pass its member limit. Permanent.
    #[error("a group has at most {max} members")]
    GroupFull { max: usize },
    /// The user holds the most live sessions allowed. Permanent (until the
    /// user closes one).
    #[error("at most {max} live sessions per user")]
    TooManySessions { max: usize },
    /// A partition's command queue is full: back off and retry.
    #[error("partition {partition} is overloaded; retry later")]
    PartitionOverloaded { partition: u32 },
    /// A new session's event queue filled before it was open: retry.
    #[error("session queue full while opening; retry")]
    SessionQueueFull,
    /// A partition is moving to another node: retry shortly.
    #[error("partition {partition} is moving; retry shortly")]
    PartitionMoving { partition: u32 },
    /// A partition, a node or this broker is stopping, starting or out of
    /// reach: retry (the caller's map may then point elsewhere).
    #[error("{0}")]
    Unavailable(String),
    /// This node does not own the partition (or not at the epoch the
    /// sender saw): the sender's partition map is stale (invariant 8).
    #[error("{0}")]
    NotOwner(String),
    /// Another node refused a forwarded call; its status (and its retry
    /// advice) passes through.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt record: {0}")]
    Corrupt(#[from] prost::DecodeError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// How long a client should wait before retrying the same request;
    /// `None` when a retry cannot succeed (or, for [`Error::Remote`], when
    /// the remote status decides).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        use std::time::Duration;
        match self {
            Self::PartitionOverloaded { .. } | Self::SessionQueueFull => Some(Duration::from_millis(50)),
            Self::PartitionMoving { .. } => Some(Duration::from_millis(100)),
            Self::Unavailable(_) => Some(Duration::from_millis(200)),
            Self::InvalidArgument { .. }
            | Self::ConversationNotFound(_)
            | Self::NotMember(_)
            | Self::MessageNotFound { .. }
            | Self::PermissionDenied(_)
            | Self::Refused(_)
            | Self::FailedPrecondition(_)
            | Self::GroupFull { .. }
            | Self::TooManySessions { .. }
            | Self::NotOwner(_)
            | Self::Remote(_)
            | Self::Storage(_)
            | Self::Corrupt(_)
            | Self::Internal(_) => None,
        }
    }

    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
