//! The five capability sets of `process.capabilities`.

use caps::{CapSet, Capability as Cap, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::{Error, Result};

/// The capabilities the running kernel knows: those numbered up to its
/// last, found by asking for the highest amphi knows first and going down
/// (one prctl on a kernel as new as amphi's table, where asking for each
/// was 41). Kept for the process: the init, a copy of it, asks no more.
fn known() -> &'static CapsHashSet {
    static KNOWN: std::sync::OnceLock<CapsHashSet> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut all: Vec<Cap> = caps::all().into_iter().collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.index()));
        let last = all
            .iter()
            .find(|c| caps::has_cap(None, CapSet::Bounding, **c).is_ok())
            .map_or(0, |c| c.index());
        all.into_iter().filter(|c| c.index() <= last).collect()
    })
}

/// Capabilities the running kernel knows; a spec may name newer ones, which
/// are left out as runc does.
fn to_caps(set: Option<&Capabilities>, known: &CapsHashSet) -> CapsHashSet {
    set.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<Cap>().ok())
        .filter(|c| known.contains(c))
        .collect()
}

/// Warnings for capabilities the spec grants that this kernel does not
/// have (left out when the sets are applied).
pub fn unsupported(process: Option<&oci_spec::runtime::Process>) -> Vec<String> {
    let Some(c) = process.and_then(|p| p.capabilities().as_ref()) else {
        return Vec::new();
    };
    let known = known();
    let mut out = Vec::new();
    for (name, set) in [
        ("bounding", c.bounding()),
        ("effective", c.effective()),
        ("permitted", c.permitted()),
        ("inheritable", c.inheritable()),
        ("ambient", c.ambient()),
    ] {
        for cap in set.iter().flatten() {
            let supported = format!("CAP_{cap}")
                .parse::<Cap>()
                .is_ok_and(|c| known.contains(&c));
            if !supported {
                out.push(format!(
                    "process.capabilities.{name}: CAP_{cap} is not supported by this kernel; left out"
                ));
            }
        }
    }
    out
}

fn fail(set: &str, e: caps::errors::CapsError) -> Error {
    Error::Init(format!("process.capabilities.{set}: {e}"))
}

/// Drop what is not in the bounding set. Needs CAP_SETPCAP, so it runs
/// before the switch to the container's user.
pub fn apply_bounding(c: Option<&LinuxCapabilities>) -> Result<()> {
    let known = known();
    let keep = to_caps(c.and_then(|c| c.bounding().as_ref()), known);
    for cap in known.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|e| fail("bounding", e))?;
    }
    Ok(())
}

/// Set effective, permitted, inheritable and ambient, after the user switch
/// (which, with keep-caps, kept the permitted set).
pub fn apply_sets(c: Option<&LinuxCapabilities>) -> Result<()> {
    let known = known();
    let get = |s: Option<&Capabilities>| to_caps(s, known);
    let (eff, perm, inh, amb) = match c {
        Some(c) => (
            get(c.effective().as_ref()),
            get(c.permitted().as_ref()),
            get(c.inheritable().as_ref()),
            get(c.ambient().as_ref()),
        ),
        None => Default::default(),
    };
    // capset checks each call against the sets as they are: inheritable
    // while permitted is still full, then effective, then permitted (which
    // must keep holding effective).
    caps::set(None, CapSet::Inheritable, &inh).map_err(|e| fail("inheritable", e))?;
    caps::set(None, CapSet::Effective, &eff).map_err(|e| fail("effective", e))?;
    caps::set(None, CapSet::Permitted, &perm).map_err(|e| fail("permitted", e))?;
    // The kernel raises an ambient capability only if it is permitted and
    // inheritable; like runc, amphi skips the others (runc's own `spec`
    // output lists ambient capabilities that are not inheritable).
    let _ = caps::clear(None, CapSet::Ambient);
    for cap in amb.iter().filter(|c| perm.contains(c) && inh.contains(c)) {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|e| fail("ambient", e))?;
    }
    Ok(())
}
