//! How long a video or voice note plays, read from its container where
//! that is cheap: the `mvhd` box of an MP4, QuickTime or M4A file holds the
//! duration and its timescale.

/// The duration in milliseconds an ISO-BMFF (MP4, MOV, M4A) file declares.
pub fn mp4_duration_ms(bytes: &[u8]) -> Option<u64> {
    let moov = find_box(bytes, b"moov")?;
    let mvhd = find_box(moov, b"mvhd")?;
    let version = *mvhd.first()?;
    let (timescale, duration) = if version == 1 {
        (
            u32::from_be_bytes(mvhd.get(20..24)?.try_into().ok()?) as u64,
            u64::from_be_bytes(mvhd.get(24..32)?.try_into().ok()?),
        )
    } else {
        (
            u32::from_be_bytes(mvhd.get(12..16)?.try_into().ok()?) as u64,
            u32::from_be_bytes(mvhd.get(16..20)?.try_into().ok()?) as u64,
        )
    };
    (timescale > 0).then(|| duration.saturating_mul(1000) / timescale)
}

/// The body of the first box of `kind` at this level.
fn find_box<'a>(mut bytes: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    while bytes.len() >= 8 {
        let size = u32::from_be_bytes(bytes[0..4].try_into().ok()?) as u64;
        let (header, size) = match size {
            1 => (16, u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?)),
            0 => (8, bytes.len() as u64),
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        if size < header || size > bytes.len() {
            return None;
        }
        if &bytes[4..8] == kind {
            return Some(&bytes[header..size]);
        }
        bytes = &bytes[size..];
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal MP4: `ftyp`, then `moov` holding a version-0 `mvhd` of
    /// `seconds` at timescale 1000.
    pub fn mp4(seconds: u32) -> Vec<u8> {
        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        mvhd[16..20].copy_from_slice(&(seconds * 1000).to_be_bytes());
        let boxed = |kind: &[u8; 4], body: &[u8]| {
            let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b
        };
        let mut file = boxed(b"ftyp", b"isom\0\0\x02\0isomiso2mp41");
        file.extend(boxed(b"moov", &boxed(b"mvhd", &mvhd)));
        file
    }

    #[test]
    fn the_duration_comes_from_the_movie_header() {
        assert_eq!(mp4_duration_ms(&mp4(42)), Some(42_000));
        assert_eq!(mp4_duration_ms(b"not a movie"), None);
        let mut truncated = mp4(3);
        truncated.truncate(40);
        assert_eq!(mp4_duration_ms(&truncated), None);
    }
}
