//! Two broker nodes and a gateway as processes, with flags of the test's
//! choosing on every process (mutual TLS, trace export, push webhooks).

use std::time::{Duration, Instant};

use crate::harness::{Client, PARTITIONS, PATIENCE, Process, binary, broker_args};

/// The processes; killed when dropped.
pub struct TwoNodes {
    pub nodes: Vec<Process>,
    pub gateway: Process,
    _data: tempfile::TempDir,
}

impl TwoNodes {
    /// Starts node 0 and node 1 (splitting the partitions) with
    /// `node_flags(index)`, then a gateway in front of both with
    /// `gateway_flags`. `scheme` is `http` or `https`.
    pub async fn start(scheme: &str, node_flags: impl Fn(usize) -> Vec<String>, gateway_flags: Vec<String>) -> Self {
        let data = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..2).map(|_| crate::harness::reserved_port()).collect();
        let urls = ports.iter().map(|port| format!("{scheme}://127.0.0.1:{port}")).collect::<Vec<_>>().join(",");
        let mut nodes = Vec::new();
        for (index, port) in ports.iter().enumerate() {
            let dir = data.path().join(format!("node-{index}"));
            let mut args = broker_args(&dir, &format!("127.0.0.1:{port}"), &[]);
            args.extend(strings(&["--nodes", &urls, "--node-index", &index.to_string()]));
            args.extend(node_flags(index));
            nodes.push(Process::spawn(&binary("imsg-broker"), &args).await);
        }
        let mut args = strings(&["--broker", &urls, "--listen", "127.0.0.1:0"]);
        args.extend(gateway_flags);
        let gateway = Process::spawn(&binary("imsg-gateway"), &args).await;
        Self { nodes, gateway, _data: data }
    }

    pub async fn client(&self, user: &str, device: &str) -> Client {
        Client::connect(self.gateway.addr, user, device).await
    }

    /// A group of `creator` and `members`, created once the gateway has
    /// learned where every partition is.
    pub async fn group(&self, creator: &Client, title: &str, members: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match creator.try_group(title, members).await {
                Ok(group) => return group,
                Err(status) => assert!(Instant::now() < deadline, "the cluster never served: {status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A user whose partition node `node` of the two owns.
pub fn user_on(node: u32, name: &str) -> String {
    (0..).map(|i| format!("{name}{i}")).find(|u| imsg_common::ids::partition_of(u, PARTITIONS) % 2 == node).unwrap()
}
