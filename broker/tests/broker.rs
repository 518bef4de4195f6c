//! Broker behaviour through its library API, without a gateway in between.

use std::time::Duration;

use imsg_broker::{Broker, BrokerConfig, Error, FsyncMode};
use imsg_proto::internal::v1::{Caller, execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{
    AcceptConversationRequest, CreateConversationRequest, DirectConversationSpec, EditMessageRequest, Event, MarkRead,
    Message, MessageUpdate, SendMessageRequest, TextContent, TypingSignal, create_conversation_request, event,
    message::Content, open_stream_response::Frame, send_message_request,
};
use tokio_stream::StreamExt;

fn caller(user: &str) -> Caller {
    Caller { user_id: user.into(), device_id: "phone".into(), ..Default::default() }
}

/// Opens a data dir this process just closed: sled's I/O pool may hold the
/// file lock for a moment after the last handle is dropped (a restart is a
/// new process and never meets this).
async fn reopen(config: BrokerConfig) -> Result<Broker, Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Broker::open(config.clone()).await {
            Err(Error::Storage(e)) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.partitions = 4;
    config.cache_capacity_bytes = 8 * 1024 * 1024;
    config
}

async fn direct(broker: &Broker, user: &str, peer: &str) -> String {
    let request = CreateConversationRequest {
        request_id: String::new(),
        kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec { peer_user_id: peer.into() })),
    };
    let conversation = match broker.execute(&caller(user), None, Command::CreateConversation(request)).await.unwrap() {
        Outcome::CreateConversation(response) => response.conversation.unwrap().conversation_id,
        other => panic!("{other:?}"),
    };
    // The peer knows the user: the request is accepted.
    let accept = AcceptConversationRequest { conversation_id: conversation.clone() };
    broker.execute(&caller(peer), None, Command::AcceptConversation(accept)).await.unwrap();
    conversation
}

async fn send(broker: &Broker, user: &str, conversation: &str, id: &str) -> u64 {
    let request = SendMessageRequest {
        conversation_id: conversation.into(),
        client_message_id: id.into(),
        reply_to_seq: 0,
        content: Some(send_message_request::Content::Text(TextContent { text: "hello".into() })),
    };
    match broker.execute(&caller(user), None, Command::SendMessage(request)).await.unwrap() {
        Outcome::SendMessage(response) => response.seq,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_with_a_reason_instead_of_growing_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.limits.session_queue = 8;
    let broker = Broker::open(config).await.unwrap();
    let conversation = direct(&broker, "alice", "bob").await;
    // Bob's device opens a session and then never reads.
    let mut session = broker.open_session(&caller("bob"), "", 0, None).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 0..40 {
        send(&broker, "alice", &conversation, &format!("m{n}")).await;
    }
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), session.next()).await {
        frames.push(frame.frame.unwrap());
    }
    let Some(Frame::Goodbye(goodbye)) = frames.last() else { panic!("expected a goodbye, got {frames:?}") };
    assert!(goodbye.reason.contains("slow consumer"), "{}", goodbye.reason);
    assert!(frames.len() <= 8 + 1, "no more than the queue was buffered: {}", frames.len());
    // Alice was not disturbed, and bob can reconnect and resume.
    assert_eq!(send(&broker, "alice", &conversation, "after").await, 41);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn typing_and_presence_are_never_written_to_storage() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let conversation = direct(&broker, "alice", "bob").await;
    send(&broker, "alice", &conversation, "m1").await;
    // Let receipt checkpoints and outbox confirmations settle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = broker.rows_written();
    for round in 0..10 {
        let session = broker.open_session(&caller("bob"), "", 0, None).unwrap();
        let typing = TypingSignal { conversation_id: conversation.clone(), active: round % 2 == 0 };
        broker.execute(&caller("alice"), None, Command::Typing(typing)).await.unwrap();
        drop(session);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(broker.rows_written(), before, "typing and presence changed storage");
    // A real change does write, so the counter can fail this test.
    let mark = MarkRead { conversation_id: conversation.clone(), seq: 1 };
    broker.execute(&caller("bob"), None, Command::MarkRead(mark)).await.unwrap();
    assert!(broker.rows_written() > before);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_partition_count_is_fixed_when_the_data_dir_is_created() {
    let dir = tempfile::tempdir().unwrap();
    Broker::open(config(dir.path())).await.unwrap().shutdown().await.unwrap();
    let mut other = config(dir.path());
    other.partitions = 8;
    match reopen(other).await {
        Err(Error::FailedPrecondition(message)) => assert!(message.contains("4 partitions"), "{message}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("opened a data dir with a different partition count"),
    }
}

#[tokio::test]
async fn messages_survive_a_clean_restart_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let conversation = direct(&broker, "alice", "bob").await;
    for n in 1..=3 {
        assert_eq!(send(&broker, "alice", &conversation, &format!("m{n}")).await, n);
    }
    broker.shutdown().await.unwrap();
    let broker = reopen(config(dir.path())).await.unwrap();
    assert_eq!(send(&broker, "alice", &conversation, "m2").await, 2, "dedup window rebuilt from the log");
    assert_eq!(send(&broker, "bob", &conversation, "m4").await, 4);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn relaxed_fsync_mode_acknowledges_without_waiting_for_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // A sync once an hour: acks that waited for one would time out below.
    config.fsync = FsyncMode::Interval(Duration::from_secs(3600));
    let broker = Broker::open(config).await.unwrap();
    let conversation = direct(&broker, "alice", "bob").await;
    let acked = tokio::time::timeout(Duration::from_secs(5), send(&broker, "alice", &conversation, "m1")).await;
    assert_eq!(acked.unwrap(), 1);
    broker.shutdown().await.unwrap();
}

/// The rows a 1:1 message costs, end to end (its conversation partition
/// and both members' partitions, confirmations included), with both
/// members online: one message at a time (the small batches of a quiet
/// node, the worst case) and many at once (group commit). The budget is
/// docs/benchmarks.md's; a change that adds a row per message fails here.
#[tokio::test]
async fn rows_a_one_to_one_message_costs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let conversation = direct(&broker, "alice", "bob").await;
    let _alice = broker.open_session(&caller("alice"), "", 0, None).unwrap();
    let _bob = broker.open_session(&caller("bob"), "", 0, None).unwrap();
    send(&broker, "alice", &conversation, "warm-up").await;
    let settled = || async {
        // Outbox confirmations and receipt checkpoints are lazy.
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.rows_written_by_kind()
    };
    let per_message = |before: &std::collections::BTreeMap<char, u64>,
                       after: &std::collections::BTreeMap<char, u64>,
                       messages: u64| {
        let rows: std::collections::BTreeMap<char, f64> = after
            .iter()
            .map(|(kind, n)| (*kind, (n - before.get(kind).copied().unwrap_or(0)) as f64 / messages as f64))
            .filter(|(_, n)| *n > 0.0)
            .collect();
        (rows.values().sum::<f64>(), rows)
    };

    let before = settled().await;
    for n in 0..50 {
        send(&broker, "alice", &conversation, &format!("one-{n}")).await;
    }
    let (one_at_a_time, one_kinds) = per_message(&before, &settled().await, 50);
    println!("one at a time: {one_at_a_time:.2} rows per message: {one_kinds:?}");

    let before = settled().await;
    let sends = (0..200).map(|n| {
        let (broker, conversation) = (broker.clone(), conversation.clone());
        tokio::spawn(async move { send(&broker, "alice", &conversation, &format!("many-{n}")).await })
    });
    for task in sends.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    let (batched, kinds) = per_message(&before, &settled().await, 200);
    println!("200 at once: {batched:.2} rows per message: {kinds:?}");

    // One at a time: the content key (`K`, in the key file, not sled) and
    // the message (`m`); the outbox row (`o`, written and removed) and the
    // update-log batches (`u`) are held in memory and never reach sled but
    // as one compacted row per member partition and tick
    // (`storage::held`, `partition::compaction`). Before those, a message
    // sent alone cost 6 rows.
    assert!(one_at_a_time <= 2.3, "one at a time: {one_at_a_time:.2} rows per message: {one_kinds:?}");
    assert!(batched <= 2.1, "batched: {batched:.2} rows per message: {kinds:?}");
    broker.shutdown().await.unwrap();
}

/// One durability round per message (`storage::durability`): a 1:1
/// message, its outbox record and both members' update-log entries are
/// logged and synced in the same round, the recipient's device sees it,
/// and the next message starts a round of its own. The members' user
/// partitions differ from the conversation's and from each other's, so
/// every entry crosses partitions (the lanes) before that round starts.
#[tokio::test]
async fn rounds_a_one_to_one_message_is_logged_with_its_fan_out_in_one_round() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.partitions = 64;
    // Only rounds started by the messages: no timed round, and a linger
    // long enough for a loaded machine (it ends when the entries arrive).
    config.checkpoint_interval = Duration::from_secs(600);
    config.fanout_linger = Duration::from_secs(5);
    let broker = Broker::open(config).await.unwrap();
    // A conversation's id is keyed by the node's secret, made when its data
    // directory is: which partition it lands on changes from run to run
    // (it once shared alice's, 1 run in ~30). Pairs are tried until all
    // three partitions differ.
    let (alice, bob, conversation) = {
        let mut pair = 0;
        loop {
            let (alice, bob) = (format!("alice{pair}"), format!("bob{pair}"));
            let conversation = direct(&broker, &alice, &bob).await;
            let [alices, bobs, conversations] =
                [&alice, &bob, &conversation].map(|key| imsg_broker::ids::partition_of(key, 64));
            if alices != bobs && conversations != alices && conversations != bobs {
                break (alice, bob, conversation);
            }
            pair += 1;
        }
    };
    let (alice, bob) = (alice.as_str(), bob.as_str());
    let mut bob_device = broker.open_session(&caller(bob), "", 0, None).unwrap();
    send(&broker, alice, &conversation, "warm-up").await;
    next_message(&mut bob_device).await;

    for n in 1..=20u64 {
        let before = broker.durability_rounds();
        let seq = send(&broker, alice, &conversation, &format!("m{n}")).await;
        assert_eq!(next_message(&mut bob_device).await, seq, "bob's device gets message {seq}");
        let rounds = broker.durability_rounds() - before;
        assert_eq!(rounds, 1, "message {n}: {rounds} rounds between its send and its delivery");
    }
    broker.shutdown().await.unwrap();
}

/// Replay reads a page's messages as one range, and a message that several
/// entries show (sent, then edited) reaches each of them as it is now.
#[tokio::test]
async fn replay_shows_each_message_as_it_is_now_to_every_entry_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let conversation = direct(&broker, "alice", "bob").await;
    for n in 1..=5 {
        send(&broker, "alice", &conversation, &format!("m{n}")).await;
    }
    let edit = EditMessageRequest { conversation_id: conversation.clone(), seq: 2, text: "edited".into() };
    broker.execute(&caller("alice"), None, Command::EditMessage(edit)).await.unwrap();

    let mut bob = broker.open_session(&caller("bob"), "", 0, None).unwrap();
    let (mut messages, mut updates) = (Vec::new(), Vec::new());
    let replay = async {
        loop {
            match bob.next().await.expect("session open").frame {
                Some(Frame::Ready(_)) => break,
                Some(Frame::Event(Event { kind: Some(event::Kind::Message(message)), .. })) => messages.push(message),
                Some(Frame::Event(Event {
                    kind: Some(event::Kind::MessageUpdate(MessageUpdate { message: Some(message) })),
                    ..
                })) => updates.push(message),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), replay).await.expect("replay within 10 s");
    let text = |message: &Message| match &message.content {
        Some(Content::Text(text)) => text.text.clone(),
        other => panic!("{other:?}"),
    };
    let shown: Vec<(u64, String)> = messages.iter().map(|m| (m.seq, text(m))).collect();
    let expected: Vec<(u64, String)> =
        (1..=5).map(|seq| (seq, if seq == 2 { "edited" } else { "hello" }.to_owned())).collect();
    assert_eq!(shown, expected, "every message once, in order, as it is now");
    assert_eq!(updates.iter().map(|m| (m.seq, text(m))).collect::<Vec<_>>(), [(2, "edited".to_owned())]);
    broker.shutdown().await.unwrap();
}

/// The seq of the next message event a session receives.
async fn next_message(session: &mut imsg_broker::SessionStream) -> u64 {
    let next = async {
        loop {
            let frame = session.next().await.expect("session open").frame;
            if let Some(Frame::Event(Event { kind: Some(event::Kind::Message(message)), .. })) = frame {
                return message.seq;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), next).await.expect("a message within 10 s")
}
