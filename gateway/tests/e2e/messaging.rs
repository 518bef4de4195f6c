//! Conversations, messages and delivery to several devices.

use crate::harness::TestServer;

#[tokio::test]
async fn direct_messages_reach_every_device_of_both_users() {
    let server = TestServer::start().await;
    let alice_phone = server.client("alice", "phone").await;
    let alice_laptop = server.client("alice", "laptop").await;
    let bob_phone = server.client("bob", "phone").await;
    let bob_tablet = server.client("bob", "tablet").await;
    let conversation = alice_phone.direct_with("bob").await;
    let mut devices = Vec::new();
    for client in [&alice_phone, &alice_laptop, &bob_phone, &bob_tablet] {
        let mut device = client.open(0).await;
        device.ready().await;
        devices.push(device);
    }
    let seq = alice_phone.send(&conversation, "hi bob").await;
    assert_eq!(seq, 1);
    for device in &mut devices {
        let message = device.message().await;
        assert_eq!((message.seq, message.sender_id.as_str()), (1, "alice"));
        assert!(matches!(message.content, Some(imsg_proto::v1::message::Content::Text(ref t)) if t.text == "hi bob"));
    }
    let reply = bob_tablet.send(&conversation, "hi alice").await;
    assert_eq!(reply, 2);
    for device in &mut devices {
        assert_eq!(device.message().await.seq, 2);
    }
}
