//! The compiled-artifact cache: one directory shared by every container on
//! the host (`--wasm-cache`, default `ROOT/wasm-cache`), bounded by
//! `--wasm-cache-max`.
//!
//! An entry is named by a key made of the module's SHA-256 and a SHA-256
//! of the engine's compatibility hash, the same for every build of amphi
//! with this wasmtime and configuration, and is three files:
//!
//! - `KEY.cwasm`, the artifact, mapped (not read and copied) when a
//!   container starts;
//! - `KEY.sum`, its SHA-256, the module's digest and size, and the
//!   artifact file's identity (device, inode, size, mtime, ctime) when the
//!   sum was taken: while that identity holds the file has not been written
//!   since, so the sum is not recomputed on every start. Its mtime is the
//!   entry's last use;
//! - `KEY.lock`, locked exclusively by whoever compiles the module, so
//!   containers starting from one module at once compile it once.
//!
//! A container holds a shared lock on the artifact it runs; eviction takes
//! an exclusive one without waiting, so it never removes an entry in use.
//! An artifact is written under a temporary name and renamed into place:
//! none is ever loaded torn, and one whose sum does not match is compiled
//! again. Every file is opened relative to the directory's fd, taken by the
//! runtime in the host's mount namespace: `exec` prepares inside the
//! container's, whose mounts (its own `/proc` included) lead elsewhere.
//!
//! Storing is best effort: a full disk, a read-only directory or one the
//! container's root may not write costs the next start a compile, with a
//! warning, never the container.

use std::fs::File;
use std::hash::Hash;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::compile::{compile_in_helper, How};
use crate::engine::{self, Kind};
use crate::source::Source;
use crate::{hex, Flavor};

/// The default of `--wasm-cache-max`: room for a few big programs (a 68 MB
/// C++ module compiles to about 220 MB) and many small ones.
pub const DEFAULT_MAX: u64 = 2 << 30;

const FORMAT: &str = "amphi-wasm-cache 1";

impl crate::CacheDir {
    /// Create the directory if need be and open the cache. A cache that
    /// cannot be made costs a warning and a compile, never the container.
    pub fn open(&self) -> Cache {
        if let Err(e) = std::fs::create_dir_all(&self.path) {
            eprintln!(
                "amphi: warning: wasm cache {}: {e}; compiling without a cache \
                 (point --wasm-cache at a writable directory)",
                self.path.display()
            );
        }
        Cache::new(&self.path, self.max)
    }
}

pub struct Cache {
    dir: PathBuf,
    /// The directory, opened where its path still means the host's.
    fd: Option<Arc<OwnedFd>>,
    max: u64,
    /// Artifacts this process runs from, locked shared.
    held: Vec<File>,
}

/// What a load did, for tests and benchmarks (`AMPHI_WASM_CACHE_REPORT`).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Compiled,
    Recompiled,
}

/// One entry, as `amphi wasm-cache list` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    /// SHA-256 of the module or component, as `sha256sum` prints it.
    pub module_digest: String,
    pub module_size: u64,
    pub flavor: Flavor,
    /// The artifact's size on disk.
    pub size: u64,
    pub last_use: SystemTime,
    /// A running container holds it.
    pub in_use: bool,
}

/// Feeds what `Hash` writes into a SHA-256: unlike `DefaultHasher`, the
/// same on every build.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

/// The key of a module of SHA-256 `digest`, for `engine`.
fn key(engine: &Engine, digest: &[u8; 32]) -> String {
    format!("{}-{}", hex(digest), engine_tag(engine))
}

/// The key of what `tag` derives from a module of SHA-256 `digest`.
fn derived_key(engine: &Engine, digest: &[u8; 32], tag: &str) -> String {
    let mut derived = Sha256::new();
    derived.update(digest);
    derived.update(tag.as_bytes());
    format!("{}-{}", hex(&derived.finalize()), engine_tag(engine))
}

fn engine_tag(engine: &Engine) -> String {
    let mut engine_hash = Sha256Hasher(Sha256::new());
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    hex(&engine_hash.0.finalize()[..8])
}

/// What makes a file the same file with the same bytes: a write changes
/// mtime and ctime, and nobody sets ctime.
#[derive(Debug, PartialEq, Eq)]
struct Identity([i64; 7]);

impl Identity {
    fn of(st: &FileStat) -> Identity {
        Identity([
            st.st_dev as i64,
            st.st_ino as i64,
            st.st_size,
            st.st_mtime,
            st.st_mtime_nsec,
            st.st_ctime,
            st.st_ctime_nsec,
        ])
    }
}

/// The contents of `KEY.sum`.
struct Sum {
    artifact_digest: String,
    module_digest: String,
    module_size: u64,
    flavor: Flavor,
    identity: Identity,
}

impl Sum {
    fn render(&self) -> String {
        let flavor = match self.flavor {
            Flavor::Module => "module",
            Flavor::Component => "component",
        };
        let identity: Vec<String> = self.identity.0.iter().map(i64::to_string).collect();
        format!(
            "{FORMAT}\nartifact-sha256 {}\nmodule-sha256 {}\nmodule-size {}\nflavor {flavor}\nidentity {}\n",
            self.artifact_digest,
            self.module_digest,
            self.module_size,
            identity.join(" ")
        )
    }

    fn parse(text: &str) -> Option<Sum> {
        let mut lines = text.lines();
        if lines.next()? != FORMAT {
            return None;
        }
        let mut field = |name: &str| {
            lines
                .next()?
                .strip_prefix(name)?
                .strip_prefix(' ')
                .map(str::to_owned)
        };
        let artifact_digest = field("artifact-sha256")?;
        let module_digest = field("module-sha256")?;
        let module_size = field("module-size")?.parse().ok()?;
        let flavor = match field("flavor")?.as_str() {
            "module" => Flavor::Module,
            "component" => Flavor::Component,
            _ => return None,
        };
        let identity: Vec<i64> = field("identity")?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Sum {
            artifact_digest,
            module_digest,
            module_size,
            flavor,
            identity: Identity(identity.try_into().ok()?),
        })
    }
}

/// A compiled module or component: how it is compiled and loaded.
pub(crate) trait Artifact: Sized {
    const FLAVOR: Flavor;
    /// # Safety
    /// `file` must hold an artifact of `engine`'s configuration, never
    /// written again while the result lives.
    unsafe fn load(engine: &Engine, file: &File) -> wasmtime::Result<Self>;
}

impl Artifact for Module {
    const FLAVOR: Flavor = Flavor::Module;
    unsafe fn load(engine: &Engine, file: &File) -> wasmtime::Result<Module> {
        // SAFETY: the caller's contract; the file is mapped, not read.
        unsafe { Module::deserialize_open_file(engine, file.try_clone()?) }
    }
}

impl Artifact for Component {
    const FLAVOR: Flavor = Flavor::Component;
    unsafe fn load(engine: &Engine, file: &File) -> wasmtime::Result<Component> {
        // wasmtime maps components only by path, and a path is what the
        // cache must not use: map it here, and let wasmtime copy it
        // (components are small next to the modules that need mapping).
        let mapping = crate::source::Mapping::of(file)?;
        // SAFETY: the caller's contract.
        unsafe { Component::deserialize(engine, mapping.bytes()) }
    }
}

fn flock(file: &impl AsRawFd, how: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on an fd we hold.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn open(dir: BorrowedFd, name: &str, flags: OFlag, mode: u32) -> nix::Result<File> {
    openat(
        dir,
        name,
        flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(mode),
    )
    .map(File::from)
}

fn warn(what: impl std::fmt::Display) {
    eprintln!("amphi: warning: wasm cache: {what}; the next start compiles it again");
}

fn report(outcome: &Outcome) {
    if std::env::var_os("AMPHI_WASM_CACHE_REPORT").is_some() {
        eprintln!("amphi: wasm cache: {outcome:?}");
    }
}

/// Removes a half-written artifact unless it was published.
struct Temp<'a> {
    dir: BorrowedFd<'a>,
    name: String,
    published: bool,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.published {
            let _ = unlinkat(self.dir, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Why a verified artifact could not be had.
enum Miss {
    /// No entry.
    Absent,
    /// An entry that is truncated, corrupt, foreign or stale.
    Bad,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>, max: u64) -> Cache {
        let dir = dir.into();
        let fd = nix::fcntl::open(
            &dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(Arc::new);
        Cache {
            dir,
            fd,
            max,
            held: Vec::new(),
        }
    }

    /// A cache that stores nothing (its directory went to another owner).
    pub fn detached() -> Cache {
        Cache {
            dir: PathBuf::new(),
            fd: None,
            max: 0,
            held: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fd the container's init must keep open for the cache to work.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// The artifact loaded last (a cache file, locked shared, or the memfd
    /// it was compiled into when the cache took nothing).
    pub fn last_artifact(&self) -> Option<&File> {
        self.held.last()
    }

    /// Let go of the directory (before the guest runs); the artifacts in
    /// use stay locked.
    pub fn close(&mut self) {
        self.fd = None;
    }

    fn dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_deref().map(AsFd::as_fd)
    }

    /// A core module from the cache, or compiled and cached.
    pub fn module<'s>(
        &mut self,
        kind: Kind,
        source: impl Into<Source<'s>>,
    ) -> wasmtime::Result<Module> {
        self.get(kind, source.into())
    }

    /// A component from the cache, or compiled and cached.
    pub fn component<'s>(
        &mut self,
        kind: Kind,
        source: impl Into<Source<'s>>,
    ) -> wasmtime::Result<Component> {
        self.get(kind, source.into())
    }

    /// A module or component made from `original` by `derive`
    /// (instrumented, pre-initialized), from the cache under a key of
    /// `original` and `tag`, so a hit pays for neither deriving nor
    /// compiling. `derive` is given a private copy of the original.
    pub(crate) fn derived<T: Artifact>(
        &mut self,
        kind: Kind,
        original: Source,
        tag: &str,
        derive: impl FnOnce(&[u8]) -> wasmtime::Result<Vec<u8>>,
    ) -> wasmtime::Result<T> {
        let engine = engine::engine(kind);
        let digest = self.digest(original);
        let key = derived_key(engine, &digest, tag);
        let mut derived = None;
        self.get_keyed(kind, key, || {
            let original = original.snapshot(&digest)?;
            Ok(derived.insert(derive(&original)?).as_slice())
        })
    }

    fn get<T: Artifact>(&mut self, kind: Kind, source: Source) -> wasmtime::Result<T> {
        let digest = self.digest(source);
        let key = key(engine::engine(kind), &digest);
        let mut snapshot = None;
        self.get_keyed(kind, key, || {
            Ok(snapshot.insert(source.snapshot(&digest)?).as_slice())
        })
    }

    fn get_keyed<'b, T: Artifact>(
        &mut self,
        kind: Kind,
        key: String,
        bytes: impl FnOnce() -> wasmtime::Result<&'b [u8]>,
    ) -> wasmtime::Result<T> {
        let engine = engine::engine(kind);
        let mut outcome = Outcome::Compiled;
        if let Some(t) = self.load(engine, &key, &mut outcome) {
            report(&Outcome::Hit);
            return Ok(t);
        }
        let lock = self.lock_for_compile(&key);
        // Whoever held the lock may have just stored it.
        if lock.is_some() {
            if let Some(t) = self.load(engine, &key, &mut outcome) {
                report(&Outcome::Hit);
                return Ok(t);
            }
        }
        let t = self.compile_and_store(kind, engine, bytes()?, &key, lock.is_some())?;
        drop(lock);
        report(&outcome);
        if let Err(e) = self.shrink_to(self.max, Some(&key)) {
            eprintln!(
                "amphi: warning: wasm cache {}: evicting to --wasm-cache-max: {e}",
                self.dir.display()
            );
        }
        Ok(t)
    }

    /// The SHA-256 of `source`: remembered for its file's identity if
    /// this cache hashed that file before (a 20 MB module takes 13 ms to
    /// hash), else computed and, when the identity may stand for the
    /// bytes, remembered.
    fn digest(&self, source: Source) -> [u8; 32] {
        let dir = self.dir_fd();
        let identity = source.file.map(|(_, identity)| identity);
        if let (Some(dir), Some(identity)) = (dir, identity) {
            if let Some(digest) = seen::recall(dir, &identity) {
                return digest;
            }
        }
        let digest: [u8; 32] = Sha256::digest(source.bytes).into();
        if let (Some(dir), Some(identity)) = (dir, source.identity_unchanged()) {
            seen::remember(dir, &identity, &digest);
        }
        digest
    }

    fn load<T: Artifact>(
        &mut self,
        engine: &Engine,
        key: &str,
        outcome: &mut Outcome,
    ) -> Option<T> {
        let file = match self.verified(key) {
            Ok(file) => file,
            Err(Miss::Absent) => return None,
            Err(Miss::Bad) => {
                *outcome = Outcome::Recompiled;
                return None;
            }
        };
        // SAFETY: the artifact's sum matched, so this cache wrote it for an
        // engine with this key's compatibility hash; it is only ever
        // replaced by rename, never written in place.
        match unsafe { T::load(engine, &file) } {
            Ok(t) => {
                self.held.push(file);
                Some(t)
            }
            Err(_) => {
                *outcome = Outcome::Recompiled;
                None
            }
        }
    }

    /// The artifact of `key`, its sum checked, locked shared.
    fn verified(&self, key: &str) -> Result<File, Miss> {
        let dir = self.dir_fd().ok_or(Miss::Absent)?;
        let file = match open(dir, &format!("{key}.cwasm"), OFlag::O_RDONLY, 0) {
            Ok(f) => f,
            Err(Errno::ENOENT) => return Err(Miss::Absent),
            Err(_) => return Err(Miss::Bad),
        };
        flock(&file, libc::LOCK_SH).map_err(|_| Miss::Bad)?;
        let st = fstat(&file).map_err(|_| Miss::Bad)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Miss::Bad);
        }
        let sum = read_sum(dir, key).ok_or(Miss::Bad)?;
        if sum.identity != Identity::of(&st) {
            // Copied, restored, or written since the sum was taken: check
            // the bytes once, and remember the file as it is now.
            if hex(&digest(&file).map_err(|_| Miss::Bad)?) != sum.artifact_digest {
                return Err(Miss::Bad);
            }
            if let Some(lock) = self.try_lock_for_compile(key) {
                let fresh = Sum {
                    identity: Identity::of(&st),
                    ..sum
                };
                let _ = write_sum(dir, key, &fresh);
                drop(lock);
            }
        }
        touch(dir, key);
        Ok(file)
    }

    fn lock_file(&self, key: &str) -> Option<File> {
        let dir = self.dir_fd()?;
        open(
            dir,
            &format!("{key}.lock"),
            OFlag::O_RDWR | OFlag::O_CREAT,
            0o600,
        )
        .ok()
    }

    /// The compile lock of `key`, waited for; none where the directory
    /// cannot be written (nothing will be stored then either).
    fn lock_for_compile(&self, key: &str) -> Option<File> {
        let lock = self.lock_file(key)?;
        flock(&lock, libc::LOCK_EX).ok()?;
        Some(lock)
    }

    fn try_lock_for_compile(&self, key: &str) -> Option<File> {
        let lock = self.lock_file(key)?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB).ok()?;
        Some(lock)
    }

    /// Compile in a helper process (see [`crate::compile`]) into a new
    /// entry, or into memory when the directory takes nothing.
    fn compile_and_store<T: Artifact>(
        &mut self,
        kind: Kind,
        engine: &Engine,
        bytes: &[u8],
        key: &str,
        locked: bool,
    ) -> wasmtime::Result<T> {
        let fd = self.fd.clone();
        let dir = fd.as_deref().map(AsFd::as_fd);
        // We hold the compile lock: a temporary file of this key is a
        // leftover of a compile that was killed.
        let temp = match dir {
            Some(dir) if locked => {
                let name = format!("{key}.tmp");
                let _ = unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
                match open(
                    dir,
                    &name,
                    OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
                    0o644,
                ) {
                    Ok(file) => Some((
                        file,
                        Temp {
                            dir,
                            name,
                            published: false,
                        },
                    )),
                    Err(e) => {
                        warn(format_args!(
                            "{}: cannot store the compiled module: {e}",
                            self.dir.display()
                        ));
                        None
                    }
                }
            }
            Some(_) => {
                warn(format_args!("{}: not writable", self.dir.display()));
                None
            }
            None => {
                warn(format_args!("{}: cannot be opened", self.dir.display()));
                None
            }
        };
        let written = compile_in_helper(kind, T::FLAVOR, bytes, temp.as_ref().map(|(f, _)| f))?;
        let How::File { artifact_digest } = written.how else {
            if let Some(why) = written.why_not_stored {
                warn(format_args!(
                    "{}: cannot store the compiled module: {why}",
                    self.dir.display()
                ));
            }
            // SAFETY: just compiled by an engine of this configuration,
            // into a memfd nobody else holds.
            let t = unsafe { T::load(engine, &written.memfd) }?;
            self.held.push(written.memfd);
            return Ok(t);
        };
        let (_, mut temp) = temp.expect("the helper wrote to the file it was given");
        let dir = temp.dir;
        // Hold it read-only and locked before anyone can see it.
        let file = open(dir, &temp.name, OFlag::O_RDONLY, 0)?;
        flock(&file, libc::LOCK_SH)?;
        renameat(
            dir,
            temp.name.as_str(),
            dir,
            format!("{key}.cwasm").as_str(),
        )?;
        temp.published = true;
        let sum = Sum {
            artifact_digest,
            module_digest: hex(&Sha256::digest(bytes)),
            module_size: bytes.len() as u64,
            flavor: T::FLAVOR,
            identity: Identity::of(&fstat(&file)?),
        };
        if let Err(e) = write_sum(dir, key, &sum) {
            warn(format_args!(
                "{}: cannot record the artifact's sum: {e}",
                self.dir.display()
            ));
        }
        // SAFETY: written by the helper for this engine's configuration,
        // published by rename, locked against eviction.
        let t = unsafe { T::load(engine, &file) }?;
        self.held.push(file);
        Ok(t)
    }

    /// Every entry, oldest use first.
    pub fn list(&self) -> std::io::Result<Vec<Entry>> {
        let Some(dir) = self.dir_fd() else {
            return Err(std::io::Error::other(format!(
                "{}: cannot be opened",
                self.dir.display()
            )));
        };
        let mut entries = Vec::new();
        for name in names(dir)? {
            let Some(key) = name.strip_suffix(".cwasm") else {
                continue;
            };
            let Ok(st) = fstatat(dir, name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let sum = read_sum(dir, key);
            let last_use = fstatat(
                dir,
                format!("{key}.sum").as_str(),
                nix::fcntl::AtFlags::empty(),
            )
            .map_or(st.st_mtime, |s| s.st_mtime);
            let in_use = match open(dir, &name, OFlag::O_RDONLY, 0) {
                Ok(f) => flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err(),
                Err(_) => false,
            };
            entries.push(Entry {
                key: key.to_owned(),
                module_digest: sum
                    .as_ref()
                    .map_or_else(String::new, |s| s.module_digest.clone()),
                module_size: sum.as_ref().map_or(0, |s| s.module_size),
                flavor: sum.as_ref().map_or(Flavor::Module, |s| s.flavor),
                size: st.st_size as u64,
                last_use: SystemTime::UNIX_EPOCH + Duration::from_secs(last_use.max(0) as u64),
                in_use,
            });
        }
        entries.sort_by_key(|e| e.last_use);
        Ok(entries)
    }

    /// Evict least recently used entries until the artifacts take at most
    /// `max` bytes, never one in use nor `keep`; also drop what a killed
    /// compile left. Returns the entries removed.
    pub fn shrink_to(&self, max: u64, keep: Option<&str>) -> std::io::Result<Vec<Entry>> {
        let Some(dir) = self.dir_fd() else {
            return Ok(Vec::new());
        };
        let entries = self.list()?;
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = Vec::new();
        for entry in entries {
            if total <= max {
                break;
            }
            if entry.in_use || Some(entry.key.as_str()) == keep {
                continue;
            }
            let Ok(file) = open(dir, &format!("{}.cwasm", entry.key), OFlag::O_RDONLY, 0) else {
                continue;
            };
            // Taken between list and now: in use after all.
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue;
            }
            for suffix in ["cwasm", "sum", "lock"] {
                let _ = unlinkat(
                    dir,
                    format!("{}.{suffix}", entry.key).as_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
            }
            total -= entry.size;
            removed.push(entry);
        }
        self.drop_leftovers(dir)?;
        seen::prune(dir, max == 0);
        Ok(removed)
    }

    /// Temporary files of compiles that were killed, and sums and locks
    /// of entries gone, unless a compile holds their lock.
    fn drop_leftovers(&self, dir: BorrowedFd) -> std::io::Result<()> {
        let names = names(dir)?;
        for name in names.iter().filter(|n| !n.starts_with(seen::PREFIX)) {
            let Some((key, suffix)) = name.rsplit_once('.') else {
                continue;
            };
            if !matches!(suffix, "tmp" | "sum" | "lock") || names.contains(&format!("{key}.cwasm"))
            {
                continue;
            }
            if let Some(lock) = self.try_lock_for_compile(key) {
                let _ = unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
                drop(lock);
            }
        }
        Ok(())
    }
}

fn names(dir: BorrowedFd) -> std::io::Result<Vec<String>> {
    let mut listing = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(listing
        .iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect())
}

fn digest(file: &File) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut reader = file;
    let mut buf = vec![0; 1 << 20];
    loop {
        match reader.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher.finalize().into())
}

fn read_sum(dir: BorrowedFd, key: &str) -> Option<Sum> {
    let mut text = String::new();
    open(dir, &format!("{key}.sum"), OFlag::O_RDONLY, 0)
        .ok()?
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    Sum::parse(&text)
}

fn write_sum(dir: BorrowedFd, key: &str, sum: &Sum) -> std::io::Result<()> {
    let temp = format!("{key}.sum.tmp");
    let mut file = open(
        dir,
        &temp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        0o644,
    )?;
    file.write_all(sum.render().as_bytes())?;
    renameat(dir, temp.as_str(), dir, format!("{key}.sum").as_str())?;
    Ok(())
}

/// Mark the entry used now (the sum's mtime), best effort.
fn touch(dir: BorrowedFd, key: &str) {
    let now = nix::sys::time::TimeSpec::new(0, libc::UTIME_NOW);
    let _ = nix::sys::stat::utimensat(
        dir,
        format!("{key}.sum").as_str(),
        &now,
        &now,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

/// What this cache hashed before: a module file's SHA-256 under the
/// file's identity ([`crate::source::FileIdentity`]), one small file
/// each, `seen-INODE-CTIME`. A lost or unreadable one costs a hash.
mod seen {
    use std::io::{Read, Write};
    use std::os::fd::BorrowedFd;

    use nix::fcntl::{renameat, OFlag};
    use nix::unistd::{unlinkat, UnlinkatFlags};

    use super::{names, open};
    use crate::hex;
    use crate::source::FileIdentity;

    pub(super) const PREFIX: &str = "seen-";
    const FORMAT: &str = "amphi-wasm-seen 1";
    /// Files remembered at most; the oldest are forgotten first.
    const MAX: usize = 4096;

    fn name(id: &FileIdentity) -> String {
        format!("{PREFIX}{}-{}.{:09}", id.ino, id.ctime.0, id.ctime.1)
    }

    /// What a record says before the digest: all of the identity, so
    /// that a record is used only for the file it was made for.
    fn header(id: &FileIdentity) -> String {
        format!(
            "{FORMAT}\nidentity {} {} {} {} {} {}\nmodule-sha256 ",
            id.ino, id.size, id.mtime.0, id.mtime.1, id.ctime.0, id.ctime.1
        )
    }

    pub(super) fn recall(dir: BorrowedFd, id: &FileIdentity) -> Option<[u8; 32]> {
        let mut text = String::new();
        open(dir, &name(id), OFlag::O_RDONLY, 0)
            .ok()?
            .take(512)
            .read_to_string(&mut text)
            .ok()?;
        let digest_hex = text.strip_prefix(&header(id))?.strip_suffix('\n')?;
        if digest_hex.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(digest_hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(digest)
    }

    /// Best effort: a cache the container's root may not write simply
    /// hashes again next time.
    pub(super) fn remember(dir: BorrowedFd, id: &FileIdentity, digest: &[u8; 32]) {
        let name = name(id);
        let temp = format!("{name}-{}.tmp", std::process::id());
        let Ok(mut file) = open(
            dir,
            &temp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o644,
        ) else {
            return;
        };
        let written = file
            .write_all(format!("{}{}\n", header(id), hex(digest)).as_bytes())
            .is_ok()
            && renameat(dir, temp.as_str(), dir, name.as_str()).is_ok();
        if !written {
            let _ = unlinkat(dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }

    /// Forget the oldest beyond [`MAX`] (all of them when the cache is
    /// emptied), and temporary files a killed writer left.
    pub(super) fn prune(dir: BorrowedFd, all: bool) {
        let Ok(names) = names(dir) else { return };
        let mut remembered = Vec::new();
        for name in names.into_iter().filter(|n| n.starts_with(PREFIX)) {
            let Ok(st) = nix::sys::stat::fstatat(
                dir,
                name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            let age = (st.st_mtime, st.st_mtime_nsec);
            if name.ends_with(".tmp") {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if now - st.st_mtime > 60 {
                    let _ = unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
                }
                continue;
            }
            remembered.push((age, name));
        }
        let keep = if all { 0 } else { MAX };
        if remembered.len() > keep {
            remembered.sort();
            let excess = remembered.len() - keep;
            for (_, name) in remembered.into_iter().take(excess) {
                let _ = unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const WAT: &[u8] = b"(module (func (export \"f\") (result i32) i32.const 7))";

    fn entry(dir: &Path, suffix: &str) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == suffix))
            .unwrap()
    }

    fn key_of(kind: Kind, bytes: &[u8]) -> String {
        key(engine::engine(kind), &Sha256::digest(bytes).into())
    }

    fn sum_ok(dir: &Path) -> bool {
        let artifact = std::fs::read(entry(dir, "cwasm")).unwrap();
        let sum = Sum::parse(&std::fs::read_to_string(entry(dir, "sum")).unwrap()).unwrap();
        hex(&Sha256::digest(&artifact)) == sum.artifact_digest
    }

    #[test]
    fn the_key_is_stable_and_names_the_module() {
        let k = key_of(Kind::Command, WAT);
        assert_eq!(k, key_of(Kind::Command, WAT));
        assert!(k.starts_with(&hex(&Sha256::digest(WAT))), "{k}");
        assert_ne!(k, key_of(Kind::Function, WAT));
    }

    #[test]
    fn sums_round_trip() {
        let sum = Sum {
            artifact_digest: "ab".repeat(32),
            module_digest: "cd".repeat(32),
            module_size: 12,
            flavor: Flavor::Component,
            identity: Identity([1, 2, 3, 4, 5, 6, -7]),
        };
        let back = Sum::parse(&sum.render()).unwrap();
        assert_eq!(back.render(), sum.render());
        assert!(Sum::parse("amphi-wasm-cache 0\n").is_none());
        assert!(Sum::parse(&sum.render().replace("flavor component", "flavor x")).is_none());
    }

    #[test]
    fn corrupt_entries_are_recompiled_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let load = || {
            let mut cache = Cache::new(dir.path(), DEFAULT_MAX);
            cache.module(Kind::Command, WAT).unwrap();
        };
        load();
        assert!(sum_ok(dir.path()));
        // Flip one byte of the artifact: the identity changed, so the sum
        // is checked and catches it.
        let path = entry(dir.path(), "cwasm");
        let mut data = std::fs::read(&path).unwrap();
        data[100] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        assert!(!sum_ok(dir.path()));
        load();
        assert!(sum_ok(dir.path()), "entry not rewritten");
        // A truncated entry too.
        std::fs::write(&path, &data[..10]).unwrap();
        load();
        assert!(sum_ok(dir.path()));
        // No leftovers.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .extension()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["cwasm", "lock", "sum"]);
    }

    #[test]
    fn eviction_is_least_recently_used_and_spares_entries_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let module = |n: i32| format!("(module (func (export \"f\") (result i32) i32.const {n}))");
        let mut running = Cache::new(dir.path(), DEFAULT_MAX);
        running.module(Kind::Command, module(0).as_bytes()).unwrap();
        for n in 1..4 {
            Cache::new(dir.path(), DEFAULT_MAX)
                .module(Kind::Command, module(n).as_bytes())
                .unwrap();
            // Last use has a one-second grain.
            let sum = dir.path().join(format!(
                "{}.sum",
                key_of(Kind::Command, module(n).as_bytes())
            ));
            let t = nix::sys::time::TimeSpec::new(1_000_000 + i64::from(n), 0);
            set_times(&sum, &t, nix::sys::stat::UtimensatFlags::FollowSymlink);
        }
        let cache = Cache::new(dir.path(), DEFAULT_MAX);
        let all = cache.list().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all.iter().filter(|e| e.in_use).count(), 1);
        // Room for the entry in use and the newest: the two others go.
        let newest = key_of(Kind::Command, module(3).as_bytes());
        let room = all
            .iter()
            .filter(|e| e.in_use || e.key == newest)
            .map(|e| e.size)
            .sum();
        let removed = cache.shrink_to(room, None).unwrap();
        let left: Vec<Entry> = cache.list().unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(left.len(), 2);
        assert!(left.iter().any(|e| e.in_use));
        assert!(left.iter().any(|e| e.key == newest), "{left:?}");
        // Everything unused goes; the held entry stays until its holder ends.
        cache.shrink_to(0, None).unwrap();
        assert_eq!(cache.list().unwrap().len(), 1);
        drop(running);
        cache.shrink_to(0, None).unwrap();
        assert!(cache.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    fn seen_records(dir: &Path) -> Vec<String> {
        let mut records: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(seen::PREFIX))
            .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
            .collect();
        records.sort();
        records
    }

    fn artifacts(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "cwasm")
            })
            .count()
    }

    /// A cache that loaded the module file at `path` (and holds it).
    fn load_file(cache_dir: &Path, path: &Path) -> Cache {
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        let module = crate::source::ModuleFile::map(file, size).unwrap();
        let mut cache = Cache::new(cache_dir, DEFAULT_MAX);
        cache.module(Kind::Command, module.source()).unwrap();
        cache
    }

    fn set_times(
        path: &Path,
        t: &nix::sys::time::TimeSpec,
        follow: nix::sys::stat::UtimensatFlags,
    ) {
        nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, t, t, follow).unwrap();
    }

    /// Past [`crate::source`]'s settling time, with a margin for a busy
    /// machine's clock reads.
    fn settle() {
        std::thread::sleep(Duration::from_millis(3500));
    }

    #[test]
    fn a_module_file_is_hashed_once_while_it_stays_the_same_file() {
        let cache = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let path = files.path().join("m.wat");
        std::fs::write(&path, WAT).unwrap();
        // Just written: its ctime could still be shared by a later write.
        load_file(cache.path(), &path);
        assert!(seen_records(cache.path()).is_empty());
        settle();
        load_file(cache.path(), &path);
        let records = seen_records(cache.path());
        assert_eq!(records.len(), 1);
        assert!(records[0].ends_with(&format!("{}\n", hex(&Sha256::digest(WAT)))));
        // The record is what a later start goes by: pointed at another
        // module's digest, it loads that module's entry, not the file's.
        let other = b"(module (func (export \"f\") (result i32) i32.const 9))";
        Cache::new(cache.path(), DEFAULT_MAX)
            .module(Kind::Command, &other[..])
            .unwrap();
        assert_eq!(artifacts(cache.path()), 2);
        let record = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(seen::PREFIX)
            })
            .unwrap();
        let pointed = records[0].replace(&hex(&Sha256::digest(WAT)), &hex(&Sha256::digest(other)));
        std::fs::write(&record, pointed).unwrap();
        let c = load_file(cache.path(), &path);
        let loaded = fstat(c.last_artifact().unwrap()).unwrap();
        let other_entry = cache
            .path()
            .join(format!("{}.cwasm", key_of(Kind::Command, other)));
        assert_eq!(std::fs::metadata(other_entry).unwrap().ino(), loaded.st_ino);
    }

    /// A hostile image rewrites its module in place, same size, with the
    /// old mtime put back: the new ctime makes it another file, hashed.
    #[test]
    fn a_module_rewritten_with_its_old_mtime_is_hashed_again() {
        let cache = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let path = files.path().join("m.wat");
        std::fs::write(&path, WAT).unwrap();
        settle();
        load_file(cache.path(), &path);
        assert_eq!(seen_records(cache.path()).len(), 1);
        let before = std::fs::metadata(&path).unwrap();
        let rewritten = String::from_utf8(WAT.to_vec())
            .unwrap()
            .replace("const 7", "const 8");
        std::fs::write(&path, &rewritten).unwrap();
        let mtime = nix::sys::time::TimeSpec::new(before.mtime(), before.mtime_nsec());
        set_times(
            &path,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
        settle();
        load_file(cache.path(), &path);
        assert_eq!(
            artifacts(cache.path()),
            2,
            "the rewritten module was not compiled"
        );
        let records = seen_records(cache.path());
        assert_eq!(records.len(), 2);
        let digest = hex(&Sha256::digest(rewritten.as_bytes()));
        assert!(
            records.iter().any(|r| r.ends_with(&format!("{digest}\n"))),
            "{records:?}"
        );
        assert!(cache
            .path()
            .join(format!(
                "{}.cwasm",
                key_of(Kind::Command, rewritten.as_bytes())
            ))
            .exists());
    }
}
