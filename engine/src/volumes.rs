//! Docker's `local` volume driver: `<data-root>/volumes/<name>/_data` plus a
//! metadata record (`volume.json`, written atomically) per volume.
//!
//! - API: create (named or anonymous 64-hex names, labels, the local
//!   driver's `type`/`device`/`o` options — mounted on `_data` at the first
//!   container start and unmounted when no running container uses them),
//!   inspect, list with filters, remove (409 while any container — even a
//!   stopped one — references the volume), prune, `system/df` figures.
//! - Containers: [`plan`] turns `Binds` (`name:/path[:ro|rw|nocopy]`),
//!   `Mounts` of type volume, `Config.Volumes` (user's and image's) and
//!   `VolumesFrom` into [`MountPoint`]s recorded with the container;
//!   [`Volumes::materialize`] creates the volumes that do not exist; at
//!   start [`prepare_start`] mounts option volumes and copies the image's
//!   content into empty volumes (ownership, modes, times, symlinks, hard
//!   links kept) unless `nocopy`.
//! - Events: volume `create`, `mount`, `unmount`, `destroy`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::error::{EngineError, Result};
use crate::events::{parse_filters, EventBus};
use crate::util;

/// The label dockerd (API 1.42+) puts on anonymous volumes; `volume prune`
/// removes only those unless `all=true`.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

const META: &str = "volume.json";
const LOCAL_OPTS: &[&str] = &["type", "device", "o"];

/// One volume's metadata record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub created_at: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The local driver's mount options (`type`, `device`, `o`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Volume {
    pub fn anonymous(&self) -> bool {
        self.labels.contains_key(ANONYMOUS_LABEL)
    }
}

/// A volume or bind mount a container records (Docker's `MountPoint`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MountPoint {
    /// "volume" or "bind" (binds only arrive through VolumesFrom).
    #[serde(rename = "Type")]
    pub typ: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Source")]
    pub source: String,
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "Driver", default)]
    pub driver: String,
    #[serde(rename = "Mode", default)]
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    #[serde(rename = "Propagation", default)]
    pub propagation: String,
    /// Copy the image's content into the volume when it is empty.
    #[serde(rename = "CopyData", default)]
    pub copy_data: bool,
}

impl MountPoint {
    /// Docker's inspect `Mounts` entry.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "Type": self.typ,
            "Source": self.source,
            "Destination": self.destination,
            "Mode": self.mode,
            "RW": self.rw,
            "Propagation": self.propagation,
        });
        if self.typ == "volume" {
            v["Name"] = json!(self.name);
            v["Driver"] = json!(self.driver);
        }
        v
    }

    /// The OCI bind mount for the runtime spec.
    pub fn oci(&self) -> Value {
        let mut opts = vec![
            "rbind".to_string(),
            if self.propagation.is_empty() {
                "rprivate".to_string()
            } else {
                self.propagation.clone()
            },
        ];
        if !self.rw {
            opts.push("ro".into());
        }
        json!({"destination": self.destination, "type": "bind", "source": self.source, "options": opts})
    }
}

/// A mount a container asks for, before its volume exists.
#[derive(Debug, Clone)]
pub struct Planned {
    pub mp: MountPoint,
    /// `None`: an anonymous volume (name generated at creation).
    pub name: Option<String>,
    /// For a volume created by this mount (Mounts' VolumeOptions).
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// dockerd's local volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    if b.len() == 1 {
        return Err(EngineError::BadRequest(format!(
            "create {name}: volume name is too short, names should be at least two alphanumeric characters"
        )));
    }
    let ok = !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if !ok {
        return Err(EngineError::BadRequest(format!(
            "create {name}: {name:?} includes invalid characters for a local volume name, only \
             \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )));
    }
    Ok(())
}

fn check_driver(driver: &str) -> Result<()> {
    if driver.is_empty() || driver == "local" {
        Ok(())
    } else {
        Err(EngineError::NotImplemented(format!(
            "volume driver {driver:?} is not implemented in orcad yet (only \"local\")"
        )))
    }
}

/// The local driver's options, validated as dockerd.
fn check_options(opts: &BTreeMap<String, String>) -> Result<()> {
    for k in opts.keys() {
        if !LOCAL_OPTS.contains(&k.as_str()) {
            return Err(EngineError::BadRequest(format!("invalid option: {k:?}")));
        }
    }
    let has = |k: &str| opts.get(k).is_some_and(|v| !v.is_empty());
    if has("type") && !has("device") {
        return Err(EngineError::BadRequest(
            "missing required option: \"device\"".into(),
        ));
    }
    if has("device") && !has("type") {
        return Err(EngineError::BadRequest(
            "missing required option: \"type\"".into(),
        ));
    }
    if has("o") && !has("type") {
        return Err(EngineError::BadRequest(
            "missing required option: \"type\"".into(),
        ));
    }
    Ok(())
}

fn string_map(v: &Value, what: &str) -> Result<BTreeMap<String, String>> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        v => serde_json::from_value(v.clone())
            .map_err(|e| EngineError::BadRequest(format!("{what}: {e}"))),
    }
}

/// The volume store.
pub struct Volumes {
    dir: PathBuf,
    map: Mutex<HashMap<String, Volume>>,
    /// References held by container creates in progress (name → count), so
    /// a volume cannot be removed between its creation and the container
    /// record that uses it.
    pending: Mutex<HashMap<String, usize>>,
    events: Arc<EventBus>,
}

impl Volumes {
    /// Loads the records under `<data-root>/volumes`.
    pub fn new(data_root: &Path, events: Arc<EventBus>) -> anyhow::Result<Arc<Volumes>> {
        let dir = data_root.join("volumes");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o701))?;
        let mut map = HashMap::new();
        for d in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let p = d.path().join(META);
            if !d.path().is_dir() {
                continue;
            }
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Volume>(&b).map_err(|e| e.to_string()))
            {
                Ok(v) => {
                    map.insert(v.name.clone(), v);
                }
                Err(e) => warn!(path = %p.display(), "skipping unreadable volume record: {e}"),
            }
        }
        info!(count = map.len(), "loaded volumes");
        Ok(Arc::new(Volumes {
            dir,
            map: Mutex::new(map),
            pending: Mutex::new(HashMap::new()),
            events,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Volume>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `<data-root>/volumes/<name>/_data`.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    pub fn get(&self, name: &str) -> Result<Volume> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("get {name}: no such volume")))
    }

    pub fn all(&self) -> Vec<Volume> {
        let mut v: Vec<Volume> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates a volume, or returns the existing one of that name
    /// (`created` false), as dockerd does. With `hold` a pending reference
    /// is taken under the store's lock (released by [`CreatedVolumes`]).
    fn create_inner(
        &self,
        name: Option<&str>,
        driver: &str,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        hold: bool,
    ) -> Result<(Volume, bool)> {
        check_driver(driver)?;
        let mut labels = labels;
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                validate_name(n)?;
                n.to_string()
            }
            // As dockerd: a volume created without a name is anonymous.
            None => {
                labels.insert(ANONYMOUS_LABEL.into(), String::new());
                util::random_hex(32)
            }
        };
        check_options(&options)?;
        let vol = {
            let mut map = self.lock();
            let take = |n: &str| {
                if hold {
                    *self
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(n.to_string())
                        .or_default() += 1;
                }
            };
            if let Some(v) = map.get(&name) {
                take(&name);
                return Ok((v.clone(), false));
            }
            let vdir = self.dir.join(&name);
            let data = vdir.join("_data");
            let vol = Volume {
                name: name.clone(),
                driver: "local".into(),
                created_at: util::now(),
                labels,
                options,
            };
            let res = (|| -> io::Result<()> {
                fs::create_dir_all(&data)?;
                fs::set_permissions(&vdir, fs::Permissions::from_mode(0o701))?;
                fs::set_permissions(&data, fs::Permissions::from_mode(0o755))?;
                let meta = serde_json::to_vec_pretty(&vol).map_err(io::Error::other)?;
                util::write_atomic(&vdir.join(META), &meta)
            })();
            if let Err(e) = res {
                let _ = fs::remove_dir_all(&vdir);
                return Err(EngineError::internal(format!(
                    "create {name}: cannot create the volume directory: {e}"
                )));
            }
            map.insert(name.clone(), vol.clone());
            take(&name);
            vol
        };
        info!(name = %vol.name, "created volume");
        self.events.publish(
            "volume",
            "create",
            &vol.name,
            BTreeMap::from([("driver".into(), "local".into())]),
        );
        Ok((vol, true))
    }

    /// POST /volumes/create.
    pub fn create(&self, body: &Value) -> Result<Value> {
        if !(body.is_object() || body.is_null()) {
            return Err(EngineError::BadRequest("invalid volume config".into()));
        }
        let name = match &body["Name"] {
            Value::Null => None,
            Value::String(s) => Some(s.as_str()),
            other => {
                return Err(EngineError::BadRequest(format!(
                    "json: cannot unmarshal {other} into Go struct field CreateOptions.Name of type string"
                )))
            }
        };
        let driver = body["Driver"].as_str().unwrap_or("");
        if !body["ClusterVolumeSpec"].is_null() {
            return Err(EngineError::NotImplemented(
                "cluster volumes are not implemented in orcad yet".into(),
            ));
        }
        let labels = string_map(&body["Labels"], "Labels")?;
        let opts = string_map(&body["DriverOpts"], "DriverOpts")?;
        let (v, _) = self.create_inner(name, driver, labels, opts, false)?;
        Ok(self.to_json(&v, None))
    }

    /// Docker's volume JSON (`usage`: `(size, refcount)` for system/df).
    pub fn to_json(&self, v: &Volume, usage: Option<(i64, i64)>) -> Value {
        let opt_map = |m: &BTreeMap<String, String>| {
            if m.is_empty() {
                Value::Null
            } else {
                json!(m)
            }
        };
        let mut out = json!({
            "CreatedAt": v.created_at,
            "Driver": v.driver,
            "Labels": opt_map(&v.labels),
            "Mountpoint": self.mountpoint(&v.name).display().to_string(),
            "Name": v.name,
            "Options": opt_map(&v.options),
            "Scope": "local",
        });
        if let Some((size, refs)) = usage {
            out["UsageData"] = json!({"Size": size, "RefCount": refs});
        }
        out
    }

    /// Removes a volume; `users` are the IDs of containers referencing it.
    pub fn remove(&self, name: &str, force: bool, users: &[String]) -> Result<()> {
        let vol = match self.get(name) {
            Ok(v) => v,
            Err(EngineError::NotFound(_)) if force => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut map = self.lock();
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0);
        if !users.is_empty() || pending > 0 {
            return Err(EngineError::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(", ")
            )));
        }
        let data = self.mountpoint(name);
        if is_mounted(&data) {
            if let Err(e) = nix::mount::umount2(&data, nix::mount::MntFlags::MNT_DETACH) {
                return Err(EngineError::internal(format!(
                    "remove {name}: cannot unmount {}: {e}",
                    data.display()
                )));
            }
        }
        // The record goes first: a crash leaves a directory without a record
        // (skipped at load), never a record without its data.
        let vdir = self.dir.join(name);
        match fs::remove_file(vdir.join(META)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::internal(format!("remove {name}: {e}"))),
        }
        map.remove(name);
        drop(map);
        if let Err(e) = fs::remove_dir_all(&vdir) {
            warn!(name, "cannot remove the volume directory: {e}");
        }
        info!(name, "removed volume");
        self.events.publish(
            "volume",
            "destroy",
            &vol.name,
            BTreeMap::from([("driver".into(), vol.driver.clone())]),
        );
        Ok(())
    }

    /// Creates the volumes a new container's mounts need. The returned guard
    /// holds a reference on each until [`CreatedVolumes::commit`]; dropped
    /// uncommitted it removes the volumes it created.
    pub fn materialize(
        self: &Arc<Self>,
        planned: Vec<Planned>,
    ) -> Result<(Vec<MountPoint>, CreatedVolumes)> {
        let mut guard = CreatedVolumes {
            volumes: self.clone(),
            created: Vec::new(),
            held: Vec::new(),
            committed: false,
        };
        let mut out = Vec::new();
        for p in planned {
            let mut mp = p.mp;
            if mp.typ == "volume" {
                let labels = p.labels;
                // Held under the store's lock, so no remove slips in before
                // the container record references the volume.
                let (vol, created) =
                    self.create_inner(p.name.as_deref(), "local", labels, p.options, true)?;
                guard.held.push(vol.name.clone());
                if created {
                    guard.created.push(vol.name.clone());
                }
                mp.name = vol.name.clone();
                mp.driver = vol.driver.clone();
                mp.source = self.mountpoint(&vol.name).display().to_string();
            }
            out.push(mp);
        }
        Ok((out, guard))
    }
}

/// Volumes created for a container create in progress (see
/// [`Volumes::materialize`]).
pub struct CreatedVolumes {
    volumes: Arc<Volumes>,
    created: Vec<String>,
    held: Vec<String>,
    committed: bool,
}

impl CreatedVolumes {
    /// The container record now references the volumes.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for CreatedVolumes {
    fn drop(&mut self) {
        {
            let mut p = self
                .volumes
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for n in &self.held {
                if let Some(c) = p.get_mut(n) {
                    *c -= 1;
                    if *c == 0 {
                        p.remove(n);
                    }
                }
            }
        }
        if !self.committed {
            for n in &self.created {
                if let Err(e) = self.volumes.remove(n, true, &[]) {
                    warn!(name = %n, "cannot remove a volume of a failed create: {e}");
                }
            }
        }
    }
}

// ------------------------------------------------------------ planning

const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

fn check_target(dst: &str) -> Result<()> {
    if !dst.starts_with('/') {
        return Err(EngineError::BadRequest(format!(
            "invalid mount config for type \"volume\": invalid mount path: '{dst}' mount path must be absolute"
        )));
    }
    if dst == "/" {
        return Err(EngineError::BadRequest(
            "invalid specification: destination can't be '/'".into(),
        ));
    }
    Ok(())
}

fn clean_dest(d: &str) -> String {
    let t = d.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_string()
    }
}

/// The volume mounts a container asks for, in dockerd's precedence:
/// `VolumesFrom` (`from` = each source container's mount points with the
/// requested mode), overridden by `Binds`/`Mounts` at the same destination,
/// then `Config.Volumes` (user's and image's) for destinations nothing else
/// mounts. `taken` are the destinations of host binds/bind/tmpfs mounts.
pub fn plan(
    hc: &Value,
    config_volumes: &[String],
    from: Vec<MountPoint>,
    taken: &[String],
) -> Result<Vec<Planned>> {
    let mut explicit: Vec<Planned> = Vec::new();
    for b in crate::util::json_strings(&hc["Binds"]) {
        let parts: Vec<&str> = b.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [d] => ("", *d, ""),
            [s, d] => (*s, *d, ""),
            [s, d, m] => (*s, *d, *m),
            _ => {
                return Err(EngineError::BadRequest(format!(
                    "invalid volume specification: '{b}'"
                )))
            }
        };
        if src.starts_with('/') {
            continue; // a host bind: spec::user_mounts
        }
        check_target(dst)?;
        if !src.is_empty() {
            validate_name(src)?;
        }
        let mut mp = MountPoint {
            typ: "volume".into(),
            destination: clean_dest(dst),
            rw: true,
            copy_data: true,
            mode: if src.is_empty() {
                String::new()
            } else if mode.is_empty() {
                "z".into()
            } else {
                mode.into()
            },
            ..Default::default()
        };
        for m in mode.split(',').filter(|m| !m.is_empty()) {
            match m {
                "ro" => mp.rw = false,
                "rw" | "z" | "Z" => {}
                "nocopy" => mp.copy_data = false,
                p if PROPAGATIONS.contains(&p) => mp.propagation = p.into(),
                other => return Err(EngineError::BadRequest(format!("invalid mode: {other}"))),
            }
        }
        explicit.push(Planned {
            mp,
            name: (!src.is_empty()).then(|| src.to_string()),
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        });
    }
    for m in hc["Mounts"].as_array().into_iter().flatten() {
        if m["Type"].as_str() != Some("volume") {
            continue;
        }
        let bad = |what: &str| {
            Err(EngineError::BadRequest(format!(
                "invalid mount config for type \"volume\": {what}"
            )))
        };
        let dst = m["Target"].as_str().unwrap_or("");
        if dst.is_empty() {
            return bad("field Target must not be empty");
        }
        check_target(dst)?;
        if !m["BindOptions"].is_null() {
            return bad("field BindOptions must not be specified");
        }
        if !m["TmpfsOptions"].is_null() {
            return bad("field TmpfsOptions must not be specified");
        }
        let src = m["Source"].as_str().unwrap_or("");
        if !src.is_empty() {
            validate_name(src)?;
        }
        let vo = &m["VolumeOptions"];
        let driver = vo["DriverConfig"]["Name"].as_str().unwrap_or("");
        check_driver(driver)?;
        let options = string_map(&vo["DriverConfig"]["Options"], "DriverConfig.Options")?;
        check_options(&options)?;
        if vo["Subpath"].as_str().is_some_and(|s| !s.is_empty()) {
            return Err(EngineError::NotImplemented(
                "volume subpaths are not implemented in orcad yet".into(),
            ));
        }
        let prop = m["BindOptions"]["Propagation"].as_str().unwrap_or("");
        explicit.push(Planned {
            mp: MountPoint {
                typ: "volume".into(),
                destination: clean_dest(dst),
                rw: !m["ReadOnly"].as_bool().unwrap_or(false),
                copy_data: !vo["NoCopy"].as_bool().unwrap_or(false),
                propagation: prop.into(),
                ..Default::default()
            },
            name: (!src.is_empty()).then(|| src.to_string()),
            labels: string_map(&vo["Labels"], "VolumeOptions.Labels")?,
            options,
        });
    }
    let taken: Vec<String> = taken.iter().map(|d| clean_dest(d)).collect();
    for (i, p) in explicit.iter().enumerate() {
        if taken.contains(&p.mp.destination)
            || explicit[..i]
                .iter()
                .any(|o| o.mp.destination == p.mp.destination)
        {
            return Err(EngineError::BadRequest(format!(
                "Duplicate mount point: {}",
                p.mp.destination
            )));
        }
    }
    let mut out: Vec<Planned> = Vec::new();
    for mp in from {
        let d = mp.destination.clone();
        if taken.contains(&d)
            || explicit.iter().any(|p| p.mp.destination == d)
            || out.iter().any(|p| p.mp.destination == d)
        {
            continue;
        }
        out.push(Planned {
            name: (mp.typ == "volume").then(|| mp.name.clone()),
            mp,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        });
    }
    out.extend(explicit);
    for d in config_volumes {
        check_target(d)?;
        let d = clean_dest(d);
        if taken.contains(&d) || out.iter().any(|p| p.mp.destination == d) {
            continue;
        }
        out.push(Planned {
            mp: MountPoint {
                typ: "volume".into(),
                destination: d,
                rw: true,
                copy_data: true,
                ..Default::default()
            },
            name: None,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        });
    }
    Ok(out)
}

/// One `VolumesFrom` entry: `container[:ro|rw]` → (container, rw override).
pub fn parse_volumes_from(spec: &str) -> Result<(String, Option<bool>)> {
    let (c, mode) = match spec.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (spec, None),
    };
    if c.is_empty() {
        return Err(EngineError::BadRequest(format!(
            "invalid volumes-from specification: {spec:?}"
        )));
    }
    let rw = match mode {
        None | Some("") => None,
        Some("rw") => Some(true),
        Some("ro") => Some(false),
        Some(m) => {
            return Err(EngineError::BadRequest(format!(
                "invalid mode for volumes-from: {m}"
            )))
        }
    };
    Ok((c.to_string(), rw))
}

// ------------------------------------------------------------ start / exit

/// Whether `path` is a mount point (from /proc/self/mountinfo).
fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(n) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts a volume with `type`/`device`/`o` options on its `_data` (the
/// local driver's mount at first use).
fn mount_options_volume(v: &Volume, target: &Path) -> Result<()> {
    use nix::mount::MsFlags;
    let typ = v.options.get("type").map(String::as_str).unwrap_or("");
    if typ.is_empty() || is_mounted(target) {
        return Ok(());
    }
    let device = v.options.get("device").map(String::as_str).unwrap_or("");
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in v
        .options
        .get("o")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|o| !o.is_empty())
    {
        match o {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "async" => flags &= !MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "defaults" => {}
            other => data.push(other),
        }
    }
    let data = data.join(",");
    nix::mount::mount(
        Some(device),
        target,
        Some(typ),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        EngineError::internal(format!(
            "error while mounting volume '{}': failed to mount local volume: mount {device}:{} (type {typ}, options {:?}): {e}",
            target.display(),
            target.display(),
            v.options.get("o").cloned().unwrap_or_default()
        ))
    })
}

/// A container's snapshot mounted read-only for a copy-up.
struct TempRootfs(PathBuf);

impl Drop for TempRootfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            warn!(dir = %self.0.display(), "cannot unmount: {e}");
            return;
        }
        let _ = fs::remove_dir(&self.0);
    }
}

fn dir_is_empty(p: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(p)?.next().is_none())
}

/// Before a container's task is created: each volume must still exist,
/// option volumes are mounted, and empty volumes with `copy_data` get the
/// image's content at their destination (blocking; run it off the runtime).
pub fn prepare_start(
    vols: &Volumes,
    mount_points: &[MountPoint],
    rootfs: &[orca_proto::types::Mount],
    scratch: &Path,
) -> Result<()> {
    let mut root: Option<TempRootfs> = None;
    for mp in mount_points.iter().filter(|m| m.typ == "volume") {
        let v = vols.get(&mp.name).map_err(|_| {
            EngineError::NotFound(format!(
                "error while mounting volume '{}': volume {} not found",
                mp.source, mp.name
            ))
        })?;
        let data = vols.mountpoint(&v.name);
        mount_options_volume(&v, &data)?;
        if !mp.copy_data || !dir_is_empty(&data)? {
            continue;
        }
        if root.is_none() {
            let [m] = rootfs else {
                return Err(EngineError::internal(format!(
                    "{} rootfs mounts (expected one)",
                    rootfs.len()
                )));
            };
            fs::create_dir_all(scratch)?;
            let dir = scratch.join(format!("copyup-{}", util::random_hex(8)));
            fs::create_dir(&dir)?;
            if let Err(e) = crate::archive::mount_one(m, &dir, false) {
                let _ = fs::remove_dir(&dir);
                return Err(e);
            }
            root = Some(TempRootfs(dir));
        }
        let Some(r) = &root else { continue };
        let rel = match crate::archive::resolve_in_root(&r.0, &mp.destination, true) {
            Ok(rel) => rel,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let src = r.0.join(rel);
        match fs::metadata(&src) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
        copy_dir(&src, &data).map_err(|e| {
            EngineError::internal(format!(
                "copying the image's {} into volume {}: {e}",
                mp.destination, mp.name
            ))
        })?;
        info!(volume = %mp.name, destination = %mp.destination, "copied image content into volume");
    }
    Ok(())
}

/// Unmounts an option volume no running container uses any more.
pub fn release(vols: &Volumes, name: &str) {
    let Ok(v) = vols.get(name) else { return };
    if v.options.get("type").is_none_or(|t| t.is_empty()) {
        return;
    }
    let data = vols.mountpoint(name);
    if is_mounted(&data) {
        if let Err(e) = nix::mount::umount2(&data, nix::mount::MntFlags::MNT_DETACH) {
            warn!(name, "cannot unmount the volume: {e}");
        }
    }
}

impl Volumes {
    /// `mount` events at a container start.
    pub fn mount_events(&self, container: &str, mps: &[MountPoint]) {
        for mp in mps.iter().filter(|m| m.typ == "volume") {
            self.events.publish(
                "volume",
                "mount",
                &mp.name,
                BTreeMap::from([
                    ("container".into(), container.to_string()),
                    ("destination".into(), mp.destination.clone()),
                    ("driver".into(), mp.driver.clone()),
                    ("propagation".into(), mp.propagation.clone()),
                    ("read/write".into(), mp.rw.to_string()),
                ]),
            );
        }
    }

    /// `unmount` events at a container exit.
    pub fn unmount_events(&self, container: &str, mps: &[MountPoint]) {
        for mp in mps.iter().filter(|m| m.typ == "volume") {
            self.events.publish(
                "volume",
                "unmount",
                &mp.name,
                BTreeMap::from([
                    ("container".into(), container.to_string()),
                    ("driver".into(), mp.driver.clone()),
                ]),
            );
        }
    }
}

/// Copies the contents of `src` into the (empty) directory `dst`, keeping
/// ownership, modes, times, symlinks, device nodes and hard links; `dst`
/// takes `src`'s ownership and mode (dockerd's copyExistingContents +
/// copyOwnership).
pub fn copy_dir(src: &Path, dst: &Path) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    copy_tree(src, dst, &mut links)?;
    let m = fs::symlink_metadata(src)?;
    set_owner_mode_times(dst, &m, false)
}

fn copy_tree(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let m = fs::symlink_metadata(&from)?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&from, &to, links)?;
            set_owner_mode_times(&to, &m, false)?;
            continue;
        }
        if !ft.is_symlink() && m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                fs::hard_link(first, &to)?;
                continue;
            }
            links.insert((m.dev(), m.ino()), to.clone());
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            set_owner_mode_times(&to, &m, true)?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
            set_owner_mode_times(&to, &m, false)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            nix::sys::stat::mknod(
                &to,
                nix::sys::stat::SFlag::from_bits_truncate(m.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777),
                m.rdev(),
            )
            .map_err(io::Error::from)?;
            set_owner_mode_times(&to, &m, false)?;
        }
        // Sockets are not copied (as tar/dockerd's copy skip them).
    }
    Ok(())
}

fn set_owner_mode_times(p: &Path, m: &fs::Metadata, symlink: bool) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid()))?;
    if !symlink {
        // After the chown, which clears setuid/setgid bits.
        fs::set_permissions(p, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        p,
        &ts(m.atime(), m.atime_nsec()),
        &ts(m.mtime(), m.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Disk usage of a directory tree in bytes (allocated blocks, like `du`).
pub fn dir_size(p: &Path) -> i64 {
    let mut total = 0i64;
    let mut stack = vec![p.to_path_buf()];
    let mut seen: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += (m.blocks() * 512) as i64;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

// ------------------------------------------------------------ API glue

/// The container IDs referencing each volume (any state).
fn users(engine: &crate::Engine) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for e in engine.containers.entries() {
        let r = e.record();
        for mp in r.mount_points.iter().filter(|m| m.typ == "volume") {
            m.entry(mp.name.clone()).or_default().push(r.id.clone());
        }
    }
    m
}

/// GET /volumes/{name}.
pub fn inspect_json(engine: &crate::Engine, name: &str) -> Result<Value> {
    let vols = &engine.containers.volumes;
    Ok(vols.to_json(&vols.get(name)?, None))
}

/// GET /volumes: filters `name` (substring), `label`, `dangling`, `driver`.
pub fn list_json(engine: &crate::Engine, q: &util::Query) -> Result<Value> {
    let f = parse_filters(q.get("filters"))?;
    for k in f.keys() {
        if !["name", "label", "dangling", "driver"].contains(&k.as_str()) {
            return Err(EngineError::BadRequest(format!("invalid filter '{k}'")));
        }
    }
    let dangling = match f.get("dangling").and_then(|v| v.first()) {
        None => None,
        Some(v) => match v.as_str() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => {
                return Err(EngineError::BadRequest(format!(
                    "invalid filter 'dangling={v}'"
                )))
            }
        },
    };
    let used = users(engine);
    let vols = &engine.containers.volumes;
    let ok = |k: &str, pred: &dyn Fn(&str) -> bool| {
        f.get(k)
            .filter(|v| !v.is_empty())
            .is_none_or(|vals| vals.iter().any(|v| pred(v)))
    };
    let list: Vec<Value> = vols
        .all()
        .into_iter()
        .filter(|v| {
            ok("name", &|n| v.name.contains(n))
                && ok("driver", &|d| d == v.driver)
                && dangling.is_none_or(|d| d != used.contains_key(&v.name))
                && f.get("label").is_none_or(|vals| {
                    vals.iter().all(|l| match l.split_once('=') {
                        Some((k, want)) => v.labels.get(k).is_some_and(|x| x == want),
                        None => v.labels.contains_key(l.as_str()),
                    })
                })
        })
        .map(|v| vols.to_json(&v, None))
        .collect();
    Ok(json!({"Volumes": list, "Warnings": []}))
}

/// DELETE /volumes/{name}?force=: 409 while a container references it.
pub fn remove(engine: &crate::Engine, name: &str, force: bool) -> Result<()> {
    let u = users(engine).remove(name).unwrap_or_default();
    engine.containers.volumes.remove(name, force, &u)
}

/// POST /volumes/prune: unused anonymous volumes (API ≥ 1.42 without
/// `all=true`), every unused volume otherwise, never ones with mount
/// options; `label`/`label!` filters.
pub async fn prune(engine: Arc<crate::Engine>, q: &util::Query, api: (u32, u32)) -> Result<Value> {
    let f = parse_filters(q.get("filters"))?;
    for k in f.keys() {
        if k == "until" {
            return Err(EngineError::NotImplemented(
                "prune filter 'until' is not implemented in orcad yet".into(),
            ));
        }
        if !["label", "label!", "all"].contains(&k.as_str()) {
            return Err(EngineError::BadRequest(format!("invalid filter '{k}'")));
        }
    }
    let all = match f.get("all").and_then(|v| v.first()).map(String::as_str) {
        None => api < (1, 42),
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(v) => return Err(EngineError::BadRequest(format!("invalid filter 'all={v}'"))),
    };
    let one = |labels: &BTreeMap<String, String>, v: &str| match v.split_once('=') {
        Some((k, want)) => labels.get(k).is_some_and(|x| x == want),
        None => labels.contains_key(v),
    };
    let used = users(engine.as_ref());
    let vols = engine.containers.volumes.clone();
    let mut deleted = Vec::new();
    let mut reclaimed = 0i64;
    for v in vols.all() {
        // Like dockerd, volumes with mount options are never pruned (their
        // data lives elsewhere: nothing would be reclaimed).
        if used.contains_key(&v.name) || (!all && !v.anonymous()) || !v.options.is_empty() {
            continue;
        }
        if !f
            .get("label")
            .is_none_or(|l| l.iter().all(|x| one(&v.labels, x)))
            || !f
                .get("label!")
                .is_none_or(|l| l.iter().all(|x| !one(&v.labels, x)))
        {
            continue;
        }
        let path = vols.mountpoint(&v.name);
        let size = tokio::task::spawn_blocking(move || dir_size(&path))
            .await
            .unwrap_or(0);
        let u = users(engine.as_ref()).remove(&v.name).unwrap_or_default();
        match vols.remove(&v.name, false, &u) {
            Ok(()) => {
                reclaimed += size;
                deleted.push(v.name.clone());
            }
            Err(EngineError::Conflict(_)) | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    info!(count = deleted.len(), reclaimed, "pruned volumes");
    Ok(json!({
        "VolumesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) },
        "SpaceReclaimed": reclaimed,
    }))
}

/// The `Volumes` of `GET /system/df` (with `UsageData`).
pub async fn df(engine: &crate::Engine) -> Vec<Value> {
    let used = users(engine);
    let vols = engine.containers.volumes.clone();
    let mut out = Vec::new();
    for v in vols.all() {
        // -1 ("not available") for volumes with mount options: their data
        // is not on the local disk (dockerd does not size them either).
        let size = if v.options.is_empty() {
            let path = vols.mountpoint(&v.name);
            tokio::task::spawn_blocking(move || dir_size(&path))
                .await
                .unwrap_or(0)
        } else {
            -1
        };
        let refs = used.get(&v.name).map_or(0, |u| u.len()) as i64;
        out.push(vols.to_json(&v, Some((size, refs))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("data").is_ok());
        assert!(validate_name("a1_b.c-d").is_ok());
        assert!(validate_name("a").is_err());
        assert!(validate_name("_x").is_err());
        assert!(validate_name("x/y").is_err());
        assert!(validate_name("x y").is_err());
    }

    #[test]
    fn planning() {
        let hc = json!({
            "Binds": ["data:/data:ro,nocopy", "/host:/h", "/anon"],
            "Mounts": [{"Type": "volume", "Source": "m1", "Target": "/m/",
                        "VolumeOptions": {"NoCopy": true, "Labels": {"a": "b"}}}],
        });
        let from = vec![
            MountPoint {
                typ: "volume".into(),
                name: "shared".into(),
                destination: "/data".into(),
                rw: true,
                ..Default::default()
            },
            MountPoint {
                typ: "bind".into(),
                source: "/x".into(),
                destination: "/x".into(),
                rw: false,
                ..Default::default()
            },
        ];
        let p = plan(
            &hc,
            &["/img".to_string(), "/h".to_string(), "/data".to_string()],
            from,
            &["/h".to_string()],
        )
        .unwrap();
        let dests: Vec<&str> = p.iter().map(|p| p.mp.destination.as_str()).collect();
        assert_eq!(dests, vec!["/x", "/data", "/anon", "/m", "/img"]);
        assert!(!p[1].mp.rw && !p[1].mp.copy_data);
        assert_eq!(p[1].name.as_deref(), Some("data"));
        assert_eq!(p[2].name, None);
        assert_eq!(p[3].labels.get("a").map(String::as_str), Some("b"));
        assert!(p[4].mp.copy_data);
        assert!(matches!(
            plan(&json!({"Binds": ["bad name:/x"]}), &[], vec![], &[]),
            Err(EngineError::BadRequest(_))
        ));
        assert!(matches!(
            plan(&json!({"Binds": ["v1:/x", "v2:/x"]}), &[], vec![], &[]),
            Err(EngineError::BadRequest(_))
        ));
        assert!(matches!(
            plan(&json!({"Binds": ["v1:/x:bogus"]}), &[], vec![], &[]),
            Err(EngineError::BadRequest(_))
        ));
        assert!(matches!(
            plan(
                &json!({"Mounts": [{"Type": "volume", "Target": "/x", "VolumeOptions": {"DriverConfig": {"Name": "nfs"}}}]}),
                &[],
                vec![],
                &[]
            ),
            Err(EngineError::NotImplemented(_))
        ));
        assert_eq!(
            parse_volumes_from("c1:ro").unwrap(),
            ("c1".into(), Some(false))
        );
        assert!(parse_volumes_from("c1:xx").is_err());
    }

    #[test]
    fn mountinfo_paths() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/no/such/mount/point")));
    }

    #[test]
    fn options() {
        let m = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(check_options(&m(&[
            ("type", "tmpfs"),
            ("device", "tmpfs"),
            ("o", "size=1m")
        ]))
        .is_ok());
        assert!(check_options(&m(&[("type", "tmpfs")])).is_err());
        assert!(check_options(&m(&[("bogus", "1")])).is_err());
    }

    #[test]
    fn copy_keeps_metadata() {
        let t = std::env::temp_dir().join(format!("orca-vol-test-{}", util::random_hex(6)));
        let (src, dst) = (t.join("src"), t.join("dst"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::write(src.join("sub/f"), b"hello").unwrap();
        fs::set_permissions(src.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("link")).unwrap();
        fs::hard_link(src.join("sub/f"), src.join("hard")).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o711)).unwrap();
        copy_dir(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("sub/f")).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(dst.join("sub/f")).unwrap().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("sub/f"));
        assert_eq!(
            fs::metadata(dst.join("hard")).unwrap().ino(),
            fs::metadata(dst.join("sub/f")).unwrap().ino()
        );
        assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o777, 0o711);
        assert_eq!(
            fs::metadata(dst.join("sub/f")).unwrap().mtime(),
            fs::metadata(src.join("sub/f")).unwrap().mtime()
        );
        fs::remove_dir_all(&t).unwrap();
    }
}
