//! orca-shim's task service driven directly over ttrpc (no containerd): bad input gets the
//! right error code and leaves a clean state; a full create/start/kill/wait/delete/shutdown
//! cycle with orca-runtime. Runs as root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options;
use containerd_shim_protos::shim::shim as api;
use containerd_shim_protos::TaskClient;
use orca_integration::{bin_path, require_root, wait_until, Bundle};
use ttrpc::context::{self, Context};
use ttrpc::Code;

struct Shim {
    child: Child,
    client: TaskClient,
    raw: ttrpc::Client,
    _dir: tempfile::TempDir,
}

impl Shim {
    fn start(id: &str) -> Shim {
        let dir = tempfile::Builder::new()
            .prefix("orca-shim-test-")
            .tempdir()
            .unwrap();
        let sock = format!("unix://{}/s.sock", dir.path().display());
        let child = Command::new(bin_path("orca-shim"))
            .args([
                "-namespace",
                "shimtest",
                "-id",
                id,
                "-address",
                "/nonexistent/c.sock",
                "-socket",
                &sock,
            ])
            .current_dir(dir.path())
            .env_remove("TTRPC_ADDRESS")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn orca-shim");
        let p = dir.path().join("s.sock");
        assert!(
            wait_until(Duration::from_secs(10), || p.exists()),
            "shim socket never appeared"
        );
        let raw = ttrpc::Client::connect(&sock).expect("connect");
        Shim {
            child,
            client: TaskClient::new(raw.clone()),
            raw,
            _dir: dir,
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

#[track_caller]
fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an rpc error status, got {other:?}"),
    }
}

fn create_req(id: &str, bundle: &Path, binary: Option<&Path>) -> api::CreateTaskRequest {
    let mut r = api::CreateTaskRequest::new();
    r.id = id.into();
    r.bundle = bundle.display().to_string();
    if let Some(b) = binary {
        let mut o = Options::new();
        o.binary_name = b.display().to_string();
        let mut a = Any::new();
        a.type_url = "containerd.runc.v1.Options".into();
        a.value = o.write_to_bytes().unwrap();
        r.options = MessageField::some(a);
    }
    r
}

#[test]
fn bad_input_gets_error_codes_and_a_clean_state() {
    require_root();
    let id = format!("badinput-{}", std::process::id());
    let shim = Shim::start(&id);
    let c = &shim.client;

    // Before Create.
    let mut st = api::StateRequest::new();
    st.id = id.clone();
    assert_eq!(code_of(c.state(ctx(), &st)), Code::NOT_FOUND);
    let mut start = api::StartRequest::new();
    start.id = id.clone();
    assert_eq!(
        code_of(c.start(ctx(), &start)),
        Code::NOT_FOUND,
        "Start before Create"
    );

    // A malformed request: an undecodable payload.
    let mut req = ttrpc::Request::new();
    req.service = "containerd.task.v2.Task".into();
    req.method = "State".into();
    req.payload = vec![0xff, 0xff, 0xff, 0xff];
    req.timeout_nano = Duration::from_secs(10).as_nanos() as i64;
    assert_eq!(code_of(shim.raw.request(req)), Code::INVALID_ARGUMENT);
    // An unknown method.
    let mut req = ttrpc::Request::new();
    req.service = "containerd.task.v2.Task".into();
    req.method = "Frobnicate".into();
    req.timeout_nano = Duration::from_secs(10).as_nanos() as i64;
    assert!(shim.raw.request(req).is_err());

    // A runtime that crashes mid-create.
    let bundle = Bundle::busybox(&["sleep", "1000"]);
    let crash = bundle.path().join("crashing-runtime");
    std::fs::write(
        &crash,
        "#!/bin/sh\n# --root R --log LOG …\necho '{\"level\":\"error\",\"msg\":\"boom mid-create\"}' >> \"$4\"\nkill -9 $$\n",
    )
    .unwrap();
    std::fs::set_permissions(&crash, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = c
        .create(ctx(), &create_req(&id, bundle.path(), Some(&crash)))
        .unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), Code::UNKNOWN);
            assert!(
                s.message.contains("boom mid-create"),
                "message: {}",
                s.message
            );
        }
        e => panic!("unexpected {e:?}"),
    }
    assert_eq!(
        code_of(c.state(ctx(), &st)),
        Code::NOT_FOUND,
        "state is clean after a failed create"
    );
    // A missing bundle.
    assert_eq!(
        code_of(c.create(ctx(), &create_req(&id, Path::new("/nonexistent"), None))),
        Code::INVALID_ARGUMENT
    );

    // A real container with orca-runtime.
    let created = c
        .create(ctx(), &create_req(&id, bundle.path(), None))
        .expect("create");
    assert!(created.pid > 0);
    assert_eq!(
        code_of(c.create(ctx(), &create_req(&id, bundle.path(), None))),
        Code::ALREADY_EXISTS
    );
    c.start(ctx(), &start).expect("start");
    assert_eq!(
        code_of(c.start(ctx(), &start)),
        Code::FAILED_PRECONDITION,
        "second start"
    );
    let mut unknown = api::StartRequest::new();
    unknown.id = id.clone();
    unknown.exec_id = "nope".into();
    assert_eq!(
        code_of(c.start(ctx(), &unknown)),
        Code::NOT_FOUND,
        "unknown exec id"
    );
    let mut kill = api::KillRequest::new();
    kill.id = id.clone();
    kill.exec_id = "nope".into();
    kill.signal = 9;
    assert_eq!(code_of(c.kill(ctx(), &kill)), Code::NOT_FOUND);
    let mut del = api::DeleteRequest::new();
    del.id = id.clone();
    assert_eq!(
        code_of(c.delete(ctx(), &del)),
        Code::FAILED_PRECONDITION,
        "delete while running"
    );
    let mut cp = api::CheckpointTaskRequest::new();
    cp.id = id.clone();
    assert_eq!(code_of(c.checkpoint(ctx(), &cp)), Code::UNIMPLEMENTED);
    let mut other = api::StateRequest::new();
    other.id = "someone-else".into();
    assert_eq!(code_of(c.state(ctx(), &other)), Code::NOT_FOUND);

    // Kill, Wait (before and after the exit), Kill of an exited process, Delete.
    kill.exec_id.clear();
    let mut wait = api::WaitRequest::new();
    wait.id = id.clone();
    let waiter = {
        let c2 = TaskClient::new(shim.raw.clone());
        let w = wait.clone();
        std::thread::spawn(move || c2.wait(ctx(), &w).map(|r| r.exit_status))
    };
    std::thread::sleep(Duration::from_millis(100));
    c.kill(ctx(), &kill).expect("kill");
    assert_eq!(waiter.join().unwrap().expect("wait"), 137);
    assert_eq!(c.wait(ctx(), &wait).expect("late wait").exit_status, 137);
    assert_eq!(
        code_of(c.kill(ctx(), &kill)),
        Code::NOT_FOUND,
        "kill of an exited process"
    );
    let state = c.state(ctx(), &st).expect("state");
    assert_eq!(state.exit_status, 137);
    let d = c.delete(ctx(), &del).expect("delete");
    assert_eq!(d.exit_status, 137);
    assert_eq!(d.pid, created.pid);
    assert_eq!(
        code_of(c.state(ctx(), &st)),
        Code::NOT_FOUND,
        "gone after delete"
    );
    assert!(
        !Path::new(&format!("/proc/{}", created.pid)).exists() || {
            let s =
                std::fs::read_to_string(format!("/proc/{}/stat", created.pid)).unwrap_or_default();
            s.contains(") Z")
        },
        "container init still alive"
    );

    // Shutdown: the shim exits.
    let mut sd = api::ShutdownRequest::new();
    sd.id = id.clone();
    let _ = c.shutdown(ctx(), &sd);
    let mut shim = shim;
    let exited = wait_until(Duration::from_secs(10), || {
        matches!(shim.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "shim did not exit after Delete + Shutdown");
}
