//! Where the gateway sends commands: a broker in this process
//! (`--embedded-broker`) or broker nodes over the internal broker API.
//! Either way the gateway keeps no durable state.

use std::{pin::Pin, sync::Arc, time::Duration};

use imsg_broker::{Broker, Limits, validate};
use imsg_proto::v1::{
    Caller, ExecuteRequest, OpenSessionRequest, OpenStreamResponse, RenewLeaseRequest,
    broker_service_client::BrokerServiceClient, execute_request, execute_response,
};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Status, transport::Channel};

/// A device session's frames, whichever backend serves it.
pub type Frames = Pin<Box<dyn Stream<Item = Result<OpenStreamResponse, Status>> + Send>>;

/// The broker the gateway routes to.
#[derive(Clone)]
pub enum Backend {
    Embedded(Broker),
    Remote(RemoteBroker),
}

/// A broker node reached over gRPC, with this gateway's lease on it.
#[derive(Clone)]
pub struct RemoteBroker {
    client: BrokerServiceClient<Channel>,
    gateway_id: String,
    /// The brokers' limits: bad input is refused here, before a network
    /// hop. (An embedded broker validates in `Broker::execute`, once.)
    limits: Arc<Limits>,
}

impl RemoteBroker {
    /// Connects lazily (the broker may start after the gateway) and keeps
    /// this gateway's lease renewed until `stop`.
    pub fn connect(url: &str, gateway_id: String, limits: Limits, stop: CancellationToken) -> Result<Self, String> {
        let endpoint = Channel::from_shared(url.to_owned())
            .map_err(|e| format!("broker url {url}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let client = BrokerServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(4 * 1024 * 1024);
        let broker = Self { client, gateway_id, limits: Arc::new(limits) };
        tokio::spawn(broker.clone().renew_lease(stop));
        Ok(broker)
    }

    async fn renew_lease(self, stop: CancellationToken) {
        let mut client = self.client.clone();
        let mut every = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match client.renew_lease(RenewLeaseRequest { gateway_id: self.gateway_id.clone() }).await {
                // Renew three times per lease, so one lost renewal is harmless.
                Ok(response) => every = Duration::from_millis((response.into_inner().ttl_ms / 3).max(100)),
                Err(status) => {
                    tracing::warn!(%status, "lease renewal failed");
                    every = Duration::from_secs(1);
                }
            }
        }
    }
}

impl Backend {
    pub async fn execute(
        &self,
        caller: Caller,
        command: execute_request::Command,
    ) -> Result<execute_response::Result, Status> {
        match self {
            Self::Embedded(broker) => Ok(broker.execute(&caller, command).await?),
            Self::Remote(remote) => {
                validate::command(&remote.limits, &caller, &command)?;
                remote
                    .client
                    .clone()
                    .execute(ExecuteRequest { caller: Some(caller), command: Some(command) })
                    .await?
                    .into_inner()
                    .result
                    .ok_or_else(|| Status::internal("broker answered without a result"))
            }
        }
    }

    pub async fn open_session(&self, caller: Caller, cursor: u64) -> Result<Frames, Status> {
        match self {
            Self::Embedded(broker) => Ok(Box::pin(broker.open_session(&caller, "", cursor)?.map(Ok))),
            Self::Remote(remote) => {
                let request =
                    OpenSessionRequest { caller: Some(caller), gateway_id: remote.gateway_id.clone(), cursor };
                let frames = remote.client.clone().open_session(request).await?.into_inner();
                Ok(Box::pin(frames.filter_map(|frame| match frame {
                    Ok(frame) => frame.frame.map(Ok),
                    Err(status) => Some(Err(status)),
                })))
            }
        }
    }
}
