//! The `orca-shim` binary is linked the way docs/ARCHITECTURE.md ("orca-shim" →
//! "Memory") says: static, non-PIE, and with the code a shim runs gathered in
//! `.text.orca_hot` by `link-order/hot.ld` (patterns that no longer match
//! anything would leave that section empty and the RSS target missed).

use std::fs;

const SHT_NOBITS: u32 = 8;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;

struct Elf {
    data: Vec<u8>,
}

impl Elf {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.data[at..at + 2].try_into().unwrap())
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().unwrap())
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.data[at..at + 8].try_into().unwrap())
    }

    /// (name, type, size) of every section.
    fn sections(&self) -> Vec<(String, u32, u64)> {
        let shoff = self.u64(0x28) as usize;
        let shentsize = self.u16(0x3a) as usize;
        let shnum = self.u16(0x3c) as usize;
        let shstrndx = self.u16(0x3e) as usize;
        let strtab = self.u64(shoff + shstrndx * shentsize + 0x18) as usize;
        (0..shnum)
            .map(|i| {
                let h = shoff + i * shentsize;
                let name_at = strtab + self.u32(h) as usize;
                let end = self.data[name_at..].iter().position(|b| *b == 0).unwrap();
                let name = String::from_utf8_lossy(&self.data[name_at..name_at + end]);
                (name.into_owned(), self.u32(h + 4), self.u64(h + 0x20))
            })
            .collect()
    }

    fn program_header_types(&self) -> Vec<u32> {
        let phoff = self.u64(0x20) as usize;
        let phentsize = self.u16(0x36) as usize;
        let phnum = self.u16(0x38) as usize;
        (0..phnum)
            .map(|i| self.u32(phoff + i * phentsize))
            .collect()
    }
}

fn shim_binary() -> Elf {
    let path = env!("CARGO_BIN_EXE_orca-shim");
    let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    assert_eq!(&data[..4], b"\x7fELF", "{path} is not an ELF file");
    assert_eq!(data[4], 2, "{path} is not a 64-bit ELF file");
    assert_eq!(data[5], 1, "{path} is not little-endian");
    Elf { data }
}

#[test]
fn shim_is_static_and_not_pie() {
    if option_env!("ORCA_SHIM_DYNAMIC").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("ORCA_SHIM_DYNAMIC is set: the shim is linked dynamically on purpose");
        return;
    }
    let elf = shim_binary();
    assert_eq!(
        elf.u16(0x10),
        ET_EXEC,
        "orca-shim should be a non-PIE executable"
    );
    assert!(
        !elf.program_header_types().contains(&PT_INTERP),
        "orca-shim should be static (it has a PT_INTERP)"
    );
}

#[test]
fn hot_code_is_gathered_first() {
    if option_env!("ORCA_SHIM_NO_ORDER").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("ORCA_SHIM_NO_ORDER is set: no ordering on purpose");
        return;
    }
    let secs = shim_binary().sections();
    let hot = secs
        .iter()
        .position(|s| s.0 == ".text.orca_hot")
        .expect("no .text.orca_hot section: link-order/hot.ld was not used");
    let text = secs
        .iter()
        .position(|s| s.0 == ".text")
        .expect("no .text section");
    assert!(hot < text, ".text.orca_hot should come before .text");
    let (_, kind, size) = &secs[hot];
    assert_ne!(*kind, SHT_NOBITS);
    // The release build gathers ≈ 540 KiB, a debug build ≈ 830 KiB; far less
    // means most patterns of hot.ld no longer match the code.
    assert!(
        *size > 256 * 1024,
        ".text.orca_hot holds only {size} bytes: regenerate link-order/hot.ld (see gen.py)"
    );
}
