//! The kernel floor of a container start: the same kernel work as a
//! runtime's, done by the least code (no spec, no state, no runtime binary):
//! cgroup directories, clone into new namespaces, join the cgroup, bind the rootfs,
//! pivot_root, mount /proc, exec /bin/true, wait, remove the cgroups.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use amphi_tests::cgroup_dirs_by_hierarchy;

fn fail() -> ! {
    // SAFETY: leave the child without unwinding.
    unsafe { libc::_exit(127) }
}

/// Which cgroup hierarchies the floor's container joins.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// What a runtime uses on this host: the v1 controllers where there are
    /// any (hybrid hosts included), else the unified hierarchy.
    Host,
    /// The unified hierarchy alone, as a runtime in the cgroup2 view uses it.
    Unified,
}

/// One start; the caller must be single-threaded (the child runs on a copy
/// of this process).
pub fn once(rootfs: &Path, rel: &str, layout: Layout) -> Result<Duration> {
    let rootfs_c = CString::new(rootfs.to_str().context("rootfs path")?)?;
    let t0 = Instant::now();
    let all = cgroup_dirs_by_hierarchy(rel);
    let v1: Vec<_> = all
        .iter()
        .filter(|(c, _)| !c.is_empty() && !c.starts_with("name="))
        .collect();
    let dirs: Vec<_> = if v1.is_empty() || layout == Layout::Unified {
        all.iter().filter(|(c, _)| c.is_empty()).collect()
    } else {
        v1
    };
    for (ctrls, d) in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        // A new v1 cpuset has no cpus or mems until given its parent's.
        if ctrls.split(',').any(|c| c == "cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(d.parent().context("parent")?.join(f))?;
                std::fs::write(d.join(f), parent.trim())?;
            }
        }
    }
    // On v1 the child moves itself (a thread writing 0 to `tasks` skips
    // the lock whose first writer waits for an RCU grace period), as amphi
    // does; the unified hierarchy takes the pid from here.
    let tasks = if v1_only(&dirs) {
        dirs.iter()
            .map(|(_, d)| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("tasks"))
                    .with_context(|| format!("open {}/tasks", d.display()))
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    // On the unified hierarchy the child is born in its cgroup
    // (CLONE_INTO_CGROUP), as amphi's is.
    let unified = match dirs.as_slice() {
        [(ctrls, d)] if ctrls.is_empty() => {
            Some(std::fs::File::open(d).with_context(|| format!("open {}", d.display()))?)
        }
        _ => None,
    };
    // SAFETY: the benchmark is single-threaded here, as fork needs.
    let pid = unsafe {
        amphi_core::clone::clone3(
            nix::sched::CloneFlags::from_bits_retain(flags),
            unified.as_ref().map(|cg| cg.as_fd()),
        )
    }
    .context("clone3")?;
    if pid == 0 {
        // SAFETY: plain syscalls on valid C strings; any failure exits 127.
        unsafe {
            let mut b = 0u8;
            libc::close(fds[1]);
            for t in &tasks {
                if libc::write(t.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    fail();
                }
            }
            if libc::read(fds[0], (&mut b as *mut u8).cast(), 1) != 1 {
                fail();
            }
            let null = std::ptr::null();
            // Each step's failure exits with its own code (100 + step).
            let steps: [&dyn Fn() -> i32; 7] = [
                &|| {
                    libc::mount(
                        null,
                        c"/".as_ptr(),
                        null,
                        libc::MS_REC | libc::MS_PRIVATE,
                        null.cast(),
                    )
                },
                &|| {
                    libc::mount(
                        rootfs_c.as_ptr(),
                        rootfs_c.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REC,
                        null.cast(),
                    )
                },
                &|| libc::chdir(rootfs_c.as_ptr()),
                &|| libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32,
                &|| libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
                &|| libc::chdir(c"/".as_ptr()),
                &|| {
                    libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        0,
                        null.cast(),
                    )
                },
            ];
            for (i, step) in steps.iter().enumerate() {
                if step() != 0 {
                    libc::_exit(100 + i as i32);
                }
            }
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail();
        }
    }
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(fds[0]) };
    drop(tasks);
    // SAFETY: one byte from a live buffer, then close.
    unsafe {
        libc::write(fds[1], b"g".as_ptr().cast(), 1);
        libc::close(fds[1]);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    for (_, d) in &dirs {
        for _ in 0..200 {
            match std::fs::remove_dir(d) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => break,
            }
        }
    }
    let elapsed = t0.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("the floor's container failed (status {status:#x})");
    }
    Ok(elapsed)
}

/// Every directory is in a v1 hierarchy (controllers named).
fn v1_only(dirs: &[&(String, PathBuf)]) -> bool {
    dirs.iter().all(|(ctrls, _)| !ctrls.is_empty())
}
