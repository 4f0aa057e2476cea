//! `orca volume create|ls|inspect|rm|prune`: docker's volume commands.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};

use crate::client::{encode_component, query_string, EngineClient};
use crate::error::{CliError, Result};
use crate::template::{OutputFormat, Template};

use super::{filters_json, finish_targets, str_of};

/// `orca volume …`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create(VolumeCreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(VolumeLsArgs),
    /// Display detailed information on one or more volumes
    Inspect(VolumeInspectArgs),
    /// Remove one or more volumes
    #[command(alias = "remove")]
    Rm(VolumeRmArgs),
    /// Remove unused local volumes
    Prune(VolumePruneArgs),
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Specify volume driver name
    #[arg(short = 'd', long = "driver", default_value = "local")]
    pub driver: String,
    /// Set metadata for a volume
    #[arg(long = "label")]
    pub label: Vec<String>,
    /// Set driver specific options
    #[arg(short = 'o', long = "opt")]
    pub opt: Vec<String>,
    /// Volume name
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct VolumeLsArgs {
    /// Only display volume names
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Provide filter values (e.g. "dangling=true")
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct VolumeInspectArgs {
    /// Format output using a custom template
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// VOLUME...
    #[arg(required = true)]
    pub volumes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VolumeRmArgs {
    /// Force the removal of one or more volumes
    #[arg(short = 'f', long)]
    pub force: bool,
    /// VOLUME...
    #[arg(required = true)]
    pub volumes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VolumePruneArgs {
    /// Remove all unused volumes, not just anonymous ones
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Provide filter values (e.g. "label=<label>")
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
}

fn key_values(flags: &[String]) -> BTreeMap<String, String> {
    flags
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Runs one volume command.
pub async fn run(client: &EngineClient, cmd: VolumeCommand) -> Result<i32> {
    match cmd {
        VolumeCommand::Create(a) => create(client, a).await,
        VolumeCommand::Ls(a) => ls(client, a).await,
        VolumeCommand::Inspect(a) => inspect(client, a).await,
        VolumeCommand::Rm(a) => rm(client, a).await,
        VolumeCommand::Prune(a) => prune(client, a).await,
    }
}

async fn create(client: &EngineClient, a: VolumeCreateArgs) -> Result<i32> {
    for o in &a.opt {
        if !o.contains('=') {
            return Err(CliError::Usage(format!(
                "invalid argument \"{o}\" for \"-o, --opt\" flag: bad format {o}"
            )));
        }
    }
    let body = json!({
        "Name": a.name.unwrap_or_default(),
        "Driver": a.driver,
        "DriverOpts": key_values(&a.opt),
        "Labels": key_values(&a.label),
    });
    let v = client
        .json(Method::POST, "/volumes/create", Some(&body))
        .await?;
    println!("{}", str_of(&v, "Name"));
    Ok(0)
}

async fn ls(client: &EngineClient, a: VolumeLsArgs) -> Result<i32> {
    let mut q = Vec::new();
    if let Some(f) = filters_json(&a.filter)? {
        q.push(("filters", f));
    }
    let v = client
        .json(Method::GET, &format!("/volumes{}", query_string(&q)), None)
        .await?;
    let mut vols = v["Volumes"].as_array().cloned().unwrap_or_default();
    vols.sort_by(|x, y| str_of(x, "Name").cmp(str_of(y, "Name")));
    if a.quiet {
        for v in &vols {
            println!("{}", str_of(v, "Name"));
        }
        return Ok(0);
    }
    let rows: Vec<Value> = vols
        .iter()
        .map(|v| {
            let labels = v["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            json!({
                "Name": v["Name"], "Driver": v["Driver"], "Scope": v["Scope"],
                "Mountpoint": v["Mountpoint"], "Labels": labels,
            })
        })
        .collect();
    let headers = json!({"Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                         "Mountpoint": "MOUNTPOINT", "Labels": "LABELS"});
    let f = OutputFormat::parse(a.format.as_deref(), "table {{.Driver}}\t{{.Name}}");
    print!("{}", f.render(&headers, &rows)?);
    Ok(0)
}

async fn inspect(client: &EngineClient, a: VolumeInspectArgs) -> Result<i32> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &a.volumes {
        match client
            .json(
                Method::GET,
                &format!("/volumes/{}", encode_component(name)),
                None,
            )
            .await
        {
            Ok(v) => found.push(v),
            Err(e) => errors.push(e.to_string()),
        }
    }
    match a.format.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => {
            let t = Template::parse(&f.replace("\\t", "\t").replace("\\n", "\n"))?;
            for v in &found {
                println!("{}", t.render(v)?);
            }
        }
        None => {
            let s = serde_json::to_string_pretty(&Value::Array(found))?;
            println!("{s}");
        }
    }
    finish_targets(errors)
}

async fn rm(client: &EngineClient, a: VolumeRmArgs) -> Result<i32> {
    let mut errors = Vec::new();
    for name in &a.volumes {
        let mut q = Vec::new();
        if a.force {
            q.push(("force", "1".to_string()));
        }
        let path = format!("/volumes/{}{}", encode_component(name), query_string(&q));
        match client.call(Method::DELETE, &path, None).await {
            Ok(_) => println!("{name}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

async fn prune(client: &EngineClient, a: VolumePruneArgs) -> Result<i32> {
    if !a.force {
        eprint!(
            "WARNING! This will remove {} local volumes not used by at least one container.\n\
             Are you sure you want to continue? [y/N] ",
            if a.all { "all" } else { "anonymous" }
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            return Ok(0);
        }
    }
    let mut filters = a.filter.clone();
    if a.all {
        filters.push("all=true".into());
    }
    let mut q = Vec::new();
    if let Some(f) = filters_json(&filters)? {
        q.push(("filters", f));
    }
    let v = client
        .json(
            Method::POST,
            &format!("/volumes/prune{}", query_string(&q)),
            None,
        )
        .await?;
    if let Some(names) = v["VolumesDeleted"].as_array().filter(|a| !a.is_empty()) {
        println!("Deleted Volumes:");
        for n in names.iter().filter_map(Value::as_str) {
            println!("{n}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        crate::humanize::human_size(v["SpaceReclaimed"].as_i64().unwrap_or(0) as f64)
    );
    Ok(0)
}
