//! A regular file's bytes twice over: what processes see now (`current`) and
//! what a power cut leaves (`durable`).
//!
//! Syncing or reverting copies only the byte ranges written (or uncovered by a
//! size change) since the two last agreed, so an `fsync` after a small append
//! to a large file costs the append, not the file.

use std::collections::BTreeMap;

/// Largest size a file may reach: a write or size change beyond it fails with
/// `EFBIG` instead of trying to allocate that much memory.
pub(crate) const MAX_FILE_SIZE: usize = 16 << 30;

#[derive(Debug, Default)]
pub(crate) struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Disjoint, non-touching `[start, end)` ranges (keyed by start) outside
    /// of which `current` and `durable` hold the same bytes. Every position
    /// between the two lengths is covered.
    unsynced: BTreeMap<usize, usize>,
}

impl FileData {
    pub(crate) fn len(&self) -> usize {
        self.current.len()
    }

    /// Up to `size` current bytes from `offset` (fewer at the end of the file).
    pub(crate) fn read(&self, offset: usize, size: usize) -> &[u8] {
        let start = offset.min(self.current.len());
        let end = offset.saturating_add(size).min(self.current.len());
        &self.current[start..end]
    }

    /// Writes `data` at `offset`, zero-filling any gap past the current end.
    /// The caller checks `offset + data.len() <= MAX_FILE_SIZE`.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        let old_len = self.current.len();
        if end > old_len {
            self.current.resize(end, 0);
        }
        self.current[offset..end].copy_from_slice(data);
        self.mark_unsynced(offset.min(old_len), end);
    }

    /// Truncates or zero-extends to `len`. The caller checks `len <= MAX_FILE_SIZE`.
    pub(crate) fn set_len(&mut self, len: usize) {
        let old_len = self.current.len();
        self.current.resize(len, 0);
        self.mark_unsynced(old_len.min(len), old_len.max(len));
    }

    /// `fsync`: the current bytes and length become the durable ones.
    pub(crate) fn sync(&mut self) {
        self.durable.resize(self.current.len(), 0);
        copy_ranges(&self.unsynced, &self.current, &mut self.durable);
        self.unsynced.clear();
    }

    /// Power cut: the current bytes and length go back to the durable ones.
    /// Returns how many bytes of unsynced changes were thrown away.
    pub(crate) fn revert(&mut self) -> u64 {
        let discarded = self.unsynced_bytes();
        self.current.resize(self.durable.len(), 0);
        copy_ranges(&self.unsynced, &self.durable, &mut self.current);
        self.unsynced.clear();
        discarded
    }

    /// Bytes written or resized since the last sync (counted within the larger
    /// of the two lengths).
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        let limit = self.current.len().max(self.durable.len());
        self.unsynced.iter().map(|(&start, &end)| end.min(limit).saturating_sub(start) as u64).sum()
    }

    fn mark_unsynced(&mut self, mut start: usize, mut end: usize) {
        if start >= end {
            return;
        }
        if let Some((&before_start, &before_end)) = self.unsynced.range(..=start).next_back()
            && before_end >= start
        {
            self.unsynced.remove(&before_start);
            start = before_start;
            end = end.max(before_end);
        }
        while let Some((&next_start, &next_end)) = self.unsynced.range(start..=end).next() {
            self.unsynced.remove(&next_start);
            end = end.max(next_end);
        }
        self.unsynced.insert(start, end);
    }
}

/// Copies `from[range]` into `to[range]` for every range, clipped to `from`'s
/// length (which `to` already has).
fn copy_ranges(ranges: &BTreeMap<usize, usize>, from: &[u8], to: &mut [u8]) {
    for (&start, &end) in ranges {
        let end = end.min(from.len());
        if start < end {
            to[start..end].copy_from_slice(&from[start..end]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(durable: &[u8]) -> FileData {
        let mut file = FileData::default();
        file.write(0, durable);
        file.sync();
        file
    }

    #[test]
    fn revert_undoes_writes_and_size_changes_since_the_last_sync() {
        let mut file = file_with(b"0123456789");
        file.write(2, b"ab");
        file.write(12, b"tail");
        assert_eq!(file.read(0, 100), b"01ab456789\0\0tail");
        assert_eq!(file.revert(), 2 + 6);
        assert_eq!(file.read(0, 100), b"0123456789");

        file.set_len(3);
        file.set_len(6);
        assert_eq!(file.read(0, 100), b"012\0\0\0");
        file.revert();
        assert_eq!(file.read(0, 100), b"0123456789");
    }

    #[test]
    fn sync_keeps_exactly_the_current_bytes() {
        let mut file = file_with(b"0123456789");
        file.set_len(4);
        file.write(6, b"xy");
        file.write(0, b"A");
        file.sync();
        file.write(1, b"lost");
        file.set_len(1);
        file.revert();
        assert_eq!(file.read(0, 100), b"A123\0\0xy");
    }

    #[test]
    fn unsynced_ranges_merge_when_they_touch_or_overlap() {
        let mut file = file_with(&[b'.'; 20]);
        let ranges = |file: &FileData| file.unsynced.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>();
        file.write(0, b"aa");
        file.write(10, b"bb");
        file.write(2, b"c");
        file.write(5, b"ddddd");
        assert_eq!(ranges(&file), vec![(0, 3), (5, 12)]);
        file.write(3, b"ee");
        assert_eq!(ranges(&file), vec![(0, 12)]);
        assert_eq!(file.unsynced_bytes(), 12);
    }
}
