//! pull, images, rmi, tag, save, load, import.

use std::io::{Read, Write};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use crate::args::{ImagesArgs, ImportArgs, LoadArgs, PullArgs, RmiArgs, SaveArgs, TagArgs};
use crate::client::{next_chunk, query_string, EngineClient, JsonStreamDecoder};
use crate::error::{CliError, Result};
use crate::humanize::{ago, human_size};
use crate::progress::ProgressRenderer;
use crate::reference::{split_repo_tag, ImageReference};
use crate::template::OutputFormat;
use crate::terminal::{stderr_is_tty, stdout_is_tty};

use super::{finish_targets, go_time, now_unix, short_id};

/// Where pull progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressOutput {
    Stdout,
    /// `run`/`create` pull to stderr.
    Stderr,
    Quiet,
}

/// Renders a JSON progress stream from `body` until it ends.
async fn render_progress(mut body: hyper::body::Incoming, to: ProgressOutput) -> Result<()> {
    let mut renderer = match to {
        ProgressOutput::Stdout if stdout_is_tty() => ProgressRenderer::bars(false),
        ProgressOutput::Stderr if stderr_is_tty() => ProgressRenderer::bars(true),
        ProgressOutput::Stdout => ProgressRenderer::plain(Box::new(std::io::stdout())),
        ProgressOutput::Stderr => ProgressRenderer::plain(Box::new(std::io::stderr())),
        ProgressOutput::Quiet => ProgressRenderer::plain(Box::new(std::io::sink())),
    };
    let mut decoder = JsonStreamDecoder::default();
    let result = async {
        while let Some(chunk) = next_chunk(&mut body).await? {
            for msg in decoder.push(&chunk)? {
                renderer.handle(&msg)?;
            }
        }
        Ok(())
    }
    .await;
    renderer.finish();
    result
}

/// Pulls `image` (POST /images/create), rendering progress.
pub async fn pull_image(
    client: &EngineClient,
    r: &ImageReference,
    to: ProgressOutput,
    platform: Option<&str>,
) -> Result<()> {
    let mut q = vec![("fromImage", r.name.clone()), ("tag", r.api_tag())];
    if let Some(p) = platform {
        q.push(("platform", p.to_string()));
    }
    let resp = client
        .call(
            Method::POST,
            &format!("/images/create{}", query_string(&q)),
            Some(&json!({})),
        )
        .await?;
    render_progress(resp.into_body(), to).await
}

/// `orca pull`.
pub async fn pull(client: &EngineClient, a: PullArgs) -> Result<i32> {
    let r = ImageReference::parse(&a.image).map_err(CliError::Usage)?;
    if a.all_tags {
        return Err(CliError::Usage(
            "orca pull --all-tags is not supported".into(),
        ));
    }
    if r.is_name_only() && !a.quiet {
        println!("Using default tag: latest");
    }
    let to = if a.quiet {
        ProgressOutput::Quiet
    } else {
        ProgressOutput::Stdout
    };
    pull_image(client, &r, to, a.platform.as_deref()).await?;
    println!("{}", r.canonical());
    Ok(0)
}

/// Rows of `docker images` (one per tag) for templates.
pub fn image_rows(list: &Value, no_trunc: bool, now: i64) -> Vec<Value> {
    let mut rows = Vec::new();
    for img in list.as_array().into_iter().flatten() {
        let id = img["Id"].as_str().unwrap_or("");
        let id_text = if no_trunc {
            id.to_string()
        } else {
            short_id(id)
        };
        let created = img["Created"].as_i64().unwrap_or(0);
        let size = img["Size"].as_i64().unwrap_or(0);
        let digests: Vec<&str> = img["RepoDigests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let digest_of = |repo: &str| {
            digests
                .iter()
                .find_map(|d| {
                    d.split_once('@')
                        .filter(|(r, _)| *r == repo)
                        .map(|(_, d)| d.to_string())
                })
                .unwrap_or_else(|| "<none>".into())
        };
        let mut tags: Vec<(String, String)> = img["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|t| *t != "<none>:<none>")
            .map(|t| {
                let (r, tag) = split_repo_tag(t);
                (r, tag)
            })
            .collect();
        if tags.is_empty() {
            let repo = digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map(|(r, _)| r.to_string())
                .unwrap_or_else(|| "<none>".into());
            tags.push((repo, "<none>".into()));
        }
        for (repo, tag) in tags {
            rows.push(json!({
                "Repository": repo.clone(),
                "Tag": tag,
                "ID": id_text.clone(),
                "Digest": digest_of(&repo),
                "CreatedSince": ago(created, now),
                "CreatedAt": go_time(created),
                "Size": human_size(size as f64),
                "Containers": img["Containers"].as_i64().map(|c| c.to_string()).unwrap_or_else(|| "N/A".into()),
            }));
        }
    }
    rows
}

/// Header names of the image columns.
pub fn image_headers() -> Value {
    json!({"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "Digest": "DIGEST",
           "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE", "Containers": "CONTAINERS"})
}

fn matches_repository(row: &Value, want: &str) -> bool {
    let (repo, tag) = match want.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        Some((r, t)) => (r, Some(t)),
        None => (want, None),
    };
    row["Repository"] == repo && tag.map_or(true, |t| row["Tag"] == t)
}

/// `orca images`.
pub async fn images(client: &EngineClient, a: ImagesArgs) -> Result<i32> {
    let mut q = Vec::new();
    if a.all {
        q.push(("all", "1".to_string()));
    }
    if a.digests {
        q.push(("digests", "1".to_string()));
    }
    if let Some(f) = super::filters_json(&a.filter)? {
        q.push(("filters", f));
    }
    let list = client
        .json(
            Method::GET,
            &format!("/images/json{}", query_string(&q)),
            None,
        )
        .await?;
    let mut rows = image_rows(&list, a.no_trunc, now_unix());
    if let Some(want) = &a.repository {
        rows.retain(|r| matches_repository(r, want));
    }
    if a.quiet {
        let mut seen = Vec::new();
        for r in &rows {
            let id = r["ID"].as_str().unwrap_or("").to_string();
            if !seen.contains(&id) {
                println!("{id}");
                seen.push(id);
            }
        }
        return Ok(0);
    }
    let default = if a.digests {
        "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    } else {
        "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    };
    let f = OutputFormat::parse(a.format.as_deref(), default);
    print!("{}", f.render(&image_headers(), &rows)?);
    Ok(0)
}

/// `orca rmi`.
pub async fn rmi(client: &EngineClient, a: RmiArgs) -> Result<i32> {
    let mut errors = Vec::new();
    for name in &a.images {
        let mut q = Vec::new();
        if a.force {
            q.push(("force", "1".to_string()));
        }
        if a.no_prune {
            q.push(("noprune", "1".to_string()));
        }
        let path = format!("/images/{name}{}", query_string(&q));
        match client.json(Method::DELETE, &path, None).await {
            Ok(items) => {
                for it in items.as_array().into_iter().flatten() {
                    if let Some(u) = it["Untagged"].as_str() {
                        println!("Untagged: {u}");
                    }
                    if let Some(d) = it["Deleted"].as_str() {
                        println!("Deleted: {d}");
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_targets(errors)
}

/// `orca tag`.
pub async fn tag(client: &EngineClient, a: TagArgs) -> Result<i32> {
    ImageReference::parse(&a.target).map_err(CliError::Usage)?;
    let (repo, tag) = split_repo_tag(&a.target);
    let q = query_string(&[("repo", repo), ("tag", tag)]);
    client
        .call(Method::POST, &format!("/images/{}/tag{q}", a.source), None)
        .await?;
    Ok(0)
}

/// Streams a response body to `-o FILE` or stdout (never to a terminal).
async fn body_to_output(
    resp: http::Response<hyper::body::Incoming>,
    output: Option<&str>,
) -> Result<()> {
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout()),
    };
    let mut body = resp.into_body();
    while let Some(chunk) = next_chunk(&mut body).await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(())
}

/// Refuses to write an archive to a terminal, as docker does.
pub fn refuse_terminal_output(output: Option<&str>) -> Result<()> {
    if output.is_none() && stdout_is_tty() {
        return Err(CliError::Status {
            message: "cowardly refusing to save to a terminal. Use the -o flag or redirect".into(),
            code: 1,
        });
    }
    Ok(())
}

/// `orca save`.
pub async fn save(client: &EngineClient, a: SaveArgs) -> Result<i32> {
    refuse_terminal_output(a.output.as_deref())?;
    let q: Vec<(&str, String)> = a.images.iter().map(|i| ("names", i.clone())).collect();
    let resp = client
        .call(
            Method::GET,
            &format!("/images/get{}", query_string(&q)),
            None,
        )
        .await?;
    body_to_output(resp, a.output.as_deref()).await?;
    Ok(0)
}

fn read_input(path: Option<&str>) -> Result<Bytes> {
    let mut buf = Vec::new();
    match path {
        Some("-") | None => {
            std::io::stdin().read_to_end(&mut buf)?;
        }
        Some(p) => {
            std::fs::File::open(p)?.read_to_end(&mut buf)?;
        }
    }
    Ok(Bytes::from(buf))
}

/// `orca load`.
pub async fn load(client: &EngineClient, a: LoadArgs) -> Result<i32> {
    if a.input.is_none() && crate::terminal::stdin_is_tty() {
        return Err(CliError::Status {
            message: "requested load from stdin, but stdin is empty".into(),
            code: 1,
        });
    }
    let body = read_input(a.input.as_deref())?;
    let q = if a.quiet { "?quiet=1" } else { "?quiet=0" };
    let resp = client
        .call_with_bytes(
            Method::POST,
            &format!("/images/load{q}"),
            body,
            "application/x-tar",
        )
        .await?;
    render_progress(resp.into_body(), ProgressOutput::Stdout).await?;
    Ok(0)
}

/// `orca import` (a local file or `-`).
pub async fn import(client: &EngineClient, a: ImportArgs) -> Result<i32> {
    let body = read_input(Some(&a.file))?;
    let mut q = vec![("fromSrc", "-".to_string())];
    if let Some(r) = &a.reference {
        let (repo, tag) = split_repo_tag(r);
        q.push(("repo", repo));
        q.push(("tag", tag));
    }
    if let Some(m) = &a.message {
        q.push(("message", m.clone()));
    }
    let resp = client
        .call_with_bytes(
            Method::POST,
            &format!("/images/create{}", query_string(&q)),
            body,
            "application/x-tar",
        )
        .await?;
    let mut body = resp.into_body();
    let mut decoder = JsonStreamDecoder::default();
    while let Some(chunk) = next_chunk(&mut body).await? {
        for m in decoder.push(&chunk)? {
            if let Some(e) = m["error"].as_str() {
                return Err(CliError::Status {
                    message: e.to_string(),
                    code: 1,
                });
            }
            if let Some(s) = m["status"].as_str() {
                println!("{s}");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_rows_like_docker_images() {
        let list = json!([{
            "Id": "sha256:0123456789abcdef0123", "Created": 1000, "Size": 4_261_000,
            "RepoTags": ["busybox:latest", "busybox:1.36"], "RepoDigests": ["busybox@sha256:feed"]
        }, {"Id": "sha256:fedcba9876543210", "Created": 1000, "Size": 1200, "RepoTags": [], "RepoDigests": []}]);
        let rows = image_rows(&list, false, 1000 + 125);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["Repository"], "busybox");
        assert_eq!(rows[1]["Tag"], "1.36");
        assert_eq!(rows[0]["ID"], "0123456789ab");
        assert_eq!(rows[0]["Digest"], "sha256:feed");
        assert_eq!(rows[0]["CreatedSince"], "2 minutes ago");
        assert_eq!(rows[0]["Size"], "4.26MB");
        assert_eq!(rows[2]["Repository"], "<none>");
        assert_eq!(rows[2]["Tag"], "<none>");
        let f = OutputFormat::parse(
            None,
            "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}",
        );
        let out = f.render(&image_headers(), &rows[..1]).unwrap();
        assert_eq!(
            out,
            "REPOSITORY   TAG       IMAGE ID       CREATED         SIZE\n\
             busybox      latest    0123456789ab   2 minutes ago   4.26MB\n"
        );
        assert!(matches_repository(&rows[1], "busybox:1.36"));
        assert!(!matches_repository(&rows[0], "busybox:1.36"));
    }
}
