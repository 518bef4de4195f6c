//! Media end to end through real gRPC: uploads (resumable, checked as they
//! arrive), photos without their location, downloads only for those who
//! can see the message, and media gone from the store once unsent.

use std::time::Duration;

use imsg_gateway::media::photo::fixtures::jpeg_with_gps;
use imsg_proto::v1::{
    DownloadMediaRequest, ForwardMessageRequest, GetUploadRequest, MediaContent, MediaKind, SendMessageRequest,
    UnsendMessageRequest, UploadMediaRequest, UploadStart, message::Content, send_message_request,
    upload_media_request::Frame,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::harness::{Client, TestServer, files_containing};

const CHUNK: usize = 64 * 1024;

fn start(id: &str, kind: MediaKind, bytes: &[u8], offset: u64) -> UploadMediaRequest {
    UploadMediaRequest {
        frame: Some(Frame::Start(UploadStart {
            upload_id: id.into(),
            kind: kind as i32,
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            offset,
            duration_ms: 0,
            file_name: String::new(),
        })),
    }
}

fn chunk(bytes: &[u8]) -> UploadMediaRequest {
    UploadMediaRequest { frame: Some(Frame::Chunk(bytes.to_vec())) }
}

/// Uploads `bytes` from `offset` in one stream.
pub async fn upload_from(
    client: &Client,
    id: &str,
    kind: MediaKind,
    bytes: &[u8],
    offset: usize,
) -> Result<MediaContent, Status> {
    let mut frames = vec![start(id, kind, bytes, offset as u64)];
    frames.extend(bytes[offset..].chunks(CHUNK).map(chunk));
    let response = client.api.clone().upload_media(tokio_stream::iter(frames)).await?;
    Ok(response.into_inner().media.expect("a completed upload answers its medium"))
}

pub async fn upload(client: &Client, id: &str, kind: MediaKind, bytes: &[u8]) -> Result<MediaContent, Status> {
    upload_from(client, id, kind, bytes, 0).await
}

pub async fn send_media(client: &Client, conversation: &str, media_id: &str, caption: &str) -> Result<u64, Status> {
    let request = SendMessageRequest {
        conversation_id: conversation.into(),
        client_message_id: format!("c-{}", rand::random::<u64>()),
        reply_to_seq: 0,
        content: Some(send_message_request::Content::Media(MediaContent {
            media_id: media_id.into(),
            caption: caption.into(),
            ..Default::default()
        })),
    };
    Ok(client.api.clone().send_message(request).await?.into_inner().seq)
}

pub async fn download(
    client: &Client,
    conversation: &str,
    seq: u64,
    thumbnail: bool,
    range: (u64, u64),
) -> Result<Vec<u8>, Status> {
    let request =
        DownloadMediaRequest { conversation_id: conversation.into(), seq, thumbnail, offset: range.0, length: range.1 };
    let mut frames = client.api.clone().download_media(request).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(frame) = frames.message().await? {
        assert_eq!(frame.offset, range.0 + bytes.len() as u64, "frames arrive in order");
        bytes.extend_from_slice(&frame.chunk);
    }
    Ok(bytes)
}

fn gps_fields(bytes: &[u8]) -> usize {
    let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)).unwrap();
    exif.fields().filter(|f| f.tag.context() == exif::Context::Gps).count()
}

#[tokio::test]
async fn a_photo_arrives_byte_for_byte_without_its_location_with_dimensions_and_a_thumbnail() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let (photo, gps) = jpeg_with_gps(640, 480);
    assert_eq!(gps_fields(&photo), 2, "the photo carries a location");
    let media = upload(&alice, "cat-photo", MediaKind::Photo, &photo).await.unwrap();
    assert_eq!((media.kind, media.mime_type.as_str()), (MediaKind::Photo as i32, "image/jpeg"));
    assert_eq!((media.width, media.height, media.size_bytes), (640, 480, photo.len() as u64));
    assert!(media.has_thumbnail);

    let mut bob_phone = bob.open(0).await;
    bob_phone.ready().await;
    let seq = send_media(&alice, &conversation, &media.media_id, "my cat").await.unwrap();
    let received = bob_phone.message().await;
    let Some(Content::Media(sent)) = received.content else { panic!("{received:?}") };
    assert_eq!((sent.width, sent.height, sent.caption.as_str()), (640, 480, "my cat"));
    assert_eq!(sent.sha256, media.sha256, "what the server verified, not what a client claimed");

    let downloaded = download(&bob, &conversation, seq, false, (0, 0)).await.unwrap();
    let mut expected = photo.clone();
    expected[gps.clone()].fill(0);
    assert_eq!(downloaded, expected, "identical but for the erased location");
    assert_eq!(gps_fields(&downloaded), 0);
    assert_eq!(hex::encode(Sha256::digest(&downloaded)), sent.sha256);
    let middle = download(&bob, &conversation, seq, false, (100, 1000)).await.unwrap();
    assert_eq!(middle, expected[100..1100], "a byte range");
    let thumbnail = download(&bob, &conversation, seq, true, (0, 0)).await.unwrap();
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert_eq!((thumbnail.width(), thumbnail.height()), (320, 240));
}

#[tokio::test]
async fn an_executable_named_as_a_photo_is_refused_and_nothing_is_kept() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let executable = std::fs::read(crate::harness::binary("imsg-gateway")).unwrap();
    let refused = upload(&alice, "photo-jpg", MediaKind::Photo, &executable[..300_000]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("executable"), "{refused:?}");
    let as_file = upload(&alice, "tool-bin", MediaKind::File, &executable[..300_000]).await.unwrap_err();
    assert!(as_file.message().contains("executable"), "{as_file:?}");
    assert_eq!(files_containing(&server.data_dir.path().join("media"), &executable[1000..1064]), Vec::<String>::new());
}

#[tokio::test]
async fn an_oversize_upload_is_refused_when_it_passes_the_limit_and_nothing_is_kept() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    // A declared size over the sticker limit is refused before any byte.
    // Far more than the flow-control windows hold, so the client is still
    // sending when the refusal comes.
    let mut sticker = b"\x89PNG\r\n\x1a\n".to_vec();
    sticker.extend((0..16 * 1024 * 1024).map(|i| (i * 7 % 251) as u8));
    let refused = upload(&alice, "big-sticker", MediaKind::Sticker, &sticker).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Without a declared size, it is refused mid-stream, at the chunk that
    // passes 512 KiB, while the client is still sending.
    let (frames, receiver) = mpsc::channel(4);
    let api = alice.api.clone();
    let call = tokio::spawn(async move {
        let mut api = api;
        api.upload_media(tokio_stream::wrappers::ReceiverStream::new(receiver)).await
    });
    let mut unknown_size = start("stream-sticker", MediaKind::Sticker, &sticker, 0);
    if let Some(Frame::Start(start)) = &mut unknown_size.frame {
        start.size_bytes = 0;
    }
    frames.send(unknown_size).await.unwrap();
    let mut sent = 0;
    for piece in sticker.chunks(CHUNK) {
        if frames.send(chunk(piece)).await.is_err() {
            break; // the server already answered
        }
        sent += piece.len();
    }
    let refused = call.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("at most 524288 bytes"), "{refused:?}");
    assert!(sent < sticker.len(), "refused before the end of the stream ({sent} of {} sent)", sticker.len());
    let status = alice.api.clone().get_upload(GetUploadRequest { upload_id: "stream-sticker".into() }).await;
    assert_eq!(status.unwrap().into_inner().received_bytes, 0, "nothing kept");
    assert_eq!(files_containing(&server.data_dir.path().join("media"), &sticker[600..700]), Vec::<String>::new());
}

#[tokio::test]
async fn a_cut_upload_resumes_where_the_server_has_it() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let mut file = b"%PDF-1.7\n".to_vec();
    file.extend((0..3 * 1024 * 1024).map(|_| rand::random::<u8>()));
    // Send 1.5 MiB, then cut the connection mid-stream.
    let (frames, receiver) = mpsc::channel(64);
    let api = alice.api.clone();
    let call = tokio::spawn(async move {
        let mut api = api;
        api.upload_media(tokio_stream::wrappers::ReceiverStream::new(receiver)).await
    });
    frames.send(start("report-pdf", MediaKind::File, &file, 0)).await.unwrap();
    for piece in file[..3 * 512 * 1024].chunks(CHUNK) {
        frames.send(chunk(piece)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let have = loop {
        let status = alice.api.clone().get_upload(GetUploadRequest { upload_id: "report-pdf".into() }).await.unwrap();
        let have = status.into_inner().received_bytes;
        if have >= 1024 * 1024 || tokio::time::Instant::now() > deadline {
            break have;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(have >= 1024 * 1024, "the server keeps what it received in parts ({have})");
    call.abort(); // the connection's stream is reset
    drop(frames);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let have =
        alice.api.clone().get_upload(GetUploadRequest { upload_id: "report-pdf".into() }).await.unwrap().into_inner();
    assert!(have.media.is_none());
    let offset = have.received_bytes as usize;
    assert!((1024 * 1024..=3 * 512 * 1024).contains(&offset), "{offset}");
    // Resuming elsewhere than where the server is is refused, precisely.
    let wrong = upload_from(&alice, "report-pdf", MediaKind::File, &file, offset + 1).await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(wrong.message().contains(&format!("resume at offset {offset}")), "{wrong:?}");
    let media = upload_from(&alice, "report-pdf", MediaKind::File, &file, offset).await.unwrap();
    assert_eq!((media.kind, media.size_bytes), (MediaKind::File as i32, file.len() as u64));
    let seq = send_media(&alice, &conversation, &media.media_id, "").await.unwrap();
    assert_eq!(download(&bob, &conversation, seq, false, (0, 0)).await.unwrap(), file);
}

#[tokio::test]
async fn only_members_download_and_nobody_else_learns_whether_a_medium_exists() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let mallory = server.client("mallory", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let (photo, _) = jpeg_with_gps(32, 32);
    let media = upload(&alice, "private", MediaKind::Photo, &photo).await.unwrap();
    let with_media = send_media(&alice, &conversation, &media.media_id, "").await.unwrap();
    let text_only = alice.send(&conversation, "no media here").await;
    let existing = download(&mallory, &conversation, with_media, false, (0, 0)).await.unwrap_err();
    let missing = download(&mallory, &conversation, 999, false, (0, 0)).await.unwrap_err();
    assert_eq!(existing.code(), Code::NotFound);
    assert_eq!((existing.code(), existing.message()), (missing.code(), missing.message()));
    // A member asking for a message without a medium, or one that does not exist.
    assert_eq!(download(&alice, &conversation, text_only, false, (0, 0)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(download(&alice, &conversation, 999, false, (0, 0)).await.unwrap_err().code(), Code::NotFound);
    // Nobody sends someone else's upload: the same answer as a missing one.
    let mallory_dm = mallory.direct_with("bob").await;
    let stolen = send_media(&mallory, &mallory_dm, &media.media_id, "").await.unwrap_err();
    let unknown = send_media(&mallory, &mallory_dm, "m_0123456789abcdef0123456789abcdef", "").await.unwrap_err();
    assert_eq!(stolen.code(), Code::NotFound);
    assert_eq!(stolen.code(), unknown.code());
}

#[tokio::test]
async fn an_unsent_medium_is_deleted_from_the_store_once_no_forwarded_copy_references_it() {
    let server = TestServer::start().await;
    let alice = server.client("alice", "phone").await;
    let bob = server.client("bob", "phone").await;
    let with_bob = alice.direct_with("bob").await;
    let with_carol = alice.direct_with("carol").await;
    let (photo, gps) = jpeg_with_gps(64, 64);
    let media = upload(&alice, "shared-photo", MediaKind::Photo, &photo).await.unwrap();
    let seq = send_media(&alice, &with_bob, &media.media_id, "look").await.unwrap();
    let forward = ForwardMessageRequest {
        conversation_id: with_bob.clone(),
        seq,
        to_conversation_ids: vec![with_carol.clone()],
        client_message_id: "fwd".into(),
    };
    let copy = alice.api.clone().forward_message(forward).await.unwrap().into_inner().messages[0].seq;
    let carol_history = alice.history(&with_carol).await;
    assert!(
        matches!(&carol_history[0].content, Some(Content::Media(m)) if m.media_id == media.media_id),
        "referenced, not copied"
    );
    // The photo's stored bytes (the end of its compressed picture).
    assert!(gps.end < photo.len() - 66);
    let needle = photo[photo.len() - 66..photo.len() - 2].to_vec();
    let media_dir = server.data_dir.path().join("media");
    assert_eq!(
        files_containing(&media_dir, &needle).len(),
        1,
        "stored once: {:?}",
        files_containing(&media_dir, &needle)
    );

    alice.api.clone().unsend_message(UnsendMessageRequest { conversation_id: with_bob.clone(), seq }).await.unwrap();
    assert_eq!(download(&bob, &with_bob, seq, false, (0, 0)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        download(&alice, &with_carol, copy, false, (0, 0)).await.unwrap().len(),
        photo.len(),
        "the copy still shows it"
    );
    alice
        .api
        .clone()
        .unsend_message(UnsendMessageRequest { conversation_id: with_carol.clone(), seq: copy })
        .await
        .unwrap();
    assert_eq!(files_containing(&media_dir, &needle), Vec::<String>::new(), "gone from the store");
}

#[tokio::test]
async fn an_upload_no_message_references_is_deleted_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_gateway(dir, |config| config.media_unreferenced_ttl = Duration::from_millis(400)).await;
    let alice = server.client("alice", "phone").await;
    let conversation = alice.direct_with("bob").await;
    let (kept_photo, _) = jpeg_with_gps(16, 16);
    let kept = upload(&alice, "kept", MediaKind::Photo, &kept_photo).await.unwrap();
    send_media(&alice, &conversation, &kept.media_id, "").await.unwrap();
    let mut orphan = b"%PDF-1.4\n".to_vec();
    orphan.extend((0..10_000).map(|_| rand::random::<u8>()));
    upload(&alice, "orphan", MediaKind::File, &orphan).await.unwrap();
    let media_dir = server.data_dir.path().join("media");
    assert_eq!(files_containing(&media_dir, &orphan[100..164]).len(), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(files_containing(&media_dir, &orphan[100..164]), Vec::<String>::new(), "the orphan went");
    assert_eq!(
        files_containing(&media_dir.join("uploads"), b"media_id"),
        Vec::<String>::new(),
        "and the uploads' records"
    );
    assert_eq!(files_containing(&media_dir, &kept_photo[kept_photo.len() - 64..]).len(), 1, "the sent one stays");
}
