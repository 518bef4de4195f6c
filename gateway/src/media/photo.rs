//! Photos: their location is removed before they are stored, and their
//! size and a small thumbnail are read from them.
//!
//! Location lives in the GPS directory of EXIF metadata (a small TIFF
//! structure) that JPEG, PNG, WebP and HEIC files may carry. It is erased
//! in place: the GPS directory's entries and the values they point to are
//! overwritten with zeros and the directory left empty, so the file keeps
//! its size and every other byte (the picture, the other metadata) is
//! unchanged. Metadata that cannot be parsed is zeroed whole rather than
//! trusted.

use image::{ImageReader, codecs::jpeg::JpegEncoder};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;

const GPS_INFO_TAG: u16 = 0x8825;

/// Removes the location from a photo of `mime` in place; returns how many
/// EXIF blocks it changed.
pub fn erase_location(mime: &str, bytes: &mut [u8]) -> usize {
    match mime {
        "image/png" => erase_in_png(bytes),
        "image/webp" => erase_in_webp(bytes),
        // JPEG (APP1) and HEIC (an Exif item) prefix their TIFF block with
        // "Exif\0\0".
        _ => erase_after_exif_markers(bytes),
    }
}

/// The width and height of a photo, and a JPEG thumbnail of it, when it
/// can be decoded (HEIC cannot be, here).
pub fn inspect(bytes: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    let (width, height) = (image.width(), image.height());
    // Already small: the picture is its own thumbnail (no resampling).
    let thumbnail = if width <= THUMBNAIL_SIDE && height <= THUMBNAIL_SIDE {
        image.to_rgb8()
    } else {
        image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE).to_rgb8()
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 75).encode_image(&thumbnail).ok()?;
    Some((width, height, jpeg))
}

fn erase_after_exif_markers(bytes: &mut [u8]) -> usize {
    const MARKER: &[u8] = b"Exif\0\0";
    let mut erased = 0;
    let mut at = 0;
    while let Some(found) = find(&bytes[at..], MARKER) {
        let tiff = at + found + MARKER.len();
        if is_tiff(&bytes[tiff..]) && erase_gps(&mut bytes[tiff..]) {
            erased += 1;
        }
        at = tiff;
    }
    erased
}

fn erase_in_png(bytes: &mut [u8]) -> usize {
    let mut erased = 0;
    let mut at = 8; // the signature
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 12).checked_add(len).filter(|end| *end <= bytes.len()) else { break };
        if &bytes[at + 4..at + 8] == b"eXIf" && erase_gps(&mut bytes[at + 8..at + 8 + len]) {
            let crc = crc32fast::hash(&bytes[at + 4..at + 8 + len]);
            bytes[at + 8 + len..end].copy_from_slice(&crc.to_be_bytes());
            erased += 1;
        }
        at = end;
    }
    erased
}

fn erase_in_webp(bytes: &mut [u8]) -> usize {
    let mut erased = 0;
    let mut at = 12; // "RIFF", size, "WEBP"
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|end| *end <= bytes.len()) else { break };
        if &bytes[at..at + 4] == b"EXIF" {
            let data = &mut bytes[at + 8..end];
            let tiff = if data.starts_with(b"Exif\0\0") { 6 } else { 0 };
            if erase_gps(&mut data[tiff..]) {
                erased += 1;
            }
        }
        at = end + (len & 1);
    }
    erased
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_tiff(bytes: &[u8]) -> bool {
    bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*")
}

/// Reads TIFF numbers in the block's byte order.
struct Tiff<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Tiff<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }
}

/// Bytes of one value of a TIFF field type.
fn type_size(field_type: u16) -> Option<usize> {
    Some(match field_type {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 => 4,
        5 | 10 | 12 => 8,
        _ => return None,
    })
}

/// Empties the GPS directory of a TIFF block; true when there was one (or
/// when the block could not be parsed and was zeroed whole).
fn erase_gps(tiff: &mut [u8]) -> bool {
    match gps_ranges(tiff) {
        Some(ranges) => {
            let found = !ranges.is_empty();
            for range in ranges {
                tiff[range].fill(0);
            }
            found
        }
        None => {
            // Not understood: nothing of it is kept but the byte order.
            tiff.iter_mut().skip(4).for_each(|b| *b = 0);
            true
        }
    }
}

/// The byte ranges of a TIFF block that hold its GPS directory's entries
/// and values (none when it has no GPS directory); `None` when the block
/// is malformed.
fn gps_ranges(bytes: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let tiff = Tiff { bytes, little: bytes.starts_with(b"II") };
    let ifd0 = tiff.u32(4)? as usize;
    let entries = tiff.u16(ifd0)? as usize;
    let mut gps = None;
    for i in 0..entries {
        let entry = ifd0 + 2 + i * 12;
        if tiff.u16(entry)? == GPS_INFO_TAG {
            gps = Some(tiff.u32(entry + 8)? as usize);
        }
    }
    let Some(gps) = gps else { return Some(Vec::new()) };
    let count = tiff.u16(gps)? as usize;
    let entries_end = gps + 2 + count * 12;
    if entries_end > bytes.len() {
        return None;
    }
    let mut ranges = Vec::with_capacity(count + 1);
    ranges.push(gps..entries_end);
    for i in 0..count {
        let entry = gps + 2 + i * 12;
        let size = type_size(tiff.u16(entry + 2)?)?.checked_mul(tiff.u32(entry + 4)? as usize)?;
        if size > 4 {
            let at = tiff.u32(entry + 8)? as usize;
            let end = at.checked_add(size).filter(|end| *end <= bytes.len())?;
            ranges.push(at..end);
        }
    }
    Some(ranges)
}

/// Photos with a location, for tests here and end to end.
#[doc(hidden)]
pub mod fixtures {
    use image::codecs::jpeg::JpegEncoder;

    use super::GPS_INFO_TAG;

    /// A little-endian TIFF block with IFD0 holding a camera make and a GPS
    /// directory with a latitude (three rationals, out of line) and its
    /// reference ("N", inline). Returns the block and the range of the GPS
    /// directory and its values.
    pub fn exif_with_gps() -> (Vec<u8>, std::ops::Range<usize>) {
        let mut t = Vec::new();
        t.extend_from_slice(b"II*\0");
        t.extend_from_slice(&8u32.to_le_bytes());
        // IFD0 at 8: two entries.
        t.extend_from_slice(&2u16.to_le_bytes());
        // Make (0x010F), ASCII, 6 bytes at 38.
        t.extend_from_slice(&0x010Fu16.to_le_bytes());
        t.extend_from_slice(&2u16.to_le_bytes());
        t.extend_from_slice(&6u32.to_le_bytes());
        t.extend_from_slice(&38u32.to_le_bytes());
        // GPSInfo (0x8825), LONG, 1, -> 44.
        t.extend_from_slice(&GPS_INFO_TAG.to_le_bytes());
        t.extend_from_slice(&4u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&44u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        assert_eq!(t.len(), 38);
        t.extend_from_slice(b"Canon\0");
        assert_eq!(t.len(), 44);
        // GPS IFD at 44: two entries.
        t.extend_from_slice(&2u16.to_le_bytes());
        // GPSLatitudeRef (1), ASCII, 2, "N\0" inline.
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&2u16.to_le_bytes());
        t.extend_from_slice(&2u32.to_le_bytes());
        t.extend_from_slice(b"N\0\0\0");
        // GPSLatitude (2), RATIONAL, 3, at 74.
        t.extend_from_slice(&2u16.to_le_bytes());
        t.extend_from_slice(&5u16.to_le_bytes());
        t.extend_from_slice(&3u32.to_le_bytes());
        t.extend_from_slice(&74u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        assert_eq!(t.len(), 74);
        for (num, den) in [(48u32, 1u32), (51, 1), (2925, 100)] {
            t.extend_from_slice(&num.to_le_bytes());
            t.extend_from_slice(&den.to_le_bytes());
        }
        (t, 44..98)
    }

    /// A JPEG with an APP1 Exif segment holding [`exif_with_gps`] right
    /// after SOI, and the range of the GPS bytes in the file.
    pub fn jpeg_with_gps(width: u32, height: u32) -> (Vec<u8>, std::ops::Range<usize>) {
        let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut plain = Vec::new();
        JpegEncoder::new_with_quality(&mut plain, 90).encode_image(&image).unwrap();
        let (tiff, gps) = exif_with_gps();
        let mut segment = b"Exif\0\0".to_vec();
        segment.extend_from_slice(&tiff);
        let mut jpeg = plain[..2].to_vec();
        jpeg.extend_from_slice(&[0xFF, 0xE1]);
        jpeg.extend_from_slice(&((segment.len() + 2) as u16).to_be_bytes());
        let tiff_at = jpeg.len() + 6;
        jpeg.extend_from_slice(&segment);
        jpeg.extend_from_slice(&plain[2..]);
        (jpeg, tiff_at + gps.start..tiff_at + gps.end)
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    fn gps_fields(bytes: &[u8]) -> usize {
        let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)).unwrap();
        exif.fields().filter(|f| f.ifd_num == exif::In::PRIMARY && f.tag.context() == exif::Context::Gps).count()
    }

    #[test]
    fn a_jpegs_location_is_erased_and_nothing_else_changes() {
        let (original, gps) = jpeg_with_gps(64, 48);
        assert_eq!(gps_fields(&original), 2, "the fixture carries a location");
        let mut stripped = original.clone();
        assert_eq!(erase_location("image/jpeg", &mut stripped), 1);
        assert_eq!(gps_fields(&stripped), 0);
        assert_eq!(stripped.len(), original.len());
        for (i, (a, b)) in original.iter().zip(&stripped).enumerate() {
            if a != b {
                assert!(gps.contains(&i), "byte {i} outside the GPS data changed");
            }
        }
        assert!(stripped[gps].iter().all(|b| *b == 0));
        let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(&stripped)).unwrap();
        assert!(exif.get_field(exif::Tag::Make, exif::In::PRIMARY).is_some(), "other metadata is kept");
        let (width, height, thumbnail) = inspect(&stripped).unwrap();
        assert_eq!((width, height), (64, 48));
        assert!(thumbnail.starts_with(&[0xFF, 0xD8]));
    }

    #[test]
    fn png_and_webp_locations_are_erased_and_png_checksums_stay_valid() {
        let (tiff, gps) = exif_with_gps();
        // PNG: signature, an eXIf chunk, IEND.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&(tiff.len() as u32).to_be_bytes());
        png.extend_from_slice(b"eXIf");
        png.extend_from_slice(&tiff);
        png.extend_from_slice(&crc32fast::hash(&[b"eXIf".as_slice(), &tiff].concat()).to_be_bytes());
        assert_eq!(erase_location("image/png", &mut png), 1);
        let data = &png[16..16 + tiff.len()];
        assert!(data[gps.clone()].iter().all(|b| *b == 0));
        let crc = u32::from_be_bytes(png[16 + tiff.len()..20 + tiff.len()].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&png[12..16 + tiff.len()]), "the chunk's CRC matches its new data");
        // WebP: RIFF header, an EXIF chunk.
        let mut webp = b"RIFF\0\0\0\0WEBP".to_vec();
        webp.extend_from_slice(b"EXIF");
        webp.extend_from_slice(&(tiff.len() as u32).to_le_bytes());
        webp.extend_from_slice(&tiff);
        assert_eq!(erase_location("image/webp", &mut webp), 1);
        assert!(webp[20..][gps].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_photo_without_location_is_left_alone_and_broken_metadata_is_zeroed() {
        let image = image::RgbImage::new(8, 8);
        let mut plain = Vec::new();
        JpegEncoder::new_with_quality(&mut plain, 90).encode_image(&image).unwrap();
        let copy = plain.clone();
        assert_eq!(erase_location("image/jpeg", &mut plain), 0);
        assert_eq!(plain, copy);
        let mut broken = b"Exif\0\0II*\0\xff\xff\xff\x7fsecret-location".to_vec();
        assert_eq!(erase_location("image/jpeg", &mut broken), 1);
        assert!(!broken.windows(6).any(|w| w == b"secret"));
    }
}
