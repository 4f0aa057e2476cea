//! orca-supervisor's Transfer service (containerd 1.7+ API: server-side pull
//! and push) driven by a gRPC client built on orca-proto, judged by Debian's
//! `docker-registry`, Debian's `ctr` 1.6 (images ls, run, content ls, pull
//! of what we pushed) and the docker CLI through orcad.

use std::time::Duration;

use orca_integration::engine_support::Orcad;
use orca_integration::supervisor_support::registry_with_layered_busybox;
use orca_integration::{require_root, require_tool, unique_name, Registry, Supervisor};
use orca_proto::prost::Message;
use orca_proto::prost_types::Any;
use orca_proto::streaming::streaming_client::StreamingClient;
use orca_proto::streaming::StreamInit;
use orca_proto::tonic::{transport::Channel, Code, Request, Status};
use orca_proto::transfer::transfer_client::TransferClient;
use orca_proto::transfer::{TransferOptions, TransferRequest};
use orca_proto::type_urls;
use orca_proto::types::transfer as tt;
use tokio::sync::mpsc;

#[path = "common/grpc.rs"]
mod grpc;
use grpc::{connect, rt};

const NS: &str = "transfer";

fn req<T>(msg: T) -> Request<T> {
    grpc::req_in(NS, msg)
}

fn any<M: Message>(url: &str, m: &M) -> Any {
    Any {
        type_url: url.into(),
        value: m.encode_to_vec(),
    }
}

/// Runs one transfer with a progress stream; returns its result and every
/// Progress message received.
async fn transfer(
    ch: Channel,
    source: Any,
    destination: Any,
) -> (Result<(), Status>, Vec<tt::Progress>) {
    let id = unique_name("progress");
    let (tx, rx) = mpsc::channel::<Any>(4);
    tx.send(any(type_urls::STREAM_INIT, &StreamInit { id: id.clone() }))
        .await
        .unwrap();
    let mut stream = StreamingClient::new(ch.clone())
        .stream(req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("open the progress stream")
        .into_inner();
    let ack = stream.message().await.expect("stream ack").expect("ack");
    assert_eq!(ack.type_url, type_urls::EMPTY);
    let reader = tokio::spawn(async move {
        let _keep_open = tx;
        let mut out = Vec::new();
        while let Ok(Some(m)) = stream.message().await {
            assert_eq!(m.type_url, type_urls::PROGRESS, "unexpected message type");
            out.push(tt::Progress::decode(m.value.as_slice()).expect("a Progress"));
        }
        out
    });
    let res = TransferClient::new(ch)
        .transfer(req(TransferRequest {
            source: Some(source),
            destination: Some(destination),
            options: Some(TransferOptions {
                progress_stream: id,
            }),
        }))
        .await
        .map(|_| ());
    let progress = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the supervisor closes the progress stream after the transfer")
        .expect("progress reader");
    (res, progress)
}

fn pull_request(reference: &str, name: &str) -> (Any, Any) {
    (
        any(
            type_urls::OCI_REGISTRY,
            &tt::OciRegistry {
                reference: reference.into(),
                resolver: None,
            },
        ),
        any(
            type_urls::IMAGE_STORE,
            &tt::ImageStore {
                name: name.into(),
                unpacks: vec![tt::UnpackConfiguration {
                    platform: None,
                    snapshotter: "overlayfs".into(),
                }],
                ..Default::default()
            },
        ),
    )
}

#[track_caller]
fn ctr_ok(s: &Supervisor, ns: &str, args: &[&str]) -> String {
    s.ctr_ok_ns(ns, args)
}

use orca_integration::util::tail_lines as tail;

fn events_for<'a>(p: &'a [tt::Progress], digest: &str) -> Vec<&'a str> {
    p.iter()
        .filter(|e| e.desc.as_ref().is_some_and(|d| d.digest == digest))
        .map(|e| e.event.as_str())
        .collect()
}

/// The DIGEST column of `ctr images ls` for `name`.
fn image_digest(s: &Supervisor, ns: &str, name: &str) -> String {
    let ls = ctr_ok(s, ns, &["images", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .unwrap_or_else(|| panic!("{name} not in images ls:\n{ls}"))
        .to_string()
}

#[test]
fn transfer_pull_with_progress_then_run_push_and_pull_back() {
    require_root();
    require_tool("containerd-shim-runc-v2");
    require_tool("runc");
    let (reg, reference, info) =
        registry_with_layered_busybox("layered", &[("one", 300 << 10), ("two", 700 << 10)]);
    let s = Supervisor::start();
    let rt = rt();
    let ch = rt.block_on(connect(&s.socket()));

    // (a) pull with progress.
    let (src, dst) = pull_request(&reference, &reference);
    let (res, progress) = rt.block_on(transfer(ch.clone(), src, dst));
    res.unwrap_or_else(|e| panic!("pull: {e}\n{}", tail(&s.log(), 40)));
    let all: Vec<&str> = progress.iter().map(|p| p.event.as_str()).collect();
    assert!(all.contains(&"resolved"), "{all:?}");
    assert_eq!(all.last(), Some(&"saved"), "{all:?}");
    assert_eq!(info.layer_digests.len(), 3);
    for l in &info.layer_digests {
        let ev = events_for(&progress, l);
        for want in [
            "waiting",
            "downloading",
            "complete",
            "extracting",
            "extracted",
        ] {
            assert!(ev.contains(&want), "layer {l}: no {want:?} in {ev:?}");
        }
    }
    let images = ctr_ok(&s, NS, &["images", "ls"]);
    assert!(images.contains(&reference), "{images}");
    assert_eq!(image_digest(&s, NS, &reference), info.manifest_digest);
    // containerd's GC labels, as a ctr pull sets them.
    let content = ctr_ok(&s, NS, &["content", "ls"]);
    let config_line = content
        .lines()
        .find(|l| l.starts_with(&info.config_digest))
        .unwrap_or_else(|| panic!("config not in content ls:\n{content}"));
    assert!(
        config_line.contains("containerd.io/gc.ref.snapshot.overlayfs="),
        "{config_line}"
    );
    let manifest_line = content
        .lines()
        .find(|l| l.starts_with(&info.manifest_digest))
        .unwrap_or_else(|| panic!("manifest not in content ls:\n{content}"));
    assert!(
        manifest_line.contains("containerd.io/gc.ref.content.config=")
            && manifest_line.contains("containerd.io/gc.ref.content.l.2="),
        "{manifest_line}"
    );
    assert!(ctr_ok(&s, NS, &["leases", "ls", "-q"]).trim().is_empty());

    let id = unique_name("xfer-run");
    let out = ctr_ok(
        &s,
        NS,
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            &reference,
            &id,
            "sh",
            "-c",
            "echo hi; wc -c < /two",
        ],
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["hi", &(700 << 10).to_string()]
    );

    // A second pull finds everything: no downloads.
    let (src, dst) = pull_request(&reference, &reference);
    let (res, progress) = rt.block_on(transfer(ch.clone(), src, dst));
    res.expect("second pull");
    assert!(
        !progress.iter().any(|p| p.event == "downloading"),
        "second pull downloaded again"
    );

    // (b) push to a second registry, pull it with ctr → same manifest digest.
    let reg2 = Registry::start();
    let pushed_ref = format!("{}/copies/layered:v1", reg2.addr());
    let (res, progress) = rt.block_on(transfer(
        ch.clone(),
        any(
            type_urls::IMAGE_STORE,
            &tt::ImageStore {
                name: reference.clone(),
                ..Default::default()
            },
        ),
        any(
            type_urls::OCI_REGISTRY,
            &tt::OciRegistry {
                reference: pushed_ref.clone(),
                resolver: None,
            },
        ),
    ));
    res.unwrap_or_else(|e| panic!("push: {e}\n{}", tail(&s.log(), 40)));
    for l in &info.layer_digests {
        assert!(
            events_for(&progress, l).contains(&"pushed"),
            "layer {l} not pushed"
        );
    }
    ctr_ok(
        &s,
        "pulled",
        &["images", "pull", "--plain-http", &pushed_ref],
    );
    assert_eq!(
        image_digest(&s, "pulled", &pushed_ref),
        info.manifest_digest
    );

    // Pushing to another repository of the registry it came from mounts the
    // layers (containerd.io/distribution.source label) instead of uploading.
    let (res, progress) = rt.block_on(transfer(
        ch.clone(),
        any(
            type_urls::IMAGE_STORE,
            &tt::ImageStore {
                name: reference.clone(),
                ..Default::default()
            },
        ),
        any(
            type_urls::OCI_REGISTRY,
            &tt::OciRegistry {
                reference: format!("{}/library/mounted:v1", reg.addr()),
                resolver: None,
            },
        ),
    ));
    res.unwrap_or_else(|e| panic!("push to the same registry: {e}"));
    for l in &info.layer_digests {
        let ev = events_for(&progress, l);
        assert!(
            ev.contains(&"mounted") && !ev.contains(&"pushing"),
            "layer {l}: {ev:?}"
        );
    }

    // GC labels hold everything together: removing the image frees it all.
    ctr_ok(&s, NS, &["images", "rm", "--sync", &reference]);
    assert!(
        ctr_ok(&s, NS, &["content", "ls", "-q"]).trim().is_empty(),
        "content left after images rm --sync"
    );
    assert!(ctr_ok(&s, NS, &["snapshots", "ls"]).lines().count() <= 1);
}

#[test]
fn transfer_errors_commit_nothing() {
    require_root();
    let (reg, reference, info) = registry_with_layered_busybox("broken", &[("big", 512 << 10)]);
    let s = Supervisor::start();
    let rt = rt();
    let ch = rt.block_on(connect(&s.socket()));
    let content_before = ctr_ok(&s, NS, &["content", "ls", "-q"]);

    // Unknown tag → NotFound.
    let missing = reference.replace(":latest", ":nope");
    let (src, dst) = pull_request(&missing, &missing);
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    assert_eq!(res.expect_err("unknown tag").code(), Code::NotFound);

    // A bad reference → InvalidArgument.
    let (src, dst) = pull_request("UPPER/Case::x", "x");
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    assert_eq!(
        res.expect_err("bad reference").code(),
        Code::InvalidArgument
    );

    // An unknown Any type → InvalidArgument.
    let (_, dst) = pull_request(&reference, &reference);
    let (res, _) = rt.block_on(transfer(
        ch.clone(),
        Any {
            type_url: "example.com/Nope".into(),
            value: vec![],
        },
        dst,
    ));
    assert_eq!(res.expect_err("unknown type").code(), Code::InvalidArgument);

    // A layer corrupted in the registry: digest mismatch, nothing committed.
    let last = info.layer_digests.last().unwrap();
    let hex = last.trim_start_matches("sha256:");
    let data = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n - 600] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let (src, dst) = pull_request(&reference, &reference);
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    let e = res.expect_err("corrupt layer");
    assert!(
        matches!(e.code(), Code::FailedPrecondition | Code::Internal),
        "{e:?}"
    );
    assert_eq!(ctr_ok(&s, NS, &["content", "ls", "-q"]), content_before);
    assert!(!ctr_ok(&s, NS, &["images", "ls", "-q"]).contains(&reference));
    assert!(ctr_ok(&s, NS, &["snapshots", "ls"]).lines().count() <= 1);
    assert!(ctr_ok(&s, NS, &["leases", "ls", "-q"]).trim().is_empty());

    // Registry down → Unavailable, nothing committed, supervisor serving.
    drop(reg);
    let (src, dst) = pull_request(&reference, &reference);
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    let e = res.expect_err("registry down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(ctr_ok(&s, NS, &["content", "ls", "-q"]), content_before);
    ctr_ok(&s, NS, &["version"]);
}

#[test]
fn docker_pull_and_push_through_orcad_use_transfer() {
    require_root();
    require_tool("docker");
    let (_reg, reference, info) =
        registry_with_layered_busybox("viaorcad", &[("extra", 200 << 10)]);
    let s = Supervisor::start();
    let orcad = Orcad::start_with(&s.socket(), &[]);
    let out = orcad.docker_ok(&["pull", &reference], Duration::from_secs(120));
    for l in &info.layer_digests {
        let short = &l.trim_start_matches("sha256:")[..12];
        assert!(
            out.contains(&format!("{short}: Pull complete")),
            "no Pull complete for {short}:\n{out}"
        );
    }
    assert!(
        out.contains(&format!("Digest: {}", info.manifest_digest)),
        "{out}"
    );
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    let log = s.log();
    assert!(
        log.contains("transfer: pulled"),
        "the supervisor did not pull (no transfer: pulled in its log):\n{}",
        tail(&log, 40)
    );
    let again = orcad.docker_ok(&["pull", &reference], Duration::from_secs(60));
    assert!(again.contains("Image is up to date"), "{again}");
    let run = orcad.docker_ok(
        &["run", "--rm", &reference, "sh", "-c", "echo via-transfer"],
        Duration::from_secs(60),
    );
    assert!(run.contains("via-transfer"), "{run}");

    // docker push goes through Transfer too.
    let reg2 = Registry::start();
    let target = format!("{}/pushed/viaorcad:v1", reg2.addr());
    orcad.docker_ok(&["tag", &reference, &target], Duration::from_secs(30));
    let pushed = orcad.docker_ok(&["push", &target], Duration::from_secs(120));
    assert!(
        pushed.contains(&format!("v1: digest: {}", info.manifest_digest)),
        "{pushed}"
    );
    assert!(
        s.log().contains("transfer: pushed"),
        "the supervisor did not push:\n{}",
        tail(&s.log(), 30)
    );
}

// ------------------------------------------------------------ auth, mirrors

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A bcrypt htpasswd line (htpasswd if installed, else Python's crypt).
fn htpasswd_line(user: &str, pass: &str) -> String {
    if orca_integration::have("htpasswd") {
        let out = std::process::Command::new("htpasswd")
            .args(["-Bbn", user, pass])
            .output()
            .expect("htpasswd");
        assert!(out.status.success());
        return String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    let out = std::process::Command::new(require_tool("python3"))
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            pass,
        ])
        .output()
        .expect("python3");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && hash.starts_with("$2"),
        "cannot make a bcrypt hash: install apache2-utils (htpasswd)"
    );
    format!("{user}:{hash}")
}

/// Debian's docker-registry with htpasswd (basic) auth, busybox pushed as
/// library/busybox:latest with the credentials.
struct AuthRegistry {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start(user: &str, pass: &str) -> AuthRegistry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("orca-authreg-")
            .tempdir()
            .unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, htpasswd_line(user, pass) + "\n").unwrap();
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", orca_integration::free_port());
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: {addr}\n\
                     auth:\n  htpasswd:\n    realm: orca-test\n    path: {}\n",
                    dir.path().join("reg").display(),
                    htpasswd.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = std::process::Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let up = orca_integration::wait_until(Duration::from_secs(20), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || matches!(orca_integration::http_get(&addr, "/v2/"), Ok((401, _)))
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                let layout = tempfile::tempdir().unwrap();
                orca_integration::write_busybox_oci_layout(layout.path(), "latest").unwrap();
                let out = std::process::Command::new(require_tool("skopeo"))
                    .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
                    .arg(format!("--dest-creds={user}:{pass}"))
                    .arg(format!("oci:{}:latest", layout.path().display()))
                    .arg(format!("docker://{addr}/library/busybox:latest"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "skopeo push with credentials: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return AuthRegistry {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("cannot start docker-registry with htpasswd auth");
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers every AuthRequest on a fresh stream with `user`/`pass`; returns
/// the stream id and the hosts asked for.
async fn auth_stream(
    ch: Channel,
    user: &str,
    pass: &str,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let id = unique_name("auth");
    let (tx, rx) = mpsc::channel::<Any>(4);
    tx.send(any(type_urls::STREAM_INIT, &StreamInit { id: id.clone() }))
        .await
        .unwrap();
    let mut stream = StreamingClient::new(ch)
        .stream(req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("open the auth stream")
        .into_inner();
    stream.message().await.expect("ack").expect("ack");
    let (user, pass) = (user.to_string(), pass.to_string());
    let task = tokio::spawn(async move {
        let mut hosts = Vec::new();
        while let Ok(Some(m)) = stream.message().await {
            assert_eq!(m.type_url, type_urls::AUTH_REQUEST);
            let r = tt::AuthRequest::decode(m.value.as_slice()).unwrap();
            hosts.push(r.host);
            let resp = tt::AuthResponse {
                auth_type: tt::AuthType::Credentials as i32,
                username: user.clone(),
                secret: pass.clone(),
                expire_at: None,
            };
            if tx.send(any(type_urls::AUTH_RESPONSE, &resp)).await.is_err() {
                break;
            }
        }
        hosts
    });
    (id, task)
}

#[test]
fn transfer_pull_with_credentials_from_auth_stream_and_headers() {
    require_root();
    let reg = AuthRegistry::start("orca", "s3cret");
    let reference = format!("{}/library/busybox:latest", reg.addr);
    let s = Supervisor::start();
    let rt = rt();
    let ch = rt.block_on(connect(&s.socket()));

    // Anonymous: refused, nothing committed.
    let (src, dst) = pull_request(&reference, &reference);
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    let e = res.expect_err("anonymous pull from an htpasswd registry");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(ctr_ok(&s, NS, &["content", "ls", "-q"]).trim().is_empty());

    // Credentials asked on the auth stream.
    let (res, hosts) = rt.block_on(async {
        let (id, answers) = auth_stream(ch.clone(), "orca", "s3cret").await;
        let src = any(
            type_urls::OCI_REGISTRY,
            &tt::OciRegistry {
                reference: reference.clone(),
                resolver: Some(tt::RegistryResolver {
                    auth_stream: id,
                    ..Default::default()
                }),
            },
        );
        let (_, dst) = pull_request(&reference, &reference);
        let (res, _) = transfer(ch.clone(), src, dst).await;
        let hosts = tokio::time::timeout(Duration::from_secs(10), answers)
            .await
            .expect("the supervisor closes the auth stream")
            .unwrap();
        (res, hosts)
    });
    res.unwrap_or_else(|e| panic!("pull with the auth stream: {e}\n{}", tail(&s.log(), 30)));
    assert_eq!(hosts, vec![reg.addr.clone()]);
    assert!(ctr_ok(&s, NS, &["images", "ls", "-q"]).contains(&reference));

    // Credentials in the resolver's Authorization header (other namespace).
    let mut headers = std::collections::HashMap::new();
    headers.insert(
        "Authorization".to_string(),
        format!("Basic {}", base64(b"orca:s3cret")),
    );
    let src = any(
        type_urls::OCI_REGISTRY,
        &tt::OciRegistry {
            reference: reference.clone(),
            resolver: Some(tt::RegistryResolver {
                headers,
                ..Default::default()
            }),
        },
    );
    let (_, dst) = pull_request(&reference, "headers/busybox:latest");
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    res.unwrap_or_else(|e| panic!("pull with an Authorization header: {e}"));
    assert!(ctr_ok(&s, NS, &["images", "ls", "-q"]).contains("headers/busybox:latest"));
}

/// orca-supervisor started with a `--config` file (the Supervisor fixture
/// takes none); killed and its mounts removed on drop.
struct ConfiguredSupervisor {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl ConfiguredSupervisor {
    fn start(config: &str) -> ConfiguredSupervisor {
        let dir = tempfile::Builder::new()
            .prefix("orca-supcfg-")
            .tempdir()
            .unwrap();
        let t = dir.path();
        std::fs::write(t.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(t.join("supervisor.log")).unwrap();
        let child = std::process::Command::new(orca_integration::bin_path("orca-supervisor"))
            .arg("--config")
            .arg(t.join("config.toml"))
            .arg("--root")
            .arg(t.join("root"))
            .arg("--state")
            .arg(t.join("state"))
            .arg("--address")
            .arg(t.join("s.sock"))
            .args(["--log-level", "debug"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut s = ConfiguredSupervisor { child, dir };
        let sock = s.socket();
        let up = orca_integration::wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
                || matches!(s.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            up && matches!(s.child.try_wait(), Ok(None)),
            "orca-supervisor with a config did not start: {}",
            s.log()
        );
        s
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("s.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("supervisor.log")).unwrap_or_default()
    }
}

impl Drop for ConfiguredSupervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = orca_integration::unmount_all_under(self.dir.path());
    }
}

#[test]
fn transfer_pull_through_a_configured_mirror() {
    require_root();
    let (reg, _) = Registry::with_busybox();
    // A host that does not exist, mirrored by the local registry.
    let s = ConfiguredSupervisor::start(&format!(
        "[registry]\n[registry.mirrors.\"mirror-test.invalid\"]\nendpoint = [\"http://{}\"]\n",
        reg.addr()
    ));
    let rt = rt();
    let ch = rt.block_on(connect(&s.socket()));
    let reference = "mirror-test.invalid/library/busybox:latest";
    let (src, dst) = pull_request(reference, reference);
    let (res, progress) = rt.block_on(transfer(ch.clone(), src, dst));
    res.unwrap_or_else(|e| panic!("pull through the mirror: {e}\n{}", tail(&s.log(), 30)));
    assert_eq!(progress.last().map(|p| p.event.as_str()), Some("saved"));
    assert!(s.log().contains("transfer: pulled"));

    // Without the mirror the host does not resolve: Unavailable.
    let other = "unmirrored-test.invalid/library/busybox:latest";
    let (src, dst) = pull_request(other, other);
    let (res, _) = rt.block_on(transfer(ch.clone(), src, dst));
    assert_eq!(res.expect_err("no such host").code(), Code::Unavailable);

    // A bad [registry] section stops the supervisor with a clear error.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("c.toml"), "[registry]\nmirrorz = 1\n").unwrap();
    let out = std::process::Command::new(orca_integration::bin_path("orca-supervisor"))
        .arg("--config")
        .arg(bad.path().join("c.toml"))
        .arg("--root")
        .arg(bad.path().join("root"))
        .arg("--state")
        .arg(bad.path().join("state"))
        .arg("--address")
        .arg(bad.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mirrorz"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // So does a mirror that is not a URL of a registry.
    std::fs::write(
        bad.path().join("c.toml"),
        "[registry.mirrors.\"a.example\"]\nendpoint = [\"http://m.example/some/path\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(orca_integration::bin_path("orca-supervisor"))
        .arg("--config")
        .arg(bad.path().join("c.toml"))
        .arg("--root")
        .arg(bad.path().join("root"))
        .arg("--state")
        .arg(bad.path().join("state"))
        .arg("--address")
        .arg(bad.path().join("s.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mirror"), "{err}");
    assert!(!bad.path().join("s.sock").exists());
}

#[test]
fn concurrent_pulls_of_one_image_both_succeed() {
    require_root();
    let (_reg, reference, info) =
        registry_with_layered_busybox("twice", &[("a", 2 << 20), ("b", 3 << 20)]);
    let s = Supervisor::start();
    let rt = rt();
    let ch = rt.block_on(connect(&s.socket()));
    let (r1, r2) = rt.block_on(async {
        let (src1, dst1) = pull_request(&reference, &reference);
        let (src2, dst2) = pull_request(&reference, &reference);
        tokio::join!(
            transfer(ch.clone(), src1, dst1),
            transfer(ch.clone(), src2, dst2)
        )
    });
    r1.0.unwrap_or_else(|e| panic!("first pull: {e}\n{}", tail(&s.log(), 30)));
    r2.0.unwrap_or_else(|e| panic!("second pull: {e}\n{}", tail(&s.log(), 30)));
    assert_eq!(image_digest(&s, NS, &reference), info.manifest_digest);
    let content = ctr_ok(&s, NS, &["content", "ls", "-q"]);
    for l in &info.layer_digests {
        assert_eq!(
            content.lines().filter(|c| c.trim() == l).count(),
            1,
            "{content}"
        );
    }
    let snaps = ctr_ok(&s, NS, &["snapshots", "ls"]);
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Committed")).count(),
        3,
        "{snaps}"
    );
    assert!(ctr_ok(&s, NS, &["leases", "ls", "-q"]).trim().is_empty());
}
