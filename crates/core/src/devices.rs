//! `linux.resources.devices`: the device cgroup. On v1 the rules are
//! written to devices.allow/deny; on v2 they become an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's cgroup.
//!
//! Both follow v1's semantics: rules apply in order, the last one that
//! matches decides; amphi then allows the devices every container gets
//! (mknod of any node; null, zero, full, random, urandom, tty, console,
//! ptmx, pts), as runc does. A node listed in `linux.devices` is created,
//! but may be used only as far as these rules allow: least privilege.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::{Error, Result};

/// A rule in v1's terms: type ('a', 'c', 'b'), numbers (None = any), access.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub allow: bool,
    pub typ: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl Rule {
    fn v1_line(&self) -> String {
        if self.typ == 'a' {
            return "a".into();
        }
        let n = |v: Option<i64>| v.map_or("*".into(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.typ,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

fn char_dev(major: i64, minor: Option<i64>) -> Rule {
    Rule {
        allow: true,
        typ: 'c',
        major: Some(major),
        minor,
        access: "rwm".into(),
    }
}

/// The spec's rules, then the devices every container may use.
pub fn rules(spec_rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for (i, d) in spec_rules.iter().enumerate() {
        let access = d.access().clone().unwrap_or_else(|| "rwm".into());
        if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::InvalidSpec {
                file: "config.json".into(),
                field: format!("linux.resources.devices[{i}].access"),
                why: format!("{access:?}: use a combination of r, w and m"),
            });
        }
        let typ = match d.typ() {
            None | Some(LinuxDeviceType::A) => 'a',
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
            Some(LinuxDeviceType::B) => 'b',
            Some(LinuxDeviceType::P) => continue,
        };
        let any_number = d.major().is_none() && d.minor().is_none();
        out.push(Rule {
            allow: d.allow(),
            // v1 writes "a" only for a rule on every device.
            typ: if typ == 'a' && !any_number { 'c' } else { typ },
            major: d.major().filter(|m| *m >= 0),
            minor: d.minor().filter(|m| *m >= 0),
            access,
        });
        if typ == 'a' && !any_number {
            let mut b = out.last().expect("pushed").clone();
            b.typ = 'b';
            out.push(b);
        }
    }
    // mknod of any node (reading or writing it is another matter).
    for typ in ['c', 'b'] {
        out.push(Rule {
            allow: true,
            typ,
            major: None,
            minor: None,
            access: "m".into(),
        });
    }
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        out.push(char_dev(major, Some(minor)));
    }
    out.push(char_dev(136, None));
    Ok(out)
}

/// v1: write each rule in order. The kernel takes each write(2) as one
/// rule, so each file is opened once (a pod's dozen rules were two dozen
/// opens and closes more, on every create).
pub fn apply_v1(dir: &Path, rules: &[Rule]) -> Result<()> {
    let mut allow = None;
    let mut deny = None;
    for r in rules {
        let (name, file) = match r.allow {
            true => ("devices.allow", &mut allow),
            false => ("devices.deny", &mut deny),
        };
        let path = dir.join(name);
        let failed = |e: std::io::Error| Error::Cgroup {
            path: path.display().to_string(),
            why: format!("linux.resources.devices {:?}: {e}", r.v1_line()),
            errno: e.raw_os_error(),
        };
        let file = match file {
            Some(f) => f,
            None => file.insert(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(failed)?,
            ),
        };
        std::io::Write::write_all(file, r.v1_line().as_bytes()).map_err(failed)?;
    }
    Ok(())
}

// eBPF encoding (struct bpf_insn).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}
const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
const AND32_K: u8 = 0x54;
const RSH32_K: u8 = 0x74;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const EXIT: u8 = 0x95;

/// One instruction of a rule, or a conditional jump to the next rule.
enum Step {
    Op(u64),
    SkipRuleIf(u8, u8, u8, i32),
}

/// The program: the rules in reverse, first match returns (so the last
/// rule in spec order wins), default deny. Registers: r2 type, r3 access,
/// r4 major, r5 minor, r1 scratch.
pub fn program(rules: &[Rule]) -> Vec<u64> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut steps = Vec::new();
        match r.typ {
            'c' => steps.push(Step::SkipRuleIf(JNE_K, 2, 0, 2)), // BPF_DEVCG_DEV_CHAR
            'b' => steps.push(Step::SkipRuleIf(JNE_K, 2, 0, 1)), // BPF_DEVCG_DEV_BLOCK
            _ => {}
        }
        let access = r.access.chars().fold(0, |a, c| {
            a | match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            }
        });
        if access != 7 {
            // Every access bit asked for must be in the rule.
            steps.push(Step::Op(insn(MOV64_X, 1, 3, 0, 0)));
            steps.push(Step::Op(insn(AND32_K, 1, 0, 0, access)));
            steps.push(Step::SkipRuleIf(JNE_X, 1, 3, 0));
        }
        if let Some(m) = r.major.filter(|_| r.typ != 'a') {
            steps.push(Step::SkipRuleIf(JNE_K, 4, 0, m as i32));
        }
        if let Some(m) = r.minor.filter(|_| r.typ != 'a') {
            steps.push(Step::SkipRuleIf(JNE_K, 5, 0, m as i32));
        }
        steps.push(Step::Op(insn(MOV64_K, 0, 0, 0, i32::from(r.allow))));
        steps.push(Step::Op(insn(EXIT, 0, 0, 0, 0)));
        let unconditional = !steps.iter().any(|s| matches!(s, Step::SkipRuleIf(..)));
        let len = steps.len();
        for (i, s) in steps.into_iter().enumerate() {
            p.push(match s {
                Step::Op(x) => x,
                // A failed match jumps past this rule's exit.
                Step::SkipRuleIf(op, dst, src, imm) => {
                    insn(op, dst, src, (len - i - 1) as i16, imm)
                }
            });
        }
        if unconditional {
            // It matches every device: what would follow is unreachable,
            // which the verifier rejects.
            return p;
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// The name amphi's device filters carry, so that replacing one never
/// detaches a program someone else (systemd) attached to the cgroup.
const PROG_NAME: &[u8; 16] = b"amphi_devices\0\0\0";

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, up to the name.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    typ: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// bpf(2); the kernel may write results into `attr`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> nix::Result<libc::c_long> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix of its size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(r)
    }
}

/// v2: load the program and attach it to the cgroup directory (alongside
/// whatever the cgroup's ancestors attached: all must allow), then detach
/// the filters amphi attached there before (`update`). Between the two
/// both apply, so the container is never allowed more than either list.
pub fn apply_v2(dir: &Path, rules: &[Rule]) -> Result<()> {
    let prog = program(rules);
    let license = c"Apache-2.0";
    let load = |log: &mut [u8]| {
        bpf(
            BPF_PROG_LOAD,
            &mut ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
                insn_cnt: prog.len() as u32,
                insns: prog.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: u32::from(!log.is_empty()),
                log_size: log.len() as u32,
                // The kernel rejects a buffer without a level and vice versa.
                log_buf: if log.is_empty() {
                    0
                } else {
                    log.as_mut_ptr() as u64
                },
                prog_name: *PROG_NAME,
                ..Default::default()
            },
        )
    };
    // The verifier's log only when loading fails (it costs time and room).
    let fd = load(&mut []).map_err(|e| {
        let mut log = vec![0u8; 1 << 16];
        let _ = load(&mut log);
        let verifier = String::from_utf8_lossy(&log).replace('\0', "");
        Error::Cgroup {
            path: dir.display().to_string(),
            why: format!(
                "linux.resources.devices: load the eBPF device filter: {e}: {}",
                verifier.trim_end_matches('\0').trim()
            ),
            errno: Some(e as i32),
        }
    })?;
    // SAFETY: the kernel just returned this fd to us.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cgroup = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", dir.display()), e))?;
    let fail = |what: &str, e: nix::Error| Error::Cgroup {
        path: dir.display().to_string(),
        why: format!("linux.resources.devices: {what} the eBPF device filter: {e}"),
        errno: Some(e as i32),
    };
    let previous = own_filters(&cgroup).map_err(|e| fail("list", e))?;
    let mut attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| fail("attach", e))?;
    for old in previous {
        let mut detach = ProgAttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: old.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: 0,
        };
        bpf(BPF_PROG_DETACH, &mut detach).map_err(|e| fail("detach the previous", e))?;
    }
    Ok(())
}

/// The device filters amphi attached to this cgroup itself (not those
/// of its ancestors, nor programs of other names), opened.
fn own_filters(cgroup: &OwnedFd) -> nix::Result<Vec<OwnedFd>> {
    let mut ids = [0u32; 64];
    let mut query = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut query)?;
    let mut own = Vec::new();
    for &id in &ids[..(query.prog_cnt as usize).min(ids.len())] {
        let fd = bpf(
            BPF_PROG_GET_FD_BY_ID,
            &mut GetFdByIdAttr {
                prog_id: id,
                ..Default::default()
            },
        )?;
        // SAFETY: the kernel just returned this fd to us.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut info = ProgInfo::default();
        bpf(
            BPF_OBJ_GET_INFO_BY_FD,
            &mut InfoByFdAttr {
                bpf_fd: prog.as_raw_fd() as u32,
                info_len: std::mem::size_of::<ProgInfo>() as u32,
                info: &mut info as *mut ProgInfo as u64,
            },
        )?;
        if info.name == *PROG_NAME {
            own.push(prog);
        }
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup2_mount() -> Option<std::path::PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mounts.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split(' ').nth(4).map(Into::into))?
        })
    }

    /// The v2 filter, for real: a child in a cgroup2 directory with the
    /// program attached may open /dev/null, read but not write /dev/kmsg,
    /// and not open /dev/mem. Runs wherever
    /// a cgroup2 hierarchy is mounted (hybrid hosts included).
    #[test]
    fn ebpf_filter_allows_defaults_and_denies_the_rest() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(mount) = cgroup2_mount() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let dir = mount
            .join(own.trim_start_matches('/'))
            .join(format!("amphi-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        struct Rm(std::path::PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        let deny_all: LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow": false, "access": "rwm"}"#).unwrap();
        let kmsg_read_only: LinuxDeviceCgroup = serde_json::from_str(
            r#"{"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}"#,
        )
        .unwrap();
        let rules = rules(&[deny_all, kmsg_read_only]).unwrap();
        apply_v2(&dir, &rules).unwrap();

        // SAFETY: the child only makes syscalls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = std::fs::write(dir.join("cgroup.procs"), "0").is_ok()
                    && std::fs::File::open("/dev/null").is_ok()
                    && std::fs::File::open("/dev/mem").is_err()
                    && std::fs::File::open("/dev/kmsg").is_ok()
                    && std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/kmsg")
                        .is_err();
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
