//! The gRPC edge of the broker: the one mapping from [`Error`] to status
//! codes, and the internal `BrokerService` that gateways call.

use std::pin::Pin;

use imsg_proto::v1::{
    ExecuteRequest, ExecuteResponse, OpenSessionRequest, OpenSessionResponse, RenewLeaseRequest, RenewLeaseResponse,
    broker_service_server::BrokerService,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::{Broker, error::Error, validate};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(message),
            Error::ConversationNotFound(_) => Status::not_found(message),
            Error::NotMember(_) | Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Unavailable(_) => Status::unavailable(message),
            Error::Storage(_) | Error::Corrupt(_) | Error::Internal(_) => {
                tracing::error!(%message, "internal error");
                Status::internal(message)
            }
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

#[tonic::async_trait]
impl BrokerService for BrokerGrpc {
    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<ExecuteResponse>, Status> {
        let request = request.into_inner();
        let caller = request.caller.ok_or_else(|| Status::invalid_argument("caller: must be set"))?;
        let command = request.command.ok_or_else(|| Status::invalid_argument("command: must be set"))?;
        let result = self.broker.execute(&caller, command).await?;
        Ok(Response::new(ExecuteResponse { result: Some(result) }))
    }

    type OpenSessionStream = FrameStream;

    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let request = request.into_inner();
        let caller = request.caller.ok_or_else(|| Status::invalid_argument("caller: must be set"))?;
        let session = self.broker.open_session(&caller, &request.gateway_id, request.cursor)?;
        let frames = session.map(|frame| Ok(OpenSessionResponse { frame: Some(frame) }));
        Ok(Response::new(Box::pin(frames)))
    }

    async fn renew_lease(&self, request: Request<RenewLeaseRequest>) -> Result<Response<RenewLeaseResponse>, Status> {
        let gateway_id = request.into_inner().gateway_id;
        validate::id("gateway_id", &gateway_id)?;
        let ttl = self.broker.renew_lease(&gateway_id);
        Ok(Response::new(RenewLeaseResponse { ttl_ms: ttl.as_millis() as u64 }))
    }
}
