//! A module or component as a start reads it: its file mapped, not
//! copied, and the file's identity, which lets the cache skip hashing a
//! file it has hashed before (see [`crate::cache`]).
//!
//! Mapping instead of reading saves a 20 MB interpreter's start the copy
//! and the faults of a 20 MB buffer. The price is that the bytes are the
//! file's, not a snapshot: whoever can write the file can change them
//! while they are read (or truncate it, which kills the reader with
//! SIGBUS: a start the writer could have spoiled anyway). So nothing is
//! derived from them that outlives the start unless it is checked: the
//! cache compiles and stores only from a private copy, hashed again
//! ([`Source::snapshot`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use nix::sys::stat::{fstat, FileStat};

/// A private, read-only mapping of a whole file.
pub(crate) struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Map `len` bytes of `file`: its size when the caller checked it.
    pub(crate) fn of_len(file: &File, len: usize) -> std::io::Result<Mapping> {
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh private read-only mapping of a file we hold.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    pub(crate) fn of(file: &File) -> std::io::Result<Mapping> {
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        Mapping::of_len(file, len)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: mapped readable for len bytes until drop.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// What makes a file the same file with the same bytes, wherever it is
/// mounted: a write moves ctime to the present, and only the kernel sets
/// ctime. The device is left out on purpose: every overlay mount of one
/// image layer has a device of its own and the layer's inode numbers, and
/// the layer's files are what a node starts again and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    pub ino: u64,
    pub size: i64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileIdentity {
    pub(crate) fn of(st: &FileStat) -> FileIdentity {
        FileIdentity {
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Filesystems whose timestamps the kernel keeps: a FUSE server, a
/// network filesystem or a driver of someone else's disk image can report
/// any inode and ctime it likes.
const KERNEL_TIMESTAMPED: [i64; 8] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x794C_7630, // overlay
    0xE0F5_E1E2, // erofs
    0x7371_7368, // squashfs
    0x2FC1_2FC1, // zfs
];

/// How old a file's ctime must be before its identity is trusted to stand
/// for its bytes. A change made within one tick of a coarse clock can
/// leave ctime as it was; once the identity was taken seconds after the
/// last change, any later change moves ctime past it.
const SETTLED: Duration = Duration::from_secs(3);

/// A module file opened for a start.
pub struct ModuleFile {
    file: File,
    mapping: Option<Mapping>,
    /// The file's identity when it was opened, if it may stand for its
    /// bytes (see [`FileIdentity`]).
    identity: Option<FileIdentity>,
}

impl ModuleFile {
    /// Map `file`, which holds `size` bytes (an empty file maps to no
    /// bytes); an error where it cannot be mapped.
    pub(crate) fn map(file: File, size: u64) -> std::io::Result<ModuleFile> {
        let opened = SystemTime::now();
        let st = fstat(&file)?;
        let mapping = match usize::try_from(size).map_err(std::io::Error::other)? {
            0 => None,
            len => Some(Mapping::of_len(&file, len)?),
        };
        let identity = settled_identity(&file, &st, opened);
        Ok(ModuleFile {
            file,
            mapping,
            identity,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.mapping.as_ref().map_or(&[], Mapping::bytes)
    }

    pub(crate) fn source(&self) -> Source<'_> {
        Source {
            bytes: self.bytes(),
            file: self.identity.map(|identity| (&self.file, identity)),
        }
    }
}

impl std::ops::Deref for ModuleFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

fn settled_identity(file: &File, st: &FileStat, opened: SystemTime) -> Option<FileIdentity> {
    let fs = nix::sys::statfs::fstatfs(file).ok()?;
    #[allow(clippy::unnecessary_cast)] // i64 on some targets, u32 on others
    let fs_type = fs.filesystem_type().0 as i64;
    if !KERNEL_TIMESTAMPED.contains(&fs_type) {
        return None;
    }
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(st.st_ctime).ok()?,
            u32::try_from(st.st_ctime_nsec).ok()?,
        );
    (ctime + SETTLED <= opened).then(|| FileIdentity::of(st))
}

/// The bytes the cache is asked for, and the file they were mapped from
/// when its identity may stand for them.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) file: Option<(&'a File, FileIdentity)>,
}

impl<'a> From<&'a [u8]> for Source<'a> {
    fn from(bytes: &'a [u8]) -> Source<'a> {
        Source { bytes, file: None }
    }
}

impl Source<'_> {
    /// The identity to remember the digest under: the one taken at open,
    /// if the file still has it after its bytes were hashed.
    pub(crate) fn identity_unchanged(&self) -> Option<FileIdentity> {
        let (file, identity) = self.file?;
        let now = FileIdentity::of(&fstat(file).ok()?);
        (now == identity).then_some(identity)
    }

    /// A private copy of the bytes, checked against `digest`: what the
    /// cache compiles from, so that what it stores under a module's digest
    /// is that module, whatever the file's writer did meanwhile.
    pub(crate) fn snapshot(&self, digest: &[u8; 32]) -> std::io::Result<Vec<u8>> {
        use sha2::{Digest, Sha256};
        let copy = self.bytes.to_vec();
        if Sha256::digest(&copy).as_slice() != digest {
            return Err(std::io::Error::other(
                "the file changed while it was read; start the container again",
            ));
        }
        Ok(copy)
    }
}
