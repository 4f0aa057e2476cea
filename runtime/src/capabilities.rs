//! Linux capabilities: the five OCI sets (bounding, effective, permitted, inheritable, ambient).
//!
//! Follows runc: a missing set (None) means empty; capabilities the running kernel does not know
//! are ignored with a warning; the bounding set is reduced while still root (before the user
//! switch), the other sets are applied after it (PR_SET_KEEPCAPS kept the permitted set).

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability as KCap, CapsHashSet};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("capabilities: {0}")]
    Other(String),

    #[error("capabilities: unknown capability {0}")]
    Unknown(String),

    #[error("capabilities: dropping {cap} from the bounding set: {source}")]
    DropBounding {
        cap: String,
        #[source]
        source: caps::errors::CapsError,
    },

    #[error("capabilities: setting the {set} set to [{caps}]: {source}")]
    Set {
        set: &'static str,
        caps: String,
        #[source]
        source: caps::errors::CapsError,
    },

    #[error("capabilities: {cap} is in the {set} set but not in the permitted set")]
    NotPermitted { cap: String, set: &'static str },

    #[error("capabilities: cannot raise ambient {cap}: {reason}")]
    Ambient { cap: String, reason: String },
}

/// caps' name of a capability ("CAP_CHOWN").
fn kcap_name(cap: KCap) -> String {
    cap.to_string()
}

/// Convert an oci-spec capability (whose `Display` is "CHOWN") to the caps crate's.
pub fn to_kernel_cap(cap: Capability) -> Result<KCap, CapabilityError> {
    let name = format!("CAP_{cap}");
    KCap::from_str(&name).map_err(|_| CapabilityError::Unknown(name))
}

/// Convert a caps crate capability to oci-spec's.
pub fn from_kernel_cap(cap: KCap) -> Result<Capability, CapabilityError> {
    let name = kcap_name(cap);
    let short = name.strip_prefix("CAP_").unwrap_or(&name);
    Capability::from_str(short).map_err(|_| CapabilityError::Unknown(name.clone()))
}

/// Capabilities the running kernel supports (cap_last_cap, or probing the bounding set).
fn kernel_supported() -> CapsHashSet {
    caps::runtime::procfs_all_supported(None)
        .unwrap_or_else(|_| caps::runtime::thread_all_supported())
}

/// Convert one OCI set, dropping (with a warning) capabilities the kernel does not support.
fn convert_set(
    set: &Option<Capabilities>,
    set_name: &'static str,
    supported: &CapsHashSet,
) -> Result<CapsHashSet, CapabilityError> {
    let mut out = CapsHashSet::new();
    for cap in set.iter().flatten() {
        let k = to_kernel_cap(*cap)?;
        if supported.contains(&k) {
            out.insert(k);
        } else {
            tracing::warn!(
                capability = %kcap_name(k),
                set = set_name,
                "capability not supported by the running kernel, ignored"
            );
        }
    }
    Ok(out)
}

fn sorted_names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<KCap> = set.iter().copied().collect();
    v.sort_by_key(|c| c.index());
    v.into_iter().map(kcap_name).collect()
}

fn names_joined(set: &CapsHashSet) -> String {
    sorted_names(set).join(" ")
}

/// Drop every capability not in `caps.bounding` from the bounding set. Called while still root,
/// before the user switch.
pub fn drop_bounding(caps: &LinuxCapabilities) -> Result<(), CapabilityError> {
    let supported = kernel_supported();
    let keep = convert_set(caps.bounding(), "bounding", &supported)?;
    let mut all: Vec<KCap> = supported.into_iter().collect();
    all.sort_by_key(|c| c.index());
    let mut dropped = 0usize;
    for cap in all {
        if keep.contains(&cap) {
            continue;
        }
        match caps::has_cap(None, CapSet::Bounding, cap) {
            Ok(false) => continue,
            Ok(true) => {}
            // Unknown to this kernel after all: nothing to drop.
            Err(_) => continue,
        }
        caps::drop(None, CapSet::Bounding, cap).map_err(|source| {
            CapabilityError::DropBounding {
                cap: kcap_name(cap),
                source,
            }
        })?;
        dropped += 1;
    }
    tracing::debug!(kept = %names_joined(&keep), dropped, "bounding set applied");
    Ok(())
}

/// Set effective, permitted, inheritable and ambient sets exactly as configured. Called after the
/// uid/gid switch (which happened with PR_SET_KEEPCAPS set).
///
/// Order: inheritable first (while the old permitted set still allows any value), then
/// effective (a subset of the still-wide permitted set), then permitted (which must contain the
/// new effective set), then the ambient set is cleared and each ambient capability raised (it
/// must be in both permitted and inheritable).
pub fn apply(caps: &LinuxCapabilities) -> Result<(), CapabilityError> {
    let supported = kernel_supported();
    let effective = convert_set(caps.effective(), "effective", &supported)?;
    let permitted = convert_set(caps.permitted(), "permitted", &supported)?;
    let inheritable = convert_set(caps.inheritable(), "inheritable", &supported)?;
    let ambient = convert_set(caps.ambient(), "ambient", &supported)?;

    // Validate before touching anything, so errors name the capability.
    if let Some(cap) = sorted_effective_missing(&effective, &permitted) {
        return Err(CapabilityError::NotPermitted {
            cap,
            set: "effective",
        });
    }
    // As runc: an ambient capability the kernel would refuse (not in both permitted and
    // inheritable, e.g. `runc spec`'s default, which has no inheritable set) is skipped with a
    // warning instead of failing the container.
    let mut ambient = ambient;
    ambient.retain(|k| {
        let ok = permitted.contains(k) && inheritable.contains(k);
        if !ok {
            tracing::debug!(cap = %k, "ambient capability not in permitted and inheritable sets: skipped");
        }
        ok
    });

    set_base(CapSet::Inheritable, "inheritable", &inheritable)?;
    set_base(CapSet::Effective, "effective", &effective)?;
    set_base(CapSet::Permitted, "permitted", &permitted)?;

    match caps::runtime::ambient_set_supported() {
        Ok(()) => {
            caps::clear(None, CapSet::Ambient).map_err(|source| CapabilityError::Set {
                set: "ambient",
                caps: String::new(),
                source,
            })?;
            for cap in sorted_names(&ambient) {
                let k = KCap::from_str(&cap).map_err(|_| CapabilityError::Unknown(cap.clone()))?;
                caps::raise(None, CapSet::Ambient, k).map_err(|e| CapabilityError::Ambient {
                    cap: cap.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        Err(e) => {
            if !ambient.is_empty() {
                return Err(CapabilityError::Ambient {
                    cap: names_joined(&ambient),
                    reason: format!("the kernel has no ambient set ({e})"),
                });
            }
        }
    }

    tracing::debug!(
        effective = %names_joined(&effective),
        permitted = %names_joined(&permitted),
        inheritable = %names_joined(&inheritable),
        ambient = %names_joined(&ambient),
        "capabilities applied"
    );
    Ok(())
}

fn sorted_effective_missing(effective: &CapsHashSet, permitted: &CapsHashSet) -> Option<String> {
    let missing: CapsHashSet = effective.difference(permitted).copied().collect();
    sorted_names(&missing).into_iter().next()
}

fn set_base(set: CapSet, name: &'static str, value: &CapsHashSet) -> Result<(), CapabilityError> {
    caps::set(None, set, value).map_err(|source| CapabilityError::Set {
        set: name,
        caps: names_joined(value),
        source,
    })
}

/// Names of every capability this runtime knows ("CAP_CHOWN", ...), for `features`.
/// Ordered by capability number, like runc.
pub fn known() -> Vec<String> {
    let all: HashSet<KCap> = caps::all();
    let known: CapsHashSet = all
        .into_iter()
        .filter(|c| from_kernel_cap(*c).is_ok())
        .collect();
    sorted_names(&known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> Capabilities {
        caps.iter().copied().collect()
    }

    use crate::test_support::in_child;

    /// Read CapXxx lines from /proc/self/status as numbers.
    fn proc_caps() -> Option<std::collections::HashMap<String, u64>> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mut out = std::collections::HashMap::new();
        for line in status.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.starts_with("Cap") {
                    out.insert(k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?);
                }
            }
        }
        Some(out)
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn known_has_all_and_roundtrips() {
        let k = known();
        assert_eq!(k.len(), 41);
        assert_eq!(k[0], "CAP_CHOWN");
        assert!(k.contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        for name in &k {
            let oci: Capability = serde_json::from_value(serde_json::json!(name)).expect(name);
            let kc = to_kernel_cap(oci).expect(name);
            assert_eq!(&kc.to_string(), name);
            assert_eq!(from_kernel_cap(kc).expect(name), oci);
        }
    }

    #[test]
    fn apply_small_set_in_child() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let code = in_child(|| {
            let mut c = LinuxCapabilities::default();
            c.set_bounding(Some(set(&[Capability::Chown, Capability::Kill])));
            c.set_effective(Some(set(&[Capability::Chown])));
            c.set_permitted(Some(set(&[Capability::Chown])));
            c.set_inheritable(None);
            c.set_ambient(None);
            if drop_bounding(&c).is_err() {
                return 10;
            }
            if apply(&c).is_err() {
                return 11;
            }
            let Some(st) = proc_caps() else { return 12 };
            let chown = 1u64 << 0;
            let kill = 1u64 << 5;
            if st.get("CapBnd") != Some(&(chown | kill)) {
                return 13;
            }
            if st.get("CapEff") != Some(&chown) {
                return 14;
            }
            if st.get("CapPrm") != Some(&chown) {
                return 15;
            }
            if st.get("CapInh") != Some(&0) {
                return 16;
            }
            if st.get("CapAmb") != Some(&0) {
                return 17;
            }
            0
        });
        assert_eq!(code, 0, "child failure code {code}");
    }

    #[test]
    fn apply_ambient_in_child() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let code = in_child(|| {
            let mut c = LinuxCapabilities::default();
            let both = set(&[
                Capability::Chown,
                Capability::Kill,
                Capability::NetBindService,
            ]);
            c.set_bounding(Some(both.clone()));
            c.set_effective(Some(set(&[Capability::Kill])));
            c.set_permitted(Some(both.clone()));
            c.set_inheritable(Some(set(&[Capability::Kill, Capability::NetBindService])));
            c.set_ambient(Some(set(&[Capability::NetBindService])));
            if let Err(e) = drop_bounding(&c) {
                eprintln!("{e}");
                return 10;
            }
            if let Err(e) = apply(&c) {
                eprintln!("{e}");
                return 11;
            }
            let Some(st) = proc_caps() else { return 12 };
            let (chown, kill, nbs) = (1u64, 1u64 << 5, 1u64 << 10);
            if st.get("CapEff") != Some(&kill) {
                return 13;
            }
            if st.get("CapPrm") != Some(&(chown | kill | nbs)) {
                return 14;
            }
            if st.get("CapInh") != Some(&(kill | nbs)) {
                return 15;
            }
            if st.get("CapAmb") != Some(&nbs) {
                return 16;
            }
            0
        });
        assert_eq!(code, 0, "child failure code {code}");
    }

    #[test]
    fn invalid_configs_name_the_capability() {
        // Effective not in permitted.
        let mut c = LinuxCapabilities::default();
        c.set_bounding(None);
        c.set_effective(Some(set(&[Capability::SysAdmin])));
        c.set_permitted(Some(set(&[Capability::Chown])));
        c.set_inheritable(None);
        c.set_ambient(None);
        let e = apply(&c).unwrap_err();
        assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
    }

    #[test]
    fn raising_ambient_not_allowed_by_kernel_fails_in_child() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let code = in_child(|| {
            // Forbid ambient raising via securebits, then ask for an ambient capability.
            const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
            // SAFETY: plain prctl calls with integer arguments.
            let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
            if bits < 0 {
                return 10;
            }
            // SAFETY: as above.
            let r = unsafe {
                libc::prctl(
                    libc::PR_SET_SECUREBITS,
                    bits as libc::c_ulong | SECBIT_NO_CAP_AMBIENT_RAISE,
                    0,
                    0,
                    0,
                )
            };
            if r != 0 {
                return 11;
            }
            let mut c = LinuxCapabilities::default();
            c.set_bounding(None);
            c.set_effective(Some(set(&[Capability::Kill])));
            c.set_permitted(Some(set(&[Capability::Kill])));
            c.set_inheritable(Some(set(&[Capability::Kill])));
            c.set_ambient(Some(set(&[Capability::Kill])));
            match apply(&c) {
                Err(e) if e.to_string().contains("CAP_KILL") => 0,
                Err(_) => 12,
                Ok(()) => 13,
            }
        });
        assert_eq!(code, 0, "child failure code {code}");
    }
}
