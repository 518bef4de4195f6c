//! Runs without steady traffic: what idle devices cost, and how fast a
//! device that was offline catches up.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use imsg_common::token::Authenticator;
use imsg_proto::v1::{
    AcceptConversationRequest, CreateConversationRequest, DirectConversationSpec, Hello, OpenStreamRequest,
    SendMessageRequest, TextContent, create_conversation_request, event, open_stream_request,
    open_stream_response::Frame, send_message_request,
};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::{
    client::{self, DeviceContext, User},
    metrics::{Counters, LatencyRecorder},
    report::{Report, ResumeResult},
    scenario::{RunOptions, Scenario, start_devices, tag},
    sending::{SendLedger, retrying},
    spawn::Deployment,
};

/// Sends `--resume-backlog` messages to a user whose device is offline,
/// then opens that device's stream from cursor 0 and times the replay up to
/// `Ready`; every message must arrive once, in order.
pub async fn run_resume(
    targets: &[SocketAddr],
    options: &RunOptions,
    deployment: Option<&Deployment>,
) -> anyhow::Result<Report> {
    let auth = Authenticator::new(&options.secret).map_err(anyhow::Error::msg)?;
    let channels = client::connect(targets, options.connections.max(1)).await?;
    let tag = tag();
    let sender = User::new(format!("{tag}-sender"), &channels, 0, &auth)?;
    let reader = User::new(format!("{tag}-reader"), &channels, 0, &auth)?;
    let create = CreateConversationRequest {
        request_id: String::new(),
        kind: Some(create_conversation_request::Kind::Direct(DirectConversationSpec {
            peer_user_id: reader.id.clone(),
        })),
    };
    let created = sender.api(0).create_conversation(create).await?.into_inner();
    let conversation = created.conversation.map(|c| c.conversation_id).unwrap_or_default();
    reader.api(0).accept_conversation(AcceptConversationRequest { conversation_id: conversation.clone() }).await?;

    let backlog = options.resume_backlog as u64;
    let limit = Arc::new(Semaphore::new(64));
    let mut sends = Vec::with_capacity(backlog as usize);
    for n in 0..backlog {
        let permit = limit.clone().acquire_owned().await?;
        let request = SendMessageRequest {
            conversation_id: conversation.clone(),
            client_message_id: format!("r{n}"),
            reply_to_seq: 0,
            content: Some(send_message_request::Content::Text(TextContent {
                text: client::payload(0, options.message_bytes),
            })),
        };
        let sender = sender.clone();
        sends.push(tokio::spawn(async move {
            let _permit = permit;
            // One sender passes the per-user rate limit: wait as advised.
            retrying(&sender, request, |mut api, request| async move { api.send_message(request).await }).await
        }));
    }
    for send in sends {
        send.await??;
    }
    eprintln!("{backlog} messages waiting for an offline device; opening its stream");

    let cpu_before = deployment.map(Deployment::cpu_seconds);
    let started = Instant::now();
    let (up, up_rx) = mpsc::channel(4);
    up.send(OpenStreamRequest { frame: Some(open_stream_request::Frame::Hello(Hello { cursor: 0 })) }).await?;
    let mut frames = reader.api(0).open_stream(tokio_stream::wrappers::ReceiverStream::new(up_rx)).await?.into_inner();
    let mut seqs = Vec::with_capacity(backlog as usize);
    loop {
        match frames.message().await? {
            Some(response) => match response.frame {
                Some(Frame::Ready(_)) => break,
                Some(Frame::Event(imsg_proto::v1::Event { kind: Some(event::Kind::Message(message)), .. })) => {
                    seqs.push(message.seq);
                }
                _ => {}
            },
            None => anyhow::bail!("the stream ended before Ready"),
        }
    }
    let replay = started.elapsed();
    let server_cpu_ms = match (cpu_before, deployment) {
        (Some(before), Some(d)) => Some((d.cpu_seconds() - before) * 1000.0),
        _ => None,
    };
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    let in_order = seqs.windows(2).all(|pair| pair[0] < pair[1]);
    Ok(Report {
        scenario: Scenario::Resume,
        users: 2,
        conversations: 1,
        connections: channels.len() as u64,
        acked: backlog,
        delivered: seqs.len() as u64,
        expected_deliveries: backlog,
        lost: backlog.saturating_sub(unique.len() as u64),
        duplicates: (seqs.len() - unique.len()) as u64,
        reordered: u64::from(!in_order),
        server_peak_rss_bytes: deployment.map(Deployment::peak_rss_bytes),
        resume: Some(ResumeResult { backlog, replay_ms: replay.as_secs_f64() * 1000.0, server_cpu_ms }),
        ..Report::default()
    })
}

/// Holds `idle_streams` idle device streams and measures the servers'
/// memory per stream and the CPU they cost while nothing happens.
pub async fn run_idle(
    targets: &[SocketAddr],
    options: &RunOptions,
    deployment: Option<&Deployment>,
) -> anyhow::Result<Report> {
    let auth = Authenticator::new(&options.secret).map_err(anyhow::Error::msg)?;
    let connections = options.connections.max(options.idle_streams.div_ceil(1000));
    let channels = client::connect(targets, connections).await?;
    let tag = tag();
    let users: Vec<User> = (0..options.idle_streams)
        .map(|i| User::new(format!("{tag}-i{i}"), &channels, i % channels.len(), &auth))
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = deployment.map(Deployment::rss_bytes);
    let (stop_tx, stop_rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let context = DeviceContext {
        start: Instant::now(),
        counters: counters.clone(),
        deliver_latency: Arc::new(LatencyRecorder::default()),
        ledger: Arc::new(SendLedger::new(Instant::now(), counters, 0)),
        stop: stop_rx,
        reconnect_every: None,
    };
    let opened = Instant::now();
    let devices = start_devices(&users, &context).await?;
    eprintln!(
        "{} idle streams open after {:.1} s; holding {:?}",
        devices.len(),
        opened.elapsed().as_secs_f64(),
        options.duration
    );
    // Settle (the opening burst's work), then measure a quiet hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = deployment.map(Deployment::cpu_seconds);
    tokio::time::sleep(options.duration).await;
    let idle_cores = match (cpu_before, deployment) {
        (Some(before), Some(d)) => Some((d.cpu_seconds() - before) / options.duration.as_secs_f64()),
        _ => None,
    };
    let rss_after = deployment.map(Deployment::rss_bytes);
    let _ = stop_tx.send(true);
    for device in devices {
        let _ = device.task.await;
    }
    let per_stream = match (rss_before, rss_after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 / options.idle_streams.max(1) as f64),
        _ => None,
    };
    Ok(Report {
        scenario: Scenario::Idle,
        duration_s: options.duration.as_secs_f64(),
        connections: connections as u64,
        users: options.idle_streams as u64,
        server_peak_rss_bytes: deployment.map(Deployment::peak_rss_bytes),
        idle_streams: Some(options.idle_streams as u64),
        server_bytes_per_stream: per_stream,
        server_idle_cores: idle_cores,
        ..Report::default()
    })
}
