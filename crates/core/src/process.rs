//! The process's own attributes: user, rlimits, oom score, no_new_privs,
//! environment.

use std::ffi::CString;

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process};

use crate::error::SysContext;
use crate::{capabilities, Error, Result};

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::__rlimit_resource_t
}

pub fn set_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: plain syscall with a valid pointer to a stack value.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } != 0 {
            let e = std::io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (raising a hard limit needs CAP_SYS_RESOURCE)"
            } else {
                ""
            };
            return Err(Error::Init(format!(
                "process.rlimits {} soft={} hard={}: {e}{hint}",
                r.typ(),
                r.soft(),
                r.hard()
            )));
        }
    }
    Ok(())
}

pub fn set_oom_score_adj(proc: &crate::procfs::ProcFs, p: &Process) -> Result<()> {
    if let Some(score) = p.oom_score_adj() {
        proc.write_self("oom_score_adj", &score.to_string())
            .map_err(|e| {
                Error::Init(format!(
                    "process.oomScoreAdj {score}: {} (lowering it needs CAP_SYS_RESOURCE)",
                    e.desc()
                ))
            })?;
    }
    Ok(())
}

/// Become the container's user, keeping only the capabilities the spec
/// grants. Order matters: the bounding set is dropped while CAP_SETPCAP is
/// still held, keep-caps carries the permitted set across setuid, and the
/// remaining sets are applied as the new user.
pub fn become_user(p: &Process, may_setgroups: bool) -> Result<()> {
    let caps = p.capabilities().as_ref();
    capabilities::apply_bounding(caps)?;
    let u = p.user();
    if may_setgroups {
        let groups: Vec<Gid> = u
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| Gid::from_raw(*g))
            .collect();
        setgroups(&groups).sys(|| "process.user.additionalGids: setgroups".into())?;
    }
    nix::sys::prctl::set_keepcaps(true).sys(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let gid = Gid::from_raw(u.gid());
    setresgid(gid, gid, gid).sys(|| format!("process.user.gid {}: setresgid", u.gid()))?;
    let uid = Uid::from_raw(u.uid());
    setresuid(uid, uid, uid).sys(|| format!("process.user.uid {}: setresuid", u.uid()))?;
    capabilities::apply_sets(caps)?;
    nix::sys::prctl::set_keepcaps(false).sys(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    Ok(())
}

pub fn set_no_new_privs(p: &Process) -> Result<()> {
    if p.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().sys(|| "process.noNewPrivileges".into())?;
    }
    Ok(())
}

/// `process.env` as exec wants it; nothing of the runtime's own environment.
pub fn env(p: &Process) -> Result<Vec<CString>> {
    p.env()
        .iter()
        .flatten()
        .map(|e| {
            CString::new(e.as_str())
                .map_err(|_| Error::Init(format!("process.env {e:?} has a NUL byte")))
        })
        .collect()
}

pub fn args(p: &Process) -> Result<Vec<CString>> {
    p.args()
        .iter()
        .flatten()
        .map(|a| {
            CString::new(a.as_str())
                .map_err(|_| Error::Init(format!("process.args {a:?} has a NUL byte")))
        })
        .collect()
}

/// The value of PATH in `process.env`.
pub fn path_var(p: &Process) -> Option<&str> {
    p.env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
}

/// `process.scheduler` (sched_setattr) and `process.ioPriority` (ioprio_set).
pub fn set_scheduling(p: &Process) -> Result<()> {
    if let Some(s) = p.scheduler() {
        use oci_spec::runtime::{LinuxSchedulerFlag as F, LinuxSchedulerPolicy as P};
        let policy = match s.policy() {
            P::SchedOther => libc::SCHED_OTHER,
            P::SchedFifo => libc::SCHED_FIFO,
            P::SchedRr => libc::SCHED_RR,
            P::SchedBatch => libc::SCHED_BATCH,
            P::SchedIdle => libc::SCHED_IDLE,
            P::SchedDeadline => 6,
            P::SchedIso => {
                return Err(Error::Unsupported(
                    "process.scheduler.policy SCHED_ISO: Linux has no such policy".into(),
                ))
            }
        };
        let mut flags = 0u64;
        for f in s.flags().iter().flatten() {
            flags |= match f {
                F::SchedResetOnFork => 0x01,
                F::SchedFlagReclaim => 0x02,
                F::SchedFlagDLOverrun => 0x04,
                F::SchedFlagKeepPolicy => 0x08,
                F::SchedFlagKeepParams => 0x10,
                F::SchedFlagUtilClampMin => 0x20,
                F::SchedFlagUtilClampMax => 0x40,
            };
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: policy as u32,
            flags,
            nice: s.nice().unwrap_or(0),
            priority: s.priority().unwrap_or(0) as u32,
            runtime: s.runtime().unwrap_or(0),
            deadline: s.deadline().unwrap_or(0),
            period: s.period().unwrap_or(0),
        };
        // SAFETY: a valid sched_attr of the size it declares.
        if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } != 0 {
            return Err(Error::sys(
                format!("process.scheduler (policy {:?})", s.policy()),
                nix::Error::last(),
            ));
        }
    }
    if let Some(io) = p.io_priority() {
        use oci_spec::runtime::IOPriorityClass as C;
        let class: i64 = match io.class() {
            C::IoprioClassRt => 1,
            C::IoprioClassBe => 2,
            C::IoprioClassIdle => 3,
        };
        if !(0..8).contains(&io.priority()) {
            return Err(Error::Init(format!(
                "process.ioPriority.priority {}: must be 0 to 7",
                io.priority()
            )));
        }
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        // SAFETY: plain syscall on the calling process.
        if unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                (class << 13) | io.priority(),
            )
        } != 0
        {
            return Err(Error::sys(
                format!("process.ioPriority {:?}", io.class()),
                nix::Error::last(),
            ));
        }
    }
    Ok(())
}

#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// `linux.personality`: the execution domain (`uname -m` reads i686 under LINUX32).
pub fn set_personality(linux: Option<&oci_spec::runtime::Linux>) -> Result<()> {
    use oci_spec::runtime::LinuxPersonalityDomain as D;
    let Some(p) = linux.and_then(|l| l.personality().as_ref()) else {
        return Ok(());
    };
    if let Some(f) = p.flags().as_ref().filter(|f| !f.is_empty()) {
        return Err(Error::Unsupported(format!(
            "linux.personality.flags {f:?}: the runtime spec defines no flags yet"
        )));
    }
    let persona = match p.domain() {
        D::PerLinux => 0x0000,
        D::PerLinux32 => 0x0008,
    };
    // SAFETY: plain syscall.
    if unsafe { libc::personality(persona) } == -1 {
        return Err(Error::sys(
            format!("linux.personality.domain {:?}", p.domain()),
            nix::Error::last(),
        ));
    }
    Ok(())
}
