//! What the CLI tests share: a real server with an embedded broker.

use imsg_broker::BrokerConfig;
use imsg_gateway::{BrokerTarget, GatewayConfig, RunningGateway};

/// The token secret of the test server (`imsg` mints its tokens with it).
pub const SECRET: &str = "cli-test-secret-0123456789";

/// A gateway with an embedded broker over `data`, on a loopback port.
pub async fn server(data: &std::path::Path) -> RunningGateway {
    server_with(data, |_| {}).await
}

/// [`server`] with its configuration adjusted by `tune`.
#[allow(dead_code)] // each test binary uses what it needs
pub async fn server_with(data: &std::path::Path, tune: impl FnOnce(&mut GatewayConfig)) -> RunningGateway {
    let mut broker = BrokerConfig::new(data);
    broker.partitions = 8;
    let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), BrokerTarget::Embedded(broker), SECRET);
    tune(&mut config);
    RunningGateway::start(config).await.unwrap()
}
