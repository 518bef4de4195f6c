//! Where media bytes live: an object store (the `object_store` crate), the
//! local filesystem under the data dir for a single node, S3-compatible
//! storage for a cluster, so gateways stay stateless.
//!
//! Layout (keys):
//!
//! | key | what |
//! |---|---|
//! | `uploads/<user>/<upload id>/start.json` | the upload's [`UploadStart`] |
//! | `uploads/<user>/<upload id>/part-<offset>` | bytes received so far, one object per flush |
//! | `uploads/<user>/<upload id>/done.json` | the media id, once complete |
//! | `media/<id>/data` | the medium (a photo without its location) |
//! | `media/<id>/thumb.jpg` | its thumbnail, when it has one |
//! | `media/<id>/record.json` | who uploaded it, when, what it is ([`MediaRecord`]) |
//! | `media/<id>/refs/<conversation>-<seq>` | a message that references it |

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt;
use imsg_proto::v1::{MediaContent, UploadStart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, local::LocalFileSystem, path::Path};
use serde::{Deserialize, Serialize};

/// Where the object store is.
#[derive(Debug, Clone)]
pub enum MediaStoreConfig {
    /// Files under this directory (the embedded single node: `<data dir>/media`).
    Local(PathBuf),
    /// An S3-compatible bucket.
    S3 { bucket: String, endpoint: Option<String>, region: String, access_key_id: String, secret_access_key: String },
}

/// A completed medium as stored beside its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MediaRecord {
    pub owner: String,
    pub created_ms: i64,
    pub kind: i32,
    pub mime_type: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
    pub sha256: String,
    pub has_thumbnail: bool,
    pub file_name: String,
}

impl MediaRecord {
    /// The medium as a message carries it.
    pub fn content(&self, media_id: &str, caption: String) -> MediaContent {
        MediaContent {
            media_id: media_id.to_owned(),
            kind: self.kind,
            mime_type: self.mime_type.clone(),
            size_bytes: self.size_bytes,
            width: self.width,
            height: self.height,
            duration_ms: self.duration_ms,
            sha256: self.sha256.clone(),
            has_thumbnail: self.has_thumbnail,
            file_name: self.file_name.clone(),
            caption,
        }
    }
}

/// What started an upload, kept so a resumed stream can be checked
/// against it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartRecord {
    pub kind: i32,
    pub size_bytes: u64,
    pub sha256: String,
    pub duration_ms: u32,
    pub file_name: String,
    pub created_ms: i64,
}

impl StartRecord {
    pub fn of(start: &UploadStart, created_ms: i64) -> Self {
        Self {
            kind: start.kind,
            size_bytes: start.size_bytes,
            sha256: start.sha256.clone(),
            duration_ms: start.duration_ms,
            file_name: start.file_name.clone(),
            created_ms,
        }
    }

    /// The same upload (what a resumed stream must repeat).
    pub fn same_upload(&self, other: &Self) -> bool {
        (self.kind, self.size_bytes, &self.sha256, self.duration_ms, &self.file_name)
            == (other.kind, other.size_bytes, &other.sha256, other.duration_ms, &other.file_name)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct DoneRecord {
    media_id: String,
}

/// Typed access to the object store.
#[derive(Clone)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
}

pub type StoreResult<T> = Result<T, object_store::Error>;

impl MediaStore {
    pub fn open(config: &MediaStoreConfig) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = match config {
            MediaStoreConfig::Local(dir) => {
                std::fs::create_dir_all(dir)?;
                Arc::new(LocalFileSystem::new_with_prefix(dir)?)
            }
            MediaStoreConfig::S3 { bucket, endpoint, region, access_key_id, secret_access_key } => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Self { store })
    }

    fn upload_dir(owner: &str, upload_id: &str) -> String {
        format!("uploads/{owner}/{upload_id}")
    }

    pub async fn upload_start(&self, owner: &str, upload_id: &str) -> StoreResult<Option<StartRecord>> {
        self.get_json(&format!("{}/start.json", Self::upload_dir(owner, upload_id))).await
    }

    pub async fn put_upload_start(&self, owner: &str, upload_id: &str, start: &StartRecord) -> StoreResult<()> {
        self.put_json(&format!("{}/start.json", Self::upload_dir(owner, upload_id)), start).await
    }

    /// The media id of a completed upload.
    pub async fn upload_done(&self, owner: &str, upload_id: &str) -> StoreResult<Option<String>> {
        let done: Option<DoneRecord> =
            self.get_json(&format!("{}/done.json", Self::upload_dir(owner, upload_id))).await?;
        Ok(done.map(|d| d.media_id))
    }

    /// The parts received so far as `(offset, size)`, in order; only the
    /// run that starts at 0 and has no gap counts.
    pub async fn parts(&self, owner: &str, upload_id: &str) -> StoreResult<Vec<(u64, u64)>> {
        let prefix = Path::from(format!("{}/", Self::upload_dir(owner, upload_id)));
        let mut parts: Vec<(u64, u64)> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok(meta
                    .location
                    .filename()
                    .and_then(|name| name.strip_prefix("part-"))
                    .and_then(|offset| offset.parse::<u64>().ok())
                    .map(|offset| (offset, meta.size)))
            })
            .try_collect()
            .await?;
        parts.sort_unstable();
        let mut contiguous = Vec::with_capacity(parts.len());
        let mut next = 0;
        for (offset, size) in parts {
            if offset != next {
                break;
            }
            next = offset + size;
            contiguous.push((offset, size));
        }
        Ok(contiguous)
    }

    pub async fn put_part(&self, owner: &str, upload_id: &str, offset: u64, bytes: Bytes) -> StoreResult<()> {
        let path = Path::from(format!("{}/part-{offset:020}", Self::upload_dir(owner, upload_id)));
        self.store.put(&path, PutPayload::from_bytes(bytes)).await.map(drop)
    }

    /// Every received byte of an upload, in order.
    pub async fn read_parts(&self, owner: &str, upload_id: &str, parts: &[(u64, u64)]) -> StoreResult<Vec<u8>> {
        let mut all = Vec::with_capacity(parts.iter().map(|(_, size)| *size as usize).sum());
        for (offset, _) in parts {
            let path = Path::from(format!("{}/part-{offset:020}", Self::upload_dir(owner, upload_id)));
            all.extend_from_slice(&self.store.get(&path).await?.bytes().await?);
        }
        Ok(all)
    }

    /// Forgets an upload's parts (and its start, unless it completed).
    pub async fn delete_upload(&self, owner: &str, upload_id: &str, keep_done: bool) -> StoreResult<()> {
        let prefix = Path::from(format!("{}/", Self::upload_dir(owner, upload_id)));
        let keys: Vec<Path> = self.store.list(Some(&prefix)).map_ok(|meta| meta.location).try_collect().await?;
        for key in keys {
            let name = key.filename().unwrap_or_default();
            if keep_done && (name == "done.json" || name == "start.json") {
                continue;
            }
            self.delete(&key).await?;
        }
        Ok(())
    }

    /// Stores a completed medium and marks the upload done.
    pub async fn put_media(
        &self,
        owner: &str,
        upload_id: &str,
        media_id: &str,
        data: Vec<u8>,
        thumbnail: Option<Vec<u8>>,
        record: &MediaRecord,
    ) -> StoreResult<()> {
        self.store.put(&Path::from(format!("media/{media_id}/data")), PutPayload::from(data)).await?;
        if let Some(thumbnail) = thumbnail {
            self.store.put(&Path::from(format!("media/{media_id}/thumb.jpg")), PutPayload::from(thumbnail)).await?;
        }
        self.put_json(&format!("media/{media_id}/record.json"), record).await?;
        let done = DoneRecord { media_id: media_id.to_owned() };
        self.put_json(&format!("{}/done.json", Self::upload_dir(owner, upload_id)), &done).await
    }

    pub async fn media_record(&self, media_id: &str) -> StoreResult<Option<MediaRecord>> {
        self.get_json(&format!("media/{media_id}/record.json")).await
    }

    fn object_of(media_id: &str, thumbnail: bool) -> Path {
        Path::from(format!("media/{media_id}/{}", if thumbnail { "thumb.jpg" } else { "data" }))
    }

    /// The size of a medium (or its thumbnail); `None` when it is gone.
    pub async fn media_size(&self, media_id: &str, thumbnail: bool) -> StoreResult<Option<u64>> {
        match self.store.head(&Self::object_of(media_id, thumbnail)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn media_range(
        &self,
        media_id: &str,
        thumbnail: bool,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Bytes> {
        self.store.get_range(&Self::object_of(media_id, thumbnail), range).await
    }

    /// Records that message `seq` of `conversation` references the medium.
    pub async fn add_reference(&self, media_id: &str, conversation: &str, seq: u64) -> StoreResult<()> {
        let path = Path::from(format!("media/{media_id}/refs/{conversation}-{seq}"));
        self.store.put(&path, PutPayload::new()).await.map(drop)
    }

    /// Drops a message's reference; deletes the medium (bytes, thumbnail,
    /// record) once no message references it. Returns whether it did.
    pub async fn release_reference(&self, media_id: &str, conversation: &str, seq: u64) -> StoreResult<bool> {
        self.delete(&Path::from(format!("media/{media_id}/refs/{conversation}-{seq}"))).await?;
        let refs = Path::from(format!("media/{media_id}/refs/"));
        let left: Vec<_> = self.store.list(Some(&refs)).try_collect().await?;
        if !left.is_empty() {
            return Ok(false);
        }
        self.delete_media(media_id).await?;
        Ok(true)
    }

    pub async fn delete_media(&self, media_id: &str) -> StoreResult<()> {
        for name in ["data", "thumb.jpg", "record.json"] {
            self.delete(&Path::from(format!("media/{media_id}/{name}"))).await?;
        }
        Ok(())
    }

    /// Media (by id) no message references, created before `before_ms`:
    /// uploads never sent.
    pub async fn unreferenced_before(&self, before_ms: i64) -> StoreResult<Vec<String>> {
        let metas: Vec<_> = self.store.list(Some(&Path::from("media/"))).try_collect().await?;
        let mut with_refs = std::collections::HashSet::new();
        let mut records = Vec::new();
        for meta in metas {
            let parts: Vec<_> = meta.location.parts().map(|p| p.as_ref().to_owned()).collect();
            match parts.as_slice() {
                [_, id, refs, _] if refs == "refs" => {
                    with_refs.insert(id.clone());
                }
                [_, id, name] if name == "record.json" => records.push(id.clone()),
                _ => {}
            }
        }
        let mut old = Vec::new();
        for id in records.into_iter().filter(|id| !with_refs.contains(id)) {
            if let Some(record) = self.media_record(&id).await?
                && record.created_ms < before_ms
            {
                old.push(id);
            }
        }
        Ok(old)
    }

    /// Uploads older than `before_ms`: started and never completed, or
    /// completed so long ago that no client still retries them (their
    /// `done.json` only answers such retries).
    pub async fn stale_uploads_before(&self, before_ms: i64) -> StoreResult<Vec<(String, String)>> {
        let metas: Vec<_> = self.store.list(Some(&Path::from("uploads/"))).try_collect().await?;
        let mut stale = Vec::new();
        for meta in metas {
            let parts: Vec<_> = meta.location.parts().map(|p| p.as_ref().to_owned()).collect();
            let [_, owner, upload, name] = parts.as_slice() else { continue };
            let old = match name.as_str() {
                "start.json" => self.upload_start(owner, upload).await?.is_some_and(|s| s.created_ms < before_ms),
                "done.json" => meta.last_modified.timestamp_millis() < before_ms,
                _ => false,
            };
            if old && !stale.contains(&(owner.clone(), upload.clone())) {
                stale.push((owner.clone(), upload.clone()));
            }
        }
        Ok(stale)
    }

    async fn delete(&self, path: &Path) -> StoreResult<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> StoreResult<Option<T>> {
        match self.store.get(&Path::from(key)).await {
            Ok(result) => {
                let bytes = result.bytes().await?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| object_store::Error::Generic { store: "media", source: Box::new(e) })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| object_store::Error::Generic { store: "media", source: Box::new(e) })?;
        self.store.put(&Path::from(key), PutPayload::from(bytes)).await.map(drop)
    }
}
