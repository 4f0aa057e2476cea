//! Runtime options as containerd delivers them: `containerd.runc.v1.Options`
//! (BinaryName, Root, SystemdCgroup, NoPivotRoot, IoUid, IoGid, …), or
//! `runtimeoptions.v1.Options` (what `ctr run --runtime-config-path` and CRI
//! send for non-runc runtimes) naming a TOML file with the same keys.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options;

use crate::error::{Error, Result};

/// `runtimeoptions.v1.Options`: (config_path, config_body).
fn parse_runtimeoptions(bytes: &[u8]) -> Result<(String, String)> {
    let bad = |e: containerd_shim_protos::protobuf::Error| {
        Error::InvalidArgument(format!("runtimeoptions.v1.Options: {e}"))
    };
    let mut s = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), String::new());
    while let Some(tag) = s.read_raw_tag_or_eof().map_err(bad)? {
        match tag {
            // type_url = 1
            10 => drop(s.read_string().map_err(bad)?),
            // config_path = 2
            18 => path = s.read_string().map_err(bad)?,
            // config_body = 3
            26 => body = s.read_string().map_err(bad)?,
            t => {
                let wire = containerd_shim_protos::protobuf::rt::WireType::new(t & 7)
                    .ok_or_else(|| Error::InvalidArgument(format!("bad wire type in tag {t}")))?;
                s.skip_field(wire).map_err(bad)?;
            }
        }
    }
    Ok((path, body))
}

/// Reads runc options from CRI-style TOML (`BinaryName = "/usr/sbin/runc"`,
/// `SystemdCgroup = true`, …); unknown keys are ignored.
pub fn options_from_toml(text: &str) -> Result<Options> {
    let mut o = Options::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('[') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::InvalidArgument(format!(
                "runtime config line {}: expected KEY = VALUE",
                n + 1
            )));
        };
        let k = k.trim().trim_matches('"');
        let v = v.trim();
        let string = || v.trim_matches('"').trim_matches('\'').to_string();
        let boolean = || -> Result<bool> {
            v.parse().map_err(|_| {
                Error::InvalidArgument(format!("runtime config {k}: not a boolean: {v}"))
            })
        };
        let number = || -> Result<u32> {
            v.parse().map_err(|_| {
                Error::InvalidArgument(format!("runtime config {k}: not a number: {v}"))
            })
        };
        match k {
            "BinaryName" | "binary_name" => o.binary_name = string(),
            "Root" | "root" => o.root = string(),
            "SystemdCgroup" | "systemd_cgroup" => o.systemd_cgroup = boolean()?,
            "NoPivotRoot" | "no_pivot_root" => o.no_pivot_root = boolean()?,
            "NoNewKeyring" | "no_new_keyring" => o.no_new_keyring = boolean()?,
            "IoUid" | "io_uid" => o.io_uid = number()?,
            "IoGid" | "io_gid" => o.io_gid = number()?,
            "ShimCgroup" | "shim_cgroup" => o.shim_cgroup = string(),
            _ => {}
        }
    }
    Ok(o)
}

/// Decodes the options Any of a Create request (absent → defaults).
pub fn parse(any: Option<&Any>) -> Result<Options> {
    let Some(a) = any else {
        return Ok(Options::new());
    };
    if a.value.is_empty() {
        return Ok(Options::new());
    }
    if a.type_url.ends_with("runtimeoptions.v1.Options") {
        let (path, body) = parse_runtimeoptions(&a.value)?;
        let text = if !body.is_empty() {
            body
        } else if !path.is_empty() {
            std::fs::read_to_string(&path)
                .map_err(|e| Error::InvalidArgument(format!("runtime config {path}: {e}")))?
        } else {
            String::new()
        };
        return options_from_toml(&text);
    }
    if a.type_url.ends_with("Options") {
        return Options::parse_from_bytes(&a.value)
            .map_err(|e| Error::InvalidArgument(format!("runtime options: {e}")));
    }
    Err(Error::InvalidArgument(format!(
        "unsupported runtime options type {:?}",
        a.type_url
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_and_toml_config() {
        let mut o = Options::new();
        o.binary_name = "runc".into();
        o.systemd_cgroup = true;
        let mut a = Any::new();
        a.type_url = "containerd.runc.v1.Options".into();
        a.value = o.write_to_bytes().unwrap();
        let p = parse(Some(&a)).unwrap();
        assert_eq!(p.binary_name, "runc");
        assert!(p.systemd_cgroup);

        // runtimeoptions.v1.Options{config_body: …} encoded by hand.
        let body = "BinaryName = \"/usr/sbin/runc\"\nIoUid = 5 # comment\n[x]\n";
        let mut v = vec![10u8, 3, b'a', b'b', b'c', 26, body.len() as u8];
        v.extend_from_slice(body.as_bytes());
        let mut a = Any::new();
        a.type_url = "runtimeoptions.v1.Options".into();
        a.value = v;
        let p = parse(Some(&a)).unwrap();
        assert_eq!(p.binary_name, "/usr/sbin/runc");
        assert_eq!(p.io_uid, 5);

        let mut bad = Any::new();
        bad.type_url = "foo.Bar".into();
        bad.value = vec![1];
        assert!(matches!(parse(Some(&bad)), Err(Error::InvalidArgument(_))));
        assert!(options_from_toml("SystemdCgroup = maybe").is_err());
    }
}
