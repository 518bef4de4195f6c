//! What kind a medium is, decided from its bytes (magic numbers, through
//! the `infer` crate), never from what the client says; and how large each
//! kind may be. The client's declared kind is an intent (a sticker is a
//! small image sent as one) that the bytes must agree with.

use std::time::Duration;

use imsg_proto::v1::MediaKind;

/// Per-kind size limits and the longest voice note and video.
#[derive(Debug, Clone)]
pub struct MediaLimits {
    pub photo_bytes: u64,
    pub video_bytes: u64,
    pub voice_bytes: u64,
    pub gif_bytes: u64,
    pub sticker_bytes: u64,
    pub file_bytes: u64,
    pub voice_duration: Duration,
    pub video_duration: Duration,
}

const MIB: u64 = 1024 * 1024;

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            photo_bytes: 8 * MIB,
            video_bytes: 100 * MIB,
            voice_bytes: 10 * MIB,
            gif_bytes: 8 * MIB,
            sticker_bytes: 512 * 1024,
            file_bytes: 25 * MIB,
            voice_duration: Duration::from_secs(5 * 60),
            video_duration: Duration::from_secs(15 * 60),
        }
    }
}

impl MediaLimits {
    /// The most bytes a medium of `kind` may have.
    pub fn bytes(&self, kind: MediaKind) -> u64 {
        match kind {
            MediaKind::Photo => self.photo_bytes,
            MediaKind::Video => self.video_bytes,
            MediaKind::Voice => self.voice_bytes,
            MediaKind::Gif => self.gif_bytes,
            MediaKind::Sticker => self.sticker_bytes,
            MediaKind::File | MediaKind::Unspecified => self.file_bytes,
        }
    }

    /// The longest a medium of `kind` may play, if it plays.
    pub fn duration(&self, kind: MediaKind) -> Option<Duration> {
        match kind {
            MediaKind::Voice => Some(self.voice_duration),
            MediaKind::Video => Some(self.video_duration),
            _ => None,
        }
    }
}

/// What the bytes turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sniffed {
    pub kind: MediaKind,
    pub mime: &'static str,
}

/// Bytes of the head that suffice to sniff every accepted kind.
pub const SNIFF_BYTES: usize = 8 * 1024;

/// Decides the kind of a medium from the first bytes of it (at least
/// [`SNIFF_BYTES`] when it is that long), given what the client declared.
/// Refuses what the bytes contradict, and executables whatever was declared.
pub fn sniff(declared: MediaKind, head: &[u8]) -> Result<Sniffed, String> {
    let found = infer::get(head);
    let mime = found.map_or("application/octet-stream", |t| t.mime_type());
    if matches!(found.map(|t| t.matcher_type()), Some(infer::MatcherType::App))
        && matches!(
            mime,
            "application/vnd.microsoft.portable-executable"
                | "application/x-executable"
                | "application/x-mach-binary"
                | "application/x-msdownload"
                | "application/vnd.android.dex"
                | "application/x-sharedlib"
        )
    {
        return Err(format!("the bytes are an executable ({mime}); executables are not accepted"));
    }
    let kind = match (declared, mime) {
        (MediaKind::Photo, "image/jpeg" | "image/png" | "image/webp" | "image/heif") => MediaKind::Photo,
        (MediaKind::Sticker, "image/webp" | "image/png") => MediaKind::Sticker,
        (MediaKind::Gif, "image/gif") => MediaKind::Gif,
        // A GIF sent as a photo is still an animation.
        (MediaKind::Photo, "image/gif") => MediaKind::Gif,
        (MediaKind::Video, "video/mp4" | "video/quicktime") => MediaKind::Video,
        (MediaKind::Voice, "audio/m4a" | "audio/aac" | "audio/ogg" | "audio/opus" | "video/mp4" | "audio/x-m4a") => {
            MediaKind::Voice
        }
        (MediaKind::File, _) => MediaKind::File,
        (MediaKind::Unspecified, _) => return Err("kind must be set".into()),
        (declared, mime) => {
            return Err(format!("the bytes are {mime}, not a {}", label(declared)));
        }
    };
    Ok(Sniffed { kind, mime })
}

/// A kind as people say it.
pub fn label(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Photo => "photo",
        MediaKind::Video => "video",
        MediaKind::Voice => "voice note",
        MediaKind::Gif => "GIF",
        MediaKind::Sticker => "sticker",
        MediaKind::File => "file",
        MediaKind::Unspecified => "medium",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0];
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    /// An ELF header (64 bytes, as `infer` wants more than 52).
    const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    const PE: &[u8] = b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff\0\0";

    #[test]
    fn the_kind_comes_from_the_bytes() {
        assert_eq!(sniff(MediaKind::Photo, JPEG).unwrap(), Sniffed { kind: MediaKind::Photo, mime: "image/jpeg" });
        assert_eq!(sniff(MediaKind::Sticker, PNG).unwrap().kind, MediaKind::Sticker);
        assert_eq!(sniff(MediaKind::Photo, b"GIF89a\x01\0\x01\0").unwrap().kind, MediaKind::Gif);
        assert_eq!(
            sniff(MediaKind::File, b"%PDF-1.7\n").unwrap(),
            Sniffed { kind: MediaKind::File, mime: "application/pdf" }
        );
    }

    #[test]
    fn an_executable_is_refused_whatever_it_claims_to_be() {
        for declared in [MediaKind::Photo, MediaKind::File, MediaKind::Video] {
            for bytes in [ELF, PE] {
                let error = sniff(declared, bytes).unwrap_err();
                assert!(error.contains("executable") || error.contains("not a"), "{declared:?}: {error}");
            }
        }
        assert!(sniff(MediaKind::File, ELF).unwrap_err().contains("executable"));
    }

    #[test]
    fn bytes_that_contradict_the_declared_kind_are_refused() {
        let error = sniff(MediaKind::Photo, b"just some text").unwrap_err();
        assert_eq!(error, "the bytes are application/octet-stream, not a photo");
        assert!(sniff(MediaKind::Sticker, JPEG).is_err(), "stickers are WebP or PNG");
        assert!(sniff(MediaKind::Video, JPEG).is_err());
    }

    #[test]
    fn limits_follow_the_kind() {
        let limits = MediaLimits::default();
        assert_eq!(limits.bytes(MediaKind::Sticker), 512 * 1024);
        assert_eq!(limits.bytes(MediaKind::Video), 100 * MIB);
        assert_eq!(limits.duration(MediaKind::Voice), Some(Duration::from_secs(300)));
        assert_eq!(limits.duration(MediaKind::Photo), None);
    }
}
