//! The public `MessagingService`: authenticate, rate-limit, validate, route.
//!
//! Every unary RPC has the same shape, so one macro writes them: the
//! request becomes an `ExecuteRequest` command run as the token's caller,
//! and the matching result variant is the response.

use std::sync::Arc;

use imsg_common::{retry::transient, token::Authenticator};
use imsg_proto::internal::v1::{execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{
    AddConversationMembersRequest, AddConversationMembersResponse, CreateConversationRequest,
    CreateConversationResponse, DeleteMessageForMeRequest, DeleteMessageForMeResponse, EditMessageRequest,
    EditMessageResponse, ForwardMessageRequest, ForwardMessageResponse, GetConversationRequest,
    GetConversationResponse, GetPresenceRequest, GetPresenceResponse, GetSettingsRequest, GetSettingsResponse,
    LeaveConversationRequest, LeaveConversationResponse, ListConversationsRequest, ListConversationsResponse,
    ListMessagesRequest, ListMessagesResponse, OpenStreamRequest, ReactToMessageRequest, ReactToMessageResponse,
    RemoveConversationMemberRequest, RemoveConversationMemberResponse, SendMessageRequest, SendMessageResponse,
    UnsendMessageRequest, UnsendMessageResponse, UpdateConversationRequest, UpdateConversationResponse,
    UpdateSettingsRequest, UpdateSettingsResponse, messaging_service_server::MessagingService,
};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    backend::Backend,
    ratelimit::PerUserLimiter,
    stream::{DeviceStream, StreamSettings, Streams},
};

/// What every handler needs; shared by all connections.
pub struct Gateway {
    pub auth: Authenticator,
    pub backend: Backend,
    pub unary_limiter: PerUserLimiter,
    /// Typing signals per user, across all of the user's streams here.
    pub typing_limiter: PerUserLimiter,
    pub streams: Streams,
    pub stream_settings: StreamSettings,
}

/// The tonic service over a shared [`Gateway`].
#[derive(Clone)]
pub struct MessagingApi {
    gateway: Arc<Gateway>,
}

impl MessagingApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// Authenticates and rate-limits, then runs the command (the backend
    /// validates it).
    async fn run(&self, metadata: &tonic::metadata::MetadataMap, command: Command) -> Result<Outcome, Status> {
        let caller = self.gateway.auth.authenticate(metadata)?;
        if let Err(wait) = self.gateway.unary_limiter.try_take(&caller.user_id) {
            return Err(transient(
                Code::ResourceExhausted,
                "request rate limit reached for this user; slow down",
                wait,
            ));
        }
        self.gateway.backend.execute(caller, command).await
    }
}

/// Writes the service impl: one unary method per (method, request,
/// response, command variant), plus the streaming method given verbatim.
macro_rules! messaging_service {
    ($(($method:ident, $request:ty, $response:ty, $variant:ident)),* $(,)?; $($streaming:tt)*) => {
        #[tonic::async_trait]
        impl MessagingService for MessagingApi {
            $(
                async fn $method(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
                    let (metadata, _, body) = request.into_parts();
                    match self.run(&metadata, Command::$variant(body)).await? {
                        Outcome::$variant(response) => Ok(Response::new(response)),
                        _ => Err(Status::internal("broker answered with the wrong result kind")),
                    }
                }
            )*
            $($streaming)*
        }
    };
}

messaging_service! {
    (create_conversation, CreateConversationRequest, CreateConversationResponse, CreateConversation),
    (get_conversation, GetConversationRequest, GetConversationResponse, GetConversation),
    (list_conversations, ListConversationsRequest, ListConversationsResponse, ListConversations),
    (update_conversation, UpdateConversationRequest, UpdateConversationResponse, UpdateConversation),
    (add_conversation_members, AddConversationMembersRequest, AddConversationMembersResponse, AddConversationMembers),
    (remove_conversation_member, RemoveConversationMemberRequest, RemoveConversationMemberResponse, RemoveConversationMember),
    (leave_conversation, LeaveConversationRequest, LeaveConversationResponse, LeaveConversation),
    (send_message, SendMessageRequest, SendMessageResponse, SendMessage),
    (list_messages, ListMessagesRequest, ListMessagesResponse, ListMessages),
    (react_to_message, ReactToMessageRequest, ReactToMessageResponse, ReactToMessage),
    (edit_message, EditMessageRequest, EditMessageResponse, EditMessage),
    (unsend_message, UnsendMessageRequest, UnsendMessageResponse, UnsendMessage),
    (delete_message_for_me, DeleteMessageForMeRequest, DeleteMessageForMeResponse, DeleteMessageForMe),
    (forward_message, ForwardMessageRequest, ForwardMessageResponse, ForwardMessage),
    (get_settings, GetSettingsRequest, GetSettingsResponse, GetSettings),
    (update_settings, UpdateSettingsRequest, UpdateSettingsResponse, UpdateSettings),
    (get_presence, GetPresenceRequest, GetPresenceResponse, GetPresence);

    type OpenStreamStream = DeviceStream;

    async fn open_stream(
        &self,
        request: Request<Streaming<OpenStreamRequest>>,
    ) -> Result<Response<Self::OpenStreamStream>, Status> {
        let caller = self.gateway.auth.authenticate(request.metadata())?;
        let stream = crate::stream::open(self.gateway.clone(), caller, request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}
