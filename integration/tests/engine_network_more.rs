//! orcad's sharing modes, driven by the docker CLI 28 on Debian's
//! containerd 1.6 with a bridge-networking orcad: `--network container:<x>`
//! (the target's address, hostname and hosts file; dockerd's errors for a
//! stopped or unknown target and for conflicting options; what happens when
//! the target restarts), `--pid container:<x>`, legacy `--link`s on the
//! default bridge (hosts entries and `ALIAS_*` variables), links on a
//! user-defined network (an alias only the linking container resolves),
//! and `--dns` on a user-defined network (the embedded DNS forwards that
//! container's other questions to a tiny DNS responder this test runs on a
//! 127.x address: no traffic leaves the machine).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orca_integration::engine_support::{NetworkedOrcad, Orcad};
use orca_integration::{unique_name, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

use orca_integration::engine_support::{stderr as err, stdout as out};

type Net = NetworkedOrcad;

fn setup() -> Net {
    NetworkedOrcad::start("OM", T)
}

fn token() -> u64 {
    unique_name("x")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
}

fn inspect(o: &Orcad, what: &str) -> Value {
    let s = o.docker_ok(&["inspect", what], T);
    let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("inspect {what}: {e}: {s}"));
    v[0].clone()
}

/// A failing docker command whose stderr holds `want`.
fn fails_with(o: &Orcad, args: &[&str], want: &str) {
    let r = o.docker(args, T);
    assert!(
        !r.status.success() && err(&r).contains(want),
        "docker {args:?}: want {want:?}, got {} / {}",
        out(&r),
        err(&r)
    );
}

#[test]
fn container_network_mode_shares_the_targets_namespace() {
    let n = setup();
    let o = &n.o;
    let img = n.image.as_str();
    let a = unique_name("a");
    o.docker_ok(&["run", "-d", "--name", &a, img, "sleep", "300"], T);
    let va = inspect(o, &a);
    let a_ip = va["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let a_host = va["Config"]["Hostname"].as_str().unwrap().to_string();
    assert!(a_ip.starts_with("10."), "{va}");
    let mode = format!("container:{a}");

    // The target's interfaces, hostname and hosts file.
    let ip = o.docker_ok(
        &["run", "--rm", "--network", &mode, img, "ip", "-o", "addr"],
        T,
    );
    assert!(ip.contains(&format!("inet {a_ip}/24")), "{ip}");
    let hn = o.docker_ok(&["run", "--rm", "--network", &mode, img, "hostname"], T);
    assert_eq!(hn.trim(), a_host);
    let hosts = o.docker_ok(
        &["run", "--rm", "--network", &mode, img, "cat", "/etc/hosts"],
        T,
    );
    assert!(hosts.contains(&format!("{a_ip}\t{a_host}")), "{hosts}");
    // By ID too; and --pid container: sees the target's processes.
    let id = va["Id"].as_str().unwrap();
    let ip = o.docker_ok(
        &[
            "run",
            "--rm",
            "--network",
            &format!("container:{}", &id[..12]),
            img,
            "ip",
            "-o",
            "addr",
        ],
        T,
    );
    assert!(ip.contains(&a_ip), "{ip}");
    let ps = o.docker_ok(&["run", "--rm", "--pid", &mode, img, "ps"], T);
    assert!(ps.contains("sleep 300"), "{ps}");

    // A long-lived sharer: inspect shows the mode; the target's paths and
    // hostname, no network of its own.
    let b = unique_name("b");
    o.docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &b,
            "--network",
            &mode,
            img,
            "sleep",
            "300",
        ],
        T,
    );
    let vb = inspect(o, &b);
    assert_eq!(vb["HostConfig"]["NetworkMode"], mode.as_str(), "{vb}");
    assert_eq!(vb["HostsPath"], va["HostsPath"], "{vb}");
    assert_eq!(vb["Config"]["Hostname"], a_host.as_str(), "{vb}");
    assert_eq!(
        vb["NetworkSettings"]["Networks"],
        serde_json::json!({}),
        "{vb}"
    );
    let env = o.docker_ok(&["exec", &b, "env"], T);
    assert!(env.contains(&format!("HOSTNAME={a_host}")), "{env}");

    fails_with(
        o,
        &["network", "connect", "bridge", &b],
        "container sharing network namespace with another container or host cannot be connected to any other network",
    );
    // dockerd's behaviour when the target restarts: the sharer keeps the old
    // (now unplugged) namespace; restarting the sharer joins the new one.
    o.docker_ok(&["restart", "-t", "0", &a], T);
    let a_ip2 = inspect(o, &a)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let ip = o.docker_ok(&["exec", &b, "ip", "-o", "addr"], T);
    assert!(
        !ip.contains("eth0"),
        "the old namespace kept an interface: {ip}"
    );
    o.docker_ok(&["restart", "-t", "0", &b], T);
    let ip = o.docker_ok(&["exec", &b, "ip", "-o", "addr"], T);
    assert!(ip.contains(&format!("inet {a_ip2}/24")), "{ip}");

    // Errors, with dockerd's messages.
    let s = unique_name("stopped");
    o.docker_ok(&["create", "--name", &s, img, "sleep", "300"], T);
    fails_with(
        o,
        &[
            "run",
            "--rm",
            "--network",
            &format!("container:{s}"),
            img,
            "true",
        ],
        &format!("cannot join network of a non running container: {s}"),
    );
    fails_with(
        o,
        &[
            "run",
            "--rm",
            "--pid",
            &format!("container:{s}"),
            img,
            "true",
        ],
        &format!("cannot join PID of a non running container: {s}"),
    );
    fails_with(
        o,
        &[
            "run",
            "--rm",
            "--network",
            "container:no-such-target-x",
            img,
            "true",
        ],
        "No such container: no-such-target-x",
    );
    for (extra, want) in [
        (
            &["-p", "127.0.0.1:18080:80"][..],
            "conflicting options: port publishing and the container type network mode",
        ),
        (
            &["--expose", "80"][..],
            "conflicting options: port exposing and the container type network mode",
        ),
        (
            &["--dns", "10.0.0.1"][..],
            "conflicting options: dns and the network mode",
        ),
        (
            &["-h", "other"][..],
            "conflicting options: hostname and the network mode",
        ),
        (
            &["--add-host", "x:10.0.0.1"][..],
            "conflicting options: custom host-to-IP mapping and the network mode",
        ),
        (
            &["--link", &a][..],
            "conflicting options: container type network can't be used with links",
        ),
    ] {
        let mut args = vec!["create", "--network", mode.as_str()];
        args.extend(extra);
        args.extend([img, "true"]);
        fails_with(o, &args, want);
    }
    // Nothing was left by the refused creates.
    let all = o.docker_ok(&["ps", "-aq"], T);
    assert_eq!(all.lines().count(), 3, "{all}");
    o.docker_ok(&["rm", "-f", &b, &a, &s], T);
    let rules: String = ["nat", "filter"]
        .iter()
        .map(|t| {
            let o = std::process::Command::new("iptables")
                .args(["-w", "-t", t, "-S"])
                .output()
                .unwrap();
            out(&o)
        })
        .collect();
    assert!(
        !rules
            .lines()
            .any(|l| l.contains(&n.chain) && l.contains("--to-destination")),
        "{rules}"
    );
}

/// A tiny DNS responder on `addr:53` (UDP): A questions for `name` get
/// `answer`, everything else an empty NOERROR. Records every name asked.
struct FakeDns {
    stop: Arc<AtomicBool>,
    asked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDns {
    fn start(addr: &str, name: &str, answer: [u8; 4]) -> FakeDns {
        let sock = UdpSocket::bind((addr, 53)).unwrap_or_else(|e| panic!("bind {addr}:53: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (s2, a2, want) = (stop.clone(), asked.clone(), name.to_ascii_lowercase());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::SeqCst) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let m = &buf[..len];
                if len < 12 {
                    continue;
                }
                // The first question: labels, type, class.
                let mut i = 12;
                let mut labels = Vec::new();
                while i < len && m[i] != 0 && m[i] < 64 {
                    let l = m[i] as usize;
                    labels.push(
                        String::from_utf8_lossy(&m[i + 1..(i + 1 + l).min(len)])
                            .to_ascii_lowercase(),
                    );
                    i += 1 + l;
                }
                let end = i + 5;
                if end > len {
                    continue;
                }
                let qname = labels.join(".");
                let qtype = u16::from_be_bytes([m[i + 1], m[i + 2]]);
                a2.lock().unwrap().push(qname.clone());
                let hit = qname == want && qtype == 1;
                let mut r = Vec::new();
                r.extend_from_slice(&m[0..2]);
                r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, hit as u8, 0, 0, 0, 0]);
                r.extend_from_slice(&m[12..end]);
                if hit {
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    r.extend_from_slice(&answer);
                }
                let _ = sock.send_to(&r, from);
            }
        });
        FakeDns {
            stop,
            asked,
            thread: Some(thread),
        }
    }

    fn asked(&self, name: &str) -> bool {
        self.asked.lock().unwrap().iter().any(|q| q == name)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn links_and_dns_servers_on_user_networks() {
    let n = setup();
    let o = &n.o;
    let img = n.image.as_str();

    // Legacy link on the default bridge: hosts entry and variables.
    let a = unique_name("a");
    o.docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &a,
            "-e",
            "SECRET=s3cret",
            "--expose",
            "8080",
            img,
            "sleep",
            "300",
        ],
        T,
    );
    let va = inspect(o, &a);
    let a_ip = va["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let p = unique_name("p");
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--name",
            &p,
            "--link",
            &format!("{a}:al"),
            img,
            "sh",
            "-c",
            "ping -c1 -W3 al && cat /etc/hosts && env | grep ^AL_ | sort",
        ],
        T,
    );
    let s = out(&r);
    assert!(r.status.success(), "{s}{}", err(&r));
    assert!(s.contains(&format!("({a_ip})")), "ping al: {s}");
    assert!(s.contains(&format!("{a_ip}\tal ")), "hosts: {s}");
    for want in [
        format!("AL_NAME=/{p}/al"),
        "AL_ENV_SECRET=s3cret".to_string(),
        format!("AL_PORT=tcp://{a_ip}:8080"),
        format!("AL_PORT_8080_TCP_ADDR={a_ip}"),
        "AL_PORT_8080_TCP_PORT=8080".to_string(),
        "AL_PORT_8080_TCP_PROTO=tcp".to_string(),
    ] {
        assert!(s.lines().any(|l| l == want), "missing {want}: {s}");
    }
    assert!(!s.contains("AL_ENV_PATH"), "{s}");
    // A running parent's hosts file follows the child to a new address.
    let p2 = unique_name("p2");
    o.docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &p2,
            "--link",
            &format!("{a}:al"),
            img,
            "sleep",
            "300",
        ],
        T,
    );
    o.docker_ok(&["stop", "-t", "0", &a], T);
    let filler = unique_name("filler");
    o.docker_ok(&["run", "-d", "--name", &filler, img, "sleep", "300"], T);
    o.docker_ok(&["start", &a], T);
    let a_ip2 = inspect(o, &a)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        a_ip2, a_ip,
        "the child kept its address; the test proves nothing"
    );
    let hosts = o.docker_ok(&["exec", &p2, "cat", "/etc/hosts"], T);
    assert!(hosts.contains(&format!("{a_ip2}\tal ")), "{hosts}");
    assert!(!hosts.contains(&format!("{a_ip}\tal ")), "{hosts}");
    let r = o.docker(&["exec", &p2, "ping", "-c1", "-W3", "al"], T);
    assert!(
        r.status.success() && out(&r).contains(&a_ip2),
        "{}{}",
        out(&r),
        err(&r)
    );
    // A link to an unknown container is refused at create, one to a stopped
    // container at start.
    fails_with(
        o,
        &["create", "--link", "no-such-child-x:c", img, "true"],
        "could not get container for no-such-child-x",
    );
    let st = unique_name("st");
    o.docker_ok(&["create", "--name", &st, img, "sleep", "300"], T);
    fails_with(
        o,
        &["run", "--rm", "--link", &format!("{st}:c"), img, "true"],
        "Cannot link to a non running container",
    );

    // User-defined network: the link is an alias for the linking container
    // only; the target need not exist at create.
    let net = unique_name("un");
    o.docker_ok(&["network", "create", &net], T);
    let gw = {
        let v: Value =
            serde_json::from_str(&o.docker_ok(&["network", "inspect", &net], T)).unwrap();
        v[0]["IPAM"]["Config"][0]["Gateway"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let t = unique_name("t");
    o.docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &t,
            "--network",
            &net,
            img,
            "sleep",
            "300",
        ],
        T,
    );
    let t_ip = inspect(o, &t)["NetworkSettings"]["Networks"][&net]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--network",
            &net,
            "--link",
            &format!("{t}:dbx"),
            img,
            "ping",
            "-c1",
            "-W3",
            "dbx",
        ],
        T,
    );
    assert!(
        r.status.success() && out(&r).contains(&t_ip),
        "{}{}",
        out(&r),
        err(&r)
    );
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--network",
            &net,
            img,
            "ping",
            "-c1",
            "-W3",
            "dbx",
        ],
        T,
    );
    assert!(
        !r.status.success(),
        "dbx resolved without the link: {}",
        out(&r)
    );

    // `network connect --link` gives a running container such an alias.
    let c2 = unique_name("c2");
    o.docker_ok(&["run", "-d", "--name", &c2, img, "sleep", "300"], T);
    o.docker_ok(
        &[
            "network",
            "connect",
            "--link",
            &format!("{t}:lnk"),
            &net,
            &c2,
        ],
        T,
    );
    let r = o.docker(&["exec", &c2, "ping", "-c1", "-W3", "lnk"], T);
    assert!(
        r.status.success() && out(&r).contains(&t_ip),
        "{}{}",
        out(&r),
        err(&r)
    );
    let links = &inspect(o, &c2)["NetworkSettings"]["Networks"][&net]["Links"];
    assert_eq!(links[0], format!("{t}:lnk").as_str(), "{links}");
    // --dns on a user network: resolv.conf keeps the embedded DNS (the
    // gateway) with the search/options given; other names go to the
    // container's server.
    let tk = token();
    let dns_addr = format!(
        "127.{}.{}.{}",
        1 + tk % 250,
        (tk >> 8) % 250,
        1 + (tk >> 16) % 250
    );
    let fake = FakeDns::start(&dns_addr, "made-up.orca.test", [10, 123, 45, 67]);
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--network",
            &net,
            "--dns",
            &dns_addr,
            "--dns-search",
            "corp.example",
            "--dns-option",
            "ndots:2",
            img,
            "sh",
            "-c",
            &format!("cat /etc/resolv.conf; nslookup made-up.orca.test; ping -c1 -W3 {t}"),
        ],
        T,
    );
    let s = out(&r);
    assert!(r.status.success(), "{s}{}", err(&r));
    assert!(s.contains(&format!("nameserver {gw}")), "{s}");
    assert!(!s.contains(&format!("nameserver {dns_addr}")), "{s}");
    assert!(s.contains("search corp.example"), "{s}");
    assert!(s.contains("options ndots:2"), "{s}");
    assert!(s.contains("10.123.45.67"), "nslookup through --dns: {s}");
    assert!(s.contains(&t_ip), "container names still resolve: {s}");
    assert!(fake.asked("made-up.orca.test"));
    assert!(!fake.asked(&t), "a container name was forwarded");
    // Another container on the network does not use that server.
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--network",
            &net,
            img,
            "nslookup",
            "only-mine.orca.test",
        ],
        T,
    );
    assert!(!out(&r).contains("10.123.45.67"), "{}", out(&r));
    assert!(
        !fake.asked("only-mine.orca.test"),
        "a container without --dns used the other container's server"
    );
    drop(fake);
    o.docker_ok(&["rm", "-f", &a, &t, &st, &p2, &filler, &c2], T);
    o.docker_ok(&["network", "rm", &net], T);
    assert!(wait_until(Duration::from_secs(5), || out(
        &o.docker(&["ps", "-aq"], T)
    )
    .trim()
    .is_empty()));
}
