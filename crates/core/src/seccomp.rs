//! `linux.seccomp` compiled to a classic BPF program, without libseccomp.
//!
//! The program dispatches on the architecture the kernel reports for each
//! syscall, then tests the syscall number and argument conditions of each
//! rule in the profile's order; the first rule that matches decides, and the
//! default action covers the rest. Only the architectures this kernel can
//! run get code (the native one, always, and its compat ABIs when the
//! profile lists them); a syscall from any other ABI gets the kill action,
//! as with libseccomp's default "bad arch" action.
//!
//! Semantics follow runc's use of libseccomp: conditions of one rule are
//! ANDed, except that a rule naming one argument index twice becomes one
//! rule per condition (ORed); a syscall name unknown on this architecture is
//! skipped (profiles are shared across architectures), and so is a name no
//! architecture amphi knows (podman's and Docker's profiles list a few
//! private ones, such as ARM's `breakpoint`), with a warning. The
//! annotation [`STRICT_ANNOTATION`] makes such a name an error instead, for
//! those who want a typo to fail loudly.

use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use crate::{Error, Result};

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_MAXINSNS: usize = 4096;

// seccomp_data: nr, arch, instruction_pointer, args[6].
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const ALU_AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The bytes of a program's flags in [`Program::to_bytes`].
const FLAGS_LEN: usize = std::mem::size_of::<libc::c_ulong>();

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

/// A conditional jump whose target is "after this rule" until the rule's
/// length is known.
#[derive(Clone, Copy)]
enum Target {
    Next(u8),
    Fail,
}

struct Insn {
    code: u16,
    jt: Target,
    jf: Target,
    k: u32,
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: Target::Next(0),
        jf: Target::Next(0),
        k,
    }
}

fn jump(code: u16, k: u32, jt: Target, jf: Target) -> Insn {
    Insn { code, jt, jf, k }
}

fn raw(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn invalid(field: String, why: impl Into<String>) -> Error {
    Error::InvalidSpec {
        file: "config.json".into(),
        field,
        why: why.into(),
    }
}

/// The syscall tables of one ABI the kernel can run.
#[derive(Clone, Copy, PartialEq)]
enum Abi {
    X86_64,
    X32,
    I386,
    Aarch64,
    Arm,
}

impl Abi {
    fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 | Abi::X32 => AUDIT_ARCH_X86_64,
            Abi::I386 => AUDIT_ARCH_I386,
            Abi::Aarch64 => AUDIT_ARCH_AARCH64,
            Abi::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// 32-bit ABIs: the kernel reads an argument's low 32 bits only, so a
    /// condition compares only those (as libseccomp does); comparing all
    /// 64 would let a value with high bits set slip past `fd == 1`.
    fn is_32bit(self) -> bool {
        matches!(self, Abi::X32 | Abi::I386 | Abi::Arm)
    }
}

/// x86_64 syscalls that x32 cannot make, and the x32 numbers of those it
/// makes through compat entry points of its own (the kernel's
/// syscall_64.tbl: ABI "64" entries, and "x32" entries 512 to 547).
const X86_64_ONLY: &[&str] = &[
    "uselib",
    "_sysctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "set_thread_area",
    "get_thread_area",
    "epoll_ctl_old",
    "epoll_wait_old",
    "vserver",
];
const X32_OWN: &[(&str, u32)] = &[
    ("rt_sigaction", 512),
    ("rt_sigreturn", 513),
    ("ioctl", 514),
    ("readv", 515),
    ("writev", 516),
    ("recvfrom", 517),
    ("sendmsg", 518),
    ("recvmsg", 519),
    ("execve", 520),
    ("ptrace", 521),
    ("rt_sigpending", 522),
    ("rt_sigtimedwait", 523),
    ("rt_sigqueueinfo", 524),
    ("sigaltstack", 525),
    ("timer_create", 526),
    ("mq_notify", 527),
    ("kexec_load", 528),
    ("waitid", 529),
    ("set_robust_list", 530),
    ("get_robust_list", 531),
    ("vmsplice", 532),
    ("move_pages", 533),
    ("preadv", 534),
    ("pwritev", 535),
    ("rt_tgsigqueueinfo", 536),
    ("recvmmsg", 537),
    ("sendmmsg", 538),
    ("process_vm_readv", 539),
    ("process_vm_writev", 540),
    ("setsockopt", 541),
    ("getsockopt", 542),
    ("io_setup", 543),
    ("io_submit", 544),
    ("execveat", 545),
    ("preadv2", 546),
    ("pwritev2", 547),
];

/// A syscall's number for x32 (without the x32 bit), given its x86_64
/// one: that, unless x32 has its own entry point or none.
fn x32_number(name: &str, x86_64: Option<u32>) -> Option<u32> {
    if let Some((_, nr)) = X32_OWN.iter().find(|(n, _)| *n == name) {
        return Some(*nr);
    }
    if X86_64_ONLY.contains(&name) {
        return None;
    }
    x86_64.filter(|nr| *nr < 512)
}

/// A syscall name's numbers on each ABI this host runs. Looked up once per
/// name: a profile names hundreds, and each ABI's section needs them all
/// (the lookups were most of the compile time of podman's profile).
#[derive(Clone, Copy)]
struct Numbers {
    by_abi: [Option<u32>; 5],
    /// i386's socketcall/ipc multiplexer and call, for the names it covers.
    i386_multiplexed: Option<(u32, u32)>,
}

impl Numbers {
    fn of(name: &str) -> Numbers {
        use syscalls::{aarch64, arm, x86, x86_64};
        let mut by_abi = [None; 5];
        let mut i386_multiplexed = None;
        if cfg!(target_arch = "x86_64") {
            let native = x86_64::Sysno::from_str(name).ok().map(|s| s.id() as u32);
            by_abi[Abi::X86_64 as usize] = native;
            by_abi[Abi::X32 as usize] = x32_number(name, native).map(|nr| nr | X32_SYSCALL_BIT);
            by_abi[Abi::I386 as usize] = x86::Sysno::from_str(name).ok().map(|s| s.id() as u32);
            i386_multiplexed = self::i386_multiplexed(name);
        } else {
            by_abi[Abi::Aarch64 as usize] =
                aarch64::Sysno::from_str(name).ok().map(|s| s.id() as u32);
            by_abi[Abi::Arm as usize] = arm::Sysno::from_str(name).ok().map(|s| s.id() as u32);
        }
        Numbers {
            by_abi,
            i386_multiplexed,
        }
    }

    fn on(&self, abi: Abi) -> Option<u32> {
        self.by_abi[abi as usize]
    }

    /// Whether any architecture knows the name (typos are errors, foreign
    /// syscalls are not).
    fn known_anywhere(&self, name: &str) -> bool {
        self.by_abi.iter().any(Option::is_some) || known_anywhere(name)
    }
}

/// Whether any architecture knows the name.
fn known_anywhere(name: &str) -> bool {
    use syscalls::{aarch64, arm, mips64, powerpc64, riscv64, s390x, x86, x86_64};
    x86_64::Sysno::from_str(name).is_ok()
        || x86::Sysno::from_str(name).is_ok()
        || aarch64::Sysno::from_str(name).is_ok()
        || arm::Sysno::from_str(name).is_ok()
        || riscv64::Sysno::from_str(name).is_ok()
        || powerpc64::Sysno::from_str(name).is_ok()
        || s390x::Sysno::from_str(name).is_ok()
        || mips64::Sysno::from_str(name).is_ok()
}

/// The native ABI and the compat ABIs this kernel may run, with the spec's
/// name for each.
fn host_abis() -> (Abi, Vec<(Arch, Abi)>) {
    if cfg!(target_arch = "x86_64") {
        (
            Abi::X86_64,
            vec![
                (Arch::ScmpArchX86, Abi::I386),
                (Arch::ScmpArchX32, Abi::X32),
            ],
        )
    } else if cfg!(target_arch = "aarch64") {
        (Abi::Aarch64, vec![(Arch::ScmpArchArm, Abi::Arm)])
    } else {
        panic!("amphi's seccomp support covers x86_64 and aarch64 hosts")
    }
}

/// The filter's return value for an action; `field` names it in an error
/// (made only then: a profile has hundreds of rules).
fn action(
    field: impl Fn() -> String,
    action: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<u32> {
    let data = errno.unwrap_or(libc::EPERM as u32);
    if data > 0xffff {
        return Err(invalid(
            field(),
            format!("errno {data} does not fit the 16 bits seccomp returns"),
        ));
    }
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported(format!(
                "{}: SCMP_ACT_NOTIFY (seccomp user notification) is not supported by amphi; use another action",
                field()
            )))
        }
    })
}

/// With this annotation "true", a syscall name no architecture knows fails
/// `create` instead of being skipped with a warning.
pub const STRICT_ANNOTATION: &str = "io.github.amphi.seccomp-strict";

/// How to treat a syscall name no architecture amphi knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownNames {
    /// Skip it, with a warning (runc and crun skip them).
    Skip,
    /// Refuse the profile.
    Refuse,
}

/// Compile the profile, rejecting what cannot be honoured; what is
/// skipped is said in `warnings`.
pub fn compile(
    s: &LinuxSeccomp,
    unknown: UnknownNames,
    warnings: &mut Vec<String>,
) -> Result<Program> {
    if s.listener_path().is_some() {
        return Err(Error::Unsupported(
            "linux.seccomp.listenerPath: seccomp user notification is not supported by amphi"
                .into(),
        ));
    }
    let default = action(
        || "linux.seccomp.defaultAction".into(),
        s.default_action(),
        s.default_errno_ret(),
    )?;
    let syscalls = s.syscalls().as_deref().unwrap_or_default();
    let mut skipped = Vec::new();
    let mut numbers: Vec<Vec<Numbers>> = Vec::with_capacity(syscalls.len());
    for (i, sc) in syscalls.iter().enumerate() {
        let mut of_rule = Vec::with_capacity(sc.names().len());
        for name in sc.names() {
            let n = Numbers::of(name);
            of_rule.push(n);
            if n.known_anywhere(name) {
                continue;
            }
            if unknown == UnknownNames::Refuse {
                return Err(invalid(
                    format!("linux.seccomp.syscalls[{i}].names"),
                    format!(
                        "unknown syscall {name:?} (on every architecture amphi knows; \
                         {STRICT_ANNOTATION} makes this an error)"
                    ),
                ));
            }
            if !skipped.contains(name) {
                skipped.push(name.clone());
            }
        }
        numbers.push(of_rule);
        for (j, a) in sc.args().iter().flatten().enumerate() {
            if a.index() > 5 {
                return Err(invalid(
                    format!("linux.seccomp.syscalls[{i}].args[{j}].index"),
                    format!(
                        "{} is out of range: syscalls take arguments 0 to 5",
                        a.index()
                    ),
                ));
            }
        }
    }

    if !skipped.is_empty() {
        warnings.push(format!(
            "linux.seccomp: skipped syscall names no architecture amphi knows: {}",
            skipped.join(", ")
        ));
    }
    let rules = syscalls
        .iter()
        .zip(numbers)
        .enumerate()
        .map(|(i, (sc, numbers))| {
            Ok(Rule {
                action: action(
                    || format!("linux.seccomp.syscalls[{i}].action"),
                    sc.action(),
                    sc.errno_ret(),
                )?,
                numbers,
                args: sc.args().as_deref().unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<Rule>>>()?;

    let (native, compat) = host_abis();
    let listed = s.architectures().as_deref().unwrap_or_default();
    let mut sections: Vec<(u32, Vec<libc::sock_filter>)> = Vec::new();
    let native_code = if native == Abi::X86_64 {
        // x32 syscalls arrive with x86_64's audit arch and the x32 bit set.
        let x32 = if listed.contains(&Arch::ScmpArchX32) {
            abi_rules(Abi::X32, &rules, default)
        } else {
            vec![raw(RET, RET_KILL_PROCESS, 0, 0)]
        };
        let mut code = vec![
            raw(LD_ABS, OFF_NR, 0, 0),
            raw(JGE, X32_SYSCALL_BIT, 1, 0),
            raw(JA, x32.len() as u32, 0, 0),
        ];
        code.extend(x32);
        code.extend(abi_rules(Abi::X86_64, &rules, default));
        code
    } else {
        abi_rules(native, &rules, default)
    };
    sections.push((native.audit_arch(), native_code));
    for (arch, abi) in compat {
        if abi != Abi::X32 && listed.contains(&arch) {
            sections.push((abi.audit_arch(), abi_rules(abi, &rules, default)));
        }
    }

    // Dispatch: for each section `jeq arch; ja section`, then kill.
    let header_len = 1 + 2 * sections.len() + 1;
    let mut insns = vec![raw(LD_ABS, OFF_ARCH, 0, 0)];
    let mut before = 0;
    for (i, (arch, code)) in sections.iter().enumerate() {
        let ja_at = 1 + 2 * i + 1;
        insns.push(raw(JEQ, *arch, 0, 1));
        insns.push(raw(JA, (header_len - ja_at - 1 + before) as u32, 0, 0));
        before += code.len();
    }
    insns.push(raw(RET, RET_KILL_PROCESS, 0, 0));
    for (_, code) in sections {
        insns.extend(code);
    }
    if insns.len() > BPF_MAXINSNS {
        return Err(invalid(
            "linux.seccomp".into(),
            format!(
                "the profile compiles to {} BPF instructions, more than the kernel's {BPF_MAXINSNS}",
                insns.len()
            ),
        ));
    }

    let mut flags = 0;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
        };
    }
    Ok(Program { insns, flags })
}

/// The rules of one ABI, in profile order, ending with the default action.
/// Consecutive rules without conditions and with one action are a set of
/// syscall numbers, searched as ranges ([`set_rule`]): the common
/// allow-list profile is hundreds of instructions instead of thousands,
/// and a syscall's way through it a few dozen.
fn abi_rules(abi: Abi, rules: &[Rule], default: u32) -> Vec<libc::sock_filter> {
    let mut out = Vec::new();
    // The pending run of unconditional rules with one action.
    let mut run: Option<Run> = None;
    for rule in rules {
        let act = rule.action;
        for numbers in &rule.numbers {
            let nr = numbers.on(abi);
            let multiplexed = if abi == Abi::I386 {
                numbers.i386_multiplexed
            } else {
                None
            };
            if nr.is_none() && multiplexed.is_none() {
                continue;
            }
            if rule.args.is_empty() {
                if run.as_ref().is_some_and(|r| r.action != act) {
                    out.extend(run.take().expect("checked").compile());
                }
                let r = run.get_or_insert_with(|| Run::new(act));
                r.numbers.extend(nr);
                r.multiplexed.extend(multiplexed);
                continue;
            }
            if let Some(r) = run.take() {
                out.extend(r.compile());
            }
            // Conditions test the arguments of the direct call; through
            // socketcall/ipc they sit behind a pointer no filter can read,
            // so a conditional rule covers the direct call only (as with
            // libseccomp).
            let Some(nr) = nr else { continue };
            for conds in rule_groups(rule.args) {
                out.extend(self::rule(nr, &conds, act, abi.is_32bit()));
            }
        }
    }
    if let Some(r) = run.take() {
        out.extend(r.compile());
    }
    out.push(raw(RET, default, 0, 0));
    out
}

/// One of the profile's rules, checked: its action's return value and the
/// numbers of its syscalls.
struct Rule<'s> {
    action: u32,
    numbers: Vec<Numbers>,
    args: &'s [LinuxSeccompArg],
}

/// Consecutive unconditional rules with one action.
struct Run {
    action: u32,
    numbers: Vec<u32>,
    /// (multiplexer, call) pairs: i386's socketcall and ipc with the call
    /// number in their first argument.
    multiplexed: Vec<(u32, u32)>,
}

impl Run {
    fn new(action: u32) -> Run {
        Run {
            action,
            numbers: Vec::new(),
            multiplexed: Vec::new(),
        }
    }

    fn compile(self) -> Vec<libc::sock_filter> {
        let mut out = Vec::new();
        if !self.numbers.is_empty() {
            out.extend(set_rule(self.numbers, self.action));
        }
        for mux in [I386_SOCKETCALL, I386_IPC] {
            let calls: Vec<u32> = self
                .multiplexed
                .iter()
                .filter(|(m, _)| *m == mux)
                .map(|(_, call)| *call)
                .collect();
            if !calls.is_empty() {
                out.extend(multiplexed_rule(mux, &calls, self.action));
            }
        }
        out
    }
}

const I386_SOCKETCALL: u32 = 102;
const I386_IPC: u32 = 117;

/// i386 reaches the socket and SysV IPC calls through socketcall(2) and
/// ipc(2) too, the call's number in the first argument (linux/net.h,
/// linux/ipc.h): a rule naming `socket` also covers `socketcall(1, ...)`,
/// as libseccomp makes it.
fn i386_multiplexed(name: &str) -> Option<(u32, u32)> {
    const SOCKET: [&str; 20] = [
        "socket",
        "bind",
        "connect",
        "listen",
        "accept",
        "getsockname",
        "getpeername",
        "socketpair",
        "send",
        "recv",
        "sendto",
        "recvfrom",
        "shutdown",
        "setsockopt",
        "getsockopt",
        "sendmsg",
        "recvmsg",
        "accept4",
        "recvmmsg",
        "sendmmsg",
    ];
    const IPC: [(&str, u32); 12] = [
        ("semop", 1),
        ("semget", 2),
        ("semctl", 3),
        ("semtimedop", 4),
        ("msgsnd", 11),
        ("msgrcv", 12),
        ("msgget", 13),
        ("msgctl", 14),
        ("shmat", 21),
        ("shmdt", 22),
        ("shmget", 23),
        ("shmctl", 24),
    ];
    if let Some(i) = SOCKET.iter().position(|n| *n == name) {
        return Some((I386_SOCKETCALL, i as u32 + 1));
    }
    IPC.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, call)| (I386_IPC, *call))
}

/// `act` for syscall `nr` whose first argument's low word is one of `calls`.
fn multiplexed_rule(nr: u32, calls: &[u32], act: u32) -> Vec<libc::sock_filter> {
    let arg0 = if cfg!(target_endian = "little") {
        OFF_ARGS
    } else {
        OFF_ARGS + 4
    };
    // ld nr; jeq nr else past all; ld arg0; jeq each -> ret; ja past ret; ret.
    let n = calls.len();
    let mut out = vec![
        raw(LD_ABS, OFF_NR, 0, 0),
        raw(JEQ, nr, 0, u8::try_from(n + 3).expect("under 256 calls")),
        raw(LD_ABS, arg0, 0, 0),
    ];
    for (i, call) in calls.iter().enumerate() {
        out.push(raw(
            JEQ,
            *call,
            u8::try_from(n - i).expect("under 256 calls"),
            0,
        ));
    }
    out.push(raw(JA, 1, 0, 0));
    out.push(raw(RET, act, 0, 0));
    out
}

/// `act` for any syscall in `nrs`, else fall through. The numbers, as
/// sorted ranges, are searched as a binary tree: a syscall's way through
/// the set is a few comparisons, not one per range. That matters twice:
/// for each syscall the container makes that the kernel cannot decide
/// from its cache, and when the filter is installed, since the kernel
/// then runs it for every syscall number of every architecture to fill
/// that cache. Run as a chain, podman's profile took 0.5 ms to install.
fn set_rule(mut nrs: Vec<u32>, act: u32) -> Vec<libc::sock_filter> {
    nrs.sort_unstable();
    nrs.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for nr in nrs {
        match ranges.last_mut() {
            Some((_, hi)) if *hi + 1 == nr => *hi = nr,
            _ => ranges.push((nr, nr)),
        }
    }
    let mut out = vec![raw(LD_ABS, OFF_NR, 0, 0)];
    let mut exits = Exits::default();
    search_tree(&ranges, &mut out, &mut exits);
    let matched = out.len();
    out.push(raw(RET, act, 0, 0));
    let missed = out.len();
    for (jumps, target) in [(exits.matched, matched), (exits.missed, missed)] {
        for at in jumps {
            out[at].k = (target - at - 1) as u32;
        }
    }
    out
}

/// The jumps out of a search tree, to be pointed at the set's RET
/// (matched) or past it (missed) once the tree's length is known.
#[derive(Default)]
struct Exits {
    matched: Vec<usize>,
    missed: Vec<usize>,
}

/// Ranges a leaf of the search tree tests one after the other.
const LEAF_RANGES: usize = 4;

/// The code that finds A in `ranges` (sorted, disjoint): a node compares
/// with its middle range's start and goes left or right; a leaf tests its
/// few ranges in order. Every way out is a JA (its 32-bit offset reaches
/// anywhere; the conditional jumps stay within a node or leaf).
fn search_tree(ranges: &[(u32, u32)], out: &mut Vec<libc::sock_filter>, exits: &mut Exits) {
    if ranges.len() <= LEAF_RANGES {
        let checks: usize = ranges
            .iter()
            .map(|(lo, hi)| if lo == hi { 1 } else { 2 })
            .sum();
        // A match jumps to the leaf's last instruction, the JA to the RET,
        // one past the JA taken when nothing matched.
        let to_matched = |at: usize| u8::try_from(checks - at).expect("a leaf is short");
        let mut at = 0;
        for &(lo, hi) in ranges {
            if lo == hi {
                out.push(raw(JEQ, lo, to_matched(at), 0));
                at += 1;
            } else {
                // Below lo: on to the next range.
                out.push(raw(JGE, lo, 0, 1));
                out.push(raw(JGT, hi, 0, to_matched(at + 1)));
                at += 2;
            }
        }
        exits.missed.push(out.len());
        out.push(raw(JA, 0, 0, 0));
        exits.matched.push(out.len());
        out.push(raw(JA, 0, 0, 0));
        return;
    }
    let mid = ranges.len() / 2;
    // At or above the middle range's start: the JA to the right half.
    out.push(raw(JGE, ranges[mid].0, 0, 1));
    let to_right = out.len();
    out.push(raw(JA, 0, 0, 0));
    search_tree(&ranges[..mid], out, exits);
    out[to_right].k = (out.len() - to_right - 1) as u32;
    search_tree(&ranges[mid..], out, exits);
}

/// runc's grouping: all conditions in one rule, unless an argument index
/// repeats, in which case each condition is a rule of its own.
fn rule_groups(args: &[LinuxSeccompArg]) -> Vec<Vec<LinuxSeccompArg>> {
    let mut seen = [0u8; 6];
    for a in args {
        seen[a.index()] += 1;
    }
    if seen.iter().any(|&n| n > 1) {
        args.iter().map(|a| vec![*a]).collect()
    } else {
        vec![args.to_vec()]
    }
}

/// `nr` with its conditions: falls through to the next rule when the
/// syscall or any condition does not match.
fn rule(
    nr: u32,
    conds: &[LinuxSeccompArg],
    act: u32,
    low_word_only: bool,
) -> Vec<libc::sock_filter> {
    let mut body: Vec<Insn> = Vec::new();
    for c in conds {
        body.extend(if low_word_only {
            condition32(c)
        } else {
            condition(c)
        });
    }
    body.push(stmt(RET, act));
    let len = body.len();
    let resolve = |t: Target, at: usize| match t {
        Target::Next(n) => n,
        Target::Fail => u8::try_from(len - at - 1).expect("a rule is shorter than 256"),
    };
    let mut out = vec![
        raw(LD_ABS, OFF_NR, 0, 0),
        raw(
            JEQ,
            nr,
            0,
            u8::try_from(len).expect("a rule is shorter than 256"),
        ),
    ];
    out.extend(
        body.iter()
            .enumerate()
            .map(|(at, i)| raw(i.code, i.k, resolve(i.jt, at), resolve(i.jf, at))),
    );
    out
}

/// One comparison of an argument's low 32 bits (32-bit ABIs), the value
/// and mask taken to 32 bits too.
fn condition32(c: &LinuxSeccompArg) -> Vec<Insn> {
    let off = OFF_ARGS + 8 * c.index() as u32;
    let lo_off = if cfg!(target_endian = "little") {
        off
    } else {
        off + 4
    };
    let ld = stmt(LD_ABS, lo_off);
    let (ok, fail) = (Target::Next(0), Target::Fail);
    let v = c.value() as u32;
    use LinuxSeccompOperator::*;
    match c.op() {
        ScmpCmpEq => vec![ld, jump(JEQ, v, ok, fail)],
        ScmpCmpNe => vec![ld, jump(JEQ, v, fail, ok)],
        ScmpCmpMaskedEq => vec![
            ld,
            stmt(ALU_AND, v),
            jump(JEQ, c.value_two().unwrap_or(0) as u32, ok, fail),
        ],
        ScmpCmpGt => vec![ld, jump(JGT, v, ok, fail)],
        ScmpCmpGe => vec![ld, jump(JGE, v, ok, fail)],
        ScmpCmpLt => vec![ld, jump(JGE, v, fail, ok)],
        ScmpCmpLe => vec![ld, jump(JGT, v, fail, ok)],
    }
}

/// One 64-bit comparison on 32-bit BPF: the high word decides unless equal.
fn condition(c: &LinuxSeccompArg) -> Vec<Insn> {
    let off = OFF_ARGS + 8 * c.index() as u32;
    let (lo_off, hi_off) = if cfg!(target_endian = "little") {
        (off, off + 4)
    } else {
        (off + 4, off)
    };
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let (hi, lo) = split(c.value());
    let ld_hi = stmt(LD_ABS, hi_off);
    let ld_lo = stmt(LD_ABS, lo_off);
    let ok = Target::Next(0);
    let fail = Target::Fail;
    use LinuxSeccompOperator::*;
    match c.op() {
        ScmpCmpEq => vec![
            ld_hi,
            jump(JEQ, hi, ok, fail),
            ld_lo,
            jump(JEQ, lo, ok, fail),
        ],
        ScmpCmpNe => vec![
            ld_hi,
            jump(JEQ, hi, ok, Target::Next(2)),
            ld_lo,
            jump(JEQ, lo, fail, ok),
        ],
        ScmpCmpMaskedEq => {
            let (mhi, mlo) = (hi, lo);
            let (vhi, vlo) = split(c.value_two().unwrap_or(0));
            vec![
                ld_hi,
                stmt(ALU_AND, mhi),
                jump(JEQ, vhi, ok, fail),
                ld_lo,
                stmt(ALU_AND, mlo),
                jump(JEQ, vlo, ok, fail),
            ]
        }
        ScmpCmpGt | ScmpCmpGe => vec![
            ld_hi,
            jump(JGT, hi, Target::Next(3), ok),
            jump(JEQ, hi, ok, fail),
            ld_lo,
            jump(if c.op() == ScmpCmpGt { JGT } else { JGE }, lo, ok, fail),
        ],
        ScmpCmpLt | ScmpCmpLe => vec![
            ld_hi,
            jump(JGE, hi, ok, Target::Next(3)),
            jump(JEQ, hi, ok, fail),
            ld_lo,
            jump(if c.op() == ScmpCmpLt { JGE } else { JGT }, lo, fail, ok),
        ],
    }
}

impl Program {
    /// Install the filter on the calling thread (all threads with TSYNC).
    /// Needs no_new_privs or CAP_SYS_ADMIN.
    pub fn install(&self) -> Result<()> {
        let prog = libc::sock_fprog {
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at instructions that outlive the call; the
        // kernel copies them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(Error::sys(
                "linux.seccomp: install filter",
                nix::Error::last(),
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// The classic BPF program, as the kernel gets it.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The flags, then each instruction, little-endian: how the runtime
    /// hands a program it compiled to the container's init.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FLAGS_LEN + 8 * self.insns.len());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for i in &self.insns {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.extend_from_slice(&[i.jt, i.jf]);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
        out
    }

    /// What [`Program::to_bytes`] wrote; `None` for anything else.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Program> {
        let (flags, insns) = bytes.split_first_chunk::<FLAGS_LEN>()?;
        if insns.len() % 8 != 0 || insns.len() / 8 > BPF_MAXINSNS {
            return None;
        }
        let insns = insns
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Program {
            insns,
            flags: libc::c_ulong::from_le_bytes(*flags),
        })
    }
}

impl PartialEq for Program {
    fn eq(&self, other: &Program) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Program {}

/// Syscalls the default profile refuses (EPERM), as the common container
/// default does: kernel modules and keys, clocks, mounts and namespaces,
/// tracing and cross-process memory, reboot, swap, BPF, perf, userfaultfd,
/// handle-based opens, NUMA policy and obsolete calls. `clone` is allowed
/// without namespace flags; `clone3` answers ENOSYS so libcs fall back to
/// `clone`, whose flags the filter can see.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "clone",
    "clone3",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pidfd_getfd",
    "pivot_root",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "afs_syscall",
    "tuxcall",
    "security",
    "getpmsg",
    "putpmsg",
    "vserver",
    "create_module",
    "epoll_ctl_old",
    "epoll_wait_old",
    "set_thread_area",
    "get_thread_area",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// The default profile: deny by default, allow every syscall of this
/// architecture but the ones above.
pub fn default_profile_json() -> serde_json::Value {
    use syscalls::{Sysno, SysnoSet};
    let allowed: Vec<&str> = SysnoSet::all()
        .iter()
        .map(|s: Sysno| s.name())
        .filter(|n| !DENIED.contains(n))
        .collect();
    const CLONE_NAMESPACES: u64 = 0x7E02_0000;
    let archs = if cfg!(target_arch = "x86_64") {
        serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    } else {
        serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
    };
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": archs,
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0xffff_ffffu64, "op": "SCMP_CMP_EQ"}]}
        ]
    })
}

/// [`default_profile_json`] as the spec type.
pub fn default_profile() -> oci_spec::runtime::LinuxSeccomp {
    serde_json::from_value(default_profile_json())
        .expect("the default profile is a valid LinuxSeccomp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    fn lenient(s: &LinuxSeccomp) -> Result<Program> {
        compile(s, UnknownNames::Skip, &mut Vec::new())
    }

    #[test]
    fn unknown_names_are_skipped_with_a_warning_or_refused_when_strict() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdirr","breakpoint","mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let mut warnings = Vec::new();
        compile(&p, UnknownNames::Skip, &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("mkdirr, breakpoint"), "{warnings:?}");
        let e = compile(&p, UnknownNames::Refuse, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("syscalls[0].names") && e.contains("mkdirr"),
            "{e}"
        );
        // A name only another architecture has is no news: no warning.
        let mut warnings = Vec::new();
        compile(
            &profile(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["arm_fadvise64_64","mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
            ),
            UnknownNames::Refuse,
            &mut warnings,
        )
        .unwrap();
        assert!(warnings.is_empty());
    }

    /// Run a filter on (arch, nr, args) as the kernel would (the subset of
    /// classic BPF the compiler emits).
    fn eval(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        run(p, arch, nr, args).0
    }

    /// The filter's decision, and how many instructions it ran to get there.
    fn run(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |off: u32| -> u32 {
            match off {
                OFF_NR => nr,
                OFF_ARCH => arch,
                o => {
                    let i = ((o - OFF_ARGS) / 8) as usize;
                    let hi = (o - OFF_ARGS) % 8 == 4;
                    if hi == cfg!(target_endian = "little") {
                        (args[i] >> 32) as u32
                    } else {
                        args[i] as u32
                    }
                }
            }
        };
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = p.insns[pc];
            steps += 1;
            let cond = |taken: bool| pc + 1 + if taken { i.jt as usize } else { i.jf as usize };
            pc = match i.code {
                LD_ABS => {
                    a = word(i.k);
                    pc + 1
                }
                ALU_AND => {
                    a &= i.k;
                    pc + 1
                }
                JA => pc + 1 + i.k as usize,
                JEQ => cond(a == i.k),
                JGT => cond(a > i.k),
                JGE => cond(a >= i.k),
                RET => return (i.k, steps),
                c => panic!("unexpected opcode {c:#x}"),
            };
        }
    }

    #[test]
    fn the_default_profile_is_compact_and_decides_as_written() {
        let p = lenient(&default_profile()).unwrap();
        assert!(p.len() < 1000, "{} instructions", p.len());
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        // The kernel runs the filter for every syscall number of each
        // architecture when it is installed, and for each syscall it
        // cannot decide from its cache: no number's way is long.
        let longest = [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386]
            .into_iter()
            .flat_map(|arch| (0..600).map(move |nr| (arch, nr)))
            .chain((0..600).map(|nr| (AUDIT_ARCH_X86_64, nr | X32_SYSCALL_BIT)))
            .map(|(arch, nr)| run(&p, arch, nr, [0; 6]).1)
            .max()
            .unwrap();
        assert!(
            longest <= 64,
            "{longest} instructions for one syscall (len {})",
            p.len()
        );
        let denied = |name: &str| DENIED.contains(&name);
        for nr in 0..600u32 {
            let Some(sysno) = syscalls::x86_64::Sysno::new(nr as usize) else {
                continue;
            };
            let want = match sysno.name() {
                "clone3" => RET_ERRNO | libc::ENOSYS as u32,
                "clone" | "personality" => continue,
                n if denied(n) => RET_ERRNO | libc::EPERM as u32,
                _ => RET_ALLOW,
            };
            assert_eq!(
                eval(&p, AUDIT_ARCH_X86_64, nr, [0; 6]),
                want,
                "{}",
                sysno.name()
            );
        }
        let clone = syscalls::x86_64::Sysno::clone as u32;
        assert_eq!(
            eval(
                &p,
                AUDIT_ARCH_X86_64,
                clone,
                [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
            ),
            RET_ALLOW
        );
        let newns = libc::CLONE_NEWNS as u64 | libc::SIGCHLD as u64;
        assert_eq!(
            eval(&p, AUDIT_ARCH_X86_64, clone, [newns, 0, 0, 0, 0, 0]),
            RET_ERRNO | libc::EPERM as u32
        );
        let mkdir32 = syscalls::x86::Sysno::mkdir as u32;
        assert_eq!(eval(&p, AUDIT_ARCH_I386, mkdir32, [0; 6]), RET_ALLOW);
        assert_eq!(
            eval(&p, 0xdead, 0, [0; 6]),
            RET_KILL_PROCESS,
            "an unknown arch is killed"
        );
    }

    #[test]
    fn rule_order_is_kept_around_sets() {
        // mkdir: errno 1 (first rule wins over the later allow); rmdir allowed.
        let p = lenient(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"architectures":["SCMP_ARCH_X86_64"],"syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["rmdir","mkdir","read","write"],"action":"SCMP_ACT_ALLOW"},
                {"names":["close"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":3,"op":"SCMP_CMP_GE"}]}]}"#,
        ))
        .unwrap();
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        use syscalls::x86_64::Sysno;
        let run = |s: Sysno, a0: u64| eval(&p, AUDIT_ARCH_X86_64, s as u32, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(run(Sysno::mkdir, 0), RET_ERRNO | 1);
        assert_eq!(run(Sysno::rmdir, 0), RET_ALLOW);
        assert_eq!(run(Sysno::read, 0), RET_ALLOW);
        assert_eq!(run(Sysno::write, 0), RET_ALLOW);
        assert_eq!(run(Sysno::close, 2), RET_ERRNO | 38);
        assert_eq!(run(Sysno::close, 3), RET_ALLOW);
        assert_eq!(run(Sysno::open, 0), RET_ERRNO | 38);
    }

    #[test]
    fn notify_is_refused() {
        let e = lenient(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    }

    #[test]
    fn argument_index_is_checked() {
        let e = lenient(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("args[0].index"), "{e}");
    }
}
