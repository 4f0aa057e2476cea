//! orcad's registry side through the real docker CLI: `docker login` against
//! a basic-auth registry, pulls with `X-Registry-Auth`, `docker push` (and
//! pulling the pushed image back), Docker Hub mirrors from
//! `--registry-mirror`, and misbehaving registries committing nothing.
//!
//! Run: `cargo build -p orca-engine --bins && cargo test -p orca-integration --test engine_push_auth`
//! (root; containerd, docker-registry, skopeo, htpasswd, docker CLI).

use std::time::Duration;

use orca_integration::engine_support::{orcad_with_busybox, text, Orcad, DOCKER_CLI};
use orca_integration::registry_auth::{
    Auth, FakeRegistry, Misbehaviour, Pki, SecureRegistry, TokenServer,
};
use orca_integration::{require_root, require_tool, Containerd, Registry};

const LIMIT: Duration = Duration::from_secs(120);

fn out_err(o: &std::process::Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

/// "sha256:…" after `marker` in `s`.
fn digest_after(s: &str, marker: &str) -> String {
    let i = s
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in:\n{s}"));
    s[i + marker.len()..].chars().take(71).collect()
}

fn setup() -> (Containerd, Orcad) {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let o = Orcad::start(&c);
    (c, o)
}

#[test]
fn login_then_pull_and_push_with_basic_auth() {
    let (_c, o) = setup();
    let reg = SecureRegistry::start(
        Auth::Basic {
            user: "alice".into(),
            password: "s3cret".into(),
        },
        None,
        None,
    );
    let addr = reg.addr();
    let image = format!("{addr}/library/busybox:latest");

    // Without credentials: refused, in dockerd's words.
    let out = o.docker(&["pull", &image], LIMIT);
    assert!(!out.status.success(), "pull without login succeeded");
    let msg = out_err(&out);
    assert!(
        msg.contains("pull access denied") && msg.contains("no basic auth credentials"),
        "{msg}"
    );
    let images = o.docker_ok(&["images", "-q", &format!("{addr}/library/busybox")], LIMIT);
    assert!(images.trim().is_empty(), "nothing pulled: {images}");

    // A wrong password: 401 with Docker's message.
    let out = o.docker(&["login", &addr, "-u", "alice", "-p", "wrong"], LIMIT);
    assert!(
        !out.status.success(),
        "login with a wrong password succeeded"
    );
    let msg = out_err(&out);
    assert!(
        msg.contains(&format!(
            "login attempt to http://{addr}/v2/ failed with status: 401 Unauthorized"
        )),
        "{msg}"
    );

    let out = o.docker_ok(&["login", &addr, "-u", "alice", "-p", "s3cret"], LIMIT);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = o.docker_ok(&["pull", &image], LIMIT);
    assert!(out.contains("Downloaded newer image"), "{out}");
    o.docker_ok(&["run", "--rm", &image, "true"], LIMIT);

    // Push (logged in) to another repository of the same registry: the
    // layer is mounted from library/busybox.
    let copy = format!("{addr}/team/bb:1");
    o.docker_ok(&["tag", &image, &copy], LIMIT);
    let out = o.docker_ok(&["push", &copy], LIMIT);
    assert!(
        out.contains(&format!("The push refers to repository [{addr}/team/bb]")),
        "{out}"
    );
    assert!(out.contains("Mounted from library/busybox"), "{out}");
    assert!(out.contains("1: digest: sha256:"), "{out}");

    // Logged out: push fails with Docker's message.
    o.docker_ok(&["logout", &addr], LIMIT);
    let other = format!("{addr}/team/bb:2");
    o.docker_ok(&["tag", &image, &other], LIMIT);
    let out = o.docker(&["push", &other], LIMIT);
    assert!(!out.status.success(), "push without credentials succeeded");
    assert!(
        out_err(&out).contains("no basic auth credentials"),
        "{}",
        out_err(&out)
    );
}

#[test]
fn push_to_a_second_registry_and_pull_it_back() {
    let (_c, o, _reg, image) = orcad_with_busybox(LIMIT);
    let reg2 = Registry::start();
    let target = format!("{}/test/busybox:copy", reg2.addr());
    o.docker_ok(&["tag", &image, &target], LIMIT);

    let out = o.docker_ok(&["push", &target], LIMIT);
    assert!(
        out.contains(&format!(
            "The push refers to repository [{}/test/busybox]",
            reg2.addr()
        )),
        "{out}"
    );
    assert!(out.contains("Pushed"), "{out}");
    let pushed = digest_after(&out, "copy: digest: ");
    assert!(pushed.starts_with("sha256:") && pushed.len() == 71, "{out}");

    // Again: everything is there already.
    let out = o.docker_ok(&["push", &target], LIMIT);
    assert!(out.contains("Layer already exists"), "{out}");
    assert_eq!(digest_after(&out, "copy: digest: "), pushed);

    // The aux message carries Tag/Digest/Size (raw API stream).
    let (status, body) = o
        .http(
            "POST",
            &format!("/v1.44/images/{}/test/busybox/push?tag=copy", reg2.addr()),
            None,
        )
        .unwrap();
    assert_eq!(status, 200);
    let body = text(&body);
    assert!(
        body.contains(r#""aux":{"#) && body.contains(&pushed),
        "{body}"
    );

    // Pull it back from the second registry: the same digest.
    o.docker_ok(&["rmi", &target], LIMIT);
    let out = o.docker_ok(&["pull", &target], LIMIT);
    assert_eq!(digest_after(&out, "Digest: "), pushed, "{out}");
    o.docker_ok(&["run", "--rm", &target, "true"], LIMIT);

    // Unknown image: 404 with Docker's message.
    let out = o.docker(&["push", &format!("{}/nope/missing:x", reg2.addr())], LIMIT);
    assert!(!out.status.success());
    assert!(
        out_err(&out).contains("An image does not exist locally with the tag"),
        "{}",
        out_err(&out)
    );
}

#[test]
fn registry_mirror_serves_docker_hub_pulls() {
    require_root();
    require_tool(DOCKER_CLI);
    let (mirror, _) = Registry::with_busybox();
    let c = Containerd::start();
    let url = format!("http://{}", mirror.addr());
    let o = Orcad::start_with(&c.socket(), &["--registry-mirror", &url]);
    let out = o.docker_ok(&["pull", "busybox"], LIMIT);
    assert!(
        out.contains("Downloaded newer image for busybox:latest"),
        "{out}"
    );
    let listed = o.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"], LIMIT);
    assert!(listed.lines().any(|l| l == "busybox:latest"), "{listed}");
    o.docker_ok(&["run", "--rm", "busybox", "true"], LIMIT);
    assert!(
        o.log().contains(&mirror.addr()),
        "orcad's log names the mirror"
    );
}

#[test]
fn misbehaving_registry_pull_fails_clearly_and_commits_nothing() {
    let (c, o) = setup();
    for (mode, want) in [
        (Misbehaviour::ServerError, "500 Internal Server Error"),
        (Misbehaviour::GarbageManifest, "not JSON"),
        (Misbehaviour::WrongBlob, "digest mismatch"),
    ] {
        let fake = FakeRegistry::start(mode);
        let image = format!("{}/broken/image:1", fake.addr());
        let out = o.docker(&["pull", &image], LIMIT);
        assert!(!out.status.success(), "{mode:?}: pull succeeded");
        assert!(out_err(&out).contains(want), "{mode:?}: {}", out_err(&out));
        let images = o.docker_ok(
            &["images", "-q", &format!("{}/broken/image", fake.addr())],
            LIMIT,
        );
        assert!(
            images.trim().is_empty(),
            "{mode:?}: an image was recorded: {images}"
        );
    }
    // No image record in containerd either, and orcad still answers.
    let out = c.ctr_ns("orca", &["images", "ls", "-q"]);
    assert!(
        !text(&out.stdout).contains("broken/image"),
        "{}",
        text(&out.stdout)
    );
    o.docker_ok(&["version"], LIMIT);
}

/// `/etc/docker/certs.d/<addr>/ca.crt` (orcad's default certs dir, like
/// dockerd's) for one test registry; removed on drop with the directories
/// it created.
struct CertsDEntry {
    created: Vec<std::path::PathBuf>,
}

impl CertsDEntry {
    fn install(addr: &str, ca: &std::path::Path) -> CertsDEntry {
        let mut created = Vec::new();
        let mut p = std::path::PathBuf::from("/");
        for part in ["etc", "docker", "certs.d", addr] {
            p.push(part);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap();
                created.push(p.clone());
            }
        }
        std::fs::copy(ca, p.join("ca.crt")).unwrap();
        created.push(p.join("ca.crt"));
        CertsDEntry { created }
    }
}

impl Drop for CertsDEntry {
    fn drop(&mut self) {
        for p in self.created.iter().rev() {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
}

#[test]
fn tls_registry_pull_needs_the_ca_in_certs_d() {
    let (_c, o) = setup();
    let pki = Pki::new();
    let reg = SecureRegistry::start(Auth::None, Some(&pki), None);
    let addr = reg.addr();
    let image = format!("{addr}/library/busybox:latest");

    let out = o.docker(&["pull", &image], LIMIT);
    assert!(!out.status.success(), "pull from an unknown CA succeeded");
    let msg = out_err(&out);
    assert!(
        msg.contains("UnknownIssuer") && msg.contains("ca.crt"),
        "{msg}"
    );

    let _ca = CertsDEntry::install(&addr, &pki.ca_cert());
    let out = o.docker_ok(&["pull", &image], LIMIT);
    assert!(out.contains("Downloaded newer image"), "{out}");
}

#[test]
fn insecure_registry_flag_skips_verification() {
    require_root();
    require_tool(DOCKER_CLI);
    let pki = Pki::new();
    let reg = SecureRegistry::start(Auth::None, Some(&pki), None);
    let addr = reg.addr();
    let c = Containerd::start();
    let o = Orcad::start_with(&c.socket(), &["--insecure-registry", &addr]);
    let image = format!("{addr}/library/busybox:latest");
    let out = o.docker_ok(&["pull", &image], LIMIT);
    assert!(out.contains("Downloaded newer image"), "{out}");

    // A garbage X-Registry-Auth header is a 400, not a crash.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(o.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1.44/images/create?fromImage={addr}/library/busybox&tag=latest HTTP/1.1\r\n\
         Host: docker\r\nX-Registry-Auth: !!!notbase64\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("invalid X-Registry-Auth header"),
        "{answer}"
    );
    o.docker_ok(&["version"], LIMIT);
}

#[test]
fn login_and_pull_with_token_auth() {
    let (_c, o) = setup();
    let pki = Pki::new();
    let tokens = TokenServer::start(&pki, "bob", "hunter2");
    let reg = SecureRegistry::start(
        Auth::Token {
            realm: tokens.realm(),
        },
        None,
        Some(&pki),
    );
    let addr = reg.addr();
    let image = format!("{addr}/library/busybox:latest");
    let out = o.docker(&["pull", &image], LIMIT);
    assert!(!out.status.success(), "anonymous pull succeeded");
    assert!(
        out_err(&out).contains("pull access denied"),
        "{}",
        out_err(&out)
    );

    let out = o.docker(&["login", &addr, "-u", "bob", "-p", "nope"], LIMIT);
    assert!(!out.status.success());
    assert!(
        out_err(&out).contains("incorrect username or password"),
        "{}",
        out_err(&out)
    );
    let out = o.docker_ok(&["login", &addr, "-u", "bob", "-p", "hunter2"], LIMIT);
    assert!(out.contains("Login Succeeded"), "{out}");
    o.docker_ok(&["pull", &image], LIMIT);
    let seen = tokens.requests();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("bob ") && l.contains("repository:library/busybox:pull")),
        "{seen:?}"
    );
    // Push through the token dance (pull,push scope).
    let copy = format!("{addr}/bob/bb:1");
    o.docker_ok(&["tag", &image, &copy], LIMIT);
    let out = o.docker_ok(&["push", &copy], LIMIT);
    assert!(out.contains("1: digest: sha256:"), "{out}");
}
