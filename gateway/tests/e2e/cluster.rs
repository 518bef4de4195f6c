//! The cluster (invariant 8 and cross-node delivery): broker nodes in
//! separate processes, gateways routing by the partition map, partition
//! moves with the operator command under traffic.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imsg_broker::{
    ids::partition_of,
    storage::{OWNERSHIP_KEY, OwnershipRecord},
};
use imsg_proto::internal::v1::{
    ApplyUpdatesCall, CallPartitionRequest, Caller, ExecuteRequest, FreezePartitionRequest, GetClusterStateRequest,
    ImportPartitionRequest, LoggedUpdate, Route, broker_service_client::BrokerServiceClient, call_partition_request,
    execute_request, logged_update,
};
use imsg_proto::v1::{Message, SendMessageRequest, TextContent, event, send_message_request};
use tonic::Code;

use crate::harness::{Client, PARTITIONS, PATIENCE, Process, binary, direct_conversation_id, gateway_args_for};

/// Broker nodes (some maybe not started yet) and gateways.
pub(crate) struct Cluster {
    urls: Vec<String>,
    initial: usize,
    nodes: Vec<Option<Process>>,
    gateways: Vec<Process>,
    data: tempfile::TempDir,
}

impl Cluster {
    /// A layout of `layout` nodes of which the first `initial` start now
    /// and split the partitions; `gateways` gateways in front.
    pub(crate) async fn start(layout: usize, initial: usize, gateways: usize) -> Self {
        Self::start_with_gateway_args(layout, initial, gateways, &[]).await
    }

    /// [`Self::start`] with `extra` flags for every gateway.
    async fn start_with_gateway_args(layout: usize, initial: usize, gateways: usize, extra: &[String]) -> Self {
        let urls = (0..layout)
            .map(|_| {
                let port = crate::harness::reserved_port();
                format!("http://127.0.0.1:{port}")
            })
            .collect();
        let mut cluster =
            Self { urls, initial, nodes: Vec::new(), gateways: Vec::new(), data: tempfile::tempdir().unwrap() };
        for index in 0..layout {
            cluster.nodes.push(None);
            if index < initial {
                cluster.start_node(index).await;
            }
        }
        for _ in 0..gateways {
            let mut args = gateway_args_for(&cluster.urls.join(","));
            args.extend_from_slice(extra);
            cluster.gateways.push(Process::spawn(&binary("imsg-gateway"), &args).await);
        }
        // Gateways load the map at start; make sure every node answered.
        cluster.wait_for_owners(PARTITIONS as usize).await;
        cluster
    }

    async fn start_node(&mut self, index: usize) {
        let url = &self.urls[index];
        let args: Vec<String> = vec![
            "--listen".into(),
            url.trim_start_matches("http://").into(),
            "--data-dir".into(),
            self.data_dir(index).display().to_string(),
            "--partitions".into(),
            PARTITIONS.to_string(),
            "--cache-mb".into(),
            "16".into(),
            "--nodes".into(),
            self.urls.join(","),
            "--node-index".into(),
            index.to_string(),
            "--initial-nodes".into(),
            self.initial.to_string(),
        ];
        self.nodes[index] = Some(Process::spawn(&binary("imsg-broker"), &args).await);
    }

    fn data_dir(&self, index: usize) -> std::path::PathBuf {
        self.data.path().join(format!("node-{index}"))
    }

    pub(crate) fn gateway(&self, index: usize) -> SocketAddr {
        self.gateways[index].addr
    }

    async fn node(&self, index: usize) -> BrokerServiceClient<tonic::transport::Channel> {
        BrokerServiceClient::connect(self.urls[index].clone()).await.unwrap()
    }

    /// partition -> (node, epoch), from every running node's claims.
    async fn owners(&self) -> BTreeMap<u32, (usize, u64)> {
        let mut owners = BTreeMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            let state = self.node(index).await.get_cluster_state(GetClusterStateRequest {}).await.unwrap().into_inner();
            for claim in state.claims {
                let entry = owners.entry(claim.partition).or_insert((index, claim.epoch));
                if claim.epoch > entry.1 {
                    *entry = (index, claim.epoch);
                }
            }
        }
        owners
    }

    async fn wait_for_owners(&self, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.owners().await.len() < count {
            assert!(Instant::now() < deadline, "partitions never all claimed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Gateways refresh their map every second.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

/// A user id whose partition is on `node` (of three, round robin).
pub(crate) fn user_on(node: u32, name: &str) -> String {
    (0..).map(|i| format!("{name}{i}")).find(|u| partition_of(u, PARTITIONS) % 3 == node).unwrap()
}

#[tokio::test]
async fn users_on_different_gateways_and_nodes_chat_one_to_one_and_in_groups() {
    let cluster = Cluster::start(3, 3, 2).await;
    let (alice_id, bob_id, carol_id) = (user_on(0, "alice"), user_on(1, "bob"), user_on(2, "carol"));
    let alice = Client::connect(cluster.gateway(0), &alice_id, "phone").await;
    let bob = Client::connect(cluster.gateway(1), &bob_id, "phone").await;
    let carol = Client::connect(cluster.gateway(1), &carol_id, "phone").await;
    let mut alice_device = alice.open(0).await;
    let mut bob_device = bob.open(0).await;
    let mut carol_device = carol.open(0).await;
    alice_device.ready().await;
    bob_device.ready().await;
    carol_device.ready().await;

    // 1:1 across gateways; the three users' partitions are on three nodes.
    let direct = alice.direct_with(&bob_id).await;
    assert_eq!(direct, direct_conversation_id(&alice_id, &bob_id));
    for n in 0..5 {
        let seq = alice.send(&direct, &format!("hi {n}")).await;
        let got = message_from(&mut bob_device, &alice_id).await;
        assert_eq!((got.seq, got.text_body()), (seq, format!("hi {n}")));
        let seq = bob.send(&direct, &format!("hello {n}")).await;
        let got = message_from(&mut alice_device, &bob_id).await;
        assert_eq!((got.seq, got.text_body()), (seq, format!("hello {n}")));
    }

    // A group whose members live on every node.
    let group = carol.group("everyone", &[&alice_id, &bob_id]).await;
    let mut sent = Vec::new();
    for n in 0..10 {
        let sender = [&alice, &bob, &carol][n % 3];
        sent.push((sender.send(&group, &format!("g{n}")).await, n % 3));
    }
    let all: Vec<u64> = sent.iter().map(|(seq, _)| *seq).collect();
    for (member, device) in [&mut alice_device, &mut bob_device, &mut carol_device].into_iter().enumerate() {
        // Every message but the member's own (its device has the acks).
        let owed: Vec<u64> = sent.iter().filter(|(_, sender)| *sender != member).map(|(seq, _)| *seq).collect();
        let mut seqs = Vec::new();
        while seqs.len() < owed.len() {
            let message = device.message().await;
            if message.conversation_id == group {
                seqs.push(message.seq);
            }
        }
        assert_eq!(seqs, owed, "every member gets every group message of the others once, in order");
    }
    let sent = all;
    let history_a: Vec<u64> = alice.history(&group).await.iter().map(|m| m.seq).collect();
    let history_b: Vec<u64> = bob.history(&group).await.iter().map(|m| m.seq).collect();
    assert_eq!(history_a, sent);
    assert_eq!(history_b, sent);

    // Inbox and presence are assembled from other nodes' partitions.
    let inbox = bob.inbox().await;
    assert_eq!(inbox.conversations.len(), 2);
}

#[tokio::test]
async fn a_node_refuses_partitions_it_does_not_own_and_stale_epochs() {
    let cluster = Cluster::start(3, 3, 0).await;
    let owners = cluster.owners().await;
    let (alice, bob) = ("alice".to_owned(), user_on(1, "bob"));
    let conversation = direct_conversation_id(&alice, &bob);
    let partition = partition_of(&conversation, PARTITIONS);
    let (owner, epoch) = owners[&partition];
    let stranger = (owner + 1) % 3;
    let send = |route: Option<Route>| ExecuteRequest {
        caller: Some(Caller { user_id: alice.clone(), device_id: "phone".into(), ..Default::default() }),
        route,
        command: Some(execute_request::Command::SendMessage(SendMessageRequest {
            conversation_id: conversation.clone(),
            client_message_id: "x1".into(),
            reply_to_seq: 0,
            content: Some(send_message_request::Content::Text(TextContent { text: "misrouted".into() })),
        })),
    };

    // Misrouted: a node that does not own the partition refuses to write.
    let refused = cluster.node(stranger).await.execute(send(Some(Route { partition, epoch }))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    assert!(refused.message().contains("not owned by this node"), "{}", refused.message());
    let refused = cluster.node(stranger).await.execute(send(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Aborted);

    // The owner, but at an epoch it does not hold: stale, refused.
    let stale = cluster.node(owner).await.execute(send(Some(Route { partition, epoch: epoch + 1 }))).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(stale.message().contains("stale epoch"), "{}", stale.message());

    // Node-to-node writes are fenced the same way: an update for bob's log
    // under a wrong epoch is refused and leaves no trace.
    let bob_partition = partition_of(&bob, PARTITIONS);
    let (bob_owner, bob_epoch) = owners[&bob_partition];
    let update = |epoch| CallPartitionRequest {
        route: Some(Route { partition: bob_partition, epoch }),
        call: Some(call_partition_request::Call::ApplyUpdates(ApplyUpdatesCall {
            updates: vec![LoggedUpdate {
                user_ids: vec![bob.clone()],
                event: Some(logged_update::Event::Message(Message {
                    conversation_id: conversation.clone(),
                    seq: 1,
                    sender_id: alice.clone(),
                    ..Default::default()
                })),
            }],
        })),
    };
    let stale = cluster.node(bob_owner).await.call_partition(update(bob_epoch + 5)).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let misrouted = cluster.node((bob_owner + 1) % 3).await.call_partition(update(bob_epoch)).await.unwrap_err();
    assert_eq!(misrouted.code(), Code::Aborted, "{misrouted:?}");

    // Nothing was written: a gateway shows bob nothing, and the refused
    // send is not in the conversation (it does not even exist).
    let gateway = Process::spawn(&binary("imsg-gateway"), &gateway_args_for(&cluster.urls.join(","))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_client = Client::connect(gateway.addr, &bob, "phone").await;
    let mut device = bob_client.open(0).await;
    let replayed = device.ready().await;
    assert!(replayed.iter().all(|kind| !matches!(kind, event::Kind::Message(_))), "{replayed:?}");
    assert!(bob_client.inbox().await.conversations.is_empty());
}

#[tokio::test]
async fn growing_from_three_to_four_nodes_moves_partitions_under_traffic_and_loses_nothing() {
    let mut cluster = Cluster::start(4, 3, 1).await;
    let gateway = cluster.gateway(0);
    let (alice_id, bob_id, carol_id) = (user_on(0, "alice"), user_on(1, "bob"), user_on(2, "carol"));
    let alice = Client::connect(gateway, &alice_id, "phone").await;
    let bob = Client::connect(gateway, &bob_id, "phone").await;
    Client::connect(gateway, &carol_id, "phone").await;
    let direct = alice.direct_with(&bob_id).await;
    let group = alice.group("move", &[&bob_id, &carol_id]).await;

    // Senders retry refusals that say "try again" (a partition moving) with
    // the same client id, as the SDK does.
    let acked: Arc<Mutex<HashMap<String, BTreeMap<u64, String>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for worker in 0..4 {
        let client = if worker % 2 == 0 { alice.clone() } else { bob.clone() };
        let target = if worker < 2 { direct.clone() } else { group.clone() };
        let (acked, stop) = (acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("w{worker}-{n}");
                let ack = client.send_retrying(&target, &id).await;
                let previous = acked.lock().unwrap().entry(target.clone()).or_default().insert(ack.seq, id);
                assert!(previous.is_none(), "two sends acknowledged with one seq");
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.start_node(3).await;
    let rebalance = tokio::process::Command::new(binary("imsg-broker"))
        .args(["rebalance", "--nodes", &cluster.urls.join(",")])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&rebalance.stdout);
    assert!(rebalance.status.success(), "rebalance failed: {stdout}\n{}", String::from_utf8_lossy(&rebalance.stderr));
    assert_eq!(stdout.matches("moved partition").count(), 2, "{stdout}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }

    // Every node holds P/N partitions; the moved ones at epoch 2.
    let owners = cluster.owners().await;
    let mut per_node = [0; 4];
    for (node, _) in owners.values() {
        per_node[*node] += 1;
    }
    assert_eq!(per_node, [2, 2, 2, 2], "{owners:?}");
    assert!(owners.values().filter(|(node, _)| *node == 3).all(|(_, epoch)| *epoch == 2));

    // History: every acknowledged message exactly once, at its seq, no gaps.
    let acked = acked.lock().unwrap().clone();
    for (conversation, sent) in &acked {
        let history = alice.history(conversation).await;
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "gap-free history");
        for (seq, id) in sent {
            assert_eq!(history[*seq as usize - 1].text_body(), *id, "acked message at its seq");
        }
        assert_eq!(history.len(), sent.len(), "nothing but acknowledged messages");
    }
    // And bob's device, replaying from the start through the moved
    // partitions, gets every message of both conversations once, in order.
    let mut device = bob.open(0).await;
    let replayed = device.ready().await;
    let mut by_conversation: HashMap<String, Vec<u64>> = HashMap::new();
    for kind in replayed {
        if let event::Kind::Message(message) = kind {
            by_conversation.entry(message.conversation_id).or_default().push(message.seq);
        }
    }
    for (conversation, sent) in &acked {
        let seqs = by_conversation.remove(conversation).unwrap_or_default();
        assert_eq!(seqs, sent.keys().copied().collect::<Vec<_>>(), "bob's replay of {conversation}");
    }
}

/// Fencing's safety net: a move whose last step (release on the old
/// owner) never happened. The old owner, still running, steps down when it
/// sees the higher claim; killed before it could, it comes back and
/// releases the partition before serving anything, so fan-out from its
/// other partitions goes to the new owner instead of a stale copy.
#[tokio::test]
async fn an_old_owner_that_missed_the_release_steps_down_and_loses_nothing() {
    let mut cluster = Cluster::start(2, 1, 1).await;
    cluster.start_node(1).await;
    let gateway = cluster.gateway(0);
    let alice_id = "alice".to_owned();
    let alice_partition = partition_of(&alice_id, PARTITIONS);
    // bob's partition moves; the conversation and alice stay on node 0.
    let (bob_id, bob_partition, conversation) = (0..)
        .map(|i| {
            let bob = format!("bob{i}");
            let conversation = direct_conversation_id(&alice_id, &bob);
            (partition_of(&bob, PARTITIONS), bob, conversation)
        })
        .find(|(bob_p, _, c)| *bob_p != alice_partition && *bob_p != partition_of(c, PARTITIONS))
        .map(|(p, bob, c)| (bob, p, c))
        .unwrap();
    let idle_partition = (0..PARTITIONS)
        .find(|p| ![alice_partition, bob_partition, partition_of(&conversation, PARTITIONS)].contains(p))
        .unwrap();
    let move_without_release = |partition: u32| {
        let urls = cluster.urls.clone();
        async move {
            let route = |epoch| Some(Route { partition, epoch });
            let mut old = BrokerServiceClient::connect(urls[0].clone()).await.unwrap();
            old.freeze_partition(FreezePartitionRequest { route: route(1) }).await.unwrap();
            let mut new = BrokerServiceClient::connect(urls[1].clone()).await.unwrap();
            let request = ImportPartitionRequest { route: route(2), source_url: urls[0].clone(), source_epoch: 1 };
            new.import_partition(request).await.unwrap();
        }
    };
    let claim_on = |state: &imsg_proto::internal::v1::GetClusterStateResponse, partition: u32| {
        state.claims.iter().find(|c| c.partition == partition).map(|c| c.epoch)
    };

    // Running old owner: it sees node 1's claim at epoch 2 and steps down.
    move_without_release(idle_partition).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let state = cluster.node(0).await.get_cluster_state(GetClusterStateRequest {}).await.unwrap().into_inner();
        if claim_on(&state, idle_partition).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "node 0 never stepped down from partition {idle_partition}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Killed before it could step down: it must not serve the stale copy.
    let alice = Client::connect(gateway, &alice_id, "phone").await;
    Client::connect(gateway, &bob_id, "phone").await;
    alice.direct_with(&bob_id).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(alice.send(&conversation, &format!("before {n}")).await);
    }
    move_without_release(bob_partition).await;
    cluster.nodes[0].take().unwrap().sigkill().await;
    cluster.start_node(0).await;
    let state = cluster.node(0).await.get_cluster_state(GetClusterStateRequest {}).await.unwrap().into_inner();
    assert_eq!(claim_on(&state, bob_partition), None, "the restarted old owner serves a partition it lost: {state:?}");
    assert_eq!(claim_on(&state, idle_partition), None, "a release is durable");
    let state = cluster.node(1).await.get_cluster_state(GetClusterStateRequest {}).await.unwrap().into_inner();
    assert_eq!(claim_on(&state, bob_partition), Some(2));

    // Sent through node 0 (which owns the conversation), fanned out to bob's
    // log on node 1.
    for n in 0..3 {
        sent.push(alice.send_retrying(&conversation, &format!("after-{n}")).await.seq);
    }
    assert_eq!(sent, (1..=6).collect::<Vec<u64>>());
    tokio::time::sleep(Duration::from_millis(1200)).await; // the gateway's map
    let bob = Client::connect(gateway, &bob_id, "phone").await;
    let mut device = bob.open(0).await;
    let replayed = device.replayed_seqs(&conversation).await;
    assert_eq!(replayed, sent, "bob's log on the new owner has every message, before and after the restart");

    // Both releases dropped the old owner's copy: only the ownership record
    // (released, at the new epoch) is left.
    cluster.nodes[0].take().unwrap().sigkill().await;
    let mut config = imsg_broker::BrokerConfig::new(cluster.data_dir(0));
    config.partitions = PARTITIONS;
    let store = imsg_broker::storage::Store::open(&config).unwrap();
    for partition in [idle_partition, bob_partition] {
        let rows = store.partition(partition).unwrap();
        let keys: Vec<Vec<u8>> = rows.rows_after(None, 10).unwrap().into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, vec![OWNERSHIP_KEY.to_vec()], "partition {partition} left rows on its old owner");
        assert_eq!(rows.ownership().unwrap(), Some(OwnershipRecord { epoch: 2, released: true }));
    }
    store.close().unwrap();
}

/// The next message `sender` sent.
async fn message_from(device: &mut crate::harness::Device, sender: &str) -> Message {
    loop {
        let message = device.message().await;
        if message.sender_id == sender {
            return message;
        }
    }
}

trait TextBody {
    fn text_body(&self) -> String;
}

impl TextBody for Message {
    fn text_body(&self) -> String {
        match &self.content {
            Some(imsg_proto::v1::message::Content::Text(text)) => text.text.clone(),
            _ => String::new(),
        }
    }
}

/// A gateway in front of remote brokers learns the partition count and the
/// limits it checks from them, not from its own flags: given a wrong
/// `--partitions` and a looser text limit (both ignored), it still routes
/// every command to the right partition and refuses what the brokers do.
#[tokio::test]
async fn a_gateway_learns_the_partition_count_and_limits_from_the_brokers() {
    let data = tempfile::tempdir().unwrap();
    let broker_args = crate::harness::broker_args(data.path(), "127.0.0.1:0", &["--max-text-bytes", "100"]);
    let broker = Process::spawn(&binary("imsg-broker"), &broker_args).await;
    let mut args = gateway_args_for(&format!("http://{}", broker.addr));
    args.extend(["--partitions", "3", "--max-text-bytes", "60000"].map(String::from));
    let gateway = Process::spawn(&binary("imsg-gateway"), &args).await;
    let alice = Client::connect(gateway.addr, "alice", "phone").await;
    for peer in ["bob", "carol", "dave", "erin"] {
        let conversation = alice.direct_with(peer).await;
        alice.send_retrying(&conversation, &format!("to-{peer}")).await;
    }
    let conversation = alice.direct_with("bob").await;
    let refused = alice.try_send(&conversation, "long", &"x".repeat(200)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("over the limit of 100"), "the brokers' limit: {refused:?}");
}

/// Media uploaded through one gateway is downloaded through another (the
/// gateways share only the object store), and unsending it deletes it from
/// the store. Run against a real S3-compatible server and against a shared
/// local directory.
async fn media_cross_gateways(store_args: Vec<String>, objects: impl AsyncFn() -> Vec<String>) {
    use imsg_gateway::media::photo::fixtures::jpeg_with_gps;
    use imsg_proto::v1::{MediaKind, UnsendMessageRequest};

    use crate::media::{download, send_media, upload};

    let cluster = Cluster::start_with_gateway_args(2, 2, 2, &store_args).await;
    let alice = Client::connect(cluster.gateway(0), "alice", "phone").await;
    let bob = Client::connect(cluster.gateway(1), "bob", "phone").await;
    let alice_elsewhere = Client::connect(cluster.gateway(1), "alice", "laptop").await;
    let conversation = alice.direct_with("bob").await;
    let (photo, gps) = jpeg_with_gps(200, 100);
    let media = upload(&alice, "holiday", MediaKind::Photo, &photo).await.unwrap();
    let seq = send_media(&alice, &conversation, &media.media_id, "from the beach").await.unwrap();
    let downloaded = download(&bob, &conversation, seq, false, (0, 0)).await.unwrap();
    let mut expected = photo.clone();
    expected[gps].fill(0);
    assert_eq!(downloaded, expected, "through the other gateway, without the location");
    assert!(objects().await.iter().any(|key| key.contains(&media.media_id)), "the medium is in the store");

    let unsend = UnsendMessageRequest { conversation_id: conversation.clone(), seq };
    alice_elsewhere.api.clone().unsend_message(unsend).await.unwrap();
    assert_eq!(download(&bob, &conversation, seq, false, (0, 0)).await.unwrap_err().code(), tonic::Code::NotFound);
    let left: Vec<String> = objects().await.into_iter().filter(|key| key.contains(&media.media_id)).collect();
    assert_eq!(left, Vec::<String>::new(), "nothing of the medium is left in the store");
}

#[tokio::test]
async fn media_cross_gateways_through_a_real_s3_compatible_server() {
    let s3 = crate::harness::S3Server::start().await;
    let args = vec![
        "--media-s3-bucket".to_string(),
        s3.bucket.clone(),
        "--media-s3-endpoint".into(),
        s3.endpoint.clone(),
        "--media-s3-access-key-id".into(),
        "test".into(),
        "--media-s3-secret-access-key".into(),
        "test".into(),
    ];
    media_cross_gateways(args, || s3.keys()).await;
}

#[tokio::test]
async fn media_cross_gateways_through_a_shared_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["--media-dir".to_string(), dir.path().display().to_string()];
    let root = dir.path().to_owned();
    media_cross_gateways(args, || {
        let root = root.clone();
        async move {
            let mut keys = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if entry.path().is_dir() {
                        stack.push(entry.path());
                    } else {
                        keys.push(entry.path().strip_prefix(&root).unwrap().display().to_string());
                    }
                }
            }
            keys
        }
    })
    .await;
}
