//! Moving bytes: the upload stream (resumable, checked as it arrives,
//! finished by verification and processing) and byte-range downloads.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use imsg_proto::{
    internal::v1::Caller,
    v1::{
        DownloadMediaRequest, DownloadMediaResponse, GetUploadRequest, GetUploadResponse, MediaKind,
        UploadMediaRequest, UploadMediaResponse, UploadStart, upload_media_request::Frame,
    },
};
use sha2::{Digest, Sha256};
use tonic::{Status, Streaming};

use super::{
    Media, container,
    kinds::{SNIFF_BYTES, label, sniff},
    photo,
    store::{MediaRecord, StartRecord},
    store_error,
};
use crate::backend::Backend;

/// Received bytes are written to the store in parts of about this size, so
/// a cut upload resumes from the last part.
pub const PART_BYTES: usize = 1024 * 1024;
/// The largest chunk one frame may carry (a frame stays under the API's
/// 256 KiB message limit).
pub const MAX_CHUNK_BYTES: usize = 240 * 1024;
/// Bytes per download frame.
pub const DOWNLOAD_CHUNK_BYTES: u64 = 256 * 1024;

pub type Download = Pin<Box<dyn Stream<Item = Result<DownloadMediaResponse, Status>> + Send>>;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn check_upload_id(id: &str) -> Result<(), Status> {
    imsg_common::ids::check_id(id).map_err(|reason| Status::invalid_argument(format!("upload_id: {reason}")))
}

fn check_start(start: &UploadStart) -> Result<MediaKind, Status> {
    check_upload_id(&start.upload_id)?;
    let kind = MediaKind::try_from(start.kind).unwrap_or(MediaKind::Unspecified);
    if kind == MediaKind::Unspecified {
        return Err(Status::invalid_argument("start.kind: must be set"));
    }
    if start.sha256.len() != 64 || !start.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument("start.sha256: 64 hex digits"));
    }
    if start.file_name.len() > 255 || start.file_name.chars().any(|c| c.is_control() || c == '/') {
        return Err(Status::invalid_argument("start.file_name: at most 255 bytes, no '/' or control characters"));
    }
    Ok(kind)
}

impl Media {
    /// Runs one upload stream (see `UploadMedia` in the proto).
    pub async fn upload(
        &self,
        caller: &Caller,
        mut frames: Streaming<UploadMediaRequest>,
    ) -> Result<UploadMediaResponse, Status> {
        let start = match frames.message().await? {
            Some(UploadMediaRequest { frame: Some(Frame::Start(start)) }) => start,
            _ => return Err(Status::invalid_argument("start: the first frame must be `start`")),
        };
        let declared = check_start(&start)?;
        let limit = self.limits.bytes(declared);
        if start.size_bytes > limit {
            return Err(over_limit(declared, limit));
        }
        if let Some(most) = self.limits.duration(declared)
            && u64::from(start.duration_ms) > most.as_millis() as u64
        {
            return Err(Status::resource_exhausted(format!(
                "a {} may last at most {} s",
                label(declared),
                most.as_secs()
            )));
        }
        let (owner, id) = (caller.user_id.as_str(), start.upload_id.as_str());
        if let Some(media_id) = self.store.upload_done(owner, id).await.map_err(store_error)? {
            return Ok(UploadMediaResponse { media: Some(self.completed(&media_id).await?) });
        }
        // The start is recorded with the first part: an upload that arrives
        // whole in one stream never touches the store until it is done.
        let record = StartRecord::of(&start, now_ms());
        let mut parts_written = match self.store.upload_start(owner, id).await.map_err(store_error)? {
            Some(existing) if !existing.same_upload(&record) => {
                return Err(Status::failed_precondition(format!(
                    "upload {id} was started with another kind, size, hash or name"
                )));
            }
            Some(_) => true,
            None => false,
        };
        let parts = self.store.parts(owner, id).await.map_err(store_error)?;
        let committed: u64 = parts.iter().map(|(_, size)| size).sum();
        if start.offset != committed {
            return Err(Status::failed_precondition(format!(
                "the server has {committed} bytes of upload {id}; resume at offset {committed}"
            )));
        }
        let mut received = committed;
        let mut buffer: Vec<u8> = Vec::new();
        let mut head_checked = committed > 0;
        loop {
            let frame = match frames.message().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(status) => {
                    // Cut: keep what arrived whole, for a resume.
                    self.flush(owner, &record, id, received, &mut buffer, &mut parts_written).await?;
                    return Err(status);
                }
            };
            let chunk = match frame.frame {
                Some(Frame::Chunk(chunk)) => chunk,
                Some(Frame::Start(_)) => return Err(Status::invalid_argument("start: only the first frame")),
                None => continue,
            };
            if chunk.len() > MAX_CHUNK_BYTES {
                return Err(Status::invalid_argument(format!("chunk: at most {MAX_CHUNK_BYTES} bytes per frame")));
            }
            received += chunk.len() as u64;
            if received > limit {
                self.forget(owner, id).await;
                return Err(over_limit(declared, limit));
            }
            if start.size_bytes > 0 && received > start.size_bytes {
                self.forget(owner, id).await;
                return Err(Status::invalid_argument(format!(
                    "chunk: more bytes than start.size_bytes ({})",
                    start.size_bytes
                )));
            }
            buffer.extend_from_slice(&chunk);
            if !head_checked && buffer.len() >= SNIFF_BYTES {
                if let Err(reason) = sniff(declared, &buffer) {
                    self.forget(owner, id).await;
                    return Err(Status::invalid_argument(format!("chunk: {reason}")));
                }
                head_checked = true;
            }
            if buffer.len() >= PART_BYTES {
                self.flush(owner, &record, id, received, &mut buffer, &mut parts_written).await?;
            }
        }
        let complete = received == start.size_bytes || (start.size_bytes == 0 && received > 0);
        if !complete || parts_written {
            self.flush(owner, &record, id, received, &mut buffer, &mut parts_written).await?;
        }
        if received < start.size_bytes {
            return Err(Status::failed_precondition(format!(
                "{received} of {} bytes arrived; resume at offset {received}",
                start.size_bytes
            )));
        }
        if received == 0 {
            return Err(Status::invalid_argument("chunk: an upload needs at least one byte"));
        }
        let bytes = match parts_written {
            true => {
                let parts = self.store.parts(owner, id).await.map_err(store_error)?;
                self.store.read_parts(owner, id, &parts).await.map_err(store_error)?
            }
            false => buffer,
        };
        let media = self.finish(owner, &start, declared, bytes).await?;
        if parts_written {
            self.store.delete_upload(owner, id, true).await.map_err(store_error)?;
        }
        Ok(UploadMediaResponse { media: Some(media) })
    }

    /// Writes the buffered bytes as the part that ends at `received` (and
    /// the upload's start before its first part).
    async fn flush(
        &self,
        owner: &str,
        record: &StartRecord,
        id: &str,
        received: u64,
        buffer: &mut Vec<u8>,
        parts_written: &mut bool,
    ) -> Result<(), Status> {
        if buffer.is_empty() {
            return Ok(());
        }
        if !*parts_written {
            self.store.put_upload_start(owner, id, record).await.map_err(store_error)?;
            *parts_written = true;
        }
        let offset = received - buffer.len() as u64;
        let bytes = Bytes::from(std::mem::take(buffer));
        self.store.put_part(owner, id, offset, bytes).await.map_err(store_error)
    }

    /// Deletes everything of a refused upload: nothing of it is kept.
    async fn forget(&self, owner: &str, id: &str) {
        if let Err(error) = self.store.delete_upload(owner, id, false).await {
            tracing::error!(%error, "deleting a refused upload");
        }
    }

    /// Verifies and processes a complete upload (`bytes`), stores the
    /// medium.
    async fn finish(
        &self,
        owner: &str,
        start: &UploadStart,
        declared: MediaKind,
        bytes: Vec<u8>,
    ) -> Result<imsg_proto::v1::MediaContent, Status> {
        let id = start.upload_id.as_str();
        // Hashing, decoding and thumbnailing are CPU work: off the runtime's
        // threads, so other calls on this gateway do not wait behind them.
        let (start_copy, limits) = (start.clone(), self.limits.clone());
        let processed = tokio::task::spawn_blocking(move || process(bytes, &start_copy, declared, &limits))
            .await
            .map_err(|e| Status::internal(format!("processing the upload failed: {e}")))?;
        let processed = match processed {
            Ok(processed) => processed,
            Err(refusal) => {
                self.forget(owner, id).await;
                return Err(refusal);
            }
        };
        let record = MediaRecord {
            owner: owner.to_owned(),
            created_ms: now_ms(),
            kind: processed.kind as i32,
            mime_type: processed.mime.to_owned(),
            size_bytes: processed.bytes.len() as u64,
            width: processed.width,
            height: processed.height,
            duration_ms: processed.duration_ms,
            sha256: processed.sha256,
            has_thumbnail: processed.thumbnail.is_some(),
            file_name: start.file_name.clone(),
        };
        let media_id = format!("m_{:032x}", rand::random::<u128>());
        self.store
            .put_media(owner, id, &media_id, processed.bytes, processed.thumbnail, &record)
            .await
            .map_err(store_error)?;
        Ok(record.content(&media_id, String::new()))
    }

    async fn completed(&self, media_id: &str) -> Result<imsg_proto::v1::MediaContent, Status> {
        let record = self.store.media_record(media_id).await.map_err(store_error)?;
        let record = record.ok_or_else(|| Status::not_found("this upload's medium was deleted"))?;
        Ok(record.content(media_id, String::new()))
    }

    /// How much of an upload the server has, or its medium once complete.
    pub async fn get_upload(&self, caller: &Caller, request: GetUploadRequest) -> Result<GetUploadResponse, Status> {
        check_upload_id(&request.upload_id)?;
        let (owner, id) = (caller.user_id.as_str(), request.upload_id.as_str());
        if let Some(media_id) = self.store.upload_done(owner, id).await.map_err(store_error)? {
            let media = self.completed(&media_id).await?;
            return Ok(GetUploadResponse { received_bytes: media.size_bytes, media: Some(media) });
        }
        let parts = self.store.parts(owner, id).await.map_err(store_error)?;
        Ok(GetUploadResponse { received_bytes: parts.iter().map(|(_, size)| size).sum(), media: None })
    }

    /// Streams the medium (or thumbnail) of a message the caller can see.
    pub async fn download(
        &self,
        backend: &Backend,
        caller: &Caller,
        request: DownloadMediaRequest,
    ) -> Result<Download, Status> {
        imsg_broker::validate::conversation_id("conversation_id", &request.conversation_id)?;
        if request.seq == 0 {
            return Err(Status::invalid_argument("seq: must be at least 1"));
        }
        let not_found = || Status::not_found(format!("no medium in message {}", request.seq));
        let media =
            self.message_media(backend, caller, &request.conversation_id, request.seq).await?.ok_or_else(not_found)?;
        let total = self
            .store
            .media_size(&media.media_id, request.thumbnail)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        if request.offset > total {
            return Err(Status::out_of_range(format!("offset: the medium has {total} bytes")));
        }
        let end = match request.length {
            0 => total,
            length => request.offset.saturating_add(length).min(total),
        };
        let (store, media_id, thumbnail) = (self.store.clone(), media.media_id, request.thumbnail);
        let frames = futures::stream::unfold(request.offset, move |at| {
            let (store, media_id) = (store.clone(), media_id.clone());
            async move {
                if at >= end {
                    return None;
                }
                let until = (at + DOWNLOAD_CHUNK_BYTES).min(end);
                let frame = store
                    .media_range(&media_id, thumbnail, at..until)
                    .await
                    .map(|chunk| DownloadMediaResponse { offset: at, chunk: chunk.to_vec(), total_bytes: total })
                    .map_err(store_error);
                Some((frame, until))
            }
        });
        Ok(Box::pin(frames))
    }
}

/// A complete upload, verified and ready to store.
struct Processed {
    bytes: Vec<u8>,
    kind: MediaKind,
    mime: &'static str,
    width: u32,
    height: u32,
    thumbnail: Option<Vec<u8>>,
    duration_ms: u32,
    /// Of the bytes as stored (a photo without its location).
    sha256: String,
}

/// Checks the hash and the kind of a complete upload; erases a photo's
/// location, reads its size and makes its thumbnail; reads a video's or
/// voice note's duration and bounds it.
fn process(
    mut bytes: Vec<u8>,
    start: &UploadStart,
    declared: MediaKind,
    limits: &super::MediaLimits,
) -> Result<Processed, Status> {
    if hex::encode(Sha256::digest(&bytes)) != start.sha256.to_ascii_lowercase() {
        return Err(Status::invalid_argument("start.sha256: does not match the bytes received"));
    }
    let sniffed = sniff(declared, &bytes[..bytes.len().min(SNIFF_BYTES)])
        .map_err(|reason| Status::invalid_argument(format!("chunk: {reason}")))?;
    let (mut width, mut height, mut thumbnail, mut duration_ms) = (0, 0, None, start.duration_ms);
    match sniffed.kind {
        MediaKind::Photo | MediaKind::Sticker | MediaKind::Gif => {
            photo::erase_location(sniffed.mime, &mut bytes);
            if let Some((w, h, thumb)) = photo::inspect(&bytes) {
                (width, height, thumbnail) = (w, h, Some(thumb));
            }
        }
        MediaKind::Video | MediaKind::Voice => {
            if let Some(ms) = container::mp4_duration_ms(&bytes) {
                duration_ms = u32::try_from(ms).unwrap_or(u32::MAX);
            }
            if let Some(most) = limits.duration(sniffed.kind)
                && u64::from(duration_ms) > most.as_millis() as u64
            {
                return Err(Status::resource_exhausted(format!(
                    "a {} may last at most {} s",
                    label(sniffed.kind),
                    most.as_secs()
                )));
            }
        }
        MediaKind::File | MediaKind::Unspecified => {}
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Processed { bytes, kind: sniffed.kind, mime: sniffed.mime, width, height, thumbnail, duration_ms, sha256 })
}

fn over_limit(kind: MediaKind, limit: u64) -> Status {
    Status::resource_exhausted(format!("a {} may have at most {limit} bytes", label(kind)))
}
