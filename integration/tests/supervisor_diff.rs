//! orca-supervisor's Diff.Diff (containerd's "Compare") judged by Debian's
//! `ctr` 1.6 (`ctr snapshots diff`, `ctr content`) and, for the entry list
//! of the same change, by Debian's containerd 1.6 itself. Round trips go
//! through Diff.Apply on fresh snapshots; bad input through a gRPC client.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orca_integration::{
    require_root, require_tool, sha256_digest, wait_until, Containerd, Registry, Supervisor,
};
use orca_proto::diff::diff_client::DiffClient;
use orca_proto::diff::{ApplyRequest, DiffRequest};
use orca_proto::snapshots::snapshots_client::SnapshotsClient;
use orca_proto::snapshots::MountsRequest;
use orca_proto::tonic::{transport::Channel, Code, Request};
use orca_proto::types::{Descriptor, Mount};

#[path = "common/grpc.rs"]
mod grpc;
use grpc::{connect, rt};

const NS: &str = "diff";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A `ctr` peer: orca-supervisor or containerd.
trait Peer {
    fn cmd(&self) -> Command;
    fn log(&self) -> String;
}

impl Peer for Supervisor {
    fn cmd(&self) -> Command {
        self.ctr_cmd_ns(NS)
    }
    fn log(&self) -> String {
        Supervisor::log(self)
    }
}

impl Peer for Containerd {
    fn cmd(&self) -> Command {
        self.ctr_cmd_ns(NS)
    }
    fn log(&self) -> String {
        Containerd::log(self)
    }
}

fn ctr(p: &dyn Peer, args: &[&str]) -> Output {
    let mut c = p.cmd();
    c.args(args);
    orca_integration::output_via_files(&mut c).unwrap_or_else(|e| panic!("cannot run ctr: {e}"))
}

#[track_caller]
fn ctr_ok(p: &dyn Peer, args: &[&str]) -> Vec<u8> {
    let out = ctr(p, args);
    if !out.status.success() {
        let log = p.log();
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "ctr {args:?} failed: {}\n--- stderr ---\n{}\n--- peer log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
    }
    out.stdout
}

/// `snapshots --snapshotter SN ARGS…`.
fn snap<'a>(sn: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["snapshots", "--snapshotter", sn];
    a.extend_from_slice(args);
    a
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Mount points that are unmounted (detached) on drop.
struct MountGuard(Vec<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts snapshot `key` on `target` with the command `ctr snapshots mounts`
/// prints.
#[track_caller]
fn mount_snapshot(p: &dyn Peer, sn: &str, key: &str, target: &Path, guard: &mut MountGuard) {
    fs::create_dir_all(target).unwrap();
    let line = text(&ctr_ok(
        p,
        &snap(sn, &["mounts", target.to_str().unwrap(), key]),
    ));
    let out = Command::new("sh")
        .args(["-c", line.trim()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard.0.push(target.to_path_buf());
}

fn unmount(target: &Path, guard: &mut MountGuard) {
    // The tests run side by side and spawn processes: a child forked while this one listed the
    // tree holds copies of its directory descriptors until it execs, and the mount is busy for
    // that moment.
    let mut tries = 0;
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => {
                r.unwrap_or_else(|e| panic!("umount {}: {e}", target.display()));
                break;
            }
        }
    }
    guard.0.retain(|p| p != target);
}

fn sh(script: &str, root: &Path) {
    let out = Command::new("sh")
        .args(["-euc", script])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The change set the tests diff, made on a busybox rootfs at `root`:
/// a new file, a new dir with a file, a hard link, a symlink and a fifo, a
/// deleted symlink (bin/ls), a deleted dir (root/), a mode change (tmp/),
/// and either an appended file (etc/passwd) or, with `opaque`, etc/
/// replaced by a new dir (rm -rf + mkdir: overlay makes it opaque).
fn make_changes(root: &Path, opaque: bool) {
    sh(
        "echo 'hello diff' > hello.txt
         mkdir newdir && echo data > newdir/a && ln newdir/a newdir/hard
         ln -s a newdir/link && mkfifo newdir/fifo
         rm bin/ls && rm -rf root && chmod 700 tmp",
        root,
    );
    if opaque {
        sh("rm -rf etc && mkdir etc && echo orca > etc/hostname", root);
    } else {
        sh("echo 'extra:x:1000:1000::/:/bin/sh' >> etc/passwd", root);
    }
}

/// A peer with busybox pulled and two active snapshots on its layer:
/// `act` (changed by [`make_changes`]) and `untouched`.
struct Scene {
    tmp: tempfile::TempDir,
    chain: String,
}

#[track_caller]
fn scene(p: &dyn Peer, sn: &str, image: &str, opaque: bool) -> Scene {
    ctr_ok(
        p,
        &["images", "pull", "--plain-http", "--snapshotter", sn, image],
    );
    let snaps = text(&ctr_ok(p, &snap(sn, &["ls"])));
    let committed: Vec<&str> = snaps
        .lines()
        .filter(|l| l.contains("Committed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(committed.len(), 1, "busybox has one layer: {snaps}");
    let chain = committed[0].to_string();
    ctr_ok(p, &snap(sn, &["prepare", "act", &chain]));
    ctr_ok(p, &snap(sn, &["prepare", "untouched", &chain]));
    let tmp = tempfile::Builder::new()
        .prefix("orca-diff-")
        .tempdir()
        .unwrap();
    let mut guard = MountGuard(Vec::new());
    let m = tmp.path().join("act");
    mount_snapshot(p, sn, "act", &m, &mut guard);
    make_changes(&m, opaque);
    unmount(&m, &mut guard);
    Scene { tmp, chain }
}

/// (type, name, link target) of every entry of a tar, gunzipped if needed.
fn entries(blob: &[u8]) -> Vec<(char, String, String)> {
    let data = gunzip_if_needed(blob);
    let mut a = tar::Archive::new(data.as_slice());
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let t = match e.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Fifo => 'p',
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => continue,
            other => panic!("unexpected entry type {other:?}"),
        };
        let link = e.link_name_bytes().map(|l| text(&l)).unwrap_or_default();
        out.push((t, text(&e.path_bytes()), link));
    }
    out
}

fn gunzip_if_needed(blob: &[u8]) -> Vec<u8> {
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut v)
            .unwrap();
        v
    } else {
        blob.to_vec()
    }
}

fn file_content(blob: &[u8], name: &str) -> Option<Vec<u8>> {
    let data = gunzip_if_needed(blob);
    let mut a = tar::Archive::new(data.as_slice());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path_bytes().as_ref() == name.as_bytes() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return Some(v);
        }
    }
    None
}

fn ent(list: &[(char, &str, &str)]) -> Vec<(char, String, String)> {
    list.iter()
        .map(|(t, n, l)| (*t, n.to_string(), l.to_string()))
        .collect()
}

/// What both the fast path and containerd's double walk write for the
/// change set without the opaque dir.
fn expected_plain() -> Vec<(char, String, String)> {
    ent(&[
        ('d', "bin/", ""),
        ('f', "bin/.wh.ls", ""),
        ('d', "etc/", ""),
        ('f', "etc/passwd", ""),
        ('f', "hello.txt", ""),
        ('d', "newdir/", ""),
        ('f', "newdir/a", ""),
        ('p', "newdir/fifo", ""),
        ('h', "newdir/hard", "newdir/a"),
        ('l', "newdir/link", "a"),
        ('f', ".wh.root", ""),
        ('d', "tmp/", ""),
    ])
}

/// The change set with etc/ replaced, as containerd's double walk writes it
/// (one whiteout per old entry).
fn expected_opaque_double_walk() -> Vec<(char, String, String)> {
    let mut v = expected_plain();
    let at = v.iter().position(|e| e.1 == "etc/passwd").unwrap();
    v.splice(
        at..=at,
        ent(&[
            ('f', "etc/.wh.group", ""),
            ('f', "etc/hostname", ""),
            ('f', "etc/.wh.passwd", ""),
        ]),
    );
    v
}

/// The same change set from the overlay fast path: etc/ is opaque.
fn expected_opaque_fast() -> Vec<(char, String, String)> {
    let mut v = expected_plain();
    let at = v.iter().position(|e| e.1 == "etc/passwd").unwrap();
    v.splice(
        at..=at,
        ent(&[('f', "etc/.wh..wh..opq", ""), ('f', "etc/hostname", "")]),
    );
    v
}

/// A comparable listing of a tree: type, mode, owner, size, content
/// digest or link target; plus which names share an inode.
fn tree_listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                stack.push(r.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                if m.nlink() > 1 {
                    inodes
                        .entry(m.ino())
                        .or_default()
                        .push(r.display().to_string());
                }
                format!("file {}", sha256_digest(&fs::read(&p).unwrap()))
            } else {
                format!("special {:o}", m.mode() & 0o170000)
            };
            out.insert(
                r.display().to_string(),
                format!(
                    "{what} mode={:o} {}:{}",
                    m.permissions().mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    for (_, mut names) in inodes {
        names.sort();
        if names.len() > 1 {
            out.insert(format!("hardlinks:{}", names[0]), names.join(","));
        }
    }
    out
}

fn req<T>(msg: T) -> Request<T> {
    grpc::req_in(NS, msg)
}

/// Applies the blob `digest` (in the supervisor's content store) onto a new
/// snapshot of `chain` through Diff.Apply; returns that snapshot's tree
/// listing.
#[allow(clippy::too_many_arguments)]
fn apply_onto_fresh(
    r: &tokio::runtime::Runtime,
    s: &Supervisor,
    ch: &Channel,
    sn: &str,
    chain: &str,
    key: &str,
    media_type: &str,
    digest: &str,
    size: i64,
    tmp: &Path,
) -> BTreeMap<String, String> {
    ctr_ok(s, &snap(sn, &["prepare", key, chain]));
    let mounts = r
        .block_on(SnapshotsClient::new(ch.clone()).mounts(req(MountsRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })))
        .unwrap()
        .into_inner()
        .mounts;
    r.block_on(DiffClient::new(ch.clone()).apply(req(ApplyRequest {
        diff: Some(Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
            annotations: Default::default(),
        }),
        mounts,
        ..Default::default()
    })))
    .unwrap_or_else(|e| panic!("apply {digest}: {e}"));
    let mut guard = MountGuard(Vec::new());
    let m = tmp.join(key);
    mount_snapshot(s, sn, key, &m, &mut guard);
    let l = tree_listing(&m);
    unmount(&m, &mut guard);
    l
}

/// Labels of `digest` in `ctr content ls`.
fn content_labels(p: &dyn Peer, digest: &str) -> Option<String> {
    text(&ctr_ok(p, &["content", "ls"]))
        .lines()
        .find(|l| l.starts_with(digest))
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
}

/// `ctr snapshots diff` on snapshotter `sn` (overlayfs: the upperdir fast
/// path; native: bind mounts, both trees walked), plain and gzip, the
/// two-snapshot form, bad media types, and round trips through Diff.Apply.
fn diff_and_round_trip(sn: &str) {
    require_root();
    let (_reg, image) = Registry::with_busybox();
    let s = Supervisor::start();
    let sc = scene(&s, sn, &image, true);
    let fast = sn == "overlayfs";
    let expected = if fast {
        expected_opaque_fast()
    } else {
        expected_opaque_double_walk()
    };

    // CreateDiff: left = a view of the parent, right = the active snapshot.
    let plain = ctr_ok(&s, &snap(sn, &["diff", "--media-type", TAR, "act"]));
    assert!(!plain.starts_with(&[0x1f, 0x8b]), "plain tar asked for");
    assert_eq!(entries(&plain), expected);
    let log = s.log();
    assert_eq!(log.contains("fast=true"), fast, "fast path iff overlayfs");
    assert_eq!(log.contains("fast=false"), !fast);
    assert_eq!(file_content(&plain, "hello.txt").unwrap(), b"hello diff\n");
    assert_eq!(file_content(&plain, "etc/hostname").unwrap(), b"orca\n");
    assert_eq!(file_content(&plain, "newdir/a").unwrap(), b"data\n");

    // Default media type: gzip, with the uncompressed label; --keep keeps
    // it past ctr's lease so content get/ls see it.
    let gz = ctr_ok(
        &s,
        &snap(sn, &["diff", "--keep", "--label", "purpose=test", "act"]),
    );
    assert!(gz.starts_with(&[0x1f, 0x8b]), "gzip by default");
    assert_eq!(entries(&gz), expected);
    let gz_digest = sha256_digest(&gz);
    let uncompressed = sha256_digest(&gunzip_if_needed(&gz));
    let labels =
        content_labels(&s, &gz_digest).unwrap_or_else(|| panic!("{gz_digest} not in content ls"));
    assert!(
        labels.contains(&format!("containerd.io/uncompressed={uncompressed}"))
            && labels.contains("purpose=test")
            && labels.contains("containerd.io/gc.root="),
        "{labels}"
    );
    assert_eq!(ctr_ok(&s, &["content", "get", &gz_digest]), gz);
    // Without --keep the diff goes with ctr's lease (collected soon after).
    let plain_digest = sha256_digest(&plain);
    assert!(
        wait_until(Duration::from_secs(10), || {
            content_labels(&s, &plain_digest).is_none()
        }),
        "the unkept diff {plain_digest} is still in the content store"
    );

    // Two snapshots: left is another active snapshot (with its own upper
    // on overlayfs), so both trees are walked.
    let general = ctr_ok(
        &s,
        &snap(
            sn,
            &["diff", "--keep", "--media-type", TAR, "untouched", "act"],
        ),
    );
    assert_eq!(entries(&general), expected_opaque_double_walk());
    assert!(s.log().contains("fast=false"), "both trees were walked");
    let general_digest = sha256_digest(&general);

    // Bad media types: containerd's "not implemented".
    for mt in ["application/vnd.oci.image.layer.v1.tar+zstd", "text/plain"] {
        let out = ctr(&s, &snap(sn, &["diff", "--media-type", mt, "act"]));
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("unsupported diff media type"),
            "{}",
            text(&out.stderr)
        );
    }

    // Round trips through Diff.Apply on fresh snapshots of the same parent.
    let r = rt();
    let ch = r.block_on(connect(&s.socket()));
    let mut guard = MountGuard(Vec::new());
    let act_mnt = sc.tmp.path().join("act-view");
    mount_snapshot(&s, sn, "act", &act_mnt, &mut guard);
    let want = tree_listing(&act_mnt);
    unmount(&act_mnt, &mut guard);
    assert!(want.contains_key("etc/hostname") && !want.contains_key("etc/passwd"));
    assert!(want.contains_key("bin/cat") && !want.contains_key("bin/ls"));
    assert_eq!(
        want.get("hardlinks:newdir/a").map(String::as_str),
        Some("newdir/a,newdir/hard")
    );
    for (key, mt, digest, size) in [
        ("rt-gzip", GZIP, gz_digest.as_str(), gz.len()),
        ("rt-general", TAR, general_digest.as_str(), general.len()),
    ] {
        let got = apply_onto_fresh(
            &r,
            &s,
            &ch,
            sn,
            &sc.chain,
            key,
            mt,
            digest,
            size as i64,
            sc.tmp.path(),
        );
        assert_eq!(got, want, "tree after applying the {key} diff");
    }
    let active = text(&ctr_ok(&s, &["content", "active"]));
    assert!(active.lines().count() <= 1, "no ingest left: {active}");
}

#[test]
fn ctr_snapshots_diff_overlayfs_round_trip() {
    diff_and_round_trip("overlayfs");
}

#[test]
fn ctr_snapshots_diff_native_round_trip() {
    diff_and_round_trip("native");
}

#[test]
fn our_entries_match_containerd_for_the_same_change() {
    require_root();
    require_tool("containerd");
    let (_reg, image) = Registry::with_busybox();
    let s = Supervisor::start();
    let c = Containerd::start();
    for opaque in [false, true] {
        let ns_suffix = if opaque { "-o" } else { "" };
        // One scene per peer and per change set (fresh keys).
        let peers: [(&str, &dyn Peer); 2] = [("orca", &s), ("containerd", &c)];
        let mut results = Vec::new();
        for (name, p) in peers {
            if opaque {
                for k in ["act", "untouched"] {
                    ctr_ok(p, &snap("overlayfs", &["rm", k]));
                }
            }
            let _sc = scene(p, "overlayfs", &image, opaque);
            let fast = ctr_ok(p, &["snapshots", "diff", "--media-type", TAR, "act"]);
            let general = ctr_ok(
                p,
                &["snapshots", "diff", "--media-type", TAR, "untouched", "act"],
            );
            // A committed snapshot without parent: the whole base layer.
            let base = ctr_ok(p, &["snapshots", "diff", "--media-type", TAR, &_sc.chain]);
            results.push((
                format!("{name}{ns_suffix}"),
                entries(&fast),
                entries(&general),
                entries(&base),
            ));
        }
        let (ours, theirs) = (&results[0], &results[1]);
        // containerd 1.6 always walks both trees.
        let want_double = if opaque {
            expected_opaque_double_walk()
        } else {
            expected_plain()
        };
        assert_eq!(theirs.1, want_double, "containerd's CreateDiff entries");
        assert_eq!(theirs.2, want_double, "containerd's Compare entries");
        assert_eq!(ours.2, theirs.2, "general path vs containerd");
        assert!(
            theirs.3.len() > 100,
            "busybox has its applets: {:?}",
            theirs.3
        );
        assert_eq!(ours.3, theirs.3, "whole-layer diff vs containerd");
        if opaque {
            assert_eq!(ours.1, expected_opaque_fast());
        } else {
            assert_eq!(ours.1, theirs.1, "fast path vs containerd");
        }
    }
}

#[test]
fn bind_mount_trees_and_bad_input() {
    require_root();
    let s = Supervisor::start();
    let r = rt();
    let ch = r.block_on(connect(&s.socket()));
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
    for d in [&lower, &upper] {
        sh("mkdir -p etc d/sub && echo a > etc/a && echo s > d/sub/s && touch -d @1000 etc/a d/sub/s", {
            fs::create_dir_all(d).unwrap();
            d
        });
    }
    sh(
        "rm etc/a && echo new > etc/new && rm -rf d/sub && ln -s ../etc/new d/l",
        &upper,
    );
    let bind = |p: &Path| Mount {
        r#type: "bind".into(),
        source: p.to_str().unwrap().into(),
        target: String::new(),
        options: vec!["ro".into(), "rbind".into()],
    };
    let diff = |left: Vec<Mount>, right: Vec<Mount>, mt: &str| {
        r.block_on(DiffClient::new(ch.clone()).diff(req(DiffRequest {
            left,
            right,
            media_type: mt.into(),
            r#ref: String::new(),
            labels: Default::default(),
            source_date_epoch: None,
        })))
    };
    let desc = diff(vec![bind(&lower)], vec![bind(&upper)], TAR)
        .unwrap()
        .into_inner()
        .diff
        .unwrap();
    assert_eq!(desc.media_type, TAR);
    let blob = ctr_ok(&s, &["content", "get", &desc.digest]);
    assert_eq!(blob.len() as i64, desc.size);
    assert_eq!(sha256_digest(&blob), desc.digest);
    assert_eq!(
        entries(&blob),
        ent(&[
            ('d', "d/", ""),
            ('l', "d/l", "../etc/new"),
            ('f', "d/.wh.sub", ""),
            ('d', "etc/", ""),
            ('f', "etc/.wh.a", ""),
            ('f', "etc/new", ""),
        ])
    );

    // A given ref and SOURCE_DATE_EPOCH: the same diff twice is the same
    // blob (the second commit finds it present), mtimes clamped, labels set.
    let pinned = || {
        r.block_on(DiffClient::new(ch.clone()).diff(req(DiffRequest {
            left: vec![bind(&lower)],
            right: vec![bind(&upper)],
            media_type: GZIP.into(),
            r#ref: "pinned-diff".into(),
            labels: [("team".to_string(), "orca".to_string())].into(),
            source_date_epoch: Some(orca_proto::prost_types::Timestamp {
                seconds: 500,
                nanos: 0,
            }),
        })))
        .unwrap()
        .into_inner()
        .diff
        .unwrap()
    };
    let (d1, d2) = (pinned(), pinned());
    assert_eq!(d1, d2);
    assert_eq!(d1.media_type, GZIP);
    let gz = ctr_ok(&s, &["content", "get", &d1.digest]);
    let data = gunzip_if_needed(&gz);
    let mut a = tar::Archive::new(data.as_slice());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        assert!(e.header().mtime().unwrap() <= 500, "{:?}", e.path());
    }
    let labels = content_labels(&s, &d1.digest).unwrap();
    assert!(
        labels.contains("team=orca")
            && labels.contains(&format!(
                "containerd.io/uncompressed={}",
                sha256_digest(&data)
            )),
        "{labels}"
    );
    let before = text(&ctr_ok(&s, &["content", "ls", "-q"]));

    let m = |ty: &str, src: &str, opts: &[&str]| Mount {
        r#type: ty.into(),
        source: src.into(),
        target: String::new(),
        options: opts.iter().map(|o| o.to_string()).collect(),
    };
    let up = upper.to_str().unwrap();
    let bad: Vec<(Vec<Mount>, Vec<Mount>, &str, Code)> = vec![
        (vec![], vec![bind(&upper)], TAR, Code::InvalidArgument),
        (vec![bind(&lower)], vec![], TAR, Code::InvalidArgument),
        (
            vec![m("tmpfs", "tmpfs", &[])],
            vec![bind(&upper)],
            TAR,
            Code::InvalidArgument,
        ),
        (
            vec![m("bind", "/nonexistent/orca-diff", &[])],
            vec![bind(&upper)],
            TAR,
            Code::InvalidArgument,
        ),
        (
            vec![m("bind", "relative", &[])],
            vec![bind(&upper)],
            TAR,
            Code::InvalidArgument,
        ),
        (
            vec![bind(&lower)],
            vec![m("overlay", "overlay", &["workdir=/x"])],
            TAR,
            Code::InvalidArgument,
        ),
        (
            vec![bind(&lower)],
            vec![m(
                "overlay",
                "overlay",
                &[&format!("lowerdir={up}:/nonexistent/x")],
            )],
            TAR,
            Code::InvalidArgument,
        ),
        (
            vec![bind(&lower)],
            vec![m(
                "overlay",
                "overlay",
                &[&format!("lowerdir={up}:{up}"), "bogusopt=1"],
            )],
            TAR,
            Code::InvalidArgument,
        ),
        (
            vec![bind(&lower)],
            vec![bind(&upper)],
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Code::Unimplemented,
        ),
        (
            vec![bind(&lower)],
            vec![bind(&upper)],
            "foo/bar",
            Code::Unimplemented,
        ),
    ];
    for (i, (l, rr, mt, code)) in bad.into_iter().enumerate() {
        let e = diff(l, rr, mt).expect_err(&format!("case {i} must fail"));
        assert_eq!(e.code(), code, "case {i}: {e:?}");
    }
    // Nothing committed, no ingest left, no temp mount left, still serving.
    assert_eq!(text(&ctr_ok(&s, &["content", "ls", "-q"])), before);
    let active = text(&ctr_ok(&s, &["content", "active"]));
    assert!(active.lines().count() <= 1, "no ingest left: {active}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(s.dir().to_str().unwrap()),
        "temp mounts left: {mounts}"
    );
    ctr_ok(&s, &["version"]);
}
