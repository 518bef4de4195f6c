//! The filesystem's state, independent of FUSE: inodes, the current and the
//! durable namespace, open handles, and what `fsync` and a power cut do to
//! them (see the crash model in the crate docs).
//!
//! Inode numbers are never reused, so an inode the kernel still remembers from
//! before a cut can only ever mean the same file (or nothing: `ENOENT`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

use crate::Stats;
use crate::file_data::{FileData, MAX_FILE_SIZE};

const ROOT: u64 = INodeNo::ROOT.0;
const BLOCK_SIZE: u32 = 4096;

#[derive(Debug)]
enum Content {
    File(FileData),
    Directory,
    Symlink(OsString),
}

#[derive(Debug)]
struct Node {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Entries naming this node in the current namespace.
    links: u32,
    /// Open file and directory handles on this node.
    open_handles: u32,
}

impl Node {
    fn new(content: Content, perm: u16) -> Self {
        let now = SystemTime::now();
        Node { content, perm, uid: 0, gid: 0, atime: now, mtime: now, ctime: now, links: 0, open_handles: 0 }
    }

    fn kind(&self) -> FileType {
        match self.content {
            Content::File(_) => FileType::RegularFile,
            Content::Directory => FileType::Directory,
            Content::Symlink(_) => FileType::Symlink,
        }
    }

    fn file(&self) -> Result<&FileData, Errno> {
        match &self.content {
            Content::File(data) => Ok(data),
            Content::Directory => Err(Errno::EISDIR),
            Content::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    fn file_mut(&mut self) -> Result<&mut FileData, Errno> {
        match &mut self.content {
            Content::File(data) => Ok(data),
            Content::Directory => Err(Errno::EISDIR),
            Content::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    fn touch_data(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// Directory contents: for every directory inode, its entries by name.
#[derive(Debug, Clone, Default)]
struct Namespace {
    directories: HashMap<u64, BTreeMap<OsString, u64>>,
}

impl Namespace {
    fn inodes(&self) -> HashSet<u64> {
        let mut inodes: HashSet<u64> =
            self.directories.values().flat_map(|entries| entries.values().copied()).collect();
        inodes.insert(ROOT);
        inodes
    }
}

#[derive(Debug)]
struct OpenFile {
    ino: u64,
    append: bool,
}

/// One `readdir` entry of a directory listing taken at `opendir`.
#[derive(Debug)]
pub(crate) struct DirEntry {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: OsString,
}

#[derive(Debug)]
struct OpenDirectory {
    ino: u64,
    entries: Vec<DirEntry>,
}

/// Attribute changes of a `setattr` request.
#[derive(Debug, Default)]
pub(crate) struct AttrChange {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<TimeOrNow>,
    pub(crate) mtime: Option<TimeOrNow>,
}

/// What kind of node `make_node` creates.
#[derive(Debug)]
pub(crate) enum NewNode {
    File,
    Directory,
    Symlink(OsString),
}

#[derive(Debug)]
pub(crate) struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    current: Namespace,
    durable: Namespace,
    /// Inodes named in `durable` (they must survive until a cut or a commit).
    durable_inodes: HashSet<u64>,
    /// Whether `current` has changes not yet in `durable`.
    namespace_changed: bool,
    open_files: HashMap<u64, OpenFile>,
    open_directories: HashMap<u64, OpenDirectory>,
    next_handle: u64,
    writes: u64,
    bytes_written: u64,
    fsyncs: u64,
    cuts: u64,
    bytes_discarded: u64,
}

impl Model {
    pub(crate) fn new() -> Self {
        let mut root = Node::new(Content::Directory, 0o755);
        root.links = 1;
        let namespace = Namespace { directories: HashMap::from([(ROOT, BTreeMap::new())]) };
        Model {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            durable_inodes: namespace.inodes(),
            current: namespace.clone(),
            durable: namespace,
            namespace_changed: false,
            open_files: HashMap::new(),
            open_directories: HashMap::new(),
            next_handle: 1,
            writes: 0,
            bytes_written: 0,
            fsyncs: 0,
            cuts: 0,
            bytes_discarded: 0,
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// The entries of directory `ino` (`ENOENT` for a removed directory).
    fn entries(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        if !matches!(self.node(ino)?.content, Content::Directory) {
            return Err(Errno::ENOTDIR);
        }
        self.current.directories.get(&ino).ok_or(Errno::ENOENT)
    }

    fn entries_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        self.entries(ino)?;
        self.current.directories.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entry(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn is_directory(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|node| matches!(node.content, Content::Directory))
    }

    /// The directory holding directory `ino` in the current namespace.
    fn parent_of(&self, ino: u64) -> Option<u64> {
        self.current
            .directories
            .iter()
            .find_map(|(&parent, entries)| entries.values().any(|&child| child == ino).then_some(parent))
    }

    pub(crate) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.content {
            Content::File(data) => (data.len() as u64, node.links),
            Content::Symlink(target) => (target.len() as u64, node.links),
            Content::Directory => {
                let subdirectories =
                    self.current.directories.get(&ino).map_or(0, |entries| {
                        entries.values().filter(|&&child| self.is_directory(child)).count() as u32
                    });
                (u64::from(BLOCK_SIZE), 2 + subdirectories)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind: node.kind(),
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        self.attr(self.entry(parent, name)?)
    }

    pub(crate) fn set_attr(&mut self, ino: u64, handle: Option<u64>, change: AttrChange) -> Result<FileAttr, Errno> {
        if let Some(handle) = handle {
            self.open_file(handle)?;
        }
        let size = change.size.map(checked_size).transpose()?;
        let node = self.node_mut(ino)?;
        if let Some(size) = size {
            node.file_mut()?.set_len(size);
            node.touch_data();
        }
        if let Some(mode) = change.mode {
            node.perm = (mode & 0o7777) as u16;
        }
        node.uid = change.uid.unwrap_or(node.uid);
        node.gid = change.gid.unwrap_or(node.gid);
        if let Some(atime) = change.atime {
            node.atime = resolve(atime);
        }
        if let Some(mtime) = change.mtime {
            node.mtime = resolve(mtime);
        }
        node.ctime = SystemTime::now();
        self.attr(ino)
    }

    pub(crate) fn readlink(&self, ino: u64) -> Result<&OsStr, Errno> {
        match &self.node(ino)?.content {
            Content::Symlink(target) => Ok(target),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Adds a new node named `name` in `parent` (a pending namespace change).
    pub(crate) fn make_node(&mut self, parent: u64, name: &OsStr, new: NewNode, perm: u32) -> Result<FileAttr, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let content = match new {
            NewNode::File => Content::File(FileData::default()),
            NewNode::Directory => {
                self.current.directories.insert(ino, BTreeMap::new());
                Content::Directory
            }
            NewNode::Symlink(target) => Content::Symlink(target),
        };
        let mut node = Node::new(content, (perm & 0o7777) as u16);
        node.links = 1;
        self.nodes.insert(ino, node);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.namespace_changed_in(parent)?;
        self.attr(ino)
    }

    /// `open(O_CREAT)`: creates the file, or opens the existing one unless
    /// `O_EXCL` is set.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let ino = match self.entry(parent, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Ok(existing) => {
                if flags & libc::O_TRUNC != 0 {
                    self.set_attr(existing, None, AttrChange { size: Some(0), ..AttrChange::default() })?;
                }
                existing
            }
            Err(_) => self.make_node(parent, name, NewNode::File, perm)?.ino.0,
        };
        let handle = self.open(ino, flags)?;
        Ok((self.attr(ino)?, handle))
    }

    pub(crate) fn open(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let node = self.node_mut(ino)?;
        node.file()?;
        node.open_handles += 1;
        let handle = self.new_handle();
        self.open_files.insert(handle, OpenFile { ino, append: flags & libc::O_APPEND != 0 });
        Ok(handle)
    }

    fn new_handle(&mut self) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        handle
    }

    /// The open file behind `handle`; `EIO` for a handle from before a cut.
    fn open_file(&self, handle: u64) -> Result<&OpenFile, Errno> {
        self.open_files.get(&handle).ok_or(Errno::EIO)
    }

    pub(crate) fn read(&self, handle: u64, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let ino = self.open_file(handle)?.ino;
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(self.node(ino)?.file()?.read(offset, size as usize))
    }

    /// Writes at `offset`, or at the end for a handle opened with `O_APPEND`.
    /// A write with `O_DSYNC` (or `O_SYNC`) in `flags` is also an `fdatasync`.
    pub(crate) fn write(&mut self, handle: u64, offset: u64, data: &[u8], flags: i32) -> Result<u32, Errno> {
        let OpenFile { ino, append } = *self.open_file(handle)?;
        let node = self.node_mut(ino)?;
        let file = node.file_mut()?;
        let offset = if append { file.len() } else { checked_size(offset)? };
        if offset + data.len() > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        file.write(offset, data);
        node.touch_data();
        self.writes += 1;
        self.bytes_written += data.len() as u64;
        if flags & libc::O_DSYNC != 0 {
            self.sync_file(ino)?;
        }
        Ok(data.len() as u32)
    }

    /// `fallocate` mode 0: extends the file with zeros to cover the range.
    pub(crate) fn allocate(&mut self, handle: u64, offset: u64, length: u64) -> Result<(), Errno> {
        let ino = self.open_file(handle)?.ino;
        let end = checked_size(offset.saturating_add(length))?;
        let node = self.node_mut(ino)?;
        let file = node.file_mut()?;
        if end > file.len() {
            file.set_len(end);
            node.touch_data();
        }
        Ok(())
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE`: files have no holes.
    pub(crate) fn seek(&self, handle: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let ino = self.open_file(handle)?.ino;
        let size = self.node(ino)?.file()?.len() as i64;
        if offset < 0 {
            return Err(Errno::EINVAL);
        }
        if offset >= size {
            return Err(Errno::ENXIO);
        }
        match whence {
            libc::SEEK_DATA => Ok(offset),
            libc::SEEK_HOLE => Ok(size),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Closes `handle` (a no-op for a handle from before a cut).
    pub(crate) fn release(&mut self, handle: u64) {
        if let Some(open) = self.open_files.remove(&handle) {
            self.close_node(open.ino);
        }
    }

    fn close_node(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open_handles -= 1;
        }
        self.free_if_unreferenced(ino);
    }

    /// `fsync`/`fdatasync`: the file's bytes and the whole namespace become durable.
    pub(crate) fn fsync(&mut self, handle: u64) -> Result<(), Errno> {
        let ino = self.open_file(handle)?.ino;
        self.fsyncs += 1;
        self.sync_file(ino)
    }

    fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        self.node_mut(ino)?.file_mut()?.sync();
        self.commit_namespace();
        Ok(())
    }

    /// `fsync` of a directory: the whole namespace becomes durable.
    pub(crate) fn fsync_directory(&mut self, handle: u64) -> Result<(), Errno> {
        if !self.open_directories.contains_key(&handle) {
            return Err(Errno::EIO);
        }
        self.fsyncs += 1;
        self.commit_namespace();
        Ok(())
    }

    fn commit_namespace(&mut self) {
        if !self.namespace_changed {
            return;
        }
        self.durable = self.current.clone();
        self.durable_inodes = self.durable.inodes();
        self.namespace_changed = false;
        let unreferenced: Vec<u64> = self.nodes.keys().copied().filter(|&ino| !self.is_referenced(ino)).collect();
        for ino in unreferenced {
            self.nodes.remove(&ino);
        }
    }

    fn is_referenced(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|node| node.links > 0 || node.open_handles > 0)
            || self.durable_inodes.contains(&ino)
    }

    fn free_if_unreferenced(&mut self, ino: u64) {
        if !self.is_referenced(ino) {
            self.nodes.remove(&ino);
        }
    }

    /// Takes a listing of directory `ino` for `readdir`.
    pub(crate) fn open_directory(&mut self, ino: u64) -> Result<u64, Errno> {
        let parent = if ino == ROOT { ROOT } else { self.parent_of(ino).unwrap_or(ino) };
        let mut entries = vec![
            DirEntry { ino, kind: FileType::Directory, name: ".".into() },
            DirEntry { ino: parent, kind: FileType::Directory, name: "..".into() },
        ];
        for (name, &child) in self.entries(ino)? {
            entries.push(DirEntry { ino: child, kind: self.node(child)?.kind(), name: name.clone() });
        }
        self.node_mut(ino)?.open_handles += 1;
        let handle = self.new_handle();
        self.open_directories.insert(handle, OpenDirectory { ino, entries });
        Ok(handle)
    }

    pub(crate) fn read_directory(&self, handle: u64) -> Result<&[DirEntry], Errno> {
        self.open_directories.get(&handle).map(|open| open.entries.as_slice()).ok_or(Errno::EIO)
    }

    pub(crate) fn release_directory(&mut self, handle: u64) {
        if let Some(open) = self.open_directories.remove(&handle) {
            self.close_node(open.ino);
        }
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.entry(parent, name)?;
        if self.is_directory(ino) {
            return Err(Errno::EISDIR);
        }
        self.remove_entry(parent, name, ino)
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.entry(parent, name)?;
        if !self.entries(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        self.entries_mut(parent)?.remove(name);
        self.unlinked(ino);
        self.namespace_changed_in(parent)?;
        self.free_if_unreferenced(ino);
        Ok(())
    }

    /// Bookkeeping for a node that lost one name.
    fn unlinked(&mut self, ino: u64) {
        if self.is_directory(ino) {
            self.current.directories.remove(&ino);
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.links -= 1;
            node.ctime = SystemTime::now();
        }
    }

    fn namespace_changed_in(&mut self, directory: u64) -> Result<(), Errno> {
        self.namespace_changed = true;
        self.node_mut(directory)?.touch_data();
        Ok(())
    }

    /// `rename`/`renameat2`: `RENAME_NOREPLACE` is supported, other flags are `EINVAL`.
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        let ino = self.entry(parent, name)?;
        let replaced = self.entries(new_parent)?.get(new_name).copied();
        if replaced.is_some() && flags & libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EEXIST);
        }
        if replaced == Some(ino) {
            return Ok(());
        }
        let moving_directory = self.is_directory(ino);
        if let Some(target) = replaced {
            match (moving_directory, self.is_directory(target)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.entries(target)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if moving_directory && self.is_same_or_ancestor(ino, new_parent) {
            return Err(Errno::EINVAL);
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?.insert(new_name.to_owned(), ino);
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.namespace_changed_in(parent)?;
        self.namespace_changed_in(new_parent)?;
        if let Some(target) = replaced {
            self.unlinked(target);
            self.free_if_unreferenced(target);
        }
        Ok(())
    }

    fn is_same_or_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.parent_of(ino) {
                Some(parent) => ino = parent,
                None => return false,
            }
        }
    }

    /// A hard link `new_name` in `new_parent` to file `ino`.
    pub(crate) fn link(&mut self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<FileAttr, Errno> {
        if self.is_directory(ino) {
            return Err(Errno::EPERM);
        }
        if self.entries(new_parent)?.contains_key(new_name) {
            return Err(Errno::EEXIST);
        }
        let node = self.node_mut(ino)?;
        node.links += 1;
        node.ctime = SystemTime::now();
        self.entries_mut(new_parent)?.insert(new_name.to_owned(), ino);
        self.namespace_changed_in(new_parent)?;
        self.attr(ino)
    }

    /// Every name `ino` has in the current namespace.
    pub(crate) fn names_of(&self, ino: u64) -> Vec<OsString> {
        self.current
            .directories
            .values()
            .flat_map(|entries| entries.iter().filter(|&(_, &child)| child == ino).map(|(name, _)| name.clone()))
            .collect()
    }

    /// The power cut: see the crash model in the crate docs.
    pub(crate) fn cut(&mut self) {
        self.cuts += 1;
        self.open_files.clear();
        self.open_directories.clear();
        self.current = self.durable.clone();
        self.namespace_changed = false;
        let durable_inodes = &self.durable_inodes;
        let mut discarded = 0;
        self.nodes.retain(|ino, node| {
            let survives = durable_inodes.contains(ino);
            if let Content::File(data) = &mut node.content {
                discarded += if survives { data.revert() } else { data.len() as u64 };
            }
            survives
        });
        self.bytes_discarded += discarded;
        for node in self.nodes.values_mut() {
            node.links = 0;
            node.open_handles = 0;
        }
        let named = self.current.directories.values().flat_map(|entries| entries.values());
        for ino in named.chain([&ROOT]) {
            if let Some(node) = self.nodes.get_mut(ino) {
                node.links += 1;
            }
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            writes: self.writes,
            bytes_written: self.bytes_written,
            fsyncs: self.fsyncs,
            cuts: self.cuts,
            bytes_discarded: self.bytes_discarded,
            files: self.files().len() as u64,
        }
    }

    /// Every regular file reachable in the current namespace, by path, with its size.
    pub(crate) fn files(&self) -> Vec<(PathBuf, u64)> {
        let mut files = Vec::new();
        let mut pending = vec![(PathBuf::new(), ROOT)];
        while let Some((path, directory)) = pending.pop() {
            for (name, &child) in self.current.directories.get(&directory).into_iter().flatten() {
                match self.nodes.get(&child).map(|node| &node.content) {
                    Some(Content::File(data)) => files.push((path.join(name), data.len() as u64)),
                    Some(Content::Directory) => pending.push((path.join(name), child)),
                    _ => {}
                }
            }
        }
        files.sort();
        files
    }
}

fn checked_size(size: u64) -> Result<usize, Errno> {
    usize::try_from(size).ok().filter(|&size| size <= MAX_FILE_SIZE).ok_or(Errno::EFBIG)
}

fn resolve(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> &OsStr {
        OsStr::new(name)
    }

    fn new_file(model: &mut Model, parent: u64, file: &str, bytes: &[u8]) -> (u64, u64) {
        let (attr, handle) = model.create(parent, name(file), 0o644, libc::O_RDWR).unwrap();
        model.write(handle, 0, bytes, libc::O_RDWR).unwrap();
        (attr.ino.0, handle)
    }

    fn contents(model: &Model, parent: u64, file: &str) -> Option<Vec<u8>> {
        let ino = model.entry(parent, name(file)).ok()?;
        Some(model.node(ino).unwrap().file().unwrap().read(0, usize::MAX).to_vec())
    }

    #[test]
    fn namespace_changes_survive_only_once_something_is_synced() {
        let mut model = Model::new();
        let (_, a) = new_file(&mut model, ROOT, "a", b"aaa");
        let dir = model.make_node(ROOT, name("d"), NewNode::Directory, 0o755).unwrap().ino.0;
        new_file(&mut model, dir, "b", b"bbb");
        model.cut();
        assert_eq!(model.files(), vec![]);
        assert!(model.read(a, 0, 10).is_err(), "handles from before a cut are stale");

        let (_, a) = new_file(&mut model, ROOT, "a", b"aaa");
        let dir = model.make_node(ROOT, name("d"), NewNode::Directory, 0o755).unwrap().ino.0;
        new_file(&mut model, dir, "b", b"bbb");
        model.fsync(a).unwrap();
        model.cut();
        assert_eq!(model.files(), vec![(PathBuf::from("a"), 3), (PathBuf::from("d/b"), 0)]);
    }

    #[test]
    fn unlink_and_rename_are_undone_until_committed() {
        let mut model = Model::new();
        let (ino, handle) = new_file(&mut model, ROOT, "a", b"durable");
        model.fsync(handle).unwrap();
        model.release(handle);
        model.unlink(ROOT, name("a")).unwrap();
        assert_eq!(model.lookup(ROOT, name("a")), Err(Errno::ENOENT));
        model.cut();
        assert_eq!(contents(&model, ROOT, "a").unwrap(), b"durable");
        assert_eq!(model.attr(ino).unwrap().nlink, 1);

        model.rename(ROOT, name("a"), ROOT, name("b"), 0).unwrap();
        model.cut();
        assert_eq!(model.files(), vec![(PathBuf::from("a"), 7)]);

        model.rename(ROOT, name("a"), ROOT, name("b"), 0).unwrap();
        let root = model.open_directory(ROOT).unwrap();
        model.fsync_directory(root).unwrap();
        model.unlink(ROOT, name("b")).unwrap();
        model.fsync_directory(root).unwrap();
        assert!(model.attr(ino).is_err(), "an inode no namespace names is freed");
    }

    #[test]
    fn an_unlinked_open_file_stays_readable_until_closed() {
        let mut model = Model::new();
        let (ino, handle) = new_file(&mut model, ROOT, "a", b"bytes");
        model.unlink(ROOT, name("a")).unwrap();
        model.fsync(handle).unwrap();
        assert_eq!(model.read(handle, 0, 100).unwrap(), b"bytes");
        assert_eq!(model.attr(ino).unwrap().nlink, 0);
        model.release(handle);
        assert_eq!(model.attr(ino), Err(Errno::ENOENT));
    }

    #[test]
    fn rename_checks() {
        let mut model = Model::new();
        let dir = model.make_node(ROOT, name("d"), NewNode::Directory, 0o755).unwrap().ino.0;
        let sub = model.make_node(dir, name("sub"), NewNode::Directory, 0o755).unwrap().ino.0;
        new_file(&mut model, ROOT, "f", b"");
        new_file(&mut model, ROOT, "g", b"");
        assert_eq!(model.rename(ROOT, name("d"), sub, name("x"), 0), Err(Errno::EINVAL));
        assert_eq!(model.rename(ROOT, name("f"), ROOT, name("g"), libc::RENAME_NOREPLACE), Err(Errno::EEXIST));
        assert_eq!(model.rename(ROOT, name("f"), ROOT, name("d"), 0), Err(Errno::EISDIR));
        assert_eq!(model.rmdir(ROOT, name("d")), Err(Errno::ENOTEMPTY));
        model.rename(ROOT, name("f"), ROOT, name("g"), 0).unwrap();
        assert_eq!(model.files(), vec![(PathBuf::from("g"), 0)]);
    }
}
