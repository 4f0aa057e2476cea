//! Device access rules.
//!
//! - cgroup v1: write `a` to `devices.deny`, then each rule in order to `devices.allow` /
//!   `devices.deny`, then runc's default allowed devices.
//! - cgroup v2: the same rule list is run through an emulation of the v1 kernel semantics
//!   (default policy + exceptions), compiled to a `BPF_PROG_TYPE_CGROUP_DEVICE` program and
//!   attached to the cgroup directory with the raw bpf(2) syscall (`BPF_F_ALLOW_MULTI`; programs
//!   previously attached to that directory are detached afterwards, like runc).

use super::{files, CgroupError};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Access bits, numerically equal to BPF_DEVCG_ACC_{MKNOD,READ,WRITE}.
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    /// `a`: every device; as in the v1 kernel, such a rule resets the whole list.
    All,
    Char,
    Block,
}

/// One normalised device rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub typ: DevType,
    /// None = `*`.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

fn access_string(access: u8) -> String {
    let mut s = String::new();
    if access & ACC_READ != 0 {
        s.push('r');
    }
    if access & ACC_WRITE != 0 {
        s.push('w');
    }
    if access & ACC_MKNOD != 0 {
        s.push('m');
    }
    s
}

fn num(n: Option<u32>) -> String {
    n.map_or_else(|| "*".to_string(), |n| n.to_string())
}

impl DeviceRule {
    const fn allow_char(major: Option<u32>, minor: Option<u32>, access: u8) -> Self {
        DeviceRule {
            allow: true,
            typ: DevType::Char,
            major,
            minor,
            access,
        }
    }

    /// The string written to devices.allow / devices.deny.
    pub fn v1_string(&self) -> String {
        match self.typ {
            DevType::All => "a".to_string(),
            DevType::Char | DevType::Block => format!(
                "{} {}:{} {}",
                if self.typ == DevType::Char { 'c' } else { 'b' },
                num(self.major),
                num(self.minor),
                access_string(self.access)
            ),
        }
    }

    /// The v1 file this rule goes to.
    pub fn v1_file(&self) -> &'static str {
        if self.allow {
            "devices.allow"
        } else {
            "devices.deny"
        }
    }
}

/// runc's default allowed devices, appended after the configured rules.
pub const DEFAULT_ALLOWED: &[DeviceRule] = &[
    // mknod of any character or block device.
    DeviceRule::allow_char(None, None, ACC_MKNOD),
    DeviceRule {
        allow: true,
        typ: DevType::Block,
        major: None,
        minor: None,
        access: ACC_MKNOD,
    },
    DeviceRule::allow_char(Some(1), Some(3), ACC_ALL), // /dev/null
    DeviceRule::allow_char(Some(1), Some(5), ACC_ALL), // /dev/zero
    DeviceRule::allow_char(Some(1), Some(7), ACC_ALL), // /dev/full
    DeviceRule::allow_char(Some(5), Some(0), ACC_ALL), // /dev/tty
    DeviceRule::allow_char(Some(1), Some(8), ACC_ALL), // /dev/random
    DeviceRule::allow_char(Some(1), Some(9), ACC_ALL), // /dev/urandom
    // Not /dev/console (5:1): that is the host's console; runc does not allow it either (a
    // container's console is a pty, 136:*).
    DeviceRule::allow_char(Some(136), None, ACC_ALL), // /dev/pts/*
    DeviceRule::allow_char(Some(5), Some(2), ACC_ALL), // /dev/ptmx
    DeviceRule::allow_char(Some(10), Some(200), ACC_ALL), // /dev/net/tun
];

fn parse_access(s: &str) -> Result<u8, CgroupError> {
    if s.is_empty() {
        return Ok(ACC_ALL);
    }
    let mut a = 0;
    for c in s.chars() {
        a |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(CgroupError::InvalidValue {
                    what: format!("device access {s:?}"),
                    reason: "only r, w and m are allowed".into(),
                })
            }
        };
    }
    Ok(a)
}

fn dev_number(n: Option<i64>, what: &str) -> Result<Option<u32>, CgroupError> {
    match n {
        None => Ok(None),
        Some(v) if v < 0 => Ok(None), // -1 is used for "*" by some tools
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| CgroupError::InvalidValue {
                what: format!("device {what} {v}"),
                reason: "out of range".into(),
            }),
    }
}

/// Convert the OCI rules; FIFO (`p`) rules are skipped (the device cgroup does not control
/// FIFOs), `u` is treated as `c`. A missing/empty access means `rwm`.
pub fn rules_from_spec(rules: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => DevType::All,
            LinuxDeviceType::C | LinuxDeviceType::U => DevType::Char,
            LinuxDeviceType::B => DevType::Block,
            LinuxDeviceType::P => {
                tracing::warn!(rule = %r, "ignoring device rule for FIFOs");
                continue;
            }
        };
        out.push(DeviceRule {
            allow: r.allow(),
            typ,
            major: dev_number(r.major(), "major")?,
            minor: dev_number(r.minor(), "minor")?,
            access: parse_access(r.access().as_deref().unwrap_or(""))?,
        });
    }
    Ok(out)
}

/// The full list applied to a container: deny everything, the configured rules, the defaults.
pub fn full_rule_list(spec_rules: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut rules = vec![DeviceRule {
        allow: false,
        typ: DevType::All,
        major: None,
        minor: None,
        access: ACC_ALL,
    }];
    rules.extend(rules_from_spec(spec_rules)?);
    rules.extend_from_slice(DEFAULT_ALLOWED);
    Ok(rules)
}

/// cgroup v1: bring the controller to the state the rules describe, writing the default and
/// then one entry per exception — the same end state as writing every rule in order (see
/// [`emulate`]), in about half the writes for Docker's list, whose entries repeat the defaults.
pub fn apply_v1(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    for r in minimal_v1(rules) {
        files::write(dir, r.v1_file(), &r.v1_string())?;
    }
    Ok(())
}

/// The shortest write sequence reaching [`emulate`]`(rules)`: a type-`a` rule setting the
/// default, then the exceptions in the order they arose.
pub fn minimal_v1(rules: &[DeviceRule]) -> Vec<DeviceRule> {
    let st = emulate(rules);
    let mut out = vec![DeviceRule {
        allow: st.default_allow,
        typ: DevType::All,
        major: None,
        minor: None,
        access: ACC_ALL,
    }];
    out.extend(st.exceptions.iter().map(|e| DeviceRule {
        allow: !st.default_allow,
        typ: e.typ,
        major: e.major,
        minor: e.minor,
        access: e.access,
    }));
    out
}

/// One exception of the v1 model (type is never `All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub typ: DevType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

/// The v1 kernel's state after a sequence of writes: a default and exceptions to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emulated {
    pub default_allow: bool,
    pub exceptions: Vec<Exception>,
}

/// Apply `rules` to an allow-all cgroup with the semantics of the v1 device controller
/// (security/device_cgroup.c): a type-`a` rule resets the default and clears the exceptions;
/// a rule against the default adds an exception (merging access of an identical entry); a
/// rule agreeing with the default removes those access bits from an identical exception.
pub fn emulate(rules: &[DeviceRule]) -> Emulated {
    let mut st = Emulated {
        default_allow: true,
        exceptions: Vec::new(),
    };
    for r in rules {
        if r.typ == DevType::All {
            st.default_allow = r.allow;
            st.exceptions.clear();
            continue;
        }
        let same = |e: &Exception| e.typ == r.typ && e.major == r.major && e.minor == r.minor;
        if r.allow != st.default_allow {
            if let Some(e) = st.exceptions.iter_mut().find(|e| same(e)) {
                e.access |= r.access;
            } else if r.access != 0 {
                st.exceptions.push(Exception {
                    typ: r.typ,
                    major: r.major,
                    minor: r.minor,
                    access: r.access,
                });
            }
        } else {
            for e in st.exceptions.iter_mut().filter(|e| same(e)) {
                e.access &= !r.access;
            }
            st.exceptions.retain(|e| e.access != 0);
        }
    }
    st
}

// ---- eBPF program generation -------------------------------------------------------------

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes (class | op | source).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JMP_JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// bpf_cgroup_dev_ctx device types.
const DEVCG_DEV_BLOCK: i32 = 1;
const DEVCG_DEV_CHAR: i32 = 2;

/// Compile the emulated rules. Registers after the prologue: r2 = device type, r3 = requested
/// access, r4 = major, r5 = minor. Each exception is a block that jumps past itself when it
/// does not match; a match returns the opposite of the default; falling through returns the
/// default. An allow-exception (default deny) matches when the requested access is a subset of
/// its access; a deny-exception (default allow) matches when they intersect, like the kernel's
/// `match_exception` / `match_exception_partial`.
pub fn compile(em: &Emulated) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for e in &em.exceptions {
        let typ = match e.typ {
            DevType::Char => DEVCG_DEV_CHAR,
            DevType::Block => DEVCG_DEV_BLOCK,
            DevType::All => continue, // never produced by `emulate`
        };
        // Jumps are emitted with off = 0 and patched to the end of the block.
        let mut block = vec![insn(JMP_JNE_K, 2, 0, 0, typ)];
        if let Some(m) = e.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = e.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, m as i32));
        }
        block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
        if em.default_allow {
            block.push(insn(ALU32_AND_K, 1, 0, 0, i32::from(e.access)));
            block.push(insn(JMP_JEQ_K, 1, 0, 0, 0));
        } else {
            block.push(insn(ALU32_AND_K, 1, 0, 0, i32::from(!e.access & ACC_ALL)));
            block.push(insn(JMP_JNE_K, 1, 0, 0, 0));
        }
        block.push(insn(ALU32_MOV_K, 0, 0, 0, i32::from(!em.default_allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K || ins.code == JMP_JEQ_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU32_MOV_K, 0, 0, 0, i32::from(em.default_allow)));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// Evaluate a compiled program for a request, for tests: a tiny interpreter of exactly the
/// instructions [`compile`] emits.
#[cfg(test)]
pub(crate) fn run(prog: &[BpfInsn], typ: i32, access: u8, major: u32, minor: u32) -> bool {
    let ctx = [((u32::from(access)) << 16) | typ as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let dst = usize::from(i.regs & 0x0f);
        let src = usize::from(i.regs >> 4);
        pc += 1;
        match i.code {
            LDX_MEM_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
            ALU32_AND_K => r[dst] = u64::from((r[dst] as u32) & (i.imm as u32)),
            ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
            ALU32_MOV_K => r[dst] = u64::from(i.imm as u32),
            ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
            JMP_JEQ_K => {
                if r[dst] == i.imm as i64 as u64 {
                    pc += i.off as usize;
                }
            }
            JMP_JNE_K => {
                if r[dst] != i.imm as i64 as u64 {
                    pc += i.off as usize;
                }
            }
            JMP_EXIT => return r[0] == 1,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

// ---- bpf(2) ---------------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

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
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Issue bpf(2) with `attr`.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised #[repr(C)] struct matching the layout of the
    // bpf_attr member for `cmd`; the size passed is exactly its size, so the kernel reads (and
    // for queries writes) only within it. Pointers stored inside it point to buffers that
    // outlive this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new file descriptor to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) }
}

fn load_program(dir: &Path, prog: &[BpfInsn]) -> Result<OwnedFd, CgroupError> {
    let license = b"Apache\0";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"orca_devs");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    let mut res = bpf(BPF_PROG_LOAD, &mut attr);
    if matches!(&res, Err(e) if e.raw_os_error() == Some(libc::EPERM)) {
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
        if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
            res = bpf(BPF_PROG_LOAD, &mut attr);
        }
    }
    match res {
        Ok(fd) => Ok(fd_from(fd)),
        Err(source) => {
            // Load again with the verifier log to explain the rejection.
            let mut log = vec![0u8; 64 * 1024];
            let mut attr2 = ProgLoadAttr {
                log_level: 1,
                log_size: log.len() as u32,
                log_buf: log.as_mut_ptr() as u64,
                ..attr
            };
            let _ = bpf(BPF_PROG_LOAD, &mut attr2);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err(CgroupError::Bpf {
                op: "loading the device program",
                path: dir.to_path_buf(),
                source,
                log: if text.is_empty() {
                    String::new()
                } else {
                    format!("; verifier: {text}")
                },
            })
        }
    }
}

fn query_attached(cg: &OwnedFd) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate((attr.prog_cnt as usize).min(64));
    Ok(ids)
}

/// Compile `rules`, load the program and attach it to the cgroup2 directory `dir`, replacing
/// device programs attached there before.
pub fn apply_v2(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let em = emulate(rules);
    let prog = compile(&em);
    tracing::debug!(dir = %dir.display(), ?em, insns = prog.len(), "device filter");
    let bpf_err = |op: &'static str, source: std::io::Error| CgroupError::Bpf {
        op,
        path: dir.to_path_buf(),
        source,
        log: String::new(),
    };

    let cg: OwnedFd = std::fs::File::open(dir)
        .map_err(|source| CgroupError::Io {
            op: "opening",
            path: dir.to_path_buf(),
            source,
        })?
        .into();
    let old = query_attached(&cg).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "querying attached device programs failed");
        Vec::new()
    });
    let prog_fd = load_program(dir, &prog)?;
    let mut attach = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| bpf_err("attaching the device program", e))?;

    for id in old {
        let mut get = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
            Ok(fd) => fd_from(fd),
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot open old device program");
                continue;
            }
        };
        let mut detach = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: old_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        if let Err(e) = bpf(BPF_PROG_DETACH, &mut detach) {
            return Err(bpf_err("detaching the previous device program", e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(allow: bool, t: DevType, maj: Option<u32>, min: Option<u32>, a: &str) -> DeviceRule {
        DeviceRule {
            allow,
            typ: t,
            major: maj,
            minor: min,
            access: parse_access(a).unwrap(),
        }
    }

    #[test]
    fn v1_strings() {
        let l = full_rule_list(&[
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(10)
                .minor(229)
                .access("rw")
                .build()
                .unwrap(),
        ])
        .unwrap();
        let s: Vec<(String, &str)> = l.iter().map(|r| (r.v1_string(), r.v1_file())).collect();
        assert_eq!(s[0], ("a".to_string(), "devices.deny"));
        assert_eq!(s[1], ("a".to_string(), "devices.deny"));
        assert_eq!(s[2], ("c 10:229 rw".to_string(), "devices.allow"));
        assert_eq!(s[3], ("c *:* m".to_string(), "devices.allow"));
        assert_eq!(s[4], ("b *:* m".to_string(), "devices.allow"));
        assert!(s.iter().any(|x| x.0 == "c 136:* rwm"));
        assert!(s.iter().any(|x| x.0 == "c 10:200 rwm"));
        assert!(!s.iter().any(|x| x.0 == "c 5:1 rwm"));
        assert_eq!(l.len(), 3 + DEFAULT_ALLOWED.len());
    }

    #[test]
    fn the_minimal_v1_sequence_reaches_the_same_state_without_repeats() {
        // Docker's spec: deny all, then its own allow list, which the runtime's defaults repeat.
        let docker: Vec<LinuxDeviceCgroup> = [
            (false, None, None, None, "rwm"),
            (true, Some(LinuxDeviceType::C), None, None, "m"),
            (true, Some(LinuxDeviceType::B), None, None, "m"),
            (true, Some(LinuxDeviceType::C), Some(1), Some(3), "rwm"),
            (true, Some(LinuxDeviceType::C), Some(136), None, "rwm"),
            (true, Some(LinuxDeviceType::C), Some(10), Some(200), "rwm"),
            (true, Some(LinuxDeviceType::C), Some(4), Some(1), "rwm"),
            (false, Some(LinuxDeviceType::C), Some(4), Some(1), "w"),
        ]
        .into_iter()
        .map(|(allow, typ, major, minor, access)| {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .access(access);
            if let Some(t) = typ {
                b = b.typ(t);
            }
            if let Some(m) = major {
                b = b.major(m);
            }
            if let Some(m) = minor {
                b = b.minor(m);
            }
            b.build().unwrap()
        })
        .collect();
        let full = full_rule_list(&docker).unwrap();
        let min = minimal_v1(&full);
        assert_eq!(emulate(&min), emulate(&full));
        assert!(min.len() < full.len(), "{} !< {}", min.len(), full.len());
        let strings: Vec<String> = min.iter().map(|r| r.v1_string()).collect();
        let mut unique = strings.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), strings.len(), "{strings:?}");
        assert_eq!(strings[0], "a");
        assert_eq!(min[0].v1_file(), "devices.deny");
        // 4:1 lost its `w` through the later deny.
        assert!(strings.contains(&"c 4:1 rm".to_string()), "{strings:?}");
        // An allow-all result is one write.
        let open = minimal_v1(&[rule(true, DevType::All, None, None, "rwm")]);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].v1_file(), "devices.allow");
    }

    #[test]
    fn emulation_follows_kernel() {
        let em = emulate(&[
            rule(false, DevType::All, None, None, "rwm"),
            rule(true, DevType::Char, Some(1), Some(3), "r"),
            rule(true, DevType::Char, Some(1), Some(3), "w"),
            rule(true, DevType::Char, Some(1), Some(5), "rwm"),
            rule(false, DevType::Char, Some(1), Some(5), "w"),
        ]);
        assert!(!em.default_allow);
        assert_eq!(em.exceptions.len(), 2);
        assert_eq!(em.exceptions[0].access, ACC_READ | ACC_WRITE);
        assert_eq!(em.exceptions[1].access, ACC_READ | ACC_MKNOD);

        // An allow-all rule resets everything.
        let em = emulate(&[
            rule(false, DevType::All, None, None, "rwm"),
            rule(true, DevType::Char, Some(1), Some(3), "rwm"),
            rule(true, DevType::All, None, None, "rwm"),
            rule(false, DevType::Block, Some(8), None, "w"),
        ]);
        assert!(em.default_allow);
        assert_eq!(em.exceptions.len(), 1);
        assert_eq!(em.exceptions[0].typ, DevType::Block);
    }

    #[test]
    fn program_decisions() {
        let rules = full_rule_list(&[LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::B)
            .major(8)
            .minor(0)
            .access("r")
            .build()
            .unwrap()])
        .unwrap();
        let prog = compile(&emulate(&rules));
        let rw = ACC_READ | ACC_WRITE;
        // /dev/null, /dev/pts/3: allowed.
        assert!(run(&prog, DEVCG_DEV_CHAR, rw, 1, 3));
        assert!(run(&prog, DEVCG_DEV_CHAR, rw, 136, 3));
        // /dev/mem (c 1:1): denied.
        assert!(!run(&prog, DEVCG_DEV_CHAR, ACC_READ, 1, 1));
        // sda: read only.
        assert!(run(&prog, DEVCG_DEV_BLOCK, ACC_READ, 8, 0));
        assert!(!run(&prog, DEVCG_DEV_BLOCK, rw, 8, 0));
        // mknod of anything is allowed.
        assert!(run(&prog, DEVCG_DEV_BLOCK, ACC_MKNOD, 8, 16));
        assert!(!run(&prog, DEVCG_DEV_BLOCK, ACC_READ, 8, 16));

        // Default allow with a partial deny: any overlap is refused.
        let prog = compile(&emulate(&[rule(
            false,
            DevType::Char,
            Some(1),
            Some(3),
            "w",
        )]));
        assert!(run(&prog, DEVCG_DEV_CHAR, ACC_READ, 1, 3));
        assert!(!run(&prog, DEVCG_DEV_CHAR, rw, 1, 3));
        assert!(run(&prog, DEVCG_DEV_CHAR, rw, 1, 5));
    }
}
