//! Container state on disk: `<root>/<id>/state.json` (written atomically) and `<root>/<id>/exec.fifo`
//! (present between `create` and `start`). The status is derived, as runc derives it: from
//! whether the init process still lives (pid + start time, so a reused pid is not mistaken for
//! it), whether the exec fifo exists, and whether the freezer is frozen.

use crate::cgroups::{CgroupManager, CgroupPaths};
use crate::error::{Context, Result, RuntimeError};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime remembers about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: chrono::DateTime<chrono::Utc>,
    pub owner: String,
    pub init_pid: i32,
    /// Field 22 of /proc/<pid>/stat when the container was created.
    pub init_start_time: u64,
    pub cgroup: Option<CgroupPaths>,
    /// Namespace types the container has (created or joined); `exec` joins the same ones
    /// through /proc/<init_pid>/ns/<type>.
    pub namespaces: Vec<String>,
    /// The spec the container was created from (with resources kept current by `update`).
    pub spec: Spec,
}

/// The JSON `state` prints (runc's shape).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The `<root>` directory holding one directory per container.
pub struct StateStore {
    root: PathBuf,
}

pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(RuntimeError::InvalidId(id.into(), "must not be empty"));
    }
    if id.len() > 1024 {
        return Err(RuntimeError::InvalidId(id.into(), "too long"));
    }
    if id == "." || id == ".." {
        return Err(RuntimeError::InvalidId(id.into(), "must not be . or .."));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
    {
        return Err(RuntimeError::InvalidId(
            id.into(),
            "may contain only [a-zA-Z0-9_+.-]",
        ));
    }
    Ok(())
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where compiled seccomp filters are cached (see `seccomp_cache`). The `@` keeps the name
    /// out of the container id alphabet, so it can never be a container's directory.
    pub fn seccomp_cache_dir(&self) -> PathBuf {
        self.root.join("@seccomp-cache")
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Make the container's directory; fails with `Exists` if it is there already.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        std::fs::create_dir_all(&self.root).ctx(|| format!("create state root {:?}", self.root))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists)
            }
            Err(e) => return Err(e).ctx(|| format!("create state dir {dir:?}")),
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .ctx(|| format!("chmod {dir:?}"))?;
        Ok(dir)
    }

    pub fn save(&self, state: &ContainerState) -> Result<()> {
        let dir = self.dir(&state.id);
        let tmp = dir.join(".state.json.tmp");
        let data = serde_json::to_vec(state).map_err(|e| RuntimeError::State {
            path: dir.clone(),
            msg: e.to_string(),
        })?;
        std::fs::write(&tmp, data).ctx(|| format!("write {tmp:?}"))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE)).ctx(|| format!("rename {tmp:?}"))?;
        Ok(())
    }

    pub fn load(&self, id: &str) -> Result<ContainerState> {
        validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound)
            }
            Err(e) => return Err(e).ctx(|| format!("read {path:?}")),
        };
        serde_json::from_slice(&data).map_err(|e| RuntimeError::State {
            path,
            msg: e.to_string(),
        })
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx(|| format!("remove {dir:?}")),
        }
    }

    /// Ids of every container with a state file, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e).ctx(|| format!("read {:?}", self.root)),
        };
        for entry in rd.flatten() {
            if entry.path().join(STATE_FILE).exists() {
                if let Some(name) = entry.file_name().to_str() {
                    ids.push(name.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Field 22 (starttime) and the state letter of /proc/<pid>/stat.
pub fn proc_start_time(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

impl ContainerState {
    /// True while the init process (the same one, not a reused pid) exists and is not a zombie.
    pub fn init_alive(&self) -> bool {
        if self.init_pid <= 0 {
            return false;
        }
        match proc_start_time(self.init_pid) {
            Some((start, state)) => start == self.init_start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    pub fn status(&self, store: &StateStore) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if store.dir(&self.id).join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if let Some(paths) = &self.cgroup {
            if let Ok(true) = CgroupManager::from_paths(paths.clone()).is_frozen() {
                return Status::Paused;
            }
        }
        Status::Running
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn report(&self, store: &StateStore) -> StateReport {
        let status = self.status(store);
        StateReport {
            oci_version: crate::spec::OCI_VERSION.into(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.init_pid
            },
            status: status.to_string(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self
                .created
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            owner: self.owner.clone(),
            annotations: self.annotations(),
        }
    }

    /// The OCI state document given to hooks on stdin.
    pub fn hook_state(&self, status: Status, pid: i32) -> Vec<u8> {
        let v = serde_json::json!({
            "ociVersion": crate::spec::OCI_VERSION,
            "id": self.id,
            "status": status.to_string(),
            "pid": pid,
            "bundle": self.bundle,
            "annotations": self.annotations(),
        });
        v.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", "..", ".", "../x", "a/b", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_id(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn own_start_time_is_readable() {
        let (start, state) = proc_start_time(std::process::id() as i32).unwrap();
        assert!(start > 0);
        assert!(state == 'R' || state == 'S');
    }
}
