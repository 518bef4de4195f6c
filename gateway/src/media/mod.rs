//! Media: uploads, downloads, and the media messages reference.
//!
//! Bytes never pass through the broker: a gateway streams an upload into
//! the object store ([`store`]), decides its kind from the bytes and
//! enforces the kind's limit as they arrive ([`kinds`]), checks the SHA-256,
//! removes a photo's location and makes its thumbnail ([`photo`]), reads a
//! video's or voice note's duration from its container ([`container`]).
//! A message then carries the verified [`MediaContent`]: the gateway
//! replaces whatever a client put there with what it recorded at upload
//! (and only the uploader may send an upload). Downloads go by message
//! (conversation and seq): the broker says whether the caller may see that
//! message and which medium it holds, so anyone else gets the same answer
//! whether a medium exists or not. Each message referencing a medium
//! leaves a marker beside it; unsending the last one deletes the bytes.
//! Uploads no message references are deleted after a TTL ([`Media::sweep`]).

pub mod container;
pub mod kinds;
pub mod photo;
pub mod store;
mod transfer;

use std::time::Duration;

use imsg_proto::{
    internal::v1::{Caller, MessageMediaRequest, execute_request::Command, execute_response::Result as Outcome},
    v1::{MediaContent, send_message_request},
};
use tonic::Status;

pub use self::{
    kinds::MediaLimits,
    store::{MediaStore, MediaStoreConfig},
    transfer::Download,
};
use crate::backend::Backend;

/// The gateway's media service.
pub struct Media {
    pub store: MediaStore,
    pub limits: MediaLimits,
    /// How long an upload no message references is kept.
    pub unreferenced_ttl: Duration,
}

/// What a command needs done once the broker answered it.
pub enum AfterCommand {
    /// A message referencing this medium was sent: record the reference.
    Sent { media_id: String, conversation_id: String },
    /// A medium's message is being unsent: drop its reference.
    Unsent { media_id: String, conversation_id: String, seq: u64 },
    /// A medium is being forwarded: record a reference per copy.
    Forwarded { media_id: String },
}

fn store_error(error: object_store::Error) -> Status {
    tracing::error!(%error, "media store");
    Status::unavailable("the media store is unavailable; retry")
}

/// Media ids: `m_` and 32 hex digits.
pub fn check_media_id(id: &str) -> Result<(), Status> {
    let ok = id.strip_prefix("m_").is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok { Ok(()) } else { Err(Status::invalid_argument("content.media.media_id: malformed media id")) }
}

impl Media {
    pub fn new(store: MediaStore, limits: MediaLimits) -> Self {
        Self { store, limits, unreferenced_ttl: Duration::from_secs(24 * 3600) }
    }

    /// Prepares a command that involves media: a send gets the verified
    /// content of the caller's upload; an unsend or forward learns which
    /// medium its message holds. Says what to do after the broker answers.
    pub async fn before(
        &self,
        backend: &Backend,
        caller: &Caller,
        command: &mut Command,
    ) -> Result<Option<AfterCommand>, Status> {
        match command {
            Command::SendMessage(request) => {
                let Some(send_message_request::Content::Media(media)) = &mut request.content else { return Ok(None) };
                check_media_id(&media.media_id)?;
                let record = self.store.media_record(&media.media_id).await.map_err(store_error)?;
                // Someone else's upload gets the answer a missing one gets.
                let record = record
                    .filter(|r| r.owner == caller.user_id)
                    .ok_or_else(|| Status::not_found(format!("no upload {} of yours", media.media_id)))?;
                *media = record.content(&media.media_id, std::mem::take(&mut media.caption));
                Ok(Some(AfterCommand::Sent {
                    media_id: media.media_id.clone(),
                    conversation_id: request.conversation_id.clone(),
                }))
            }
            Command::UnsendMessage(request) => Ok(self
                .message_media(backend, caller, &request.conversation_id, request.seq)
                .await?
                .map(|media| AfterCommand::Unsent {
                    media_id: media.media_id,
                    conversation_id: request.conversation_id.clone(),
                    seq: request.seq,
                })),
            Command::ForwardMessage(request) => Ok(self
                .message_media(backend, caller, &request.conversation_id, request.seq)
                .await?
                .map(|media| AfterCommand::Forwarded { media_id: media.media_id })),
            _ => Ok(None),
        }
    }

    /// Records or releases references once the broker answered. A failure
    /// here is logged, not returned: the command itself succeeded (an
    /// unreleased medium stays referenced; see the closing notes).
    pub async fn after(&self, after: AfterCommand, outcome: &Outcome) {
        let result = match (after, outcome) {
            (AfterCommand::Sent { media_id, conversation_id }, Outcome::SendMessage(sent)) => {
                self.store.add_reference(&media_id, &conversation_id, sent.seq).await
            }
            (AfterCommand::Unsent { media_id, conversation_id, seq }, Outcome::UnsendMessage(_)) => {
                self.store.release_reference(&media_id, &conversation_id, seq).await.map(drop)
            }
            (AfterCommand::Forwarded { media_id }, Outcome::ForwardMessage(forwarded)) => {
                let mut result = Ok(());
                for copy in &forwarded.messages {
                    result = result.and(self.store.add_reference(&media_id, &copy.conversation_id, copy.seq).await);
                }
                result
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(%error, "recording a media reference failed");
        }
    }

    /// The medium of a message the caller may see; `None` when the message
    /// holds none. Refusals are the broker's (not a member, no such
    /// message).
    async fn message_media(
        &self,
        backend: &Backend,
        caller: &Caller,
        conversation_id: &str,
        seq: u64,
    ) -> Result<Option<MediaContent>, Status> {
        let request = MessageMediaRequest { conversation_id: conversation_id.to_owned(), seq };
        match backend.execute(caller.clone(), Command::MessageMedia(request)).await {
            Ok(Outcome::MessageMedia(response)) => Ok(response.media),
            Ok(_) => Err(Status::internal("broker answered with the wrong result kind")),
            Err(status) => Err(status),
        }
    }

    /// Deletes uploads no message referenced within the TTL, and parts of
    /// uploads started that long ago and never completed. Returns how many
    /// media and uploads went.
    pub async fn sweep(&self, now_ms: i64) -> Result<(usize, usize), object_store::Error> {
        let before = now_ms - self.unreferenced_ttl.as_millis() as i64;
        let media = self.store.unreferenced_before(before).await?;
        for id in &media {
            self.store.delete_media(id).await?;
        }
        let uploads = self.store.stale_uploads_before(before).await?;
        for (owner, upload) in &uploads {
            self.store.delete_upload(owner, upload, false).await?;
        }
        Ok((media.len(), uploads.len()))
    }
}
