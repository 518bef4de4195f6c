//! The public `MessagingService`: authenticate, rate-limit, validate, route.
//!
//! Every unary RPC has the same shape, so one macro writes them: the
//! request becomes an `ExecuteRequest` command run as the token's caller,
//! and the matching result variant is the response.

use std::sync::Arc;

use imsg_common::{retry::transient, token::Authenticator};
use imsg_proto::internal::v1::{Caller, execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{messaging_service_server::MessagingService, moderation_service_server::ModerationService, *};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    backend::Backend,
    media::Media,
    ratelimit::{BudgetLeases, PerUserLimiter},
    stream::{DeviceStream, StreamSettings, Streams},
};

/// What every handler needs; shared by all connections.
pub struct Gateway {
    pub auth: Authenticator,
    pub backend: Backend,
    /// Uploads and downloads; `None` when no media store is configured.
    pub media: Option<Arc<Media>>,
    /// Leases of users' request budgets (counted at their partitions).
    pub budgets: BudgetLeases,
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

    /// Authenticates and rate-limits the caller.
    async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let caller = self.gateway.auth.authenticate(metadata)?;
        self.gateway.admit(&caller).await?;
        Ok(caller)
    }

    fn media(&self) -> Result<&Media, Status> {
        self.gateway
            .media
            .as_deref()
            .ok_or_else(|| Status::failed_precondition("this gateway has no media store configured"))
    }

    /// Runs a command as the token's caller.
    async fn run(&self, metadata: &tonic::metadata::MetadataMap, command: Command) -> Result<Outcome, Status> {
        let caller = self.caller(metadata).await?;
        self.gateway.run_as(caller, command).await
    }
}

impl Gateway {
    /// Rate-limits an authenticated caller against their request budget,
    /// counted at their partition across every gateway.
    pub async fn admit(&self, caller: &Caller) -> Result<(), Status> {
        if let Err(wait) = self.budgets.spend(&self.backend, caller).await? {
            imsg_broker::metrics::METRICS.rate_limited.get_or_create(&limit("user_requests")).inc();
            return Err(transient(
                Code::ResourceExhausted,
                "request rate limit reached for this user; slow down",
                wait,
            ));
        }
        Ok(())
    }

    /// Runs a command as an admitted caller (the backend validates it);
    /// media in it are resolved before and their references kept after.
    pub async fn run_as(&self, caller: Caller, mut command: Command) -> Result<Outcome, Status> {
        let after = match &self.media {
            Some(media) => media.before(&self.backend, &caller, &mut command).await?,
            None => None,
        };
        let outcome = self.backend.execute(caller, command).await?;
        if let (Some(media), Some(after)) = (&self.media, after) {
            media.after(after, &outcome).await;
        }
        Ok(outcome)
    }
}

/// The label of a refusal by one rate limit.
pub fn limit(name: &str) -> imsg_broker::metrics::LimitLabel {
    imsg_broker::metrics::LimitLabel { limit: name.to_owned() }
}

/// Counts an RPC by method and code, and times it.
pub(crate) fn record<T>(method: &str, result: &Result<T, Status>, started: std::time::Instant) {
    use imsg_broker::metrics::{METRICS, MethodLabel, RpcLabels};
    let code = match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    let labels = RpcLabels { method: method.to_owned(), code: format!("{code:?}") };
    METRICS.rpcs.get_or_create(&labels).inc();
    let method = MethodLabel { method: method.to_owned() };
    METRICS.rpc_seconds.get_or_create(&method).observe(started.elapsed().as_secs_f64());
}

/// Writes a service impl over [`MessagingApi`]: one unary method per
/// (method, request, response, command variant), plus the methods given
/// verbatim.
macro_rules! unary_service {
    ($service:ident: $(($method:ident, $request:ty, $response:ty, $variant:ident)),* $(,)?; $($streaming:tt)*) => {
        #[tonic::async_trait]
        impl $service for MessagingApi {
            $(
                async fn $method(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
                    let started = std::time::Instant::now();
                    let (metadata, _, body) = request.into_parts();
                    let result = match self.run(&metadata, Command::$variant(body)).await {
                        Ok(Outcome::$variant(response)) => Ok(Response::new(response)),
                        Ok(_) => Err(Status::internal("broker answered with the wrong result kind")),
                        Err(status) => Err(status),
                    };
                    record(stringify!($variant), &result, started);
                    result
                }
            )*
            $($streaming)*
        }
    };
}

unary_service! {
    MessagingService:
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
    (get_presence, GetPresenceRequest, GetPresenceResponse, GetPresence),
    (block_user, BlockUserRequest, BlockUserResponse, BlockUser),
    (unblock_user, UnblockUserRequest, UnblockUserResponse, UnblockUser),
    (list_blocked_users, ListBlockedUsersRequest, ListBlockedUsersResponse, ListBlockedUsers),
    (accept_conversation, AcceptConversationRequest, AcceptConversationResponse, AcceptConversation),
    (decline_conversation, DeclineConversationRequest, DeclineConversationResponse, DeclineConversation),
    (declare_contacts, DeclareContactsRequest, DeclareContactsResponse, DeclareContacts),
    (register_push_target, RegisterPushTargetRequest, RegisterPushTargetResponse, RegisterPushTarget),
    (unregister_push_target, UnregisterPushTargetRequest, UnregisterPushTargetResponse, UnregisterPushTarget),
    (set_conversation_notifications, SetConversationNotificationsRequest, SetConversationNotificationsResponse, SetConversationNotifications),
    (report, ReportRequest, ReportResponse, Report),
    (delete_account, DeleteAccountRequest, DeleteAccountResponse, DeleteAccount);

    type OpenStreamStream = DeviceStream;
    type DownloadMediaStream = crate::media::Download;
    type ExportMyDataStream = crate::export::Export;

    async fn export_my_data(
        &self,
        request: Request<ExportMyDataRequest>,
    ) -> Result<Response<Self::ExportMyDataStream>, Status> {
        let caller = self.caller(request.metadata()).await?;
        Ok(Response::new(crate::export::start(self.gateway.clone(), caller)))
    }

    async fn upload_media(
        &self,
        request: Request<Streaming<UploadMediaRequest>>,
    ) -> Result<Response<UploadMediaResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        Ok(Response::new(self.media()?.upload(&caller, request.into_inner()).await?))
    }

    async fn get_upload(&self, request: Request<GetUploadRequest>) -> Result<Response<GetUploadResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        Ok(Response::new(self.media()?.get_upload(&caller, request.into_inner()).await?))
    }

    async fn download_media(
        &self,
        request: Request<DownloadMediaRequest>,
    ) -> Result<Response<Self::DownloadMediaStream>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let download = self.media()?.download(&self.gateway.backend, &caller, request.into_inner()).await?;
        Ok(Response::new(download))
    }

    async fn open_stream(
        &self,
        request: Request<Streaming<OpenStreamRequest>>,
    ) -> Result<Response<Self::OpenStreamStream>, Status> {
        let verified = self.gateway.auth.authenticate_until(request.metadata())?;
        let stream = crate::stream::open(self.gateway.clone(), verified, request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}

// The moderators' API: the same gateway, the same authentication; the
// broker checks the `moderator` role.
unary_service! {
    ModerationService:
    (list_reports, ListReportsRequest, ListReportsResponse, ListReports),
    (claim_report, ClaimReportRequest, ClaimReportResponse, ClaimReport),
    (resolve_report, ResolveReportRequest, ResolveReportResponse, ResolveReport),
    (lift_suspension, LiftSuspensionRequest, LiftSuspensionResponse, LiftSuspension),
    (list_audit_log, ListAuditLogRequest, ListAuditLogResponse, ListAuditLog);
}
