//! orcad's tcp listener: TLS with client certificates only, judged by the
//! real docker CLI (28.x) and by orca's own CLI. Certificates are made with
//! the `openssl` CLI in a temp dir: a CA, a server certificate for IP
//! 127.0.0.1, a client certificate, and a client certificate from another
//! CA. orcad listens on its unix socket and on tcp at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orca_integration::engine_support::{run_with_limit, text, Orcad, DOCKER_CLI};
use orca_integration::{
    assert_success, bin_path, free_port, require_root, require_tool, Containerd, Registry,
};

const T: Duration = Duration::from_secs(120);

/// The certificates of one test.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn p(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }
}

#[track_caller]
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert_success(&out, &format!("openssl {args:?}"));
}

/// A self-signed CA `NAME.pem` / `NAME-key.pem`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=orca test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `NAME.pem` / `NAME-key.pem` signed by CA `ca` with extensions `ext`.
fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn make_certs() -> Certs {
    require_tool("openssl");
    let dir = tempfile::Builder::new()
        .prefix("orca-tls-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "otherca");
    make_leaf(
        d,
        "ca",
        "server",
        "orcad",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    );
    let client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n";
    make_leaf(d, "ca", "client", "client", client_ext);
    make_leaf(d, "otherca", "rogue", "rogue", client_ext);
    Certs { dir }
}

/// orcad on containerd with its unix socket and `tcp://127.0.0.1:PORT`
/// (a free port; another pick if the port was taken meanwhile).
fn start_tls_orcad(c: &Containerd, certs: &Certs) -> (Orcad, u16) {
    for attempt in 0..3 {
        let port = free_port();
        let host = format!("tcp://127.0.0.1:{port}");
        let (ca, cert, key) = (
            certs.p("ca.pem"),
            certs.p("server.pem"),
            certs.p("server-key.pem"),
        );
        let args = [
            "-H",
            &host,
            "--tlsverify",
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Orcad::start_with(&c.socket(), &args)
        }));
        match r {
            Ok(o) => return (o, port),
            Err(e) if attempt < 2 => {
                eprintln!("orcad did not start on port {port} (retrying): {e:?}");
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    unreachable!()
}

/// A docker CLI command over TLS (`extra` before the subcommand: which
/// client certificate, if any).
fn docker_tls(o: &Orcad, port: u16, tls: &[String], args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = o.docker_cmd();
    c.env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .args(tls)
        .args(["-H", &format!("tcp://127.0.0.1:{port}")])
        .args(args);
    match stdin {
        None => run_with_limit(&mut c, T).unwrap_or_else(|e| panic!("docker {args:?}: {e}")),
        Some(input) => {
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().expect("spawn docker");
            let mut si = child.stdin.take().unwrap();
            si.write_all(input).unwrap();
            drop(si);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(child.wait_with_output());
            });
            rx.recv_timeout(T)
                .unwrap_or_else(|_| panic!("docker {args:?} timed out\n{}", o.log()))
                .expect("docker output")
        }
    }
}

fn tls_flags(certs: &Certs, client: Option<&str>) -> Vec<String> {
    let mut v = vec![
        "--tlsverify".to_string(),
        "--tlscacert".into(),
        certs.p("ca.pem"),
    ];
    if let Some(c) = client {
        v.extend([
            "--tlscert".into(),
            certs.p(&format!("{c}.pem")),
            "--tlskey".into(),
            certs.p(&format!("{c}-key.pem")),
        ]);
    }
    v
}

/// One raw exchange on the TLS port without TLS: what comes back.
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the TLS port");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

#[test]
fn docker_cli_over_tls_and_refused_clients() {
    require_root();
    require_tool(DOCKER_CLI);
    let certs = make_certs();
    let c = Containerd::start();
    let (o, port) = start_tls_orcad(&c, &certs);
    let (_reg, image) = Registry::with_busybox();
    let good = tls_flags(&certs, Some("client"));

    // version over TLS; the unix socket serves at the same time.
    let out = docker_tls(
        &o,
        port,
        &good,
        &["version", "--format", "{{.Server.APIVersion}}"],
        None,
    );
    assert_success(&out, "docker --tlsverify version");
    assert_eq!(text(&out.stdout).trim(), "1.44");
    o.docker_ok(&["version"], T);

    // pull, run --rm, run -i with stdin (hijacked attach over TLS).
    assert_success(
        &docker_tls(&o, port, &good, &["pull", &image], None),
        "docker pull over TLS",
    );
    let out = docker_tls(
        &o,
        port,
        &good,
        &["run", "--rm", &image, "echo", "hi"],
        None,
    );
    assert_success(&out, "docker run --rm over TLS");
    assert_eq!(text(&out.stdout), "hi\n");
    let input: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let out = docker_tls(
        &o,
        port,
        &good,
        &["run", "-i", "--rm", &image, "sh", "-c", "wc -l; echo done"],
        Some(input.as_bytes()),
    );
    assert_success(&out, "docker run -i over TLS");
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["2000", "done"]
    );

    // A TTY (raw stream, no stdcopy framing) over TLS, in a pty.
    let mut c = o.docker_cmd();
    c.env_remove("DOCKER_HOST")
        .args(&good)
        .args(["-H", &format!("tcp://127.0.0.1:{port}")])
        .args(["run", "-t", "--rm", &image, "sh", "-c", "tty; echo tty-ok"]);
    let (status, screen) = orca_integration::run_in_pty(&mut c, T);
    assert!(status.success(), "docker run -t over TLS: {screen}");
    assert!(
        screen.contains("/dev/pts/0") && screen.contains("tty-ok"),
        "{screen:?}"
    );

    // exec over TLS.
    let out = docker_tls(
        &o,
        port,
        &good,
        &["run", "-d", &image, "sleep", "1000"],
        None,
    );
    assert_success(&out, "docker run -d over TLS");
    let id = text(&out.stdout).trim().to_string();
    let out = docker_tls(
        &o,
        port,
        &good,
        &["exec", "-i", &id, "cat"],
        Some(b"via exec\n"),
    );
    assert_success(&out, "docker exec -i over TLS");
    assert_eq!(text(&out.stdout), "via exec\n");
    assert_success(
        &docker_tls(&o, port, &good, &["rm", "-f", &id], None),
        "docker rm -f",
    );

    // A client without a certificate is refused at the handshake.
    let out = docker_tls(&o, port, &tls_flags(&certs, None), &["version"], None);
    assert!(!out.status.success(), "no client cert must be refused");
    let err = text(&out.stderr);
    assert!(err.contains("tls") && err.contains("certificate"), "{err}");
    assert!(
        !text(&out.stdout).contains("Server:"),
        "{}",
        text(&out.stdout)
    );

    // A client certificate from another CA is refused.
    let mut rogue = vec![
        "--tlsverify".to_string(),
        "--tlscacert".into(),
        certs.p("ca.pem"),
    ];
    rogue.extend([
        "--tlscert".into(),
        certs.p("rogue.pem"),
        "--tlskey".into(),
        certs.p("rogue-key.pem"),
    ]);
    let out = docker_tls(&o, port, &rogue, &["ps"], None);
    assert!(
        !out.status.success(),
        "a foreign client cert must be refused"
    );
    let err = text(&out.stderr);
    assert!(err.contains("tls"), "{err}");

    // The client also verifies the server: a CA that did not sign it fails.
    let mut wrong_ca = vec![
        "--tlsverify".to_string(),
        "--tlscacert".into(),
        certs.p("otherca.pem"),
    ];
    wrong_ca.extend(good[3..].iter().cloned());
    let out = docker_tls(&o, port, &wrong_ca, &["version"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    // Plain HTTP to the TLS port: Go's 400 answer, shown by the docker CLI.
    let reply = text(&raw_exchange(
        port,
        b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    assert!(reply.starts_with("HTTP/1.0 400"), "{reply:?}");
    assert!(
        reply.contains("Client sent an HTTP request to an HTTPS server"),
        "{reply:?}"
    );
    let mut plain = o.docker_cmd();
    plain
        .env_remove("DOCKER_HOST")
        .args(["-H", &format!("tcp://127.0.0.1:{port}"), "ps"]);
    let out = run_with_limit(&mut plain, T).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Client sent an HTTP request to an HTTPS server"),
        "{}",
        text(&out.stderr)
    );
    // Garbage, and a client that connects and goes away, end only themselves.
    let _ = raw_exchange(port, &[0x00, 0xff, 0x13, 0x37]);
    let _ = raw_exchange(port, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());

    // orcad still serves TLS clients.
    let out = docker_tls(
        &o,
        port,
        &good,
        &["run", "--rm", &image, "echo", "still"],
        None,
    );
    assert_success(&out, "docker run after bad clients");
    assert_eq!(text(&out.stdout), "still\n");

    // orca's own CLI: flags, then DOCKER_TLS_VERIFY + DOCKER_CERT_PATH.
    let orca = bin_path("orca");
    let mut cmd = Command::new(&orca);
    cmd.args(&good)
        .args([
            "-H",
            &format!("tcp://127.0.0.1:{port}"),
            "run",
            "--rm",
            &image,
            "echo",
            "orca-tls",
        ])
        .env_remove("ORCA_HOST")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null());
    let out = run_with_limit(&mut cmd, T).unwrap();
    assert_success(&out, "orca --tlsverify run");
    assert_eq!(text(&out.stdout), "orca-tls\n");
    let cert_dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("client.pem", "cert.pem"),
        ("client-key.pem", "key.pem"),
    ] {
        std::fs::copy(certs.path(from), cert_dir.path().join(to)).unwrap();
    }
    let mut cmd = Command::new(&orca);
    cmd.args(["ps", "-a"])
        .env_remove("ORCA_HOST")
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", cert_dir.path())
        .stdin(Stdio::null());
    let out = run_with_limit(&mut cmd, T).unwrap();
    assert_success(&out, "orca ps with DOCKER_TLS_VERIFY");
    assert!(
        text(&out.stdout).contains("CONTAINER ID"),
        "{}",
        text(&out.stdout)
    );
    // orca without a client certificate: the handshake error, exit 1.
    let mut cmd = Command::new(&orca);
    cmd.args(tls_flags(&certs, None))
        .args(["-H", &format!("tcp://127.0.0.1:{port}"), "ps"])
        .env_remove("ORCA_HOST")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null());
    let out = run_with_limit(&mut cmd, T).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("TLS"), "{}", text(&out.stderr));
}

/// orcad on tcp without full TLS client verification exits 1 with the
/// reason, before touching containerd (the socket given does not exist).
#[test]
fn orcad_refuses_tcp_without_tlsverify() {
    require_root();
    let certs = make_certs();
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let host = format!("tcp://127.0.0.1:{port}");
    let run = |extra: &[&str]| -> Output {
        let mut c = Command::new(bin_path("orcad"));
        c.args(["--containerd"])
            .arg(t.path().join("no-containerd.sock"))
            .arg("--data-root")
            .arg(t.path().join("data"))
            .arg("--exec-root")
            .arg(t.path().join("exec"))
            .args(extra)
            .stdin(Stdio::null());
        run_with_limit(&mut c, Duration::from_secs(30)).unwrap()
    };
    let expect_fail = |out: Output, needle: &str| {
        assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    };
    let sock = format!("unix://{}", t.path().join("o.sock").display());
    expect_fail(run(&["-H", &host]), "without TLS client verification");
    expect_fail(run(&["-H", &sock, "-H", &host, "--tls"]), "--tls alone");
    let (ca, cert, key) = (
        certs.p("ca.pem"),
        certs.p("server.pem"),
        certs.p("server-key.pem"),
    );
    expect_fail(
        run(&[
            "-H",
            &host,
            "--tlsverify",
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
        ]),
        "--tlskey",
    );
    // daemon.json: hosts with tcp and no tlsverify.
    let cfg = t.path().join("daemon.json");
    std::fs::write(
        &cfg,
        format!(r#"{{"hosts": ["{sock}", "{host}"], "tls": true}}"#),
    )
    .unwrap();
    expect_fail(
        run(&["--config-file", cfg.to_str().unwrap()]),
        "without TLS client verification",
    );
    std::fs::write(&cfg, r#"{"tlsverify": "yes"}"#).unwrap();
    expect_fail(
        run(&["--config-file", cfg.to_str().unwrap()]),
        "\"tlsverify\"",
    );
    // Unreadable or wrong files are named.
    let missing = t.path().join("missing.pem").display().to_string();
    expect_fail(
        run(&[
            "-H",
            &host,
            "--tlsverify",
            "--tlscacert",
            &ca,
            "--tlscert",
            &missing,
            "--tlskey",
            &key,
        ]),
        "--tlscert",
    );
    expect_fail(
        run(&[
            "-H",
            &host,
            "--tlsverify",
            "--tlscacert",
            &key,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ]),
        "--tlscacert",
    );
    // Nothing was left listening or behind.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open"
    );
    assert!(
        !t.path().join("o.sock").exists(),
        "the unix socket was left behind"
    );
}
