//! The container's filesystem: mounts resolved inside the rootfs (never
//! following a symlink out of it), devices, pivot_root, masked and
//! read-only paths.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, mknodat, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, chroot, fchdir, pivot_root, symlinkat};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::SysContext;
use crate::paths::{open_in_root, Create};
use crate::{Error, Result};

fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// procfs and sysfs go only on real directories: a symlink would move them
/// somewhere the masked and read-only paths do not cover (CVE-2019-19921).
fn refuse_symlink(root: BorrowedFd, dest: &Path, typ: &str) -> Result<()> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Ok(());
    };
    let parent_fd;
    let parent = if parent.components().all(|c| matches!(c, Component::RootDir)) {
        root
    } else {
        parent_fd = match open_in_root(root, parent, Create::Nothing) {
            Ok(fd) => fd,
            Err(_) => return Ok(()),
        };
        parent_fd.as_fd()
    };
    match nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Err(Error::Init(format!(
            "mounts: {} is a symlink in the rootfs; {typ} is mounted only on a directory",
            dest.display()
        ))),
        _ => Ok(()),
    }
}

/// Mount flags and data of a mount's `options`.
struct Options {
    flags: MsFlags,
    /// The recursive options (`rro`, `rnosuid`, ...): attributes for the
    /// mount and every mount below it, set with `mount_setattr`.
    recursive: libc::mount_attr,
    propagation: Vec<MsFlags>,
    data: Vec<String>,
}

/// runtime-spec's recursive mount options: the attribute each sets (or,
/// for the `r<option>` that undoes one, clears).
fn recursive_option(opt: &str) -> Option<(bool, u64)> {
    Some(match opt {
        "rro" => (true, libc::MOUNT_ATTR_RDONLY),
        "rrw" => (false, libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => (true, libc::MOUNT_ATTR_NOSUID),
        "rsuid" => (false, libc::MOUNT_ATTR_NOSUID),
        "rnodev" => (true, libc::MOUNT_ATTR_NODEV),
        "rdev" => (false, libc::MOUNT_ATTR_NODEV),
        "rnoexec" => (true, libc::MOUNT_ATTR_NOEXEC),
        "rexec" => (false, libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (true, libc::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (false, libc::MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => (true, libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (false, libc::MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// The recursive atime options: one mode for the whole tree.
fn recursive_atime(opt: &str) -> Option<u64> {
    Some(match opt {
        "rrelatime" => libc::MOUNT_ATTR_RELATIME,
        "rnorelatime" | "rstrictatime" => libc::MOUNT_ATTR_STRICTATIME,
        "rnoatime" => libc::MOUNT_ATTR_NOATIME,
        "ratime" | "rnostrictatime" => libc::MOUNT_ATTR_RELATIME,
        _ => return None,
    })
}

fn parse_options(options: &[String]) -> Result<Options> {
    let mut o = Options {
        flags: MsFlags::empty(),
        // SAFETY: mount_attr is plain integers.
        recursive: unsafe { std::mem::zeroed() },
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for opt in options {
        if let Some((set, attr)) = recursive_option(opt) {
            let (on, off) = if set {
                (&mut o.recursive.attr_set, &mut o.recursive.attr_clr)
            } else {
                (&mut o.recursive.attr_clr, &mut o.recursive.attr_set)
            };
            *on |= attr;
            *off &= !attr;
            continue;
        }
        if let Some(mode) = recursive_atime(opt) {
            o.recursive.attr_set = (o.recursive.attr_set & !libc::MOUNT_ATTR__ATIME) | mode;
            o.recursive.attr_clr |= libc::MOUNT_ATTR__ATIME;
            continue;
        }
        let (clear, flag) = match opt.as_str() {
            "defaults" => (false, MsFlags::empty()),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "suid" => (true, MsFlags::MS_NOSUID),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "dev" => (true, MsFlags::MS_NODEV),
            "nodev" => (false, MsFlags::MS_NODEV),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "atime" => (true, MsFlags::MS_NOATIME),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation.push(propagation(opt).expect("listed"));
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" => {
                return Err(Error::Unsupported(format!(
                    "mount option {opt:?} is not supported yet"
                )))
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        if clear {
            o.flags.remove(flag);
        } else {
            o.flags.insert(flag);
        }
    }
    Ok(o)
}

fn propagation(name: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    /// In a user namespace: device nodes are bind-mounted from the host,
    /// since mknod is not allowed there.
    pub userns: bool,
    /// The container's cgroup directories, for `cgroup` mounts.
    pub cgroup_paths: &'a [PathBuf],
}

/// Set up the rootfs in the container's (new) mount namespace. Returns the
/// rootfs opened, for executors to resolve paths in.
/// `linux.rootfsPropagation` (default rslave), by name and as flags.
fn root_propagation(spec: &Spec) -> Result<(&str, MsFlags)> {
    let name = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .unwrap_or("rslave");
    let prop = propagation(name).ok_or_else(|| Error::InvalidSpec {
        file: "config.json".into(),
        field: "linux.rootfsPropagation".into(),
        why: format!("unknown propagation {name:?}"),
    })?;
    Ok((name, prop))
}

pub fn setup(ctx: &RootfsContext) -> Result<OwnedFd> {
    let linux = ctx.spec.linux().as_ref();
    let (prop_name, prop) = root_propagation(ctx.spec)?;
    // As runc: the tree takes `linux.rootfsPropagation` (rslave unless
    // set), so a volume bound from a shared host mount follows the host's
    // mounts (rslave: CRI's HostToContainer) or stays in the host's peer
    // group (rshared: Bidirectional, which CSI node plugins need). Only the
    // mount holding the rootfs is made private: the rootfs's own bind then
    // propagates nowhere, and pivot_root takes it.
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .sys(|| format!("linux.rootfsPropagation {prop_name}: on /"))?;
    make_parent_mount_private(ctx.rootfs)?;
    // pivot_root needs the rootfs to be a mount point.
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .sys(|| format!("bind rootfs {}", ctx.rootfs.display()))?;
    let root = open(
        ctx.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| format!("open rootfs {}", ctx.rootfs.display()))?;

    let mounts = ctx.spec.mounts().as_deref().unwrap_or_default();
    for (i, m) in mounts.iter().enumerate() {
        mount_one(ctx, root.as_fd(), m).map_err(|e| {
            Error::Init(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
    }

    let dev_is_host_bind = mounts.iter().any(|m| {
        m.destination() == Path::new("/dev") && m.typ().as_deref().is_none_or(|t| t == "bind")
    });
    if !dev_is_host_bind {
        let devices = linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default();
        for d in default_devices()
            .iter()
            .filter(|d| !devices.iter().any(|x| x.path() == d.path()))
            .chain(devices)
        {
            create_device(root.as_fd(), d, ctx.userns)?;
        }
        dev_symlinks(root.as_fd())?;
    }
    Ok(root)
}

/// The mount the rootfs lies on (the rootfs itself, if it is a mount
/// point), made private if it is shared, as runc does: in this new mount
/// namespace it is still a peer of the host's.
fn make_parent_mount_private(rootfs: &Path) -> Result<()> {
    let rootfs = std::fs::canonicalize(rootfs).map_err(|e| Error::io("resolve", rootfs, e))?;
    let mountinfo = crate::procfs::handle()?
        .read_self("mountinfo")
        .sys(|| "read the init's mountinfo".into())?;
    let parent = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = PathBuf::from(unescape_mountinfo(fields.get(4)?));
            let shared = fields[6..]
                .iter()
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"));
            rootfs.starts_with(&point).then_some((point, shared))
        })
        .max_by_key(|(point, _)| point.components().count());
    match parent {
        Some((point, true)) => mount(
            None::<&str>,
            &point,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .sys(|| format!("make {} (holding the rootfs) private", point.display())),
        _ => Ok(()),
    }
}

/// A mountinfo path field: the kernel writes space, tab, newline and
/// backslash as octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let n = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(n as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn default_devices() -> Vec<LinuxDevice> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| {
        oci_spec::runtime::LinuxDeviceBuilder::default()
            .path(path)
            .typ(LinuxDeviceType::C)
            .major(major)
            .minor(minor)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .expect("static device")
    })
    .collect()
}

fn mount_one(ctx: &RootfsContext, root: BorrowedFd, m: &Mount) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_options(m.options().as_deref().unwrap_or_default())?;
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let dest = m.destination();

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, root, dest, &opts);
    }

    let source: Option<PathBuf> = m.source().as_ref().map(|s| {
        if is_bind && s.is_relative() {
            ctx.bundle.join(s)
        } else {
            s.clone()
        }
    });
    let create = if is_bind {
        let src = source
            .as_deref()
            .ok_or_else(|| Error::Init("bind mount without a source".into()))?;
        let meta = std::fs::metadata(src).map_err(|e| Error::io("stat bind source", src, e))?;
        if meta.is_dir() {
            Create::Dir
        } else {
            Create::File
        }
    } else {
        Create::Dir
    };
    if typ == "proc" || typ == "sysfs" {
        refuse_symlink(root, dest, typ)?;
    }
    let target = open_in_root(root, dest, create)?;
    let target_path = fd_path(&target);
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());

    if is_bind {
        let src = source.as_deref().expect("checked above");
        let flags = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        let at = Target {
            root,
            fd: target.as_fd(),
            dest,
        };
        bind(
            Source::Host(src),
            at,
            opts.flags.contains(MsFlags::MS_REC),
            flags,
            Reach::Top,
        )?;
    } else {
        let flags = opts.flags;
        let result = mount(
            source.as_deref().or(Some(Path::new(typ))),
            target_path.as_str(),
            Some(typ),
            flags,
            data,
        );
        match result {
            Ok(()) => {}
            // sysfs cannot be mounted in a user namespace that does not own
            // the network namespace: fall back to the host's, read-only.
            Err(Errno::EPERM) if typ == "sysfs" && ctx.userns => {
                let at = Target {
                    root,
                    fd: target.as_fd(),
                    dest,
                };
                bind(
                    Source::Host(Path::new("/sys")),
                    at,
                    true,
                    flags | MsFlags::MS_RDONLY,
                    Reach::Top,
                )?;
            }
            Err(e) => {
                return Err(Error::sys(
                    format!(
                        "mount {typ} onto {} (data {:?})",
                        dest.display(),
                        data.unwrap_or("")
                    ),
                    e,
                ))
            }
        }
    }
    if opts.recursive.attr_set | opts.recursive.attr_clr != 0 {
        let target = open_in_root(root, dest, Create::Nothing)?;
        let at = cstring(&fd_path(&target))?;
        match mount_setattr(libc::AT_FDCWD, &at, 0, opts.recursive, Reach::All) {
            Ok(()) => {}
            Err(Errno::ENOSYS) => {
                return Err(Error::Unsupported(format!(
                    "recursive mount options on {} need mount_setattr (Linux 5.12 or later)",
                    dest.display()
                )))
            }
            Err(e) => {
                return Err(Error::sys(
                    format!("recursive mount options on {}", dest.display()),
                    e,
                ))
            }
        }
    }
    for p in &opts.propagation {
        let target = open_in_root(root, dest, Create::Nothing)?;
        mount(
            None::<&str>,
            fd_path(&target).as_str(),
            None::<&str>,
            *p,
            None::<&str>,
        )
        .sys(|| format!("set propagation of {}", dest.display()))?;
    }
    Ok(())
}

/// Where a bind mount goes: a target resolved inside the root (reopened
/// by `dest` when a remount must see the new mount).
struct Target<'a> {
    root: BorrowedFd<'a>,
    fd: BorrowedFd<'a>,
    dest: &'a Path,
}

/// What a bind mount shows: a host path (a bind's source, named by the
/// trusted config), or a file or directory already resolved and opened.
#[derive(Clone, Copy)]
enum Source<'a> {
    Host(&'a Path),
    Opened(BorrowedFd<'a>, &'a Path),
}

impl Source<'_> {
    fn name(&self) -> std::path::Display<'_> {
        match self {
            Source::Host(p) | Source::Opened(_, p) => p.display(),
        }
    }
}

/// Set once the kernel has said it lacks `open_tree` or `mount_setattr`
/// (before Linux 5.12), so later binds go straight to the old sequence.
static NO_MOUNT_SETATTR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a mount's attributes reach its submounts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    Top,
    All,
}

/// Bind `src` onto `target` with `flags` (read-only, nosuid, nodev, noexec,
/// atime) in effect from the moment the mount appears. With the new mount
/// API the detached clone gets its attributes before `move_mount` attaches
/// it onto the target's fd, as crun does: no reopen, statfs and remount as
/// runc needs, never a moment where a read-only bind is writable, and
/// `Reach::All` reaches every submount (a bind remount never does).
/// Kernels before 5.12 get runc's sequence, top mount only.
fn bind(src: Source, target: Target, recursive: bool, flags: MsFlags, reach: Reach) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let attr = mount_attr(flags);
    let Some(attr) = attr.filter(|_| !flags.is_empty() && !NO_MOUNT_SETATTR.load(Relaxed)) else {
        return bind_then_remount(src, &target, recursive, flags);
    };
    let what = || format!("bind {} onto {}", src.name(), target.dest.display());
    match clone_with_attributes(src, recursive, attr, reach) {
        Ok(tree) => attach(tree.as_fd(), target.fd).sys(what),
        Err(Errno::ENOSYS) => {
            NO_MOUNT_SETATTR.store(true, Relaxed);
            bind_then_remount(src, &target, recursive, flags)
        }
        Err(e) => Err(Error::sys(what(), e)),
    }
}

/// Bind the file or directory `src` (an open fd of any kind) onto
/// `target`, both already resolved: nothing is looked up by path.
pub(crate) fn bind_opened(src: BorrowedFd, target: BorrowedFd) -> nix::Result<()> {
    let tree = clone_tree(Source::Opened(src, Path::new("")), false)?;
    attach(tree.as_fd(), target)
}

/// Attach the detached mount `tree` onto the file or directory `target`.
fn attach(tree: BorrowedFd, target: BorrowedFd) -> nix::Result<()> {
    // SAFETY: valid fds and empty NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// A detached clone of the mount at `src` (with its submounts when
/// `recursive`), without attributes set.
fn clone_tree(src: Source, recursive: bool) -> nix::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    let host;
    let (dirfd, path, empty) = match src {
        Source::Host(p) => {
            host = CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
            (libc::AT_FDCWD, host.as_c_str(), 0)
        }
        Source::Opened(fd, _) => (fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH as libc::c_uint),
    };
    // SAFETY: a valid fd or AT_FDCWD and a NUL-terminated path; the result
    // is a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | rec | empty,
        )
    };
    // SAFETY: open_tree returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(Errno::result(fd)? as i32) })
}

/// A detached clone of the mount at `src` (with its submounts when
/// `recursive`) carrying `attr`.
fn clone_with_attributes(
    src: Source,
    recursive: bool,
    attr: libc::mount_attr,
    reach: Reach,
) -> nix::Result<OwnedFd> {
    let tree = clone_tree(src, recursive)?;
    mount_setattr(tree.as_raw_fd(), c"", libc::AT_EMPTY_PATH, attr, reach)?;
    Ok(tree)
}

fn mount_setattr(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    attr: libc::mount_attr,
    reach: Reach,
) -> nix::Result<()> {
    let rec = if reach == Reach::All {
        libc::AT_RECURSIVE
    } else {
        0
    };
    // SAFETY: a valid fd or AT_FDCWD, a NUL-terminated path, and `attr`
    // outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            (flags | rec) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Set `flags` on the mount at `path` (not its submounts), keeping what
/// the kernel locked: `mount_setattr` only sets the bits asked for, the
/// fallback remount reads the locked ones first.
fn set_attributes(path: &str, flags: MsFlags, what: &Path) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(attr) = mount_attr(flags).filter(|_| !NO_MOUNT_SETATTR.load(Relaxed)) {
        match mount_setattr(libc::AT_FDCWD, &cstring(path)?, 0, attr, Reach::Top) {
            Ok(()) => return Ok(()),
            Err(Errno::ENOSYS) => NO_MOUNT_SETATTR.store(true, Relaxed),
            Err(e) => {
                return Err(Error::sys(
                    format!("set {flags:?} on {}", what.display()),
                    e,
                ))
            }
        }
    }
    remount(path, flags, what)
}

/// The `mount_setattr` form of a bind mount's flags; `None` for a flag it
/// cannot express (those take the remount path).
fn mount_attr(flags: MsFlags) -> Option<libc::mount_attr> {
    // SAFETY: mount_attr is plain integers.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    let mut rest = flags;
    for (ms, at) in [
        (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(ms) {
            attr.attr_set |= at;
            rest -= ms;
        }
    }
    // The atime modes are one field: setting one clears the others.
    for (ms, at) in [
        (MsFlags::MS_NOATIME, libc::MOUNT_ATTR_NOATIME),
        (MsFlags::MS_STRICTATIME, libc::MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_RELATIME, libc::MOUNT_ATTR_RELATIME),
    ] {
        if flags.contains(ms) {
            attr.attr_set |= at;
            attr.attr_clr |= libc::MOUNT_ATTR__ATIME;
            rest -= ms;
        }
    }
    rest.is_empty().then_some(attr)
}

/// runc's sequence: bind, then remount the reopened target with `flags`.
/// Only on kernels before 5.12: the paths go through `/proc/self/fd`.
fn bind_then_remount(src: Source, target: &Target, recursive: bool, flags: MsFlags) -> Result<()> {
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    let from = match src {
        Source::Host(p) => p.to_string_lossy().into_owned(),
        Source::Opened(fd, _) => fd_path(&fd),
    };
    mount(
        Some(from.as_str()),
        fd_path(&target.fd).as_str(),
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .sys(|| format!("bind {} onto {}", src.name(), target.dest.display()))?;
    if flags.is_empty() {
        return Ok(());
    }
    // The old fd still names the directory below the new mount.
    let reopened = open_in_root(target.root, target.dest, Create::Nothing)?;
    remount(&fd_path(&reopened), flags | rec, target.dest)
}

/// Remount a bind mount with `flags`, keeping the flags the kernel locked
/// (a user namespace may not clear nosuid/nodev/noexec it inherited).
fn remount(target: &str, flags: MsFlags, what: &Path) -> Result<()> {
    let locked = statvfs(target)
        .map(|s| {
            let f = s.flags();
            let mut m = MsFlags::empty();
            for (fs, ms) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(fs) {
                    m |= ms;
                }
            }
            m
        })
        .unwrap_or(MsFlags::empty());
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        None::<&str>,
    )
    .sys(|| format!("remount {} with {:?}", what.display(), flags))
}

/// A `cgroup` mount shows the container its own cgroup: each hierarchy's
/// container directory bound at `dest/<controllers>` (v1) or `dest` (v2).
fn mount_cgroup(ctx: &RootfsContext, root: BorrowedFd, dest: &Path, opts: &Options) -> Result<()> {
    let ro = opts.flags & MsFlags::MS_RDONLY;
    let v2 = ctx.cgroup_paths.len() == 1 && ctx.cgroup_paths[0].join("cgroup.controllers").exists();
    let bind_one = |src: &Path, dest: &Path| -> Result<()> {
        let target = open_in_root(root, dest, Create::Dir)?;
        let at = Target {
            root,
            fd: target.as_fd(),
            dest,
        };
        let flags = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        bind(Source::Host(src), at, false, flags, Reach::Top)
    };
    if v2 {
        return bind_one(&ctx.cgroup_paths[0], dest);
    }
    let target = open_in_root(root, dest, Create::Dir)?;
    mount(
        Some("tmpfs"),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        Some("mode=755"),
    )
    .sys(|| format!("mount tmpfs onto {}", dest.display()))?;
    for path in ctx.cgroup_paths {
        // /sys/fs/cgroup/<hierarchy>/<container path>: the hierarchy's name
        // is the component right below the cgroup mount root.
        let Some(name) = path
            .strip_prefix("/sys/fs/cgroup")
            .ok()
            .and_then(|p| p.components().next())
        else {
            continue;
        };
        bind_one(path, &dest.join(name.as_os_str()))?;
    }
    if !ro.is_empty() {
        let target = open_in_root(root, dest, Create::Nothing)?;
        set_attributes(
            &fd_path(&target),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            dest,
        )?;
    }
    Ok(())
}

fn create_device(root: BorrowedFd, d: &LinuxDevice, userns: bool) -> Result<()> {
    let path = d.path();
    let ctx = || format!("linux.devices: {}", path.display());
    if userns {
        let target = open_in_root(root, path, Create::File)?;
        return mount(
            Some(path.as_path()),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .sys(|| format!("{}: bind from host", ctx()));
    }
    let parent = open_in_root(root, path.parent().unwrap_or(Path::new("/")), Create::Dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Init(format!("{}: no file name", ctx())))?;
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::Init(format!(
                "{}: type 'a' is not a device node",
                ctx()
            )))
        }
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
    let dev = nix::sys::stat::makedev(d.major() as u64, d.minor() as u64);
    // O_PATH fds cannot be *at() parents for mknod; reopen as a directory.
    let dir = openat(
        parent.as_fd(),
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(ctx)?;
    match mknodat(dir.as_fd(), name, kind, mode, dev) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let _ =
                nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
            mknodat(dir.as_fd(), name, kind, mode, dev).sys(ctx)?;
        }
        Err(e) => return Err(Error::sys(ctx(), e)),
    }
    nix::unistd::fchownat(
        dir.as_fd(),
        name,
        Some(nix::unistd::Uid::from_raw(d.uid().unwrap_or(0))),
        Some(nix::unistd::Gid::from_raw(d.gid().unwrap_or(0))),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .sys(ctx)
}

fn dev_symlinks(root: BorrowedFd) -> Result<()> {
    let dev = open_in_root(root, Path::new("/dev"), Create::Dir)?;
    let dir = openat(
        dev.as_fd(),
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open /dev".into())?;
    let has_pts = fstat(dir.as_fd()).is_ok()
        && nix::sys::stat::fstatat(
            dir.as_fd(),
            "pts/ptmx",
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok();
    let links: &[(&str, &str)] = &[
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    for (target, name) in links.iter().chain(has_pts.then_some(&("pts/ptmx", "ptmx"))) {
        match symlinkat(*target, dir.as_fd(), *name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::sys(format!("symlink /dev/{name}"), e)),
        }
    }
    Ok(())
}

/// Make the rootfs the root: pivot_root, then detach the old root so no host
/// path stays reachable.
pub fn pivot(rootfs: &Path) -> Result<()> {
    let old = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open /".into())?;
    let new = open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| format!("open {}", rootfs.display()))?;
    fchdir(new.as_fd()).sys(|| "chdir rootfs".into())?;
    // pivot_root(".", ".") stacks the old root on top of the new one; no
    // directory for it is needed inside the rootfs.
    pivot_root(".", ".").sys(|| format!("pivot_root to {}", rootfs.display()))?;
    fchdir(old.as_fd()).sys(|| "chdir old root".into())?;
    // The unmount must not propagate to the host's mounts.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .sys(|| "make old root rslave".into())?;
    umount2(".", MntFlags::MNT_DETACH).sys(|| "detach old root".into())?;
    chdir("/").sys(|| "chdir /".into())
}

/// `--no-pivot`: move the rootfs over / and chroot (for ramdisk roots, where
/// pivot_root is impossible). Weaker: the old root stays mounted below.
pub fn move_root(rootfs: &Path) -> Result<()> {
    chdir(rootfs).sys(|| format!("chdir {}", rootfs.display()))?;
    mount(
        Some(rootfs),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .sys(|| "move rootfs to /".into())?;
    chroot(".").sys(|| "chroot".into())?;
    chdir("/").sys(|| "chdir /".into())
}

/// A shared `linux.rootfsPropagation`, on the root now that it is in place.
pub fn set_root_propagation(spec: &Spec) -> Result<()> {
    let (name, prop) = root_propagation(spec)?;
    if prop.contains(MsFlags::MS_SHARED) {
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
            .sys(|| format!("linux.rootfsPropagation {name}"))?;
    }
    Ok(())
}

/// After the root is in place: read-only paths, masked paths, read-only
/// root. Each path is resolved inside the root, and mounted onto by fd:
/// the container's rootfs and its `/proc` are the container's, so nothing
/// here goes through a path string or `/proc/self/fd` (CVE-2025-31133).
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open the container's root".into())?;
    let resolve = |p: &str| match open_in_root(root.as_fd(), Path::new(p), Create::Nothing) {
        Ok(fd) => Ok(Some(fd)),
        Err(Error::Sys {
            errno: Errno::ENOENT,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    };
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        let fail = |e: Error| Error::Init(format!("linux.readonlyPaths: {p}: {e}"));
        let Some(target) = resolve(p).map_err(fail)? else {
            continue;
        };
        // Every mount below the path too, where the kernel can: the spec
        // asks for the path read-only, and runc's remount leaves submounts
        // (binfmt_misc below /proc/sys, say) writable.
        let dest = Path::new(p);
        let at = Target {
            root: root.as_fd(),
            fd: target.as_fd(),
            dest,
        };
        bind(
            Source::Opened(target.as_fd(), dest),
            at,
            true,
            MsFlags::MS_RDONLY,
            Reach::All,
        )
        .map_err(fail)?;
    }
    let mut null = None;
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        let fail = |e: Error| Error::Init(format!("linux.maskedPaths: {p}: {e}"));
        let Some(target) = resolve(p).map_err(fail)? else {
            continue;
        };
        let st = fstat(&target).sys(|| format!("linux.maskedPaths: stat {p}"))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            fchdir(target.as_fd()).sys(|| format!("linux.maskedPaths: {p}"))?;
            mount(
                Some("tmpfs"),
                ".",
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0k"),
            )
            .sys(|| format!("linux.maskedPaths: {p}: mount an empty tmpfs"))?;
            continue;
        }
        if null.is_none() {
            null = Some(null_device(root.as_fd()).map_err(fail)?);
        }
        let null = null.as_ref().expect("opened");
        bind_opened(null.as_fd(), target.as_fd())
            .sys(|| format!("linux.maskedPaths: {p}: bind /dev/null"))?;
    }
    fchdir(root.as_fd()).sys(|| "chdir /".into())?;
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        set_attributes("/", MsFlags::MS_RDONLY, Path::new("/"))?;
    }
    Ok(())
}

/// The container's `/dev/null`, checked to be the null device: a file
/// masked with anything else would show what the container put there
/// (CVE-2025-31133).
fn null_device(root: BorrowedFd) -> Result<OwnedFd> {
    let fd = open_in_root(root, Path::new("/dev/null"), Create::Nothing)?;
    let st = fstat(&fd).sys(|| "stat /dev/null".into())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != nix::sys::stat::makedev(1, 3) {
        return Err(Error::Init(
            "/dev/null in the container is not the null device (1:3); refusing to mask with it"
                .into(),
        ));
    }
    Ok(fd)
}

/// The C string form of a path, for exec.
pub fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Init(format!("{s:?} contains a NUL byte")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "rprivate".into(),
            "mode=755".into(),
            "ro".into(),
            "rw".into(),
        ])
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.data, vec!["mode=755".to_string()]);
        assert!(parse_options(&["idmap".into()]).is_err());
    }

    #[test]
    fn recursive_options_set_and_clear_attributes_for_the_whole_tree() {
        let o = parse_options(&[
            "rro".into(),
            "rnosuid".into(),
            "rsuid".into(),
            "rnoatime".into(),
        ])
        .unwrap();
        assert!(o.flags.is_empty() && o.data.is_empty());
        assert_eq!(
            o.recursive.attr_set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOATIME
        );
        assert_eq!(
            o.recursive.attr_clr,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR__ATIME
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(unescape_mountinfo(r"/plain\0"), r"/plain\0");
    }

    #[test]
    fn bind_flags_map_to_mount_attributes() {
        let a = mount_attr(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME).unwrap();
        assert_eq!(
            a.attr_set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOEXEC
        );
        assert_eq!(a.attr_clr, libc::MOUNT_ATTR__ATIME);
        // What mount_setattr cannot say takes the remount path.
        assert!(mount_attr(MsFlags::MS_RDONLY | MsFlags::MS_SYNCHRONOUS).is_none());
    }
}
