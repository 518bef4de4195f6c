//! The gRPC edge of the broker: the one mapping from [`Error`] to status
//! codes, and the internal `BrokerService` that gateways call.

use std::pin::Pin;

use imsg_proto::internal::v1::{
    CallPartitionRequest, CallPartitionResponse, ClientLimits, ExecuteRequest, ExecuteResponse, ExportPartitionRequest,
    ExportPartitionResponse, FreezePartitionRequest, FreezePartitionResponse, GetClusterStateRequest,
    GetClusterStateResponse, ImportPartitionRequest, ImportPartitionResponse, OpenSessionRequest, OpenSessionResponse,
    PartitionRow, ReleasePartitionRequest, ReleasePartitionResponse, RenewLeaseRequest, RenewLeaseResponse, Route,
    ThawPartitionRequest, ThawPartitionResponse, broker_service_server::BrokerService,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use crate::{Broker, error::Error, validate};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        // Another node's status passes through with its retry advice.
        let error = match error {
            Error::Remote(status) => return status,
            other => other,
        };
        let message = error.to_string();
        let code = match &error {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::ConversationNotFound(_) | Error::NotMember(_) | Error::MessageNotFound { .. } => Code::NotFound,
            Error::PermissionDenied(_) | Error::Refused(_) => Code::PermissionDenied,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::GroupFull { .. }
            | Error::TooManySessions { .. }
            | Error::PartitionOverloaded { .. }
            | Error::SessionQueueFull => Code::ResourceExhausted,
            Error::PartitionMoving { .. } | Error::Unavailable(_) => Code::Unavailable,
            Error::NotOwner(_) => Code::Aborted,
            Error::Remote(_) => unreachable!("passed through above"),
            Error::Storage(_) | Error::Corrupt(_) | Error::Internal(_) => {
                tracing::error!(%message, "internal error");
                Code::Internal
            }
        };
        match error.retry_after() {
            Some(delay) => imsg_common::retry::transient(code, message, delay),
            None => Status::new(code, message),
        }
    }
}

/// Serves the internal broker API over a [`Broker`].
pub struct BrokerGrpc {
    broker: Broker,
}

impl BrokerGrpc {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<OpenSessionResponse, Status>> + Send>>;
type RowStream = Pin<Box<dyn Stream<Item = Result<ExportPartitionResponse, Status>> + Send>>;

/// Rows per export frame (a few hundred KiB at most).
const EXPORT_ROWS: usize = 512;

fn route(route: Option<Route>) -> Result<Route, Status> {
    route.ok_or_else(|| Status::invalid_argument("route: must be set"))
}

#[tonic::async_trait]
impl BrokerService for BrokerGrpc {
    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<ExecuteResponse>, Status> {
        let request = request.into_inner();
        let caller = request.caller.ok_or_else(|| Status::invalid_argument("caller: must be set"))?;
        let command = request.command.ok_or_else(|| Status::invalid_argument("command: must be set"))?;
        let result = self.broker.execute(&caller, request.route.as_ref(), command).await?;
        Ok(Response::new(ExecuteResponse { result: Some(result) }))
    }

    type OpenSessionStream = FrameStream;

    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let request = request.into_inner();
        let caller = request.caller.ok_or_else(|| Status::invalid_argument("caller: must be set"))?;
        let session = self.broker.open_session(&caller, &request.gateway_id, request.cursor, request.route.as_ref())?;
        let frames = session.map(|frame| Ok(OpenSessionResponse { frame: Some(frame) }));
        Ok(Response::new(Box::pin(frames)))
    }

    async fn renew_lease(&self, request: Request<RenewLeaseRequest>) -> Result<Response<RenewLeaseResponse>, Status> {
        let gateway_id = request.into_inner().gateway_id;
        validate::id("gateway_id", &gateway_id)?;
        let ttl = self.broker.renew_lease(&gateway_id);
        Ok(Response::new(RenewLeaseResponse { ttl_ms: ttl.as_millis() as u64 }))
    }

    async fn call_partition(
        &self,
        request: Request<CallPartitionRequest>,
    ) -> Result<Response<CallPartitionResponse>, Status> {
        let request = request.into_inner();
        let route = route(request.route)?;
        let call = request.call.ok_or_else(|| Status::invalid_argument("call: must be set"))?;
        let router = self.broker.router();
        router.check_internal(route.partition, route.epoch)?;
        let result = crate::cluster::wire::serve(call, |command| router.local(route.partition, command)).await?;
        Ok(Response::new(CallPartitionResponse { result: Some(result) }))
    }

    async fn get_cluster_state(
        &self,
        _request: Request<GetClusterStateRequest>,
    ) -> Result<Response<GetClusterStateResponse>, Status> {
        let router = self.broker.router();
        let limits = &self.broker.config().limits;
        Ok(Response::new(GetClusterStateResponse {
            node_index: self.broker.node_index(),
            partition_count: router.partition_count(),
            claims: router.claims(),
            limits: Some(ClientLimits {
                max_text_bytes: limits.max_text_bytes as u32,
                max_group_members: limits.max_group_members as u32,
                max_title_bytes: limits.max_title_bytes as u32,
            }),
        }))
    }

    async fn freeze_partition(
        &self,
        request: Request<FreezePartitionRequest>,
    ) -> Result<Response<FreezePartitionResponse>, Status> {
        let route = route(request.into_inner().route)?;
        self.broker.freeze_partition(route.partition, route.epoch).await?;
        Ok(Response::new(FreezePartitionResponse {}))
    }

    async fn thaw_partition(
        &self,
        request: Request<ThawPartitionRequest>,
    ) -> Result<Response<ThawPartitionResponse>, Status> {
        let route = route(request.into_inner().route)?;
        self.broker.thaw_partition(route.partition, route.epoch).await?;
        Ok(Response::new(ThawPartitionResponse {}))
    }

    type ExportPartitionStream = RowStream;

    async fn export_partition(
        &self,
        request: Request<ExportPartitionRequest>,
    ) -> Result<Response<Self::ExportPartitionStream>, Status> {
        let route = route(request.into_inner().route)?;
        // Checked up front so a wrong request fails as a status, not a frame.
        self.broker.check_frozen(route.partition, route.epoch)?;
        Ok(Response::new(export_frames(self.broker.clone(), route)))
    }

    async fn import_partition(
        &self,
        request: Request<ImportPartitionRequest>,
    ) -> Result<Response<ImportPartitionResponse>, Status> {
        let request = request.into_inner();
        let route = route(request.route)?;
        let rows = self
            .broker
            .import_partition(route.partition, route.epoch, &request.source_url, request.source_epoch)
            .await?;
        Ok(Response::new(ImportPartitionResponse { rows }))
    }

    async fn release_partition(
        &self,
        request: Request<ReleasePartitionRequest>,
    ) -> Result<Response<ReleasePartitionResponse>, Status> {
        let request = request.into_inner();
        let route = route(request.route)?;
        self.broker.release_partition(route.partition, route.epoch, request.new_owner).await?;
        Ok(Response::new(ReleasePartitionResponse {}))
    }
}

/// The frames of an export: pages of rows read one at a time by a task,
/// so a large partition streams in bounded memory.
fn export_frames(broker: Broker, route: Route) -> RowStream {
    let (frames, stream) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let frame = match broker.export_rows(route.partition, route.epoch, after.as_deref(), EXPORT_ROWS) {
                Err(error) => Err(Status::from(error)),
                Ok(rows) if rows.is_empty() => return,
                Ok(rows) => {
                    after = rows.last().map(|(key, _)| key.clone());
                    Ok(ExportPartitionResponse {
                        rows: rows.into_iter().map(|(key, value)| PartitionRow { key, value }).collect(),
                    })
                }
            };
            let failed = frame.is_err();
            if frames.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(stream))
}
