//! The one place where amphi resolves a path that a container can
//! influence: inside its rootfs (mount targets, devices, masked and
//! read-only paths, the console, the cwd, programs and modules), and the
//! files amphi itself creates where a container may write (pid files,
//! checkpoint images, state).
//!
//! Every lookup inside the container goes through `openat2` with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: absolute symlinks and `..`
//! stay inside the root, and `/proc/self/fd/N` (a magic link to whatever
//! the runtime holds) is refused outright (CVE-2024-21626, 2021-30465,
//! 2024-45310). What is resolved is used by fd from then on, never
//! looked up by its string again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::SysContext;
use crate::{Error, Result};

/// What a missing path should be created as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Nothing,
    Dir,
    File,
}

/// `path` as `openat2` takes it relative to a root: no leading `/`, no
/// `.`; the root itself is `.`.
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

fn resolve_in_root(root: BorrowedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Open `path` inside the rootfs as if the rootfs were `/` (symlinks and `..`
/// cannot leave it), creating missing components as asked. The result is an
/// O_PATH fd, for the caller to mount onto, stat or reopen, so the target
/// cannot be swapped for a symlink between resolution and use.
pub fn open_in_root(root: BorrowedFd, path: &Path, create: Create) -> Result<OwnedFd> {
    let ctx = || format!("resolve {} inside the rootfs", path.display());
    let rel = relative(path);
    match resolve_in_root(root, &rel, OFlag::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        Err(e) => return Err(Error::sys(ctx(), e)),
    }
    let comps: Vec<_> = rel.components().collect();
    // The deepest ancestor that exists, looked for from the path upwards:
    // what is missing is usually the last component alone (a mount point
    // in a directory the image has), found in one lookup instead of one
    // per component. Each prefix is resolved from the root, as the path is.
    let mut existing = comps.len() - 1;
    let mut parent = loop {
        let prefix: PathBuf = comps[..existing].iter().collect();
        match resolve_in_root(root, &relative(&prefix), OFlag::O_PATH) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) if existing > 0 => existing -= 1,
            Err(e) => return Err(Error::sys(ctx(), e)),
        }
    };
    let mut prefix: PathBuf = comps[..existing].iter().collect();
    for (i, c) in comps.iter().enumerate().skip(existing) {
        prefix.push(c);
        let name = c.as_os_str();
        let last = i + 1 == comps.len();
        let made = if last && create == Create::File {
            openat(
                parent.as_fd(),
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC
                    | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::sys(ctx(), e)),
        }
        // Looked up again from the root: what was made may have been
        // swapped for a symlink since, which must not lead out.
        parent = resolve_in_root(root, &prefix, OFlag::O_PATH).sys(ctx)?;
    }
    Ok(parent)
}

/// Open a regular file inside the rootfs for reading, as [`open_in_root`]
/// resolves it, without reopening through `/proc/self/fd` (which resolves
/// in whatever `/proc` the current mount namespace has). The type is
/// checked on an O_PATH fd first, so a FIFO or device is never opened; the
/// file opened for reading must be the same inode.
pub fn open_regular_in_root(root: BorrowedFd, path: &Path) -> Result<(std::fs::File, u64)> {
    let ctx = || format!("{} inside the rootfs", path.display());
    let rel = relative(path);
    let probe = resolve_in_root(root, &rel, OFlag::O_PATH).sys(ctx)?;
    let st = nix::sys::stat::fstat(&probe).sys(ctx)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Init(format!("{}: not a regular file", ctx())));
    }
    let fd = resolve_in_root(
        root,
        &rel,
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
    )
    .sys(ctx)?;
    let again = nix::sys::stat::fstat(&fd).sys(ctx)?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        return Err(Error::Init(format!(
            "{}: replaced while it was opened",
            ctx()
        )));
    }
    Ok((std::fs::File::from(fd), again.st_size as u64))
}

/// The directory a container path names, opened inside the process's own
/// root (the container's, after pivot_root or setns).
fn open_dir_in_own_root(path: &Path) -> nix::Result<OwnedFd> {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    resolve_in_root(
        root.as_fd(),
        &relative(path),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
    )
}

/// Enter `process.cwd` inside the container, once its root is the
/// process's root. Resolved inside the root with no magic link followed,
/// so `/proc/self/fd/N` cannot lead to a directory the runtime holds; and
/// checked after the change, as runc does, in case anything still led out
/// (a directory outside the root has no path from it, and the kernel
/// reports such a cwd as "(unreachable)").
pub fn chdir_in_root(cwd: &Path) -> Result<()> {
    let what = || format!("process.cwd {}", cwd.display());
    let dir = open_dir_in_own_root(cwd).map_err(|e| {
        let hint = match e {
            Errno::ELOOP | Errno::EXDEV => {
                " (a magic link such as /proc/self/fd/N; name a directory of the container)"
            }
            Errno::ENOTDIR => " (not a directory)",
            _ => "",
        };
        Error::Init(format!("{}: {}{hint}", what(), e.desc()))
    })?;
    nix::unistd::fchdir(dir.as_fd()).sys(what)?;
    match raw_getcwd() {
        Ok(p) if p.first() == Some(&b'/') => Ok(()),
        Ok(_) | Err(Errno::ENOENT) => Err(Error::Init(format!(
            "{}: leads outside the container's root; refusing it",
            what()
        ))),
        Err(e) => Err(Error::sys(format!("{}: getcwd", what()), e)),
    }
}

/// getcwd(2) itself: the kernel prefixes a cwd outside the root with
/// "(unreachable)" where libc's wrapper would hide that.
fn raw_getcwd() -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer and its length are valid for the call.
    let n = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    let n = Errno::result(n)? as usize;
    buf.truncate(n.saturating_sub(1));
    Ok(buf)
}

/// Write `data` to `path` as a new file that readers see whole or not at
/// all, in a directory a container may be able to write (runc's
/// `createPidFile`): see [`stage_file`].
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    stage_file(path, data)?.commit()
}

/// A file written under a random name beside where it goes, put in place
/// by [`Staged::commit`] and removed if dropped before.
pub struct Staged {
    dir: OwnedFd,
    tmp: String,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Rename it over its path: readers see the old file or this one whole.
    pub fn commit(mut self) -> Result<()> {
        let name = self.path.file_name().expect("checked by stage_file");
        nix::fcntl::renameat(self.dir.as_fd(), self.tmp.as_str(), self.dir.as_fd(), name)
            .map_err(|e| Error::io("rename to", &self.path, e.into()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                self.tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// The first half of [`write_file`], for a caller with time to spare
/// before the file must be in place: the directory is opened once and
/// everything happens relative to it; the content goes to a new file
/// under a random name, created with `O_EXCL | O_NOFOLLOW` (so a planted
/// symlink or file is never followed or truncated), which
/// [`Staged::commit`] renames over `path`.
pub fn stage_file(path: &Path, data: &[u8]) -> Result<Staged> {
    use std::io::Write;
    let (dir_path, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => return Err(Error::Init(format!("{}: not a file path", path.display()))),
    };
    let dir = nix::fcntl::open(
        dir_path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open directory of", path, e.into()))?;
    let (tmp, file) = loop {
        let tmp = format!(".{}.{:016x}", name.to_string_lossy(), random_u64());
        match openat(
            dir.as_fd(),
            tmp.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => break (tmp, std::fs::File::from(fd)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(Error::io("create", dir_path.join(&tmp), e.into())),
        }
    };
    let staged = Staged {
        dir,
        tmp,
        path: path.to_path_buf(),
        committed: false,
    };
    (&file)
        .write_all(data)
        .map_err(|e| Error::io("write", dir_path.join(&staged.tmp), e))?;
    Ok(staged)
}

/// 64 random bits from the kernel, for names nobody can predict.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for its length; getrandom fills it or fails.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Only the name's unpredictability suffers; O_EXCL still guards.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ (std::process::id() as u64) << 32;
    }
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::open;
    use std::os::fd::AsRawFd;

    #[test]
    fn resolution_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // An absolute symlink and a ../ escape both resolve inside the root.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc/rel")).unwrap();
        std::fs::create_dir(root.join("outside")).unwrap();
        let rootfd = open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        // One component missing, and several (made one by one below the
        // deepest that exists, each looked up from the root again).
        for p in ["/etc/rel/y", "/../../outside/z", "/etc/rel/a/b/c"] {
            open_in_root(rootfd.as_fd(), Path::new(p), Create::Dir).unwrap();
        }
        // A file where a directory is needed fails, whatever lies below it.
        std::fs::write(root.join("etc/file"), "").unwrap();
        for p in ["/etc/file/x", "/etc/file/x/y"] {
            assert!(open_in_root(rootfd.as_fd(), Path::new(p), Create::Dir).is_err());
        }
        // A symlink to a host path that does not exist inside the root is refused.
        assert!(open_in_root(rootfd.as_fd(), Path::new("/abs/x"), Create::Dir).is_err());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "created outside the root"
        );
        assert!(root.join("outside/y").is_dir());
        assert!(root.join("outside/z").is_dir());
        assert!(root.join("outside/a/b/c").is_dir());
    }

    #[test]
    fn magic_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host = std::fs::File::open(dir.path()).unwrap();
        let rootfd = open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        // The root holds a proc symlink, as an image without a procfs
        // mount may; the fd link itself is refused.
        std::os::unix::fs::symlink("/proc", dir.path().join("proc")).unwrap();
        let via_fd = format!("/proc/self/fd/{}", host.as_raw_fd());
        assert!(open_in_root(rootfd.as_fd(), Path::new(&via_fd), Create::Nothing).is_err());
    }

    #[test]
    fn new_files_never_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host data").unwrap();
        let target = dir.path().join("pid");
        // The name a predictable writer would use, and the target itself,
        // planted as symlinks to the victim.
        std::os::unix::fs::symlink(&victim, dir.path().join(".pid")).unwrap();
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_file(&target, b"42").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host data");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "42");
        assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "a temporary file was left: {names:?}");
    }
}
