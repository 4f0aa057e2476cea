//! run, create and start: the container config from flags, create with
//! pull-on-404, attach before start, wait, exit with the container's code.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::args::{RunArgs, StartArgs};
use crate::client::{query_string, EngineClient};
use crate::error::{CliError, Result, EXIT_CANNOT_EXECUTE, EXIT_DAEMON_ERROR, EXIT_NOT_FOUND};
use crate::humanize::parse_ram_bytes;
use crate::reference::ImageReference;
use crate::streams::{pump_attach, spawn_stdin_reader};
use crate::terminal::{stdin_is_tty, terminal_size, RawModeGuard};

use super::images::{pull_image, ProgressOutput};

/// Docker's `toStatusError`: the exit code for a failed start.
pub fn start_error_exit_code(message: &str) -> i32 {
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
        || message.contains("system cannot find the file specified")
    {
        EXIT_NOT_FOUND
    } else if message.contains("permission denied")
        || message.contains("cannot execute binary file")
    {
        EXIT_CANNOT_EXECUTE
    } else {
        EXIT_DAEMON_ERROR
    }
}

fn usage(msg: String) -> CliError {
    CliError::Usage(msg)
}

/// Docker's run/create error form: `orca: MSG` + help hint, with `code`.
fn run_error(cmd: &str, e: CliError, code: i32) -> CliError {
    CliError::Status {
        message: format!("orca: {e}\n\nRun 'orca {cmd} --help' for more information"),
        code,
    }
}

/// Parses `--restart` (no, always, unless-stopped, on-failure[:N]).
pub fn restart_policy(s: &str) -> Result<Value> {
    let (name, count) = match s.split_once(':') {
        Some((n, c)) => (
            n,
            c.parse::<i64>().map_err(|_| {
                usage(format!(
                    "invalid restart policy format: maximum retry count must be an integer: {s}"
                ))
            })?,
        ),
        None => (s, 0),
    };
    match name {
        "no" | "always" | "unless-stopped" | "on-failure" => {
            if count != 0 && name != "on-failure" {
                return Err(usage(
                    "invalid restart policy format: maximum retry count can only be used with 'on-failure'"
                        .into(),
                ));
            }
            Ok(json!({"Name": name, "MaximumRetryCount": count}))
        }
        _ => Err(usage(format!("invalid restart policy format: {s}"))),
    }
}

/// The `/containers/create` body for `run`/`create` flags. `lookup_env`
/// resolves `-e NAME` without a value from the local environment.
/// `-p [ip:][hostPort:]containerPort[/proto]` → (PortBindings, ExposedPorts).
pub fn publish_specs(specs: &[String]) -> Result<(Map<String, Value>, Map<String, Value>)> {
    let mut bindings = Map::new();
    let mut exposed = Map::new();
    for p in specs {
        let (rest, proto) = p.rsplit_once('/').unwrap_or((p.as_str(), "tcp"));
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, hp, cp) = match parts.as_slice() {
            [cp] => ("", "", *cp),
            [hp, cp] => ("", *hp, *cp),
            [ip, hp, cp] => (*ip, *hp, *cp),
            _ => {
                return Err(usage(format!(
                    "invalid publish spec: {p} (IPv6 host addresses are not supported)"
                )))
            }
        };
        if cp.is_empty() || cp.split('-').any(|x| x.parse::<u16>().is_err()) {
            return Err(usage(format!("invalid containerPort: {cp}")));
        }
        if !hp.is_empty() && hp.split('-').any(|x| x.parse::<u16>().is_err()) {
            return Err(usage(format!("invalid hostPort: {hp}")));
        }
        let key = format!("{cp}/{proto}");
        exposed.insert(key.clone(), json!({}));
        let b = json!({"HostIp": ip, "HostPort": hp});
        match bindings.get_mut(&key) {
            Some(Value::Array(a)) => a.push(b),
            _ => {
                bindings.insert(key, json!([b]));
            }
        }
    }
    Ok((bindings, exposed))
}

/// Docker's device permission check: 1–3 of `r`, `w`, `m`, none twice.
fn valid_device_mode(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 3
        && m.chars().all(|c| "rwm".contains(c))
        && m.chars()
            .enumerate()
            .all(|(i, c)| !m[i + c.len_utf8()..].contains(c))
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]` as a HostConfig.Devices entry,
/// checked and split like the docker CLI does.
pub fn parse_device(d: &str) -> Result<Value> {
    let bad = || {
        usage(format!(
            "invalid argument \"{d}\" for \"--device\" flag: bad format for path: {d}"
        ))
    };
    if d.matches(':').count() > 2 {
        return Err(bad());
    }
    let parts: Vec<&str> = d.split(':').collect();
    if parts[0].is_empty() {
        return Err(bad());
    }
    let (src, dst, perms) = match parts.as_slice() {
        [s] => (*s, *s, "rwm"),
        [s, m] if valid_device_mode(m) => (*s, *s, *m),
        [s, c] => (*s, *c, "rwm"),
        [s, c, m] => {
            if !valid_device_mode(m) {
                return Err(usage(format!(
                    "invalid argument \"{d}\" for \"--device\" flag: bad mode specified: {m}"
                )));
            }
            (*s, *c, *m)
        }
        _ => return Err(bad()),
    };
    if !dst.starts_with('/') {
        return Err(usage(format!(
            "invalid argument \"{d}\" for \"--device\" flag: {dst} is not an absolute path"
        )));
    }
    Ok(json!({"PathOnHost": src, "PathInContainer": dst, "CgroupPermissions": perms}))
}

/// `--device-cgroup-rule "TYPE MAJOR:MINOR ACCESS"` (type a, b or c; `*`
/// for any number; access 1–3 of r, w, m), as the docker CLI checks it.
pub fn check_cgroup_rule(r: &str) -> Result<()> {
    let bad = || {
        usage(format!(
            "invalid argument \"{r}\" for \"--device-cgroup-rule\" flag: invalid device cgroup format '{r}'"
        ))
    };
    let parts: Vec<&str> = r.split(' ').collect();
    let [t, nums, acc] = parts.as_slice() else {
        return Err(bad());
    };
    let num_ok = |s: &str| s == "*" || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let ok = ["a", "b", "c"].contains(t)
        && nums
            .split_once(':')
            .is_some_and(|(ma, mi)| num_ok(ma) && num_ok(mi))
        && !acc.is_empty()
        && acc.len() <= 3
        && acc.chars().all(|c| "rwm".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

pub fn container_config(a: &RunArgs, lookup_env: &dyn Fn(&str) -> Option<String>) -> Result<Value> {
    if a.rm && a.restart.as_deref().is_some_and(|r| r != "no") {
        return Err(usage("Conflicting options: --restart and --rm".into()));
    }
    let mut env = Vec::new();
    for e in &a.env {
        if e.contains('=') {
            env.push(e.clone());
        } else if let Some(v) = lookup_env(e) {
            env.push(format!("{e}={v}"));
        }
    }
    let mut binds = Vec::new();
    let mut volumes = Map::new();
    for v in &a.volume {
        if v.contains(':') {
            let src = v.split(':').next().unwrap_or("");
            if src.is_empty() {
                return Err(usage(format!("invalid volume specification: '{v}'")));
            }
            binds.push(Value::String(v.clone()));
        } else if v.starts_with('/') {
            volumes.insert(v.clone(), json!({}));
        } else {
            return Err(usage(format!(
                "invalid volume specification: '{v}': invalid mount config for type \"volume\": invalid mount path: '{v}' mount path must be absolute"
            )));
        }
    }
    let mut labels = BTreeMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let mut host = json!({
        "Binds": binds,
        "AutoRemove": a.rm,
        "Privileged": a.privileged,
        "ReadonlyRootfs": a.read_only,
    });
    if !a.volumes_from.is_empty() {
        host["VolumesFrom"] = json!(a.volumes_from);
    }
    if a.init {
        host["Init"] = json!(true);
    }
    if !a.sysctl.is_empty() {
        let mut m = Map::new();
        for kv in &a.sysctl {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                usage(format!(
                    "invalid argument \"{kv}\" for \"--sysctl\" flag: sysctl '{kv}' is not allowed"
                ))
            })?;
            m.insert(k.to_string(), json!(v));
        }
        host["Sysctls"] = Value::Object(m);
    }
    for (key, list) in [
        ("ExtraHosts", &a.add_host),
        ("Dns", &a.dns),
        ("DnsSearch", &a.dns_search),
        ("DnsOptions", &a.dns_option),
    ] {
        if !list.is_empty() {
            host[key] = json!(list);
        }
    }
    if !a.cap_add.is_empty() {
        host["CapAdd"] = json!(a.cap_add);
    }
    if !a.cap_drop.is_empty() {
        host["CapDrop"] = json!(a.cap_drop);
    }
    if !a.device.is_empty() {
        let devs = a
            .device
            .iter()
            .map(|d| parse_device(d))
            .collect::<Result<Vec<_>>>()?;
        host["Devices"] = json!(devs);
    }
    if !a.device_cgroup_rule.is_empty() {
        for r in &a.device_cgroup_rule {
            check_cgroup_rule(r)?;
        }
        host["DeviceCgroupRules"] = json!(a.device_cgroup_rule);
    }
    if !a.group_add.is_empty() {
        host["GroupAdd"] = json!(a.group_add);
    }
    if let Some(m) = &a.memory {
        let bytes = parse_ram_bytes(m).map_err(|e| {
            usage(format!(
                "invalid argument \"{m}\" for \"-m, --memory\" flag: {e}"
            ))
        })?;
        host["Memory"] = json!(bytes);
    }
    if let Some(c) = a.cpus {
        if c < 0.0 {
            return Err(usage(format!(
                "invalid argument \"{c}\" for \"--cpus\" flag: range is 0 to N"
            )));
        }
        host["NanoCpus"] = json!((c * 1e9).round() as i64);
    }
    if let Some(s) = &a.cpuset_cpus {
        host["CpusetCpus"] = json!(s);
    }
    if let Some(p) = a.pids_limit {
        host["PidsLimit"] = json!(p);
    }
    if let Some(r) = &a.restart {
        host["RestartPolicy"] = restart_policy(r)?;
    }
    let (bindings, mut exposed) = publish_specs(&a.publish)?;
    for e in &a.expose {
        let key = if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        };
        exposed.insert(key, json!({}));
    }
    if !bindings.is_empty() {
        host["PortBindings"] = Value::Object(bindings);
    }
    if a.publish_all {
        host["PublishAllPorts"] = json!(true);
    }
    if let Some(n) = &a.network {
        host["NetworkMode"] = json!(n);
    }
    let attached = !a.detach;
    let mut cfg = json!({
        "Image": a.image,
        "Tty": a.tty,
        "OpenStdin": a.interactive,
        "StdinOnce": a.interactive && attached,
        "AttachStdin": a.interactive && attached,
        "AttachStdout": attached,
        "AttachStderr": attached,
        "Env": env,
        "Labels": labels,
        "HostConfig": host,
    });
    if !exposed.is_empty() {
        cfg["ExposedPorts"] = Value::Object(exposed);
    }
    if !a.command.is_empty() {
        cfg["Cmd"] = json!(a.command);
    }
    if let Some(ep) = &a.entrypoint {
        cfg["Entrypoint"] = json!([ep]);
    }
    if let Some(w) = &a.workdir {
        cfg["WorkingDir"] = json!(w);
    }
    if let Some(u) = &a.user {
        cfg["User"] = json!(u);
    }
    if let Some(h) = &a.hostname {
        cfg["Hostname"] = json!(h);
    }
    if !volumes.is_empty() {
        cfg["Volumes"] = Value::Object(volumes);
    }
    if let Some(s) = &a.stop_signal {
        cfg["StopSignal"] = json!(s);
    }
    if let Some(t) = a.stop_timeout {
        cfg["StopTimeout"] = json!(t);
    }
    Ok(cfg)
}

async fn create_once(client: &EngineClient, cfg: &Value, a: &RunArgs) -> Result<Value> {
    let mut q = Vec::new();
    if let Some(n) = &a.name {
        q.push(("name", n.clone()));
    }
    if let Some(p) = &a.platform {
        q.push(("platform", p.clone()));
    }
    client
        .json(
            Method::POST,
            &format!("/containers/create{}", query_string(&q)),
            Some(cfg),
        )
        .await
}

/// Creates the container, pulling the image on "No such image" (as docker).
async fn create_container(client: &EngineClient, cfg: &Value, a: &RunArgs) -> Result<String> {
    let reference = ImageReference::parse(&a.image).map_err(usage)?;
    if a.pull == "always" {
        pull_image(
            client,
            &reference,
            ProgressOutput::Stderr,
            a.platform.as_deref(),
        )
        .await?;
    }
    let created = match create_once(client, cfg, a).await {
        Err(CliError::Daemon {
            status: 404,
            message,
        }) if message.contains("No such image") && a.pull != "never" => {
            eprintln!("Unable to find image '{}' locally", reference.familiar());
            pull_image(
                client,
                &reference,
                ProgressOutput::Stderr,
                a.platform.as_deref(),
            )
            .await?;
            create_once(client, cfg, a).await?
        }
        other => other?,
    };
    for w in created["Warnings"].as_array().into_iter().flatten() {
        if let Some(w) = w.as_str() {
            eprintln!("WARNING: {w}");
        }
    }
    created["Id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| CliError::Protocol(format!("create returned no Id: {created}")))
}

/// Sends the wait request now; its body (the exit code) is read later.
async fn start_waiting(
    client: &EngineClient,
    id: &str,
    condition: &str,
) -> Result<JoinHandle<Result<i32>>> {
    let resp = client
        .call(
            Method::POST,
            &format!(
                "/containers/{id}/wait{}",
                query_string(&[("condition", condition.into())])
            ),
            None,
        )
        .await?;
    Ok(tokio::spawn(async move {
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes)?;
        if let Some(m) = v["Error"]["Message"].as_str().filter(|m| !m.is_empty()) {
            return Err(CliError::Status {
                message: m.to_string(),
                code: EXIT_DAEMON_ERROR,
            });
        }
        Ok(v["StatusCode"].as_i64().unwrap_or(EXIT_DAEMON_ERROR as i64) as i32)
    }))
}

/// Resizes the container's (or exec's) TTY now and on every SIGWINCH.
pub fn spawn_resize_watcher(client: &EngineClient, resize_path: String) -> JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        let resize = |client: EngineClient, path: String| async move {
            if let Some((h, w)) = terminal_size() {
                let q = query_string(&[("h", h.to_string()), ("w", w.to_string())]);
                if let Err(e) = client.call(Method::POST, &format!("{path}{q}"), None).await {
                    debug!("resize: {e}");
                }
            }
        };
        resize(client.clone(), resize_path.clone()).await;
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            resize(client.clone(), resize_path.clone()).await;
        }
    })
}

/// Forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the container (docker's --sig-proxy).
fn spawn_signal_proxy(client: &EngineClient, id: &str) -> JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let client = client.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let kinds = [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::quit(), "SIGQUIT"),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(8);
        for (kind, name) in kinds {
            let Ok(mut s) = signal(kind) else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(name).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        while let Some(name) = rx.recv().await {
            let q = query_string(&[("signal", name.to_string())]);
            if let Err(e) = client
                .call(Method::POST, &format!("/containers/{id}/kill{q}"), None)
                .await
            {
                debug!("forwarding {name}: {e}");
            }
        }
    })
}

/// Attach query for a container.
fn attach_path(id: &str, stdin: bool) -> String {
    let q = query_string(&[
        ("stream", "1".into()),
        ("stdin", if stdin { "1" } else { "0" }.into()),
        ("stdout", "1".into()),
        ("stderr", "1".into()),
    ]);
    format!("/containers/{id}/attach{q}")
}

/// `orca run` (or `orca create` with `create_only`).
pub async fn run(client: &EngineClient, a: RunArgs, create_only: bool) -> Result<i32> {
    let cmd = if create_only { "create" } else { "run" };
    if a.interactive && a.tty && !a.detach && !create_only && !stdin_is_tty() {
        return Err(CliError::Status {
            message: "the input device is not a TTY".into(),
            code: 1,
        });
    }
    let cfg = container_config(&a, &|k| std::env::var(k).ok())
        .map_err(|e| run_error(cmd, e, EXIT_DAEMON_ERROR))?;
    let id = create_container(client, &cfg, &a)
        .await
        .map_err(|e| run_error(cmd, e, EXIT_DAEMON_ERROR))?;
    if create_only {
        println!("{id}");
        return Ok(0);
    }
    if a.detach {
        client
            .call(Method::POST, &format!("/containers/{id}/start"), None)
            .await
            .map_err(|e| {
                let code = start_error_exit_code(&e.to_string());
                run_error(cmd, e, code)
            })?;
        println!("{id}");
        return Ok(0);
    }
    let (output, raw) = client
        .hijack(Method::POST, &attach_path(&id, a.interactive), None)
        .await
        .map_err(|e| run_error(cmd, e, EXIT_DAEMON_ERROR))?;
    let condition = if a.rm { "removed" } else { "next-exit" };
    let waiter = start_waiting(client, &id, condition)
        .await
        .map_err(|e| run_error(cmd, e, EXIT_DAEMON_ERROR))?;
    let raw_mode = if a.tty && a.interactive && stdin_is_tty() {
        Some(RawModeGuard::enable()?)
    } else {
        None
    };
    if let Err(e) = client
        .call(Method::POST, &format!("/containers/{id}/start"), None)
        .await
    {
        drop(raw_mode);
        waiter.abort();
        let code = start_error_exit_code(&e.to_string());
        return Err(run_error(cmd, e, code));
    }
    let resize = (a.tty && crate::terminal::stdout_is_tty())
        .then(|| spawn_resize_watcher(client, format!("/containers/{id}/resize")));
    let proxy = (!a.tty && a.sig_proxy).then(|| spawn_signal_proxy(client, &id));
    let stdin = a.interactive.then(spawn_stdin_reader);
    let pumped = pump_attach(output, raw || a.tty, stdin).await;
    drop(raw_mode);
    if let Some(t) = resize {
        t.abort();
    }
    if let Some(t) = proxy {
        t.abort();
    }
    if let Err(e) = pumped {
        debug!("attach stream: {e}");
    }
    match waiter.await {
        Ok(r) => r,
        Err(e) => Err(CliError::Protocol(format!("wait task: {e}"))),
    }
}

/// `orca start [-a] [-i]`.
pub async fn start(client: &EngineClient, a: StartArgs) -> Result<i32> {
    if !a.attach && !a.interactive {
        let mut errors = Vec::new();
        for c in &a.containers {
            match client
                .call(Method::POST, &format!("/containers/{c}/start"), None)
                .await
            {
                Ok(_) => println!("{c}"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            errors
                .push("Error: failed to start containers: ".to_string() + &a.containers.join(", "));
        }
        return super::finish_targets(errors);
    }
    if a.containers.len() > 1 {
        return Err(CliError::Status {
            message: "you cannot start and attach multiple containers at once".into(),
            code: 1,
        });
    }
    let c = &a.containers[0];
    let info = client
        .json(Method::GET, &format!("/containers/{c}/json"), None)
        .await?;
    let id = info["Id"].as_str().unwrap_or(c).to_string();
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let stdin = a.interactive && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    let (output, raw) = client
        .hijack(Method::POST, &attach_path(&id, stdin), None)
        .await?;
    let waiter = start_waiting(client, &id, "next-exit").await?;
    let raw_mode = if tty && stdin && stdin_is_tty() {
        Some(RawModeGuard::enable()?)
    } else {
        None
    };
    if let Err(e) = client
        .call(Method::POST, &format!("/containers/{id}/start"), None)
        .await
    {
        drop(raw_mode);
        waiter.abort();
        return Err(e);
    }
    let resize = (tty && crate::terminal::stdout_is_tty())
        .then(|| spawn_resize_watcher(client, format!("/containers/{id}/resize")));
    let proxy = (!tty).then(|| spawn_signal_proxy(client, &id));
    let input = stdin.then(spawn_stdin_reader);
    let pumped = pump_attach(output, raw || tty, input).await;
    drop(raw_mode);
    for t in [resize, proxy].into_iter().flatten() {
        t.abort();
    }
    if let Err(e) = pumped {
        debug!("attach stream: {e}");
    }
    match waiter.await {
        Ok(r) => r,
        Err(e) => Err(CliError::Protocol(format!("wait task: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn publish_flags() {
        let (b, e) = publish_specs(&[
            "127.0.0.1:8080:80".to_string(),
            "53/udp".to_string(),
            "9000:9000".to_string(),
        ])
        .unwrap();
        assert_eq!(
            b["80/tcp"],
            json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
        );
        assert_eq!(b["53/udp"], json!([{"HostIp": "", "HostPort": ""}]));
        assert_eq!(b["9000/tcp"][0]["HostPort"], "9000");
        assert!(e.contains_key("53/udp"));
        assert!(publish_specs(&["x:80".to_string()]).is_err());
        assert!(publish_specs(&["1:2:3:4".to_string()]).is_err());
    }

    #[test]
    fn device_group_flags() {
        let a = run_args(&[
            "--device",
            "/dev/null:/dev/mynull:rw",
            "--device",
            "/dev/zero:r",
            "--device",
            "/dev/full",
            "--device-cgroup-rule",
            "c 1:* rwm",
            "--group-add",
            "1234",
            "--group-add",
            "audio",
            "busybox",
        ]);
        let v = container_config(&a, &|_| None).unwrap();
        let h = &v["HostConfig"];
        assert_eq!(
            h["Devices"],
            json!([
                {"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "rw"},
                {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zero", "CgroupPermissions": "r"},
                {"PathOnHost": "/dev/full", "PathInContainer": "/dev/full", "CgroupPermissions": "rwm"},
            ])
        );
        assert_eq!(h["DeviceCgroupRules"], json!(["c 1:* rwm"]));
        assert_eq!(h["GroupAdd"], json!(["1234", "audio"]));
        for bad in ["/dev/a:/b:rx", "/dev/a:rel", ":/b", "/a:/b:r:w"] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
        assert!(!valid_device_mode("rr"));
        for bad in ["x 1:2 r", "c 1:2", "c 1-2 r", "c 1:2 rwx", "c a:2 r"] {
            assert!(check_cgroup_rule(bad).is_err(), "{bad}");
        }
        assert!(check_cgroup_rule("a *:* m").is_ok());
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["orca", "run"];
        full.extend_from_slice(argv);
        match crate::args::Cli::parse_from(full).command {
            Some(crate::args::Command::Run(a)) => a,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn config_from_flags() {
        let a = run_args(&[
            "-d",
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "HOME_X",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "-m",
            "64m",
            "--cpus",
            "0.5",
            "--cpuset-cpus",
            "0",
            "--pids-limit",
            "20",
            "--restart",
            "on-failure:3",
            "-v",
            "/src:/dst:ro",
            "-v",
            "/anon",
            "busybox",
            "sh",
            "-c",
            "echo hi",
        ]);
        let cfg =
            container_config(&a, &|k| (k == "HOME_X").then(|| "/home/x".to_string())).unwrap();
        assert_eq!(cfg["Image"], "busybox");
        assert_eq!(cfg["Cmd"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(cfg["Env"], json!(["A=1", "HOME_X=/home/x"]));
        assert_eq!(cfg["WorkingDir"], "/tmp");
        assert_eq!(cfg["User"], "1000:1000");
        assert_eq!(cfg["AttachStdout"], false);
        let h = &cfg["HostConfig"];
        assert_eq!(h["Memory"], 64 << 20);
        assert_eq!(h["NanoCpus"], 500_000_000);
        assert_eq!(h["CpusetCpus"], "0");
        assert_eq!(h["PidsLimit"], 20);
        assert_eq!(
            h["RestartPolicy"],
            json!({"Name": "on-failure", "MaximumRetryCount": 3})
        );
        assert_eq!(h["Binds"], json!(["/src:/dst:ro"]));
        assert_eq!(cfg["Volumes"], json!({"/anon": {}}));

        let a = run_args(&["-i", "--rm", "--entrypoint", "cat", "busybox"]);
        let cfg = container_config(&a, &|_| None).unwrap();
        assert_eq!(cfg["Entrypoint"], json!(["cat"]));
        assert!(cfg.get("Cmd").is_none());
        assert_eq!(cfg["OpenStdin"], true);
        assert_eq!(cfg["StdinOnce"], true);
        assert_eq!(cfg["HostConfig"]["AutoRemove"], true);

        let a = run_args(&["--rm", "--restart", "always", "busybox"]);
        assert!(container_config(&a, &|_| None).is_err());
        let a = run_args(&["-m", "lots", "busybox"]);
        assert!(container_config(&a, &|_| None).is_err());
    }

    #[test]
    fn start_errors_map_to_docker_exit_codes() {
        assert_eq!(
            start_error_exit_code("exec: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(
            start_error_exit_code("open /x: no such file or directory"),
            127
        );
        assert_eq!(start_error_exit_code("exec /etc: permission denied"), 126);
        assert_eq!(start_error_exit_code("cgroup trouble"), 125);
        assert!(restart_policy("sometimes").is_err());
        assert!(restart_policy("always:3").is_err());
    }
}
