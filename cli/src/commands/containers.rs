//! ps, logs, stop/restart, kill, rm, wait, pause/unpause, rename, top,
//! inspect, stats, cp, export.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use http::{header, Method};
use serde_json::{json, Value};

use crate::args::{
    CpArgs, ExportArgs, InspectArgs, KillArgs, LogsArgs, PsArgs, RenameArgs, RmArgs, StatsArgs,
    StopArgs, TopArgs,
};
use crate::client::{query_string, EngineClient};
use crate::error::{CliError, Result};
use crate::humanize::{ago, bytes_size, human_size};
use crate::streams::{copy_body, OutputSink};
use crate::table::align_columns;
use crate::template::{OutputFormat, Template};

use super::{ellipsis, filters_json, finish_targets, go_time, now_unix, short_id, str_of};

/// Default `ps` table.
pub const PS_TABLE: &str =
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";

/// Header names of the container columns.
pub fn container_headers() -> Value {
    json!({"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
           "RunningFor": "CREATED", "Ports": "PORTS", "Status": "STATUS", "State": "STATE",
           "Names": "NAMES", "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
           "Size": "SIZE"})
}

fn ports_text(c: &Value) -> String {
    let mut out = Vec::new();
    for p in c["Ports"].as_array().into_iter().flatten() {
        let private = p["PrivatePort"].as_i64().unwrap_or(0);
        let kind = p["Type"].as_str().unwrap_or("tcp");
        match p["PublicPort"].as_i64() {
            Some(public) => out.push(format!(
                "{}:{public}->{private}/{kind}",
                p["IP"].as_str().unwrap_or("0.0.0.0")
            )),
            None => out.push(format!("{private}/{kind}")),
        }
    }
    out.join(", ")
}

/// One `ps` row (docker's field names) from a `/containers/json` entry.
pub fn container_row(c: &Value, no_trunc: bool, now: i64) -> Value {
    let id = str_of(c, "Id");
    let names: Vec<String> = c["Names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    let names = if no_trunc {
        names.join(",")
    } else {
        names
            .iter()
            .find(|n| !n.contains('/'))
            .cloned()
            .unwrap_or_else(|| names.join(","))
    };
    let image = str_of(c, "Image");
    let image = if image.is_empty() {
        "<no image>".to_string()
    } else if !no_trunc && image.starts_with("sha256:") {
        short_id(image)
    } else {
        image.to_string()
    };
    let command = str_of(c, "Command");
    let command = if no_trunc {
        command.to_string()
    } else {
        ellipsis(command, 20)
    };
    let created = c["Created"].as_i64().unwrap_or(0);
    let labels = c["Labels"]
        .as_object()
        .map(|m| {
            let mut v: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            v.sort();
            v.join(",")
        })
        .unwrap_or_default();
    let size = match (c["SizeRw"].as_i64(), c["SizeRootFs"].as_i64()) {
        (Some(rw), Some(root)) => format!(
            "{} (virtual {})",
            human_size(rw as f64),
            human_size(root as f64)
        ),
        (Some(rw), None) => human_size(rw as f64),
        _ => String::new(),
    };
    json!({
        "ID": if no_trunc { id.to_string() } else { short_id(id) },
        "Image": image,
        "Command": serde_json::to_string(&command).unwrap_or_default(),
        "CreatedAt": go_time(created),
        "RunningFor": ago(created, now),
        "Ports": ports_text(c),
        "Status": str_of(c, "Status"),
        "State": str_of(c, "State"),
        "Names": names,
        "Labels": labels,
        "Mounts": c["Mounts"].as_array().into_iter().flatten()
            .filter_map(|m| m["Name"].as_str().or(m["Source"].as_str()))
            .collect::<Vec<_>>().join(","),
        "Networks": c["NetworkSettings"]["Networks"].as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(",")).unwrap_or_default(),
        "Size": size,
    })
}

/// `orca ps`.
pub async fn ps(client: &EngineClient, a: PsArgs) -> Result<i32> {
    let mut q = Vec::new();
    if a.all {
        q.push(("all", "1".to_string()));
    }
    if let Some(n) = a.last.filter(|n| *n > 0) {
        q.push(("limit", n.to_string()));
    }
    if a.latest {
        q.push(("limit", "1".to_string()));
    }
    if let Some(f) = filters_json(&a.filter)? {
        q.push(("filters", f));
    }
    let list = client
        .json(
            Method::GET,
            &format!("/containers/json{}", query_string(&q)),
            None,
        )
        .await?;
    let now = now_unix();
    let rows: Vec<Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| container_row(c, a.no_trunc, now))
        .collect();
    let format = if a.quiet {
        Some("{{.ID}}")
    } else {
        a.format.as_deref()
    };
    let f = OutputFormat::parse(format, PS_TABLE);
    print!("{}", f.render(&container_headers(), &rows)?);
    Ok(0)
}

/// `orca logs`.
pub async fn logs(client: &EngineClient, a: LogsArgs) -> Result<i32> {
    let mut q = vec![
        ("stdout", "1".to_string()),
        ("stderr", "1".to_string()),
        ("tail", a.tail.clone()),
    ];
    if a.follow {
        q.push(("follow", "1".into()));
    }
    if a.timestamps {
        q.push(("timestamps", "1".into()));
    }
    if let Some(s) = a.since {
        q.push(("since", s));
    }
    if let Some(u) = a.until {
        q.push(("until", u));
    }
    let resp = client
        .call(
            Method::GET,
            &format!("/containers/{}/logs{}", a.container, query_string(&q)),
            None,
        )
        .await?;
    let raw = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("raw-stream"));
    let mut sink = OutputSink::new(raw);
    copy_body(resp.into_body(), &mut sink).await?;
    Ok(0)
}

/// `orca stop` / `orca restart`.
pub async fn stop(client: &EngineClient, a: StopArgs, restart: bool) -> Result<i32> {
    let mut q = Vec::new();
    if let Some(t) = a.time {
        q.push(("t", t.to_string()));
    }
    if let Some(s) = &a.signal {
        q.push(("signal", s.clone()));
    }
    let verb = if restart { "restart" } else { "stop" };
    let mut errors = Vec::new();
    for c in &a.containers {
        let path = format!("/containers/{c}/{verb}{}", query_string(&q));
        match client.call(Method::POST, &path, None).await {
            Ok(_) => println!("{c}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

/// `orca kill`.
pub async fn kill(client: &EngineClient, a: KillArgs) -> Result<i32> {
    let q = match &a.signal {
        Some(s) => query_string(&[("signal", s.clone())]),
        None => String::new(),
    };
    let mut errors = Vec::new();
    for c in &a.containers {
        match client
            .call(Method::POST, &format!("/containers/{c}/kill{q}"), None)
            .await
        {
            Ok(_) => println!("{c}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

/// `orca rm`.
pub async fn rm(client: &EngineClient, a: RmArgs) -> Result<i32> {
    let mut q = Vec::new();
    if a.force {
        q.push(("force", "1".to_string()));
    }
    if a.volumes {
        q.push(("v", "1".to_string()));
    }
    let mut errors = Vec::new();
    for c in &a.containers {
        let path = format!("/containers/{c}{}", query_string(&q));
        match client.call(Method::DELETE, &path, None).await {
            Ok(_) => println!("{c}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

/// `orca wait`: prints each container's exit code.
pub async fn wait(client: &EngineClient, a: crate::args::ContainersArg) -> Result<i32> {
    let mut errors = Vec::new();
    for c in &a.containers {
        match client
            .json(Method::POST, &format!("/containers/{c}/wait"), None)
            .await
        {
            Ok(v) => println!("{}", v["StatusCode"].as_i64().unwrap_or(-1)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

/// pause / unpause: POST /containers/{id}/{verb}, print each name.
pub async fn simple_post(client: &EngineClient, containers: &[String], verb: &str) -> Result<i32> {
    let mut errors = Vec::new();
    for c in containers {
        match client
            .call(Method::POST, &format!("/containers/{c}/{verb}"), None)
            .await
        {
            Ok(_) => println!("{c}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

/// `orca rename`.
pub async fn rename(client: &EngineClient, a: RenameArgs) -> Result<i32> {
    let q = query_string(&[("name", a.new_name.clone())]);
    client
        .call(
            Method::POST,
            &format!("/containers/{}/rename{q}", a.container),
            None,
        )
        .await?;
    Ok(0)
}

/// `orca top`.
pub async fn top(client: &EngineClient, a: TopArgs) -> Result<i32> {
    let q = if a.ps_options.is_empty() {
        String::new()
    } else {
        query_string(&[("ps_args", a.ps_options.join(" "))])
    };
    let v = client
        .json(
            Method::GET,
            &format!("/containers/{}/top{q}", a.container),
            None,
        )
        .await?;
    let mut text = String::new();
    let titles: Vec<&str> = v["Titles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    text.push_str(&titles.join("\t"));
    text.push('\n');
    for p in v["Processes"].as_array().into_iter().flatten() {
        let cells: Vec<&str> = p
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    print!("{}", align_columns(&text));
    Ok(0)
}

/// docker inspect's JSON: an array indented by 4 spaces.
pub fn inspect_json_text(items: &[Value]) -> Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&items, &mut ser)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `orca inspect`: containers first, then images (or `--type`).
pub async fn inspect(client: &EngineClient, a: InspectArgs) -> Result<i32> {
    let kind = a.kind.as_deref().unwrap_or("");
    if !matches!(kind, "" | "container" | "image") {
        return Err(CliError::Status {
            message: format!("\"{kind}\" is not a valid value for --type"),
            code: 1,
        });
    }
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &a.names {
        let mut item = None;
        if kind.is_empty() || kind == "container" {
            let q = if a.size { "?size=1" } else { "" };
            // Container names never hold '/': encoded, an image name such as
            // "host:5000/repo:tag" stays one path segment (a 404, not a 501).
            let segment = crate::client::encode_component(name);
            match client
                .json(Method::GET, &format!("/containers/{segment}/json{q}"), None)
                .await
            {
                Ok(v) => item = Some(v),
                Err(e) if e.is_not_found() => {
                    if kind == "container" {
                        errors.push(format!("Error: No such container: {name}"));
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if item.is_none() && (kind.is_empty() || kind == "image") {
            match client
                .json(Method::GET, &format!("/images/{name}/json"), None)
                .await
            {
                Ok(v) => item = Some(v),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        match item {
            Some(v) => found.push(v),
            None if kind == "image" => errors.push(format!("Error: No such image: {name}")),
            None => errors.push(format!("Error: No such object: {name}")),
        }
    }
    match a.format.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => {
            let t = if f == "json" {
                Template::parse("{{json .}}")?
            } else {
                Template::parse(&OutputFormat::parse(Some(f), "").template)?
            };
            let mut out = std::io::stdout().lock();
            for v in &found {
                writeln!(out, "{}", t.render(v)?)?;
            }
        }
        None => println!("{}", inspect_json_text(&found)?),
    }
    finish_targets(errors)
}

/// One `docker stats` row from a stats sample.
pub fn stats_row(s: &Value, no_trunc: bool) -> Value {
    let id = str_of(s, "id");
    let name = str_of(s, "name").trim_start_matches('/');
    let cpu = &s["cpu_stats"];
    let pre = &s["precpu_stats"];
    let cpu_delta = cpu["cpu_usage"]["total_usage"].as_f64().unwrap_or(0.0)
        - pre["cpu_usage"]["total_usage"].as_f64().unwrap_or(0.0);
    let sys_delta = cpu["system_cpu_usage"].as_f64().unwrap_or(0.0)
        - pre["system_cpu_usage"].as_f64().unwrap_or(0.0);
    let mut online = cpu["online_cpus"].as_f64().unwrap_or(0.0);
    if online == 0.0 {
        online = cpu["cpu_usage"]["percpu_usage"]
            .as_array()
            .map_or(0, |a| a.len()) as f64;
    }
    let cpu_pct = if sys_delta > 0.0 && cpu_delta > 0.0 {
        cpu_delta / sys_delta * online * 100.0
    } else {
        0.0
    };
    let mem = &s["memory_stats"];
    let usage = mem["usage"].as_f64().unwrap_or(0.0);
    let inactive = mem["stats"]["inactive_file"]
        .as_f64()
        .or(mem["stats"]["total_inactive_file"].as_f64())
        .unwrap_or(0.0);
    let used = if inactive < usage {
        usage - inactive
    } else {
        usage
    };
    let limit = mem["limit"].as_f64().unwrap_or(0.0);
    let mem_pct = if limit > 0.0 {
        used / limit * 100.0
    } else {
        0.0
    };
    let (mut rx, mut tx) = (0.0, 0.0);
    if let Some(nets) = s["networks"].as_object() {
        for n in nets.values() {
            rx += n["rx_bytes"].as_f64().unwrap_or(0.0);
            tx += n["tx_bytes"].as_f64().unwrap_or(0.0);
        }
    }
    let (mut rd, mut wr) = (0.0, 0.0);
    for e in s["blkio_stats"]["io_service_bytes_recursive"]
        .as_array()
        .into_iter()
        .flatten()
    {
        match str_of(e, "op").to_ascii_lowercase().as_str() {
            "read" => rd += e["value"].as_f64().unwrap_or(0.0),
            "write" => wr += e["value"].as_f64().unwrap_or(0.0),
            _ => {}
        }
    }
    json!({
        "ID": if no_trunc { id.to_string() } else { short_id(id) },
        "Container": if no_trunc { id.to_string() } else { short_id(id) },
        "Name": name,
        "CPUPerc": format!("{cpu_pct:.2}%"),
        "MemUsage": format!("{} / {}", bytes_size(used), bytes_size(limit)),
        "MemPerc": format!("{mem_pct:.2}%"),
        "NetIO": format!("{} / {}", human_size(rx), human_size(tx)),
        "BlockIO": format!("{} / {}", human_size(rd), human_size(wr)),
        "PIDs": s["pids_stats"]["current"].as_u64().unwrap_or(0).to_string(),
    })
}

/// Default `stats` table.
pub const STATS_TABLE: &str = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";

fn stats_headers() -> Value {
    json!({"ID": "CONTAINER ID", "Container": "CONTAINER", "Name": "NAME", "CPUPerc": "CPU %",
           "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
           "BlockIO": "BLOCK I/O", "PIDs": "PIDS"})
}

/// `orca stats` (`--no-stream`: one sample; else refreshed every 2 s).
pub async fn stats(client: &EngineClient, a: StatsArgs) -> Result<i32> {
    let targets = if a.containers.is_empty() {
        let q = if a.all { "?all=1" } else { "" };
        let list = client
            .json(Method::GET, &format!("/containers/json{q}"), None)
            .await?;
        list.as_array()
            .into_iter()
            .flatten()
            .map(|c| str_of(c, "Id").to_string())
            .collect()
    } else {
        a.containers.clone()
    };
    let f = OutputFormat::parse(a.format.as_deref(), STATS_TABLE);
    loop {
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for c in &targets {
            match client
                .json(
                    Method::GET,
                    &format!("/containers/{c}/stats?stream=0"),
                    None,
                )
                .await
            {
                Ok(s) => rows.push(stats_row(&s, a.no_trunc)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return finish_targets(errors);
        }
        if !a.no_stream && crate::terminal::stdout_is_tty() {
            print!("\x1b[2J\x1b[H");
        }
        print!("{}", f.render(&stats_headers(), &rows)?);
        std::io::stdout().flush()?;
        if a.no_stream {
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// `orca export`.
pub async fn export(client: &EngineClient, a: ExportArgs) -> Result<i32> {
    super::images::refuse_terminal_output(a.output.as_deref())?;
    let resp = client
        .call(
            Method::GET,
            &format!("/containers/{}/export", a.container),
            None,
        )
        .await?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout()),
    };
    let mut body = resp.into_body();
    while let Some(chunk) = crate::client::next_chunk(&mut body).await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(0)
}

/// Splits `CONTAINER:PATH` (a local path has no colon before its first slash).
fn split_container_path(s: &str) -> Option<(&str, &str)> {
    let (c, p) = s.split_once(':')?;
    if c.is_empty() || c.contains('/') || c.starts_with('.') {
        return None;
    }
    Some((c, p))
}

/// `orca cp`: container → local (unpack the archive) or local → container
/// (PUT an archive of the path). The destination of a copy into a
/// container must be an existing directory or a new name in one.
pub async fn cp(client: &EngineClient, a: CpArgs) -> Result<i32> {
    match (
        split_container_path(&a.source),
        split_container_path(&a.destination),
    ) {
        (Some((c, src)), None) => {
            let q = query_string(&[("path", src.to_string())]);
            let resp = client
                .call(Method::GET, &format!("/containers/{c}/archive{q}"), None)
                .await?;
            let mut body = resp.into_body();
            let mut archive = Vec::new();
            while let Some(chunk) = crate::client::next_chunk(&mut body).await? {
                archive.extend_from_slice(&chunk);
            }
            let dest = Path::new(&a.destination);
            if dest.is_dir() {
                tar::Archive::new(archive.as_slice()).unpack(dest)?;
            } else {
                // Unpack next to the destination, then give the top entry its name.
                let parent = dest
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let staging = parent.join(format!(".orca-cp-{}", std::process::id()));
                std::fs::create_dir_all(&staging)?;
                let result = (|| -> Result<()> {
                    tar::Archive::new(archive.as_slice()).unpack(&staging)?;
                    let top = std::fs::read_dir(&staging)?
                        .next()
                        .ok_or_else(|| CliError::Protocol("empty archive".into()))??;
                    std::fs::rename(top.path(), dest)?;
                    Ok(())
                })();
                let _ = std::fs::remove_dir_all(&staging);
                result?;
            }
            Ok(0)
        }
        (None, Some((c, dst))) => {
            let src = Path::new(&a.source);
            if !src.exists() {
                return Err(CliError::Status {
                    message: format!("lstat {}: no such file or directory", a.source),
                    code: 1,
                });
            }
            let q = query_string(&[("path", dst.to_string())]);
            let dir_exists = client
                .call(Method::HEAD, &format!("/containers/{c}/archive{q}"), None)
                .await
                .is_ok();
            let (target_dir, entry_name) = if dir_exists || dst.ends_with('/') {
                let base = src
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| ".".into());
                (dst.to_string(), base)
            } else {
                let p = Path::new(dst);
                (
                    p.parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "/".into()),
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            };
            let mut builder = tar::Builder::new(Vec::new());
            if src.is_dir() {
                builder.append_dir_all(&entry_name, src)?;
            } else {
                builder.append_path_with_name(src, &entry_name)?;
            }
            let archive = builder.into_inner()?;
            let q = query_string(&[("path", target_dir)]);
            client
                .call_with_bytes(
                    Method::PUT,
                    &format!("/containers/{c}/archive{q}"),
                    Bytes::from(archive),
                    "application/x-tar",
                )
                .await?;
            Ok(0)
        }
        _ => Err(CliError::Status {
            message: "must specify at least one container source".into(),
            code: 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_rows_and_table_like_docker() {
        let c = json!({"Id": "0123456789abcdef", "Names": ["/web"], "Image": "busybox",
                       "Command": "sh -c 'echo hello world'", "Created": 1000,
                       "Status": "Up 2 minutes", "State": "running", "Ports": []});
        let row = container_row(&c, false, 1125);
        assert_eq!(row["ID"], "0123456789ab");
        assert_eq!(row["Names"], "web");
        assert_eq!(row["Command"], "\"sh -c 'echo hello w…\"");
        assert_eq!(row["RunningFor"], "2 minutes ago");
        let f = OutputFormat::parse(None, PS_TABLE);
        let out = f.render(&container_headers(), &[row]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "CONTAINER ID   IMAGE     COMMAND                  CREATED         STATUS         PORTS     NAMES"
        );
        assert_eq!(
            lines[1],
            "0123456789ab   busybox   \"sh -c 'echo hello w…\"   2 minutes ago   Up 2 minutes             web"
        );
    }

    #[test]
    fn stats_row_computes_percentages() {
        let s = json!({"id": "0123456789abcdef", "name": "/web",
            "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000}, "system_cpu_usage": 20_000_000, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000}, "system_cpu_usage": 10_000_000},
            "memory_stats": {"usage": 3_145_728, "limit": 67_108_864, "stats": {"inactive_file": 1_048_576}},
            "pids_stats": {"current": 3}});
        let r = stats_row(&s, false);
        assert_eq!(r["CPUPerc"], "20.00%");
        assert_eq!(r["MemUsage"], "2MiB / 64MiB");
        assert_eq!(r["MemPerc"], "3.12%");
        assert_eq!(r["PIDs"], "3");
        assert_eq!(r["NetIO"], "0B / 0B");
        assert_eq!(r["Name"], "web");
    }

    #[test]
    fn inspect_json_uses_four_spaces() {
        assert_eq!(
            inspect_json_text(&[json!({"a": 1})]).unwrap(),
            "[\n    {\n        \"a\": 1\n    }\n]"
        );
        assert_eq!(inspect_json_text(&[]).unwrap(), "[]");
    }

    #[test]
    fn container_paths() {
        assert_eq!(
            split_container_path("web:/etc/hosts"),
            Some(("web", "/etc/hosts"))
        );
        assert_eq!(split_container_path("/tmp/a:b"), None);
        assert_eq!(split_container_path("./x:y"), None);
    }
}
