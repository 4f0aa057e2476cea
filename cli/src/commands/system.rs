//! version, info, events, system df, system prune.

use std::io::Write;

use http::Method;
use serde_json::{json, Value};

use crate::args::{EventsArgs, PruneArgs};
use crate::client::{
    next_chunk, query_string, EngineClient, JsonStreamDecoder, CLIENT_API_VERSION,
};
use crate::error::Result;
use crate::host::DaemonHost;
use crate::humanize::{bytes_size, human_size};
use crate::template::{OutputFormat, Template};
use crate::CLI_VERSION;

use super::{filters_json, str_of};

fn client_version_json() -> Value {
    json!({
        "Platform": {"Name": "Orca"},
        "Version": CLI_VERSION,
        "ApiVersion": CLIENT_API_VERSION,
        "DefaultAPIVersion": CLIENT_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": std::env::consts::OS,
        "Arch": go_arch(),
        "BuildTime": "",
        "Context": "default",
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `orca version`: the client block always; the server block if reachable.
pub async fn version(host: DaemonHost, format: Option<&str>) -> Result<i32> {
    let mut client_json = client_version_json();
    let server = match EngineClient::negotiate(host).await {
        Ok(c) => {
            client_json["ApiVersion"] = json!(c.api_version());
            c.json(Method::GET, "/version", None).await
        }
        Err(e) => Err(e),
    };
    let (server_json, err) = match server {
        Ok(v) => (v, None),
        Err(e) => (Value::Null, Some(e)),
    };
    let all = json!({"Client": client_json, "Server": server_json});
    if let Some(f) = format.filter(|f| !f.is_empty()) {
        let f = OutputFormat::parse(Some(f), "");
        let out = Template::parse(&f.template)?.render(&all)?;
        println!("{out}");
    } else {
        let c = &all["Client"];
        let mut out = String::new();
        out.push_str("Client:\n");
        for (k, v) in [
            ("Version", c["Version"].clone()),
            ("API version", c["ApiVersion"].clone()),
            (
                "OS/Arch",
                json!(format!("{}/{}", c["Os"].as_str().unwrap_or(""), go_arch())),
            ),
            ("Context", c["Context"].clone()),
        ] {
            out.push_str(&format!(
                " {:<18} {}\n",
                format!("{k}:"),
                v.as_str().unwrap_or("")
            ));
        }
        let s = &all["Server"];
        if !s.is_null() {
            out.push_str(&format!(
                "\nServer: {}\n",
                s["Platform"]["Name"].as_str().unwrap_or("")
            ));
            let components = s["Components"].as_array().cloned().unwrap_or_default();
            if components.is_empty() {
                components_block(&mut out, "Engine", s);
            }
            for comp in &components {
                let name = str_of(comp, "Name");
                let mut v = comp["Details"].clone();
                if !v.is_object() {
                    v = json!({});
                }
                v["Version"] = comp["Version"].clone();
                if name == "Engine" {
                    v["ApiVersion"] = s["ApiVersion"].clone();
                    v["MinAPIVersion"] = s["MinAPIVersion"].clone();
                }
                components_block(&mut out, name, &v);
            }
        }
        print!("{out}");
    }
    std::io::stdout().flush()?;
    match err {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

fn components_block(out: &mut String, name: &str, v: &Value) {
    out.push_str(&format!(" {name}:\n"));
    let mut rows: Vec<(String, String)> = Vec::new();
    rows.push(("Version".into(), str_of(v, "Version").into()));
    if let Some(api) = v["ApiVersion"].as_str() {
        let min = v["MinAPIVersion"].as_str().unwrap_or("");
        rows.push((
            "API version".into(),
            if min.is_empty() {
                api.to_string()
            } else {
                format!("{api} (minimum version {min})")
            },
        ));
    }
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            if matches!(k.as_str(), "Version" | "ApiVersion" | "MinAPIVersion") {
                continue;
            }
            if let Some(s) = val.as_str() {
                rows.push((k.clone(), s.to_string()));
            }
        }
    }
    for (k, val) in rows {
        out.push_str(&format!("  {:<17} {val}\n", format!("{k}:")));
    }
}

/// `orca info`.
pub async fn info(client: &EngineClient, format: Option<&str>) -> Result<i32> {
    let i = client.json(Method::GET, "/info", None).await?;
    if let Some(f) = format.filter(|f| !f.is_empty()) {
        let f = OutputFormat::parse(Some(f), "");
        println!("{}", Template::parse(&f.template)?.render(&i)?);
        return Ok(0);
    }
    let mut o = String::new();
    o.push_str("Client:\n");
    o.push_str(&format!(
        " Version:    {CLI_VERSION}\n Context:    default\n Debug Mode: false\n\n"
    ));
    o.push_str("Server:\n");
    let n = |k: &str| i[k].as_i64().unwrap_or(0);
    let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
    o.push_str(&format!(" Containers: {}\n", n("Containers")));
    o.push_str(&format!("  Running: {}\n", n("ContainersRunning")));
    o.push_str(&format!("  Paused: {}\n", n("ContainersPaused")));
    o.push_str(&format!("  Stopped: {}\n", n("ContainersStopped")));
    o.push_str(&format!(" Images: {}\n", n("Images")));
    for (label, key) in [
        ("Server Version", "ServerVersion"),
        ("Storage Driver", "Driver"),
        ("Logging Driver", "LoggingDriver"),
        ("Cgroup Driver", "CgroupDriver"),
        ("Cgroup Version", "CgroupVersion"),
    ] {
        o.push_str(&format!(" {label}: {}\n", s(key)));
    }
    if let Some(rts) = i["Runtimes"].as_object() {
        let mut names: Vec<&String> = rts.keys().collect();
        names.sort();
        o.push_str(&format!(
            " Runtimes: {}\n",
            names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    o.push_str(&format!(" Default Runtime: {}\n", s("DefaultRuntime")));
    for (label, key) in [
        ("Kernel Version", "KernelVersion"),
        ("Operating System", "OperatingSystem"),
        ("OSType", "OSType"),
        ("Architecture", "Architecture"),
    ] {
        o.push_str(&format!(" {label}: {}\n", s(key)));
    }
    o.push_str(&format!(" CPUs: {}\n", n("NCPU")));
    o.push_str(&format!(
        " Total Memory: {}\n",
        bytes_size(n("MemTotal") as f64)
    ));
    o.push_str(&format!(" Name: {}\n ID: {}\n", s("Name"), s("ID")));
    o.push_str(&format!(" Docker Root Dir: {}\n", s("DockerRootDir")));
    o.push_str(&format!(
        " Debug Mode: {}\n",
        i["Debug"].as_bool().unwrap_or(false)
    ));
    if let Some(w) = i["Warnings"].as_array() {
        let mut e = std::io::stderr().lock();
        for w in w.iter().filter_map(Value::as_str) {
            let _ = writeln!(e, "{w}");
        }
    }
    print!("{o}");
    Ok(0)
}

/// One event as docker prints it.
pub fn event_line(ev: &Value) -> String {
    let nanos = ev["timeNano"]
        .as_i64()
        .unwrap_or_else(|| ev["time"].as_i64().unwrap_or(0) * 1_000_000_000);
    let t = chrono::DateTime::from_timestamp(nanos / 1_000_000_000, (nanos % 1_000_000_000) as u32)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string())
        .unwrap_or_default();
    let kind = ev["Type"].as_str().unwrap_or("");
    let action = ev["Action"].as_str().unwrap_or("");
    let id = ev["Actor"]["ID"].as_str().unwrap_or("");
    let mut line = format!("{t} {kind} {action} {id}");
    if let Some(attrs) = ev["Actor"]["Attributes"].as_object() {
        let mut pairs: Vec<String> = attrs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        pairs.sort();
        if !pairs.is_empty() {
            line.push_str(&format!(" ({})", pairs.join(", ")));
        }
    }
    line
}

/// `orca events`: streams until interrupted (or `--until`).
pub async fn events(client: &EngineClient, a: EventsArgs) -> Result<i32> {
    let mut q = Vec::new();
    if let Some(s) = a.since {
        q.push(("since", s));
    }
    if let Some(u) = a.until {
        q.push(("until", u));
    }
    if let Some(f) = filters_json(&a.filter)? {
        q.push(("filters", f));
    }
    let resp = client
        .call(Method::GET, &format!("/events{}", query_string(&q)), None)
        .await?;
    let template = match a.format.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => Some(Template::parse(&OutputFormat::parse(Some(f), "").template)?),
        None => None,
    };
    let mut body = resp.into_body();
    let mut decoder = JsonStreamDecoder::default();
    while let Some(chunk) = next_chunk(&mut body).await? {
        for ev in decoder.push(&chunk)? {
            let line = match &template {
                Some(t) => t.render(&ev)?,
                None => event_line(&ev),
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
    Ok(0)
}

/// `orca system df`.
pub async fn df(client: &EngineClient, format: Option<&str>) -> Result<i32> {
    let d = client.json(Method::GET, "/system/df", None).await?;
    let images = d["Images"].as_array().cloned().unwrap_or_default();
    let containers = d["Containers"].as_array().cloned().unwrap_or_default();
    let volumes = d["Volumes"].as_array().cloned().unwrap_or_default();
    let img_size: i64 = images.iter().map(|i| i["Size"].as_i64().unwrap_or(0)).sum();
    let img_active = images
        .iter()
        .filter(|i| i["Containers"].as_i64().unwrap_or(0) > 0)
        .count();
    let img_reclaim: i64 = images
        .iter()
        .filter(|i| i["Containers"].as_i64().unwrap_or(0) == 0)
        .map(|i| i["Size"].as_i64().unwrap_or(0))
        .sum();
    let ct_size: i64 = containers
        .iter()
        .map(|c| c["SizeRw"].as_i64().unwrap_or(0))
        .sum();
    let ct_active = containers
        .iter()
        .filter(|c| str_of(c, "State") == "running")
        .count();
    let ct_reclaim: i64 = containers
        .iter()
        .filter(|c| str_of(c, "State") != "running")
        .map(|c| c["SizeRw"].as_i64().unwrap_or(0))
        .sum();
    let vol_used = |v: &Value| v["UsageData"]["RefCount"].as_i64().unwrap_or(0) > 0;
    let vol_bytes = |v: &Value| v["UsageData"]["Size"].as_i64().unwrap_or(0).max(0);
    let vol_size: i64 = volumes.iter().map(vol_bytes).sum();
    let vol_active = volumes.iter().filter(|v| vol_used(v)).count();
    let vol_reclaim: i64 = volumes.iter().filter(|v| !vol_used(v)).map(vol_bytes).sum();
    let pct = |part: i64, total: i64| {
        if total > 0 {
            format!("{} ({}%)", human_size(part as f64), part * 100 / total)
        } else {
            human_size(part as f64)
        }
    };
    let rows = vec![
        json!({"Type": "Images", "TotalCount": images.len().to_string(), "Active": img_active.to_string(),
               "Size": human_size(img_size as f64), "Reclaimable": pct(img_reclaim, img_size)}),
        json!({"Type": "Containers", "TotalCount": containers.len().to_string(), "Active": ct_active.to_string(),
               "Size": human_size(ct_size as f64), "Reclaimable": pct(ct_reclaim, ct_size)}),
        json!({"Type": "Local Volumes", "TotalCount": volumes.len().to_string(), "Active": vol_active.to_string(),
               "Size": human_size(vol_size as f64), "Reclaimable": pct(vol_reclaim, vol_size)}),
    ];
    let f = OutputFormat::parse(
        format,
        "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}",
    );
    let headers = json!({"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"});
    print!("{}", f.render(&headers, &rows)?);
    Ok(0)
}

/// `orca system prune`: containers, then images (dangling, or all unused with `-a`).
pub async fn prune(client: &EngineClient, a: PruneArgs) -> Result<i32> {
    if !a.force {
        eprint!(
            "WARNING! This will remove:\n  - all stopped containers\n  - {}\n\nAre you sure you want to continue? [y/N] ",
            if a.all { "all images without at least one container associated to them" } else { "all dangling images" }
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            return Ok(0);
        }
    }
    let mut reclaimed = 0i64;
    let c = client.json(Method::POST, "/containers/prune", None).await?;
    if let Some(ids) = c["ContainersDeleted"].as_array().filter(|a| !a.is_empty()) {
        println!("Deleted Containers:");
        for id in ids.iter().filter_map(Value::as_str) {
            println!("{id}");
        }
        println!();
    }
    reclaimed += c["SpaceReclaimed"].as_i64().unwrap_or(0);
    let filters = if a.all {
        r#"{"dangling":["false"]}"#
    } else {
        r#"{"dangling":["true"]}"#
    };
    let i = client
        .json(
            Method::POST,
            &format!(
                "/images/prune{}",
                query_string(&[("filters", filters.to_string())])
            ),
            None,
        )
        .await?;
    if let Some(items) = i["ImagesDeleted"].as_array().filter(|a| !a.is_empty()) {
        println!("Deleted Images:");
        for it in items {
            if let Some(u) = it["Untagged"].as_str() {
                println!("untagged: {u}");
            }
            if let Some(d) = it["Deleted"].as_str() {
                println!("deleted: {d}");
            }
        }
        println!();
    }
    reclaimed += i["SpaceReclaimed"].as_i64().unwrap_or(0);
    println!("Total reclaimed space: {}", human_size(reclaimed as f64));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_like_docker() {
        let ev = json!({"Type": "container", "Action": "start", "timeNano": 1_700_000_000_123_456_789i64,
                        "Actor": {"ID": "abc", "Attributes": {"name": "web", "image": "busybox"}}});
        assert_eq!(
            event_line(&ev),
            "2023-11-14T22:13:20.123456789Z container start abc (image=busybox, name=web)"
        );
    }
}
