//! The broker's typed errors. Domain code returns these; the one mapping to
//! gRPC status codes lives at the edge, in [`crate::grpc`].

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("conversation {0} not found")]
    ConversationNotFound(String),
    #[error("not a member of conversation {0}")]
    NotMember(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well formed but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit (queue, rate, group size, sessions) was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A partition is stopping, moving or down; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// This node does not own the partition (or not at the epoch the
    /// sender saw): the sender's partition map is stale (invariant 8).
    #[error("{0}")]
    NotOwner(String),
    /// Another node refused a forwarded call; its status passes through.
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
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
