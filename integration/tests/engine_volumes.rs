//! Volumes in orcad (the `local` driver), driven by the real docker CLI 28
//! on Debian's containerd 1.6: `docker volume create/ls/inspect/rm/prune`,
//! `-v name:/path` shared between containers, copy-up of image content,
//! `:ro`, `nocopy`, `rm -v` / `--rm` and anonymous volumes,
//! `--volumes-from`, option (tmpfs) volumes, events, bad names, `system df`,
//! and a volume surviving an orcad restart.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orca_integration::engine_support::{orcad_with_busybox, run_with_limit, Orcad, DOCKER_CLI};
use orca_integration::{require_root, require_tool, unique_name, wait_until, Containerd, Registry};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    v["message"].as_str().unwrap_or("").to_string()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn volume_commands_events_and_bad_input() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let events_since = {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    };
    let v1 = unique_name("vol");
    // create / inspect / ls
    let created = o.docker_ok(
        &["volume", "create", "--label", "team=a", "--label", "x", &v1],
        T,
    );
    assert_eq!(created.trim(), v1);
    let i = json(&o.docker_ok(&["volume", "inspect", &v1], T))[0].clone();
    assert_eq!(i["Name"], v1.as_str(), "{i}");
    assert_eq!(i["Driver"], "local");
    assert_eq!(i["Scope"], "local");
    assert_eq!(i["Labels"]["team"], "a");
    assert_eq!(i["Labels"]["x"], "");
    let mp = i["Mountpoint"].as_str().unwrap().to_string();
    assert_eq!(
        PathBuf::from(&mp),
        o.data_root().join("volumes").join(&v1).join("_data")
    );
    assert!(Path::new(&mp).is_dir(), "{mp} missing");
    assert!(i["CreatedAt"].as_str().is_some_and(|s| s.starts_with("20")));
    // Anonymous: a 64-hex name.
    let anon = o.docker_ok(&["volume", "create"], T).trim().to_string();
    assert_eq!(anon.len(), 64, "{anon}");
    assert!(anon.bytes().all(|b| b.is_ascii_hexdigit()));
    // Creating an existing name returns it.
    assert_eq!(o.docker_ok(&["volume", "create", &v1], T).trim(), v1);

    let ls = o.docker_ok(&["volume", "ls", "-q"], T);
    assert!(
        ls.lines().any(|l| l == v1) && ls.lines().any(|l| l == anon),
        "{ls}"
    );
    let ls = o.docker_ok(&["volume", "ls", "-q", "--filter", "label=team=a"], T);
    assert_eq!(ls.lines().collect::<Vec<_>>(), vec![v1.as_str()], "{ls}");
    let ls = o.docker_ok(
        &["volume", "ls", "-q", "--filter", &format!("name={v1}")],
        T,
    );
    assert_eq!(ls.lines().collect::<Vec<_>>(), vec![v1.as_str()]);
    let ls = o.docker_ok(&["volume", "ls", "-q", "--filter", "driver=local"], T);
    assert_eq!(ls.lines().count(), 2, "{ls}");
    let out_ls = o.docker(&["volume", "ls", "--filter", "bogus=1"], T);
    assert!(!out_ls.status.success());
    assert!(
        err(&out_ls).contains("invalid filter 'bogus'"),
        "{}",
        err(&out_ls)
    );

    // Malformed names → 400 with dockerd's message; other drivers → 501.
    for bad in ["a", "_bad", "bad/name", "bad name"] {
        let body = serde_json::json!({ "Name": bad }).to_string();
        let (code, b) = o
            .http("POST", "/v1.44/volumes/create", Some(body.as_bytes()))
            .unwrap();
        assert_eq!(code, 400, "{bad}: {}", String::from_utf8_lossy(&b));
    }
    let r = o.docker(&["volume", "create", "bad$name"], T);
    assert!(!r.status.success());
    assert!(
        err(&r).contains("includes invalid characters for a local volume name"),
        "{}",
        err(&r)
    );
    let (code, b) = o
        .http(
            "POST",
            "/v1.44/volumes/create",
            Some(br#"{"Name":"nfsvol","Driver":"nfs"}"#),
        )
        .unwrap();
    assert_eq!(code, 501, "{}", String::from_utf8_lossy(&b));
    let (code, b) = o
        .http(
            "POST",
            "/v1.44/volumes/create",
            Some(br#"{"Name":"optvol","DriverOpts":{"bogus":"1"}}"#),
        )
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&b));
    let (code, _) = o
        .http("POST", "/v1.44/volumes/create", Some(br#"{"Name":5}"#))
        .unwrap();
    assert_eq!(code, 400);
    let (code, _) = o
        .http("POST", "/v1.44/volumes/create", Some(b"{nope"))
        .unwrap();
    assert_eq!(code, 400);
    // `-v` with an invalid volume name fails the create with 400 and
    // leaves no container behind.
    let r = o.docker(&["create", "-v", "x$y:/data", &image, "true"], T);
    assert!(!r.status.success());
    assert!(
        err(&r).contains("includes invalid characters for a local volume name"),
        "{}",
        err(&r)
    );
    assert_eq!(o.docker_ok(&["ps", "-aq"], T).trim(), "");
    // A create failing for another reason (bad memory value, name in use)
    // creates no volume.
    let r = o.docker(
        &["create", "-m", "1m", "-v", "fresh1:/d", &image, "true"],
        T,
    );
    assert!(!r.status.success());
    let dup = unique_name("dup");
    o.docker_ok(&["create", "--name", &dup, &image, "true"], T);
    let r = o.docker(
        &["create", "--name", &dup, "-v", "fresh2:/d", &image, "true"],
        T,
    );
    assert!(err(&r).contains("is already in use"), "{}", err(&r));
    // Bad mount specs: 400.
    let r = o.docker(
        &[
            "create",
            "--volumes-from",
            &format!("{dup}:bogus"),
            &image,
            "true",
        ],
        T,
    );
    assert!(
        err(&r).contains("invalid mode for volumes-from"),
        "{}",
        err(&r)
    );
    let (code, b) = o
        .http(
            "POST",
            "/v1.44/containers/create",
            Some(
                format!(
                    r#"{{"Image":"{image}","Cmd":["true"],"HostConfig":{{"Mounts":[{{"Type":"volume","Source":"fresh3","Target":"/d","BindOptions":{{"Propagation":"rshared"}}}}]}}}}"#
                )
                .as_bytes(),
            ),
        )
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&b));
    o.docker_ok(&["rm", &dup], T);
    for n in [
        "nfsvol", "optvol", "a", "_bad", "fresh1", "fresh2", "fresh3",
    ] {
        let (code, _) = o.http("GET", &format!("/v1.44/volumes/{n}"), None).unwrap();
        assert_eq!(code, 404, "{n} exists");
    }
    let (code, b) = o.http("GET", "/v1.44/volumes/nope-nope", None).unwrap();
    assert_eq!(code, 404);
    assert_eq!(message(&b), "get nope-nope: no such volume");

    // In use, even by a stopped container → 409.
    let c = unique_name("vc");
    o.docker_ok(
        &[
            "run",
            "--name",
            &c,
            "-v",
            &format!("{v1}:/data"),
            &image,
            "true",
        ],
        T,
    );
    let r = o.docker(&["volume", "rm", &v1], T);
    assert!(!r.status.success());
    assert!(err(&r).contains("volume is in use"), "{}", err(&r));
    let (code, b) = o
        .http("DELETE", &format!("/v1.44/volumes/{v1}?force=1"), None)
        .unwrap();
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&b));
    assert!(message(&b).starts_with(&format!("remove {v1}: volume is in use - [")));
    // dangling filter.
    let ls = o.docker_ok(&["volume", "ls", "-q", "--filter", "dangling=true"], T);
    assert!(
        ls.lines().any(|l| l == anon) && !ls.lines().any(|l| l == v1),
        "{ls}"
    );
    // system df counts it.
    let (code, b) = o.http("GET", "/v1.44/system/df", None).unwrap();
    assert_eq!(code, 200);
    let df: Value = serde_json::from_slice(&b).unwrap();
    let vols = df["Volumes"].as_array().expect("df volumes");
    let mine = vols
        .iter()
        .find(|v| v["Name"] == v1.as_str())
        .expect("df lists it");
    assert_eq!(mine["UsageData"]["RefCount"], 1, "{mine}");
    assert!(mine["UsageData"]["Size"].as_i64().is_some(), "{mine}");
    o.docker_ok(&["system", "df"], T);
    o.docker_ok(&["rm", &c], T);

    // prune: only anonymous by default, `--all` for named.
    let keep = unique_name("keep");
    o.docker_ok(&["volume", "create", "--label", "keep=1", &keep], T);
    let p = o.docker_ok(&["volume", "prune", "-f"], T);
    assert!(p.contains(&anon), "{p}");
    let ls = o.docker_ok(&["volume", "ls", "-q"], T);
    assert!(
        !ls.lines().any(|l| l == anon) && ls.lines().any(|l| l == v1),
        "{ls}"
    );
    let p = o.docker_ok(
        &["volume", "prune", "-f", "--all", "--filter", "label!=keep"],
        T,
    );
    assert!(p.contains(&v1) && !p.contains(&keep), "{p}");
    o.docker_ok(&["volume", "rm", &keep], T);
    assert_eq!(o.docker_ok(&["volume", "ls", "-q"], T).trim(), "");
    let r = o.docker(&["volume", "rm", &keep], T);
    assert!(err(&r).contains("no such volume"), "{}", err(&r));
    o.docker_ok(&["volume", "rm", "-f", &keep], T);
    assert!(!o.data_root().join("volumes").join(&keep).exists());

    // Events: create, mount, unmount, destroy.
    let ev = unique_name("ev");
    let c = unique_name("evc");
    o.docker_ok(&["volume", "create", &ev], T);
    o.docker_ok(
        &[
            "run",
            "--name",
            &c,
            "-v",
            &format!("{ev}:/e:ro"),
            &image,
            "true",
        ],
        T,
    );
    let id = o
        .docker_ok(&["inspect", "-f", "{{.Id}}", &c], T)
        .trim()
        .to_string();
    o.docker_ok(&["rm", &c], T);
    o.docker_ok(&["volume", "rm", &ev], T);
    let until = {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    };
    let evs = o.docker_ok(
        &[
            "events",
            "--since",
            &events_since,
            "--until",
            &until,
            "--filter",
            "type=volume",
            "--filter",
            &format!("volume={ev}"),
            "--format",
            "{{json .}}",
        ],
        T,
    );
    let evs: Vec<Value> = evs.lines().map(json).collect();
    let actions: Vec<&str> = evs.iter().map(|e| e["Action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec!["create", "mount", "unmount", "destroy"],
        "{evs:?}"
    );
    let m = &evs[1]["Actor"]["Attributes"];
    assert_eq!(m["container"], id.as_str(), "{m}");
    assert_eq!(m["destination"], "/e");
    assert_eq!(m["read/write"], "false");
    assert_eq!(m["driver"], "local");
    assert!(evs
        .iter()
        .all(|e| e["Type"] == "volume" && e["Actor"]["ID"] == ev.as_str()));
}

#[test]
fn volumes_in_containers() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let data = unique_name("data");
    // Written by one container, read by a second (auto-created volume).
    o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{data}:/data"),
            &image,
            "sh",
            "-c",
            "echo shared > /data/f",
        ],
        T,
    );
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{data}:/data"),
            &image,
            "cat",
            "/data/f",
        ],
        T,
    );
    assert_eq!(got.trim(), "shared");
    // --rm kept the named volume.
    o.docker_ok(&["volume", "inspect", &data], T);

    // :ro is enforced.
    let r = o.docker(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{data}:/data:ro"),
            &image,
            "sh",
            "-c",
            "echo x > /data/g",
        ],
        T,
    );
    assert!(!r.status.success(), "write to a :ro volume succeeded");
    assert!(err(&r).contains("Read-only file system"), "{}", err(&r));

    // Copy-up: an empty volume on /etc gets the image's /etc; /bin keeps
    // its symlinks and the executable, /tmp its mode 1777.
    let etc = unique_name("etc");
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{etc}:/etc"),
            "-v",
            "/bin",
            "-v",
            "/tmp",
            &image,
            "sh",
            "-c",
            "cat /etc/passwd | head -1; readlink /bin/ls; stat -c %a /tmp",
        ],
        T,
    );
    let lines: Vec<&str> = got.lines().collect();
    assert!(lines[0].starts_with("root:"), "{got}");
    assert_eq!(lines[1], "busybox", "{got}");
    assert_eq!(lines[2], "1777", "{got}");
    let mp = o.data_root().join("volumes").join(&etc).join("_data");
    assert!(mp.join("passwd").is_file(), "copy-up missing on the host");
    // Not copied again into a non-empty volume; nocopy leaves it empty.
    fs::write(mp.join("marker"), "m").unwrap();
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{etc}:/etc"),
            &image,
            "ls",
            "/etc",
        ],
        T,
    );
    assert!(got.contains("marker") && got.contains("passwd"), "{got}");
    let empty = unique_name("empty");
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{empty}:/etc:nocopy"),
            &image,
            "ls",
            "-A",
            "/etc",
        ],
        T,
    );
    // (Only the mount points of /etc/hosts & co. are created in it.)
    assert!(!got.contains("passwd"), "nocopy volume got content: {got}");
    // --mount type=volume with a label, read-only.
    let mv = unique_name("mnt");
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "--mount",
            &format!("type=volume,source={mv},target=/m,volume-label=k=v,readonly"),
            &image,
            "sh",
            "-c",
            "touch /m/x 2>/dev/null && echo rw || echo ro",
        ],
        T,
    );
    assert_eq!(got.trim(), "ro");
    let i = json(&o.docker_ok(&["volume", "inspect", &mv], T))[0].clone();
    assert_eq!(i["Labels"]["k"], "v", "{i}");

    // inspect Mounts; rm -v removes only the anonymous volume.
    let c = unique_name("c");
    o.docker_ok(
        &[
            "create",
            "--name",
            &c,
            "-v",
            &format!("{data}:/data"),
            "-v",
            "/anon",
            &image,
            "true",
        ],
        T,
    );
    let ins = json(&o.docker_ok(&["inspect", &c], T))[0].clone();
    let mounts = ins["Mounts"].as_array().expect("Mounts");
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let named = mounts.iter().find(|m| m["Destination"] == "/data").unwrap();
    assert_eq!(named["Type"], "volume");
    assert_eq!(named["Name"], data.as_str());
    assert_eq!(named["Driver"], "local");
    assert_eq!(named["RW"], true);
    let anon_m = mounts.iter().find(|m| m["Destination"] == "/anon").unwrap();
    let anon = anon_m["Name"].as_str().unwrap().to_string();
    assert_eq!(anon.len(), 64);
    assert_eq!(
        anon_m["Source"],
        o.data_root()
            .join("volumes")
            .join(&anon)
            .join("_data")
            .display()
            .to_string()
    );

    // ps: --filter volume= (name or destination), the Mounts column.
    let id = ins["Id"].as_str().unwrap();
    let ps = o.docker_ok(
        &[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("volume={data}"),
        ],
        T,
    );
    assert_eq!(ps.trim(), id, "{ps}");
    let ps = o.docker_ok(
        &["ps", "-a", "-q", "--no-trunc", "--filter", "volume=/anon"],
        T,
    );
    assert_eq!(ps.trim(), id, "{ps}");
    let ps = o.docker_ok(
        &[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("id={id}"),
            "--format",
            "{{.Mounts}}",
        ],
        T,
    );
    assert!(ps.contains(&data), "{ps}");

    // --volumes-from: sees the volumes (and binds) of another container.
    let host_dir = tempfile::tempdir().unwrap();
    fs::write(host_dir.path().join("h"), "host\n").unwrap();
    let src = unique_name("src");
    o.docker_ok(
        &[
            "run",
            "--name",
            &src,
            "-v",
            &format!("{data}:/data"),
            "-v",
            &format!("{}:/hostdir", host_dir.path().display()),
            &image,
            "true",
        ],
        T,
    );
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "--volumes-from",
            &format!("{src}:ro"),
            &image,
            "sh",
            "-c",
            "cat /data/f /hostdir/h; touch /data/z 2>/dev/null && echo rw || echo ro",
        ],
        T,
    );
    assert_eq!(
        got.split_whitespace().collect::<Vec<_>>(),
        vec!["shared", "host", "ro"],
        "{got}"
    );
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--volumes-from",
            "no-such-ctr",
            &image,
            "true",
        ],
        T,
    );
    assert!(!r.status.success());
    assert!(
        err(&r).contains("No such container: no-such-ctr"),
        "{}",
        err(&r)
    );
    o.docker_ok(&["rm", &src], T);

    o.docker_ok(&["rm", "-v", &c], T);
    let ls = o.docker_ok(&["volume", "ls", "-q"], T);
    assert!(
        !ls.lines().any(|l| l == anon),
        "rm -v left the anonymous volume: {ls}"
    );
    assert!(
        ls.lines().any(|l| l == data),
        "rm -v removed the named volume: {ls}"
    );

    // --rm removes anonymous volumes (the image-less `-v /path` ones too).
    let before: Vec<String> = o
        .docker_ok(&["volume", "ls", "-q"], T)
        .lines()
        .map(String::from)
        .collect();
    o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            "/scratch",
            &image,
            "sh",
            "-c",
            "echo x > /scratch/y",
        ],
        T,
    );
    let after: Vec<String> = o
        .docker_ok(&["volume", "ls", "-q"], T)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(before, after, "--rm left an anonymous volume");

    // The local driver's options: a tmpfs volume, mounted at first use.
    let tv = unique_name("tmpfs");
    o.docker_ok(
        &[
            "volume",
            "create",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            "o=size=2m",
            &tv,
        ],
        T,
    );
    let got = o.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{tv}:/t"),
            &image,
            "sh",
            "-c",
            "grep ' /t ' /proc/mounts; echo ok > /t/f",
        ],
        T,
    );
    assert!(got.contains("tmpfs") && got.contains("size=2048k"), "{got}");
    let tmp_mp = o.data_root().join("volumes").join(&tv).join("_data");
    assert!(
        !tmp_mp.join("f").exists(),
        "tmpfs volume still mounted after the last container"
    );
    o.docker_ok(&["volume", "rm", &tv], T);
}

#[test]
fn volume_survives_orcad_restart() {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let (_reg, image) = Registry::with_busybox();
    let mut d = Orcad::start(&c);
    d.docker_ok(&["pull", &image], T);
    let v = unique_name("keep");
    d.docker_ok(&["volume", "create", "--label", "l=1", &v], T);
    let ctr = unique_name("w");
    d.docker_ok(
        &[
            "run",
            "--name",
            &ctr,
            "-v",
            &format!("{v}:/d"),
            &image,
            "sh",
            "-c",
            "echo persisted > /d/f",
        ],
        T,
    );
    d.restart(&[]);
    let i = json(&d.docker_ok(&["volume", "inspect", &v], T))[0].clone();
    assert_eq!(i["Labels"]["l"], "1", "{i}");
    let got = d.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            &format!("{v}:/d"),
            &image,
            "cat",
            "/d/f",
        ],
        T,
    );
    assert_eq!(got.trim(), "persisted");
    // Still referenced by the stopped container after the restart.
    let r = d.docker(&["volume", "rm", &v], T);
    assert!(err(&r).contains("volume is in use"), "{}", err(&r));
    d.docker_ok(&["rm", &ctr], T);
    d.docker_ok(&["volume", "rm", &v], T);
    assert!(!d.data_root().join("volumes").join(&v).exists());
}

/// Debian's docker-compose 1.29: a named project volume (created through
/// `POST /volumes/create` with compose's labels), an anonymous one, data
/// kept across `up`s, and `down -v` removing both.
#[test]
fn docker_compose_volumes() {
    let compose = require_tool("docker-compose");
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    fs::write(
        &file,
        format!(
            r#"version: "3.7"
services:
  app:
    image: {image}
    network_mode: none
    command: ["sh", "-c", "echo run >> /data/runs; ls /scratch >/dev/null"]
    volumes:
      - data:/data
      - /scratch
volumes:
  data:
    labels:
      purpose: test
"#
        ),
    )
    .unwrap();
    let project = format!("orcavol{}", std::process::id());
    let run = |args: &[&str]| -> Output {
        let mut cmd = o.docker_cmd();
        cmd.env_remove("DOCKER_API_VERSION");
        let mut c = Command::new(&compose);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.current_dir(dir.path())
            .args(["-p", &project, "-f", file.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null());
        run_with_limit(&mut c, T).unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let r = run(args);
        assert!(
            r.status.success(),
            "docker-compose {args:?}: {}\n{}\n--- orcad log ---\n{}",
            out(&r),
            err(&r),
            o.log()
        );
        out(&r) + &err(&r)
    };
    let vol = format!("{project}_data");
    let ctr = format!("{project}_app_1");
    let exited = || {
        wait_until(Duration::from_secs(30), || {
            o.docker_ok(&["inspect", "-f", "{{.State.Status}}", &ctr], T)
                .trim()
                == "exited"
        })
    };
    let s = ok(&["up", "-d"]);
    assert!(s.contains(&format!("Creating volume \"{vol}\"")), "{s}");
    assert!(exited(), "{ctr} did not exit");
    let i = json(&o.docker_ok(&["volume", "inspect", &vol], T))[0].clone();
    assert_eq!(i["Labels"]["purpose"], "test", "{i}");
    assert_eq!(i["Labels"]["com.docker.compose.volume"], "data", "{i}");
    assert_eq!(
        o.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &ctr], T)
            .trim(),
        "0"
    );
    // A new container (after `down` without -v) sees the first run's data.
    // (No `up --force-recreate`: compose 1.29 then reads the image's
    // `ContainerConfig`, which API 1.44 engines — dockerd 25+ too — no
    // longer send.)
    ok(&["down"]);
    // `down` keeps volumes, the anonymous one too (as with dockerd).
    let kept = o.docker_ok(&["volume", "ls", "-q"], T);
    let kept: Vec<&str> = kept.lines().collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.contains(&vol.as_str()), "{kept:?}");
    let first_anon = kept.iter().find(|v| **v != vol).unwrap().to_string();
    ok(&["up", "-d"]);
    assert!(exited());
    let runs =
        fs::read_to_string(o.data_root().join("volumes").join(&vol).join("_data/runs")).unwrap();
    assert_eq!(runs, "run\nrun\n");
    // `down -v`: the project's named volume and the container's anonymous
    // one go; the first container's (already removed) anonymous one stays.
    ok(&["down", "-v"]);
    assert_eq!(
        o.docker_ok(&["volume", "ls", "-q"], T).trim(),
        first_anon,
        "down -v"
    );
    o.docker_ok(&["volume", "prune", "-f"], T);
    assert_eq!(o.docker_ok(&["volume", "ls", "-q"], T).trim(), "");
    assert_eq!(o.docker_ok(&["ps", "-aq"], T).trim(), "");
}
