//! The Docker Engine API: version prefixes, the router mapping (method,
//! path) to handlers, and the handlers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use crate::containers::{frame, LogOptions, StdinPipe, StreamMsg, WaitCondition};
use crate::error::{EngineError, Result};
use crate::reference::Reference;
use crate::util::{percent_decode, Query};
use crate::Engine;

/// The newest API version orcad speaks.
pub const API_VERSION: &str = "1.44";
/// The oldest API version orcad accepts.
pub const MIN_API_VERSION: &str = "1.24";
/// Largest request body accepted (JSON bodies are small).
pub const MAX_BODY: usize = 4 << 20;

/// Response body type.
pub type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn stream(rx: mpsc::Receiver<Bytes>) -> Body {
    StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, std::io::Error>(Frame::data(b))))
        .boxed()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn ok_empty() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::OK;
    r
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Docker's error shape.
pub fn error_response(e: &EngineError) -> Response<Body> {
    if matches!(e, EngineError::NotModified) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    json_response(e.status(), &json!({"message": e.to_string()}))
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Splits "/v1.44/x" into (Some("1.44"), "/x").
fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let v = &rest[..end];
        if parse_version(v).is_some() {
            let tail = &rest[end..];
            return (Some(v), if tail.is_empty() { "/" } else { tail });
        }
    }
    (None, path)
}

/// Handles one request; never fails (errors become Docker JSON errors).
pub async fn handle(
    engine: Arc<Engine>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (version, _) = split_version(&path);
    let version = version.map(String::from);
    let mut resp = match route(engine, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() && e.status() != StatusCode::NOT_IMPLEMENTED {
                warn!(%method, %path, "request failed: {e}");
            } else {
                debug!(%method, %path, "request failed: {e}");
            }
            error_response(&e)
        }
    };
    let _ = version;
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(concat!("Orca/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    Ok(resp)
}

async fn read_json(req: Request<Incoming>) -> Result<Value> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| EngineError::BadRequest(format!("cannot read request body: {e}")))?
        .to_bytes();
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| EngineError::BadRequest(format!("invalid JSON: {e}")))
}

fn not_implemented(method: &Method, path: &str) -> EngineError {
    EngineError::NotImplemented(format!("{method} {path} is not implemented in orcad yet"))
}

async fn route(engine: Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let method = req.method().clone();
    let full_path = req.uri().path().to_string();
    let (version, path) = split_version(&full_path);
    if let Some(v) = version {
        let got = parse_version(v).unwrap_or((0, 0));
        if got > parse_version(API_VERSION).unwrap_or((1, 44)) {
            return Err(EngineError::BadRequest(format!(
                "client version {v} is too new. Maximum supported API version is {API_VERSION}"
            )));
        }
        if got < parse_version(MIN_API_VERSION).unwrap_or((1, 24)) {
            return Err(EngineError::BadRequest(format!(
                "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, \
                 please upgrade your client to a newer version"
            )));
        }
    }
    let api = version.and_then(parse_version).unwrap_or((1, 44));
    let path = path.to_string();
    let q = Query::parse(req.uri().query());
    debug!(%method, path = %full_path, "request");

    // Image names contain slashes: match /images/... by prefix/suffix.
    if let Some(rest) = path.strip_prefix("/images/") {
        if !["create", "json", "get", "load", "prune"].contains(&rest) {
            if let (Some(name), &Method::GET) = (rest.strip_suffix("/get"), &method) {
                return crate::archive::save(
                    engine,
                    req.uri().query(),
                    Some(&percent_decode(name, false)),
                )
                .await;
            }
            if let (Some(name), &Method::GET) = (rest.strip_suffix("/json"), &method) {
                let v = engine
                    .images
                    .inspect_json(&percent_decode(name, false))
                    .await?;
                return Ok(json_response(StatusCode::OK, &v));
            }
            if let (Some(name), &Method::GET) = (rest.strip_suffix("/history"), &method) {
                let v = engine.images.history(&percent_decode(name, false)).await?;
                return Ok(json_response(StatusCode::OK, &v));
            }
            if let (Some(name), &Method::POST) = (rest.strip_suffix("/push"), &method) {
                let creds = crate::images::registry_auth(req.headers())?;
                let name = percent_decode(name, false);
                let rx =
                    crate::push::push(engine, &name, q.get("tag").unwrap_or(""), creds).await?;
                let mut r = Response::new(stream(rx));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(r);
            }
            if let (Some(name), &Method::POST) = (rest.strip_suffix("/tag"), &method) {
                engine
                    .images
                    .tag(
                        &percent_decode(name, false),
                        q.get("repo").unwrap_or(""),
                        q.get("tag").unwrap_or(""),
                    )
                    .await?;
                crate::events::image_tagged(
                    &engine,
                    q.get("repo").unwrap_or(""),
                    q.get("tag").unwrap_or(""),
                )
                .await;
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::CREATED;
                return Ok(r);
            }
            if method == Method::DELETE {
                let name = percent_decode(rest, false);
                let img = engine.images.resolve(&name).await?;
                // Removed containers' snapshots are gone before the image goes.
                engine.containers.settle_removals().await;
                let users = engine.containers.users_of_image(&img.config_digest);
                let v = engine
                    .images
                    .remove(&name, &img, q.bool("force"), &users)
                    .await?;
                engine.events.image_removed(&img.config_digest, &v);
                return Ok(json_response(StatusCode::OK, &v));
            }
            return Err(not_implemented(&method, &path));
        }
    }
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(|s| s.as_str()).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => Ok(ping(method == Method::HEAD)),
        (&Method::GET, ["version"]) => Ok(json_response(
            StatusCode::OK,
            &crate::info::version(&engine).await,
        )),
        (&Method::GET, ["info"]) => Ok(json_response(
            StatusCode::OK,
            &crate::info::info(&engine).await,
        )),
        (&Method::POST, ["images", "create"])
            if q.get("fromSrc").is_some_and(|s| !s.is_empty()) =>
        {
            crate::archive::import(engine, req).await
        }
        (&Method::POST, ["images", "create"]) => {
            let creds = crate::images::registry_auth(req.headers())?;
            pull(engine, &q, creds).await
        }
        (&Method::POST, ["auth"]) => {
            let body = read_json(req).await?;
            match crate::push::login(&engine, &body).await? {
                Ok(v) => Ok(json_response(StatusCode::OK, &v)),
                Err(msg) => Ok(json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"message": msg}),
                )),
            }
        }
        (&Method::GET, ["images", "get"]) => {
            crate::archive::save(engine, req.uri().query(), None).await
        }
        (&Method::POST, ["images", "load"]) => crate::archive::load(engine, req, &q).await,
        (&Method::POST, ["images", "prune"]) => Ok(json_response(
            StatusCode::OK,
            &crate::prune::images(engine, &q).await?,
        )),
        (&Method::POST, ["containers", "prune"]) => Ok(json_response(
            StatusCode::OK,
            &crate::prune::containers(engine, &q).await?,
        )),
        (&Method::POST, ["networks", "prune"]) => Ok(json_response(
            StatusCode::OK,
            &crate::prune::networks(&engine, &q).await?,
        )),
        (&Method::POST, ["build", "prune"]) => {
            Ok(json_response(StatusCode::OK, &crate::prune::build_cache()))
        }
        (&Method::GET, ["system", "df"]) => Ok(json_response(
            StatusCode::OK,
            &crate::prune::df(engine).await?,
        )),
        (&Method::GET, ["containers", id, "export"]) => crate::archive::export(engine, id).await,
        (&Method::HEAD, ["containers", id, "archive"]) => {
            crate::archive::archive_get(engine, id, &q, true).await
        }
        (&Method::GET, ["containers", id, "archive"]) => {
            crate::archive::archive_get(engine, id, &q, false).await
        }
        (&Method::PUT, ["containers", id, "archive"]) => {
            crate::archive::archive_put(engine, req, id, &q).await
        }
        (&Method::GET, ["images", "json"]) => Ok(json_response(
            StatusCode::OK,
            &engine.images.list_json().await?,
        )),
        (&Method::POST, ["containers", "create"]) => {
            if let Some(p) = q.get("platform").filter(|p| !p.is_empty()) {
                let want = format!("linux/{}", crate::images::platform_arch());
                if p != want {
                    return Err(EngineError::NotImplemented(format!(
                        "platform {p} is not implemented in orcad yet (only {want})"
                    )));
                }
            }
            let body = read_json(req).await?;
            let id = engine.containers.create(q.get("name"), &body).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"Id": id, "Warnings": []}),
            ))
        }
        (&Method::GET, ["containers", "json"]) => {
            Ok(json_response(StatusCode::OK, &engine.containers.list(&q)?))
        }
        (&Method::GET, ["containers", id, "json"]) => Ok(json_response(
            StatusCode::OK,
            &engine.containers.inspect(id)?,
        )),
        (&Method::POST, ["containers", id, "start"]) => {
            if q.get("checkpoint").is_some_and(|c| !c.is_empty()) {
                return Err(EngineError::NotImplemented(
                    "checkpoints are not implemented in orcad yet".into(),
                ));
            }
            engine.containers.start(id).await?;
            Ok(no_content())
        }
        (&Method::POST, ["containers", id, "stop"]) => {
            let t =
                match q.get("t").filter(|t| !t.is_empty()) {
                    Some(t) => Some(t.parse::<i64>().map_err(|_| {
                        EngineError::BadRequest(format!("invalid value for t: {t}"))
                    })?),
                    None => None,
                };
            engine.containers.stop(id, t, q.get("signal")).await?;
            Ok(no_content())
        }
        (&Method::POST, ["containers", id, "restart"]) => {
            let t = parse_t(&q)?;
            engine.containers.restart(id, t, q.get("signal")).await?;
            Ok(no_content())
        }
        (&Method::POST, ["containers", id, "pause"]) => {
            engine.containers.pause(id).await?;
            Ok(no_content())
        }
        (&Method::POST, ["containers", id, "unpause"]) => {
            engine.containers.unpause(id).await?;
            Ok(no_content())
        }
        (&Method::POST, ["containers", id, "rename"]) => {
            engine.containers.rename(id, q.get("name").unwrap_or(""))?;
            Ok(no_content())
        }
        (&Method::GET, ["containers", id, "top"]) => Ok(json_response(
            StatusCode::OK,
            &engine
                .containers
                .top(id, q.get("ps_args").unwrap_or(""))
                .await?,
        )),
        (&Method::GET, ["containers", id, "stats"]) => {
            let stream_it = q.get("stream").is_none_or(|_| q.bool("stream"));
            let rx = engine
                .containers
                .stats(id, stream_it, q.bool("one-shot"))
                .await?;
            let mut r = Response::new(stream(rx));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (&Method::POST, ["containers", id, "kill"]) => {
            engine.containers.kill(id, q.get("signal")).await?;
            Ok(no_content())
        }
        (&Method::DELETE, ["containers", id]) => {
            if q.bool("link") {
                return Err(EngineError::NotImplemented(
                    "links are not implemented in orcad yet".into(),
                ));
            }
            // `v=1`: the container's anonymous volumes go too.
            let rec = if q.bool("v") {
                Some(engine.containers.lookup(id)?.record())
            } else {
                None
            };
            engine.containers.remove(id, q.bool("force")).await?;
            if let Some(rec) = rec {
                engine.containers.remove_anonymous_volumes(&rec);
            }
            Ok(no_content())
        }
        (&Method::POST, ["containers", id, "wait"]) => {
            let cond = match q.get("condition").unwrap_or("") {
                "" | "not-running" => WaitCondition::NotRunning,
                "next-exit" => WaitCondition::NextExit,
                "removed" => WaitCondition::Removed,
                other => {
                    return Err(EngineError::BadRequest(format!(
                        "invalid condition: {other:?}"
                    )))
                }
            };
            let fut = engine.containers.wait(id, cond)?;
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let code = fut.await;
                let body = json!({"StatusCode": code, "Error": null}).to_string() + "\n";
                let _ = tx.send(Bytes::from(body)).await;
            });
            let mut r = Response::new(stream(rx));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (&Method::POST, ["containers", id, "attach"]) => attach(engine, req, id, &q, api).await,
        (&Method::POST, ["containers", id, "exec"]) => {
            let body = read_json(req).await?;
            let eid = engine.containers.exec_create(id, &body)?;
            Ok(json_response(StatusCode::CREATED, &json!({"Id": eid})))
        }
        (&Method::POST, ["exec", id, "start"]) => exec_start(engine, req, id, api).await,
        (&Method::GET, ["exec", id, "json"]) => Ok(json_response(
            StatusCode::OK,
            &engine.containers.exec_inspect(id)?,
        )),
        (&Method::POST, ["exec", id, "resize"]) => {
            let (w, h) = size_query(&q)?;
            engine.containers.exec_resize(id, w, h).await?;
            Ok(ok_empty())
        }
        (&Method::POST, ["containers", id, "resize"]) => {
            let (w, h) = size_query(&q)?;
            engine.containers.resize(id, w, h).await?;
            Ok(ok_empty())
        }
        (&Method::GET, ["containers", id, "logs"]) => {
            let opts = LogOptions {
                stdout: q.bool("stdout"),
                stderr: q.bool("stderr"),
                follow: q.bool("follow"),
                tail: match q.get("tail").unwrap_or("all") {
                    "all" | "" => None,
                    n => Some(
                        n.parse::<i64>()
                            .map(|n| n.max(0) as usize)
                            .unwrap_or(usize::MAX),
                    ),
                },
                timestamps: q.bool("timestamps"),
            };
            if !opts.stdout && !opts.stderr {
                return Err(EngineError::BadRequest(
                    "Bad parameters: you must choose at least one stream".into(),
                ));
            }
            for k in ["since", "until"] {
                if q.get(k).is_some_and(|v| !v.is_empty() && v != "0") {
                    return Err(EngineError::NotImplemented(format!(
                        "logs --{k} is not implemented in orcad yet"
                    )));
                }
            }
            let (tty, rx) = engine.containers.logs(id, opts)?;
            let mut r = Response::new(stream(rx));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, stream_type(tty, api));
            Ok(r)
        }
        (&Method::GET, ["events"]) => {
            let mut r = Response::new(stream(engine.events.serve(&q)?));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (&Method::GET, ["networks"]) => Ok(json_response(
            StatusCode::OK,
            &crate::networks::list_json(&engine, &q)?,
        )),
        (&Method::POST, ["networks", "create"]) => {
            let body = read_json(req).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &engine.networks.create(&body).await?,
            ))
        }
        (&Method::GET, ["networks", name]) => Ok(json_response(
            StatusCode::OK,
            &crate::networks::inspect_json(&engine, name)?,
        )),
        (&Method::DELETE, ["networks", name]) => {
            crate::networks::remove(&engine, name).await?;
            Ok(no_content())
        }
        (&Method::POST, ["networks", name, "connect"]) => {
            let body = read_json(req).await?;
            crate::networks::connect(&engine, name, &body).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::POST, ["networks", name, "disconnect"]) => {
            let body = read_json(req).await?;
            crate::networks::disconnect(&engine, name, &body).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::GET, ["volumes"]) => Ok(json_response(
            StatusCode::OK,
            &crate::volumes::list_json(&engine, &q)?,
        )),
        (&Method::POST, ["volumes", "create"]) => {
            let body = read_json(req).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &engine.containers.volumes.create(&body)?,
            ))
        }
        (&Method::POST, ["volumes", "prune"]) => Ok(json_response(
            StatusCode::OK,
            &crate::volumes::prune(engine.clone(), &q, api).await?,
        )),
        (&Method::GET, ["volumes", name]) => Ok(json_response(
            StatusCode::OK,
            &crate::volumes::inspect_json(&engine, name)?,
        )),
        (&Method::DELETE, ["volumes", name]) => {
            crate::volumes::remove(&engine, name, q.bool("force"))?;
            Ok(no_content())
        }
        // No plugins exist in orcad: "not found" is the honest answer (and
        // lets `docker inspect NAME` finish).
        (&Method::GET, ["plugins", name, "json"]) => Err(EngineError::NotFound(format!(
            "plugin \"{name}\" not found"
        ))),
        _ => Err(not_implemented(&method, &path)),
    }
}

fn parse_t(q: &Query) -> Result<Option<i64>> {
    match q.get("t").filter(|t| !t.is_empty()) {
        Some(t) => Ok(Some(t.parse::<i64>().map_err(|_| {
            EngineError::BadRequest(format!("invalid value for t: {t}"))
        })?)),
        None => Ok(None),
    }
}

fn size_query(q: &Query) -> Result<(u32, u32)> {
    let get = |k: &str| -> Result<u32> {
        q.get(k)
            .unwrap_or("0")
            .parse::<u32>()
            .map_err(|_| EngineError::BadRequest(format!("invalid value for {k}")))
    };
    Ok((get("w")?, get("h")?))
}

fn stream_type(tty: bool, api: (u32, u32)) -> HeaderValue {
    if tty || api < (1, 42) {
        HeaderValue::from_static("application/vnd.docker.raw-stream")
    } else {
        HeaderValue::from_static("application/vnd.docker.multiplexed-stream")
    }
}

fn ping(head: bool) -> Response<Body> {
    let mut r = Response::new(if head { empty() } else { full("OK") });
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    h.insert("Swarm", HeaderValue::from_static("inactive"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

async fn pull(
    engine: Arc<Engine>,
    q: &Query,
    creds: orca_registry::Credentials,
) -> Result<Response<Body>> {
    if q.get("fromSrc").is_some_and(|s| !s.is_empty()) {
        return Err(EngineError::NotImplemented(
            "importing images (fromSrc) is not implemented in orcad yet".into(),
        ));
    }
    if let Some(p) = q.get("platform").filter(|p| !p.is_empty()) {
        let want = format!("linux/{}", crate::images::platform_arch());
        if p != want {
            return Err(EngineError::NotImplemented(format!(
                "pulling platform {p} is not implemented in orcad yet (only {want})"
            )));
        }
    }
    let image = q.get("fromImage").unwrap_or("");
    if image.is_empty() {
        return Err(EngineError::BadRequest("fromImage is required".into()));
    }
    let tag = q.get("tag").unwrap_or("");
    let full_ref = if tag.is_empty() {
        image.to_string()
    } else if tag.starts_with("sha256:") {
        format!("{image}@{tag}")
    } else {
        format!("{image}:{tag}")
    };
    let r = Reference::parse(&full_ref)?;
    // Through the daemon's Transfer service when it has one (orca-supervisor).
    let transfer_creds = match &creds {
        orca_registry::Credentials::Basic { username, password } => {
            Some(crate::transfer::Credentials {
                username: username.clone(),
                secret: password.clone(),
            })
        }
        orca_registry::Credentials::IdentityToken(t) => Some(crate::transfer::Credentials {
            username: String::new(),
            secret: t.clone(),
        }),
        _ => None,
    };
    if let Some(rx) =
        crate::transfer::try_pull(&engine, &r.full(), &r.path, &r.object(), transfer_creds).await?
    {
        let mut resp = Response::new(stream(rx));
        let json = HeaderValue::from_static("application/json");
        resp.headers_mut().insert(header::CONTENT_TYPE, json);
        return Ok(resp);
    }
    let pulled = crate::reference::familiar(&r.full());
    let plan = engine.images.pull_prepare(r, creds).await?;
    let (tx, rx) = mpsc::channel(64);
    let images = engine.images.clone();
    let events = engine.events.clone();
    tokio::spawn(async move {
        let res = images.pull_run(plan, &tx).await;
        if res.is_ok() {
            events.image("pull", &pulled, &pulled);
        }
        if let Err(e) = res {
            warn!("pull failed: {e}");
            let msg = e.to_string();
            let v = json!({"errorDetail": {"message": msg}, "error": msg}).to_string() + "\r\n";
            let _ = tx.send(Bytes::from(v)).await;
        }
    });
    let mut r = Response::new(stream(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Client stdin for a hijacked connection: the pipe, and whether the
/// client's end of input closes it.
type StdinSink = Option<(Arc<StdinPipe>, bool)>;

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

/// Answers an attach-like request: with `Upgrade: tcp`, 101 and the raw
/// connection (output written from `out`, client bytes into `stdin`);
/// without, a plain streaming response of `out`.
fn hijack(
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    out: mpsc::Receiver<Bytes>,
    stdin: StdinSink,
    content_type: HeaderValue,
) -> Response<Body> {
    let Some(on_upgrade) = upgrade else {
        let mut r = Response::new(stream(out));
        r.headers_mut().insert(header::CONTENT_TYPE, content_type);
        return r;
    };
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(io) => io,
            Err(e) => {
                debug!("upgrade failed: {e}");
                return;
            }
        };
        let io = hyper_util::rt::TokioIo::new(io);
        let (mut rd, mut wr) = tokio::io::split(io);
        let input = stdin.map(|(pipe, close_on_eof)| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Err(e) = pipe.write(Bytes::copy_from_slice(&buf[..n])).await {
                                debug!("stdin write: {e}");
                                break;
                            }
                        }
                    }
                }
                if close_on_eof {
                    pipe.close().await;
                }
            })
        });
        let mut out = out;
        while let Some(b) = out.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
        if let Some(t) = input {
            t.abort();
        }
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    r
}

async fn attach(
    engine: Arc<Engine>,
    mut req: Request<Incoming>,
    id: &str,
    q: &Query,
    api: (u32, u32),
) -> Result<Response<Body>> {
    if q.bool("logs") {
        return Err(EngineError::NotImplemented(
            "attach with logs=1 is not implemented in orcad yet".into(),
        ));
    }
    let (want_out, want_err) = (q.bool("stdout"), q.bool("stderr"));
    let a = engine.containers.attach(id)?;
    let tty = a.tty;
    let stdin = if q.bool("stdin") {
        a.stdin.map(|p| (p, a.stdin_once))
    } else {
        None
    };
    let (tx, out) = mpsc::channel(64);
    if let Some(mut rx) = a.rx {
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(StreamMsg::End) => break,
                    Ok(StreamMsg::Data(sid, b)) => {
                        if (sid == 1 && !want_out) || (sid == 2 && !want_err) {
                            continue;
                        }
                        let b = if tty { b } else { frame(sid, &b) };
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!("attach client too slow: {n} output chunks dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    Ok(hijack(upgrade, out, stdin, stream_type(tty, api)))
}

async fn exec_start(
    engine: Arc<Engine>,
    mut req: Request<Incoming>,
    id: &str,
    api: (u32, u32),
) -> Result<Response<Body>> {
    let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let v = read_json(req).await?;
    let detach = v["Detach"].as_bool().unwrap_or(false);
    let e = engine.containers.exec_claim(id)?;
    if detach {
        engine.containers.exec_start(e, true, None).await?;
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::OK;
        return Ok(r);
    }
    let tty = e.cfg.tty;
    let stdin = (e.cfg.attach_stdin && upgrade.is_some()).then(|| Arc::new(StdinPipe::default()));
    let (tx, out) = mpsc::channel(64);
    let containers = engine.containers.clone();
    let pipe = stdin.clone();
    tokio::spawn(async move {
        let enc = |sid: u8, b: &[u8]| {
            if tty {
                Bytes::copy_from_slice(b)
            } else {
                frame(sid, b)
            }
        };
        match containers.exec_start(e, false, pipe).await {
            Err(err) => {
                let _ = tx.send(enc(1, format!("{err}\r\n").as_bytes())).await;
            }
            Ok(None) => {}
            Ok(Some(mut s)) => {
                loop {
                    tokio::select! {
                        biased;
                        m = s.rx.recv() => match m {
                            Some(StreamMsg::Data(sid, b)) => {
                                // A gone client: keep consuming.
                                let _ = tx.send(enc(sid, &b)).await;
                            }
                            Some(StreamMsg::End) => {}
                            None => break,
                        },
                        _ = async { s.done.wait_for(|d| *d).await.map(|_| ()) } => {
                            while let Ok(m) = s.rx.try_recv() {
                                if let StreamMsg::Data(sid, b) = m {
                                    let _ = tx.send(enc(sid, &b)).await;
                                }
                            }
                            break;
                        }
                    }
                }
                // The CLI inspects the exit code as soon as the stream ends.
                let _ = s.done.wait_for(|d| *d).await.map(|_| ());
            }
        }
    });
    let sink = stdin.map(|p| (p, true));
    Ok(hijack(upgrade, out, sink, stream_type(tty, api)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            split_version("/v1.44/containers/json"),
            (Some("1.44"), "/containers/json")
        );
        assert_eq!(split_version("/_ping"), (None, "/_ping"));
        assert_eq!(split_version("/v1.99"), (Some("1.99"), "/"));
        assert_eq!(split_version("/volumes"), (None, "/volumes"));
    }
}
