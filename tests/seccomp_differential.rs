//! amphi's seccomp compiler against the reference: for each profile, every
//! syscall number of the x86_64, x32 and i386 ABIs (and the argument values
//! the profile's conditions turn on) gets the same action and errno from
//! amphi's filter as from the filter libseccomp builds the way runc builds
//! it. Both programs run on one classic-BPF interpreter, so what is compared
//! is what the kernel would decide.
//!
//! Profiles: podman's default (`/usr/share/containers/seccomp.json`, from
//! containers-common, resolved for podman's default capabilities as podman
//! does before it hands the spec to the runtime), the runtime-spec's
//! examples, and amphi's own default.

#![cfg(target_arch = "x86_64")]

use std::collections::BTreeSet;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall,
};
use serde_json::json;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_BIT: u32 = 0x4000_0000;
const RET_ACTION_FULL: u32 = 0xffff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;

fn scmp_action(a: LinuxSeccompAction, errno: Option<u32>, default_errno: u32) -> ScmpAction {
    let errno = errno.unwrap_or(default_errno) as i32;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => panic!("not compared"),
    }
}

/// The filter runc builds from `s` with libseccomp (runc's
/// libcontainer/seccomp/seccomp_linux.go): rules with the default action
/// are left out, names the library does not know are skipped, a rule that
/// names one argument twice becomes one rule per condition.
fn libseccomp_program(s: &LinuxSeccomp) -> Vec<libc::sock_filter> {
    let default = scmp_action(
        s.default_action(),
        s.default_errno_ret(),
        libc::EPERM as u32,
    );
    let mut f = ScmpFilterContext::new(default).unwrap();
    f.set_ctl_nnp(false).unwrap();
    for arch in s.architectures().iter().flatten() {
        let a = match arch {
            Arch::ScmpArchX86_64 => ScmpArch::X8664,
            Arch::ScmpArchX86 => ScmpArch::X86,
            Arch::ScmpArchX32 => ScmpArch::X32,
            other => panic!("arch {other:?} not compared"),
        };
        f.add_arch(a).unwrap();
    }
    for rule in s.syscalls().iter().flatten() {
        let action = scmp_action(rule.action(), rule.errno_ret(), libc::EPERM as u32);
        if action == default {
            continue;
        }
        let conditions: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
                };
                let datum = if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    a.value_two().unwrap_or(0)
                } else {
                    a.value()
                };
                ScmpArgCompare::new(a.index() as u32, op, datum)
            })
            .collect();
        let mut indexes: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(call) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if conditions.is_empty() {
                f.add_rule(action, call).unwrap();
            } else if repeated {
                for c in &conditions {
                    f.add_rule_conditional(action, call, std::slice::from_ref(c))
                        .unwrap();
                }
            } else {
                f.add_rule_conditional(action, call, &conditions).unwrap();
            }
        }
    }
    let mut out = tempfile::tempfile().unwrap();
    f.export_bpf(&mut out).unwrap();
    let bytes = std::fs::read(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&out)
    ))
    .unwrap();
    bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Classic BPF as the kernel's seccomp runs it, on (nr, arch, args).
fn run(prog: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            8 | 12 => 0, // instruction pointer
            o if (16..64).contains(&o) => {
                let i = ((o - 16) / 8) as usize;
                if (o - 16) % 8 == 0 {
                    args[i] as u32
                } else {
                    (args[i] >> 32) as u32
                }
            }
            o => panic!("load at {o}"),
        }
    };
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let code = i.code as u32;
        let src = if code & libc::BPF_X != 0 { x } else { i.k };
        pc += 1;
        match code & 0x07 {
            c if c == libc::BPF_LD => match code & 0xe0 {
                m if m == libc::BPF_ABS => a = word(i.k),
                m if m == libc::BPF_IMM => a = i.k,
                m if m == libc::BPF_MEM => a = mem[i.k as usize],
                m => panic!("ld mode {m:#x}"),
            },
            c if c == libc::BPF_LDX => match code & 0xe0 {
                m if m == libc::BPF_IMM => x = i.k,
                m if m == libc::BPF_MEM => x = mem[i.k as usize],
                m => panic!("ldx mode {m:#x}"),
            },
            c if c == libc::BPF_ST => mem[i.k as usize] = a,
            c if c == libc::BPF_STX => mem[i.k as usize] = x,
            c if c == libc::BPF_ALU => {
                a = match code & 0xf0 {
                    o if o == libc::BPF_ADD => a.wrapping_add(src),
                    o if o == libc::BPF_SUB => a.wrapping_sub(src),
                    o if o == libc::BPF_AND => a & src,
                    o if o == libc::BPF_OR => a | src,
                    o if o == libc::BPF_LSH => a << src,
                    o if o == libc::BPF_RSH => a >> src,
                    o if o == libc::BPF_NEG => a.wrapping_neg(),
                    o => panic!("alu {o:#x}"),
                }
            }
            c if c == libc::BPF_JMP => {
                let op = code & 0xf0;
                if op == libc::BPF_JA {
                    pc += i.k as usize;
                    continue;
                }
                let taken = match op {
                    o if o == libc::BPF_JEQ => a == src,
                    o if o == libc::BPF_JGT => a > src,
                    o if o == libc::BPF_JGE => a >= src,
                    o if o == libc::BPF_JSET => a & src != 0,
                    o => panic!("jmp {o:#x}"),
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            c if c == libc::BPF_RET => {
                return if code & 0x18 == libc::BPF_A { a } else { i.k };
            }
            c if c == libc::BPF_MISC => {
                if code & 0xf8 == libc::BPF_TAX {
                    x = a
                } else {
                    a = x
                }
            }
            c => panic!("class {c:#x}"),
        }
    }
}

/// Argument vectors that decide every condition of the profile both ways:
/// zeros, and each condition's value (and mask) with its neighbours, in
/// the argument it tests.
fn argument_cases(s: &LinuxSeccomp) -> Vec<[u64; 6]> {
    let mut cases: BTreeSet<[u64; 6]> = BTreeSet::new();
    cases.insert([0; 6]);
    let rules: Vec<&LinuxSyscall> = s.syscalls().iter().flatten().collect();
    let conds: Vec<_> = rules
        .iter()
        .flat_map(|r| r.args().iter().flatten())
        .collect();
    for c in &conds {
        for v in [c.value(), c.value_two().unwrap_or(0)] {
            for probe in [
                v.wrapping_sub(1),
                v,
                v.wrapping_add(1),
                v | (1 << 32),
                u64::MAX,
            ] {
                let mut a = [0u64; 6];
                a[c.index()] = probe;
                cases.insert(a);
                // With every other condition of the profile met too.
                for d in &conds {
                    if d.index() != c.index() {
                        let mut b = a;
                        b[d.index()] = d.value();
                        cases.insert(b);
                    }
                }
            }
        }
    }
    cases.into_iter().collect()
}

/// Kills are one class: libseccomp kills a thread for an ABI not in the
/// profile, amphi the whole process (both end the syscall's caller).
fn class(ret: u32) -> u32 {
    match ret & RET_ACTION_FULL {
        RET_KILL_PROCESS | RET_KILL_THREAD => RET_KILL_PROCESS,
        _ => ret,
    }
}

fn compare(name: &str, profile: &LinuxSeccomp) {
    let mut warnings = Vec::new();
    let ours = amphi_core::seccomp::compile(
        profile,
        amphi_core::seccomp::UnknownNames::Skip,
        &mut warnings,
    )
    .unwrap_or_else(|e| panic!("{name}: amphi refuses the profile: {e}"));
    let reference = libseccomp_program(profile);
    let args = argument_cases(profile);
    let mut checked = 0;
    let mut differences = Vec::new();
    let abis = [
        ("x86_64", AUDIT_ARCH_X86_64, 0u32),
        ("x32", AUDIT_ARCH_X86_64, X32_BIT),
        ("i386", AUDIT_ARCH_I386, 0),
    ];
    let mut unknown_to_libseccomp = 0;
    for (abi, arch, bit) in abis {
        let scmp_arch = match abi {
            "x86_64" => ScmpArch::X8664,
            "x32" => ScmpArch::X32,
            _ => ScmpArch::X86,
        };
        for nr in 0..600u32 {
            // A number this libseccomp has no name for (a syscall newer
            // than it) is where the two may rightly differ: amphi knows it.
            let number = (nr | bit) as i32;
            if ScmpSyscall::from(number)
                .get_name_by_arch(scmp_arch)
                .is_err()
            {
                unknown_to_libseccomp += 1;
                continue;
            }
            for a in &args {
                let got = run(ours.instructions(), nr | bit, arch, *a);
                let want = run(&reference, nr | bit, arch, *a);
                checked += 1;
                if class(got) != class(want) && differences.len() < 20 {
                    differences.push(format!(
                        "{abi} syscall {nr} args {a:x?}: amphi {got:#x}, libseccomp {want:#x}"
                    ));
                }
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{name}: amphi and libseccomp disagree:\n{}",
        differences.join("\n")
    );
    eprintln!(
        "{name}: {checked} decisions agree ({} amphi instructions, {} libseccomp; \
         {unknown_to_libseccomp} numbers libseccomp cannot name skipped); warnings: {warnings:?}",
        ours.len(),
        reference.len()
    );
}

#[test]
fn podmans_default_profile() {
    let path = amphi_tests::seccomp::CONTAINERS_PROFILE;
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (Debian's containers-common, with podman)"));
    let profile = amphi_tests::seccomp::resolve_containers_profile(
        &serde_json::from_str(&text).unwrap(),
        &amphi_tests::seccomp::PODMAN_CAPS,
    );
    compare("podman default", &profile);
}

#[test]
fn runtime_spec_examples() {
    // config-linux.md, Seccomp, and config.md's example.
    let examples = [
        json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "syscalls": [{"names": ["getcwd", "chmod"], "action": "SCMP_ACT_ERRNO"}]}),
        json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "syscalls": [{"names": ["getcwd", "chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                            {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28,
                             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
                             "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_GT"},
                                      {"index": 0, "value": 1, "op": "SCMP_CMP_LE"}]},
                            {"names": ["mmap"], "action": "SCMP_ACT_TRAP",
                             "args": [{"index": 2, "value": 4, "valueTwo": 4, "op": "SCMP_CMP_MASKED_EQ"}]}]}),
    ];
    for (i, e) in examples.into_iter().enumerate() {
        compare(
            &format!("runtime-spec example {i}"),
            &serde_json::from_value(e).unwrap(),
        );
    }
}

#[test]
fn amphis_own_default_profile() {
    compare("amphi default", &amphi_core::seccomp::default_profile());
}
