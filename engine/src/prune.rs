//! Pruning and disk usage: `POST /containers/prune`, `POST /images/prune`,
//! `POST /networks/prune`, `GET /system/df` (and the empty build-cache prune
//! `docker system prune` calls: orcad has no builder, so there is never a
//! cache to delete).

use std::collections::HashMap;
use std::sync::Arc;

use orca_proto::images as imgs;
use orca_proto::snapshots as snaps;
use serde_json::{json, Value};
use tracing::info;

use crate::error::{EngineError, Result};
use crate::images::{is_dangling_name, ResolvedImage};
use crate::reference::familiar;
use crate::util::Query;
use crate::Engine;

/// Prune filters: `{"k":["v"]}` or the CLI's `{"k":{"v":true}}`.
fn parse_filters(q: &Query, allowed: &[&str]) -> Result<HashMap<String, Vec<String>>> {
    let mut m = HashMap::new();
    let Some(f) = q.get("filters").filter(|f| !f.is_empty()) else {
        return Ok(m);
    };
    let v: Value = serde_json::from_str(f)
        .map_err(|e| EngineError::BadRequest(format!("invalid filter: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| EngineError::BadRequest("invalid filter".into()))?;
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => return Err(EngineError::BadRequest(format!("invalid filter '{k}'"))),
        };
        if k == "until" {
            return Err(EngineError::NotImplemented(
                "prune filter 'until' is not implemented in orcad yet".into(),
            ));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(EngineError::BadRequest(format!("invalid filter '{k}'")));
        }
        m.insert(k.clone(), list);
    }
    Ok(m)
}

/// `label=k`, `label=k=v`, `label!=…` against a label map.
fn labels_match(f: &HashMap<String, Vec<String>>, get: impl Fn(&str) -> Option<String>) -> bool {
    let one = |v: &str| match v.split_once('=') {
        Some((k, want)) => get(k).is_some_and(|x| x == want),
        None => get(v).is_some(),
    };
    f.get("label").is_none_or(|l| l.iter().all(|v| one(v)))
        && f.get("label!").is_none_or(|l| l.iter().all(|v| !one(v)))
}

/// Disk usage of a snapshot (0 if unknown).
async fn snapshot_usage(engine: &Engine, key: &str) -> i64 {
    engine
        .ctrd
        .snapshots()
        .usage(engine.ctrd.req(snaps::UsageRequest {
            snapshotter: engine.images.snapshotter().to_string(),
            key: key.to_string(),
        }))
        .await
        .map(|u| u.into_inner().size)
        .unwrap_or(0)
}

/// POST /containers/prune: removes every stopped container.
pub async fn containers(engine: Arc<Engine>, q: &Query) -> Result<Value> {
    let f = parse_filters(q, &["label", "label!"])?;
    let mut deleted = Vec::new();
    let mut reclaimed = 0i64;
    for e in engine.containers.entries() {
        let r = e.record();
        if r.state.running || r.state.status == "removing" {
            continue;
        }
        if !labels_match(&f, |k| r.config.labels.get(k).cloned()) {
            continue;
        }
        let size = snapshot_usage(&engine, &r.id).await;
        match engine.containers.remove(&r.id, false).await {
            Ok(()) => {
                reclaimed += size;
                deleted.push(r.id.clone());
            }
            // Started or removed meanwhile: not ours to prune.
            Err(EngineError::Conflict(_)) | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    info!(count = deleted.len(), reclaimed, "pruned containers");
    Ok(json!({"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}))
}

/// Images grouped by ID: (ID, every record of it).
fn by_id(all: Vec<ResolvedImage>) -> Vec<(String, Vec<ResolvedImage>)> {
    let mut out: Vec<(String, Vec<ResolvedImage>)> = Vec::new();
    for i in all {
        match out.iter_mut().find(|(id, _)| *id == i.config_digest) {
            Some((_, v)) => v.push(i),
            None => out.push((i.config_digest.clone(), vec![i])),
        }
    }
    out
}

/// POST /images/prune: dangling images (no tag), or with `dangling=false`
/// every image no container uses.
pub async fn images(engine: Arc<Engine>, q: &Query) -> Result<Value> {
    let f = parse_filters(q, &["dangling", "label", "label!"])?;
    let dangling_only = match f.get("dangling").and_then(|v| v.first()) {
        None => true,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => {
                return Err(EngineError::BadRequest(format!(
                    "invalid filter 'dangling={v}'"
                )))
            }
        },
    };
    let mut deleted = Vec::new();
    let mut reclaimed = 0i64;
    engine.containers.settle_removals().await;
    for (id, records) in by_id(engine.images.all().await?) {
        let tagged = records.iter().any(|r| !is_dangling_name(&r.name));
        if dangling_only && tagged {
            continue;
        }
        if !engine.containers.users_of_image(&id).is_empty() {
            continue;
        }
        let cfg = &records[0].config["config"]["Labels"];
        if !labels_match(&f, |k| cfg[k].as_str().map(String::from)) {
            continue;
        }
        let size = engine.images.size(&records[0]).await;
        let n = records.len();
        for (i, r) in records.iter().enumerate() {
            match engine
                .ctrd
                .images()
                .delete(engine.ctrd.req(imgs::DeleteImageRequest {
                    name: r.name.clone(),
                    // The last delete waits for containerd's GC.
                    sync: i + 1 == n,
                    ..Default::default()
                }))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(EngineError::grpc("delete image", s)),
            }
            if !is_dangling_name(&r.name) {
                deleted.push(json!({"Untagged": familiar(&r.name)}));
            }
        }
        deleted.push(json!({"Deleted": id}));
        reclaimed += size;
    }
    info!(count = deleted.len(), reclaimed, "pruned images");
    Ok(json!({
        "ImagesDeleted": if deleted.is_empty() { Value::Null } else { Value::Array(deleted) },
        "SpaceReclaimed": reclaimed,
    }))
}

/// POST /build/prune: orcad has no builder, hence no build cache.
pub fn build_cache() -> Value {
    json!({"CachesDeleted": null, "SpaceReclaimed": 0})
}

/// POST /networks/prune (also what `docker system prune` calls): removes
/// every user-defined network no running container is attached to (as
/// dockerd: only active endpoints keep a network).
pub async fn networks(engine: &Engine, q: &Query) -> Result<Value> {
    let f = parse_filters(q, &["label", "label!"])?;
    let mut deleted = Vec::new();
    for n in engine.networks.all() {
        if n.predefined || crate::networks::PREDEFINED.contains(&n.name.as_str()) {
            continue;
        }
        if !labels_match(&f, |k| n.labels.get(k).cloned()) {
            continue;
        }
        match crate::networks::remove(engine, &n.id).await {
            Ok(()) => deleted.push(n.name.clone()),
            Err(EngineError::Forbidden(_))
            | Err(EngineError::Conflict(_))
            | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    info!(count = deleted.len(), "pruned networks");
    Ok(json!({"NetworksDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }}))
}

/// GET /system/df.
pub async fn df(engine: Arc<Engine>) -> Result<Value> {
    let mut images = engine.images.list_json().await?;
    let mut layers_size = 0i64;
    if let Some(list) = images.as_array_mut() {
        for i in list.iter_mut() {
            let id = i["Id"].as_str().unwrap_or("").to_string();
            i["Containers"] = json!(engine.containers.users_of_image(&id).len());
            i["SharedSize"] = json!(0);
            layers_size += i["Size"].as_i64().unwrap_or(0);
        }
    }
    let mut q = Query::default();
    q.0.insert("all".into(), "1".into());
    let mut containers = engine.containers.list(&q)?;
    if let Some(list) = containers.as_array_mut() {
        for c in list.iter_mut() {
            let id = c["Id"].as_str().unwrap_or("").to_string();
            let rw = snapshot_usage(&engine, &id).await;
            let image_size = images
                .as_array()
                .and_then(|l| l.iter().find(|i| i["Id"] == c["ImageID"]))
                .and_then(|i| i["Size"].as_i64())
                .unwrap_or(0);
            c["SizeRw"] = json!(rw);
            c["SizeRootFs"] = json!(rw + image_size);
        }
    }
    Ok(json!({
        "LayersSize": layers_size,
        "Images": images,
        "Containers": containers,
        "Volumes": crate::volumes::df(&engine).await,
        "BuildCache": [],
    }))
}
