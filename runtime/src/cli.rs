//! The `orca-runtime` command line: runc's commands, flags, output formats and exit codes.

use crate::container::{self, CreateOptions, ExecOptions};
use crate::error::{Result, RuntimeError};
use crate::logging::{self, LogFormat};
use crate::state::{StateStore, Status};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "orca-runtime",
    about = "A runc-compatible OCI container runtime",
    version = env!("CARGO_PKG_VERSION"),
    long_version = VERSION_LONG,
    disable_version_flag = true
)]
pub struct Cli {
    /// Root directory for container state
    #[arg(long, global = true, default_value = "/run/orca-runtime")]
    pub root: PathBuf,
    /// Log file (default: stderr)
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd to manage cgroups (not supported: fails with a clear error)
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Rootless mode: true, false or auto
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Accepted for compatibility with runc; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<String>,
    /// Print the version
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,
    #[command(subcommand)]
    pub command: Command,
}

const VERSION_LONG: &str = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.0.2");

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Path to the bundle directory
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its process waits until `start`)
    Create {
        #[command(flatten)]
        args: CreateArgs,
        /// Accepted for compatibility; create always detaches
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Start a created container
    Start { id: String },
    /// Create and start a container; without -d wait for it and return its exit code
    Run {
        #[command(flatten)]
        args: CreateArgs,
        #[arg(short = 'd', long)]
        detach: bool,
        /// Do not delete the container after it exits
        #[arg(long)]
        keep: bool,
    },
    /// Output the state of a container
    State { id: String },
    /// Send a signal to the container's init (or, with --all, every process)
    Kill {
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container's resources
    Delete {
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// Run a new process inside a container
    Exec(ExecArgs),
    /// List the processes of a container
    Ps {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) (default -ef)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Freeze every process of a container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Change a container's resource limits
    Update(UpdateArgs),
    /// Print container events and statistics
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Write a default config.json
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the OCI features document
    Features,
    /// Checkpointing is not supported
    Checkpoint {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Restoring is not supported
    Restore {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Path to a process.json
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[arg(short = 't', long)]
    pub tty: bool,
    /// uid[:gid]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    #[arg(short = 'c', long = "cap")]
    pub cap: Vec<String>,
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    #[arg(long)]
    pub apparmor: Option<String>,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// A JSON LinuxResources document, or - for stdin
    #[arg(short = 'r', long)]
    pub resources: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    #[arg(long = "kernel-memory", hide = true)]
    pub kernel_memory: Option<String>,
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    #[arg(long = "cpu-shares", alias = "cpu-share")]
    pub cpu_shares: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    pub id: String,
}

/// Parse, run, print; returns the process exit code.
pub fn main() -> i32 {
    let args: Option<Vec<String>> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().ok())
        .collect();
    let hot = args.as_deref().and_then(parse_hot_path);
    let cli = match hot.map(Ok).unwrap_or_else(Cli::try_parse) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    logging::init(cli.log.as_deref(), cli.log_format, cli.debug);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            if cli.log.is_some() {
                eprintln!("{e}");
            }
            1
        }
    }
}

/// The command lines a shim issues for every container (`create`, `start`,
/// `kill`, `delete`, `state`, with the global flags containerd's runc shim
/// passes), parsed without clap. Building clap's command tree for all of
/// runc's commands costs ≈ 0.45 ms of CPU per invocation (measured with a
/// static build on the 2-core bench machines), and a `docker run` runs the
/// runtime four times, three of them on its critical path. Anything this
/// parser does not fully recognise — another command, an unknown or
/// repeated flag, `--help`, `--flag=value` forms other than the listed
/// ones, a missing or extra operand — returns `None` and goes through clap,
/// so errors, help and every other form keep clap's behaviour. The unit
/// tests check that both parsers agree on the accepted lines.
fn parse_hot_path(args: &[String]) -> Option<Cli> {
    let mut cli = Cli {
        root: PathBuf::from("/run/orca-runtime"),
        log: None,
        log_format: LogFormat::Text,
        debug: false,
        systemd_cgroup: false,
        rootless: None,
        criu: None,
        version: None,
        command: Command::Features,
    };
    let mut it = args.iter().map(String::as_str).peekable();
    // `--name value` or `--name=value` for one of `names`.
    fn value<'a>(
        arg: &'a str,
        names: &[&str],
        it: &mut impl Iterator<Item = &'a str>,
    ) -> Option<Option<&'a str>> {
        for n in names {
            if arg == *n {
                return Some(it.next());
            }
            if let Some(v) = arg.strip_prefix(n).and_then(|r| r.strip_prefix('=')) {
                if n.starts_with("--") {
                    return Some(Some(v));
                }
            }
        }
        None
    }
    let sub = loop {
        let a = it.next()?;
        if let Some(v) = value(a, &["--root"], &mut it) {
            cli.root = PathBuf::from(v?);
        } else if let Some(v) = value(a, &["--log"], &mut it) {
            cli.log = Some(PathBuf::from(v?));
        } else if let Some(v) = value(a, &["--log-format"], &mut it) {
            cli.log_format = match v? {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return None,
            };
        } else if a == "--debug" {
            cli.debug = true;
        } else if a == "--systemd-cgroup" {
            cli.systemd_cgroup = true;
        } else if a.starts_with('-') {
            return None;
        } else {
            break a;
        }
    };
    let mut flags: Vec<&str> = Vec::new();
    let mut operands: Vec<&str> = Vec::new();
    let mut create = CreateArgs {
        bundle: PathBuf::from("."),
        pid_file: None,
        console_socket: None,
        no_pivot: false,
        no_new_keyring: false,
        preserve_fds: 0,
        id: String::new(),
    };
    while let Some(a) = it.next() {
        if !a.starts_with('-') || a == "-" {
            operands.push(a);
            continue;
        }
        // Each flag once, as clap requires for these.
        let key = a.split('=').next().unwrap_or(a);
        if flags.contains(&key) {
            return None;
        }
        flags.push(key);
        match sub {
            "create" => {
                if let Some(v) = value(a, &["-b", "--bundle"], &mut it) {
                    create.bundle = PathBuf::from(v?);
                } else if let Some(v) = value(a, &["--pid-file"], &mut it) {
                    create.pid_file = Some(PathBuf::from(v?));
                } else if let Some(v) = value(a, &["--console-socket"], &mut it) {
                    create.console_socket = Some(PathBuf::from(v?));
                } else if let Some(v) = value(a, &["--preserve-fds"], &mut it) {
                    create.preserve_fds = v?.parse().ok()?;
                } else if a == "--no-pivot" {
                    create.no_pivot = true;
                } else if a == "--no-new-keyring" {
                    create.no_new_keyring = true;
                } else if a != "-d" && a != "--detach" {
                    return None;
                }
            }
            "delete" if a == "-f" || a == "--force" => {}
            "kill" if a == "-a" || a == "--all" => {}
            _ => return None,
        }
    }
    let has = |f: &[&str]| flags.iter().any(|x| f.contains(x));
    cli.command = match (sub, operands.as_slice()) {
        ("create", [id]) => {
            create.id = id.to_string();
            Command::Create {
                args: create,
                detach: has(&["-d", "--detach"]),
            }
        }
        ("start", [id]) => Command::Start { id: id.to_string() },
        ("state", [id]) => Command::State { id: id.to_string() },
        ("delete", [id]) => Command::Delete {
            force: has(&["-f", "--force"]),
            id: id.to_string(),
        },
        ("kill", [id, rest @ ..]) if rest.len() <= 1 => Command::Kill {
            all: has(&["-a", "--all"]),
            id: id.to_string(),
            signal: rest.first().unwrap_or(&"SIGTERM").to_string(),
        },
        _ => return None,
    };
    Some(cli)
}

fn needs_clone(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Create { .. } | Command::Run { .. } | Command::Exec(_)
    )
}

fn dispatch(cli: &Cli) -> Result<i32> {
    if cli.systemd_cgroup {
        return Err(RuntimeError::other(
            "--systemd-cgroup: the systemd cgroup driver is not supported by orca-runtime (use cgroupfs)",
        ));
    }
    if needs_clone(&cli.command) {
        crate::exe_protection::ensure_protected()?;
    }
    let store = StateStore::new(&cli.root);
    match &cli.command {
        Command::Create { args, .. } => {
            container::create(&store, &args.id, &create_options(args))?;
            Ok(0)
        }
        Command::Start { id } => {
            container::start(&store, id)?;
            Ok(0)
        }
        Command::Run { args, detach, keep } => {
            let opts = create_options(args);
            if *keep && !*detach {
                nix::sys::prctl::set_child_subreaper(true).ok();
                let pid = container::create(&store, &args.id, &opts)?;
                container::start(&store, &args.id)?;
                return Ok(container::wait_for_exit(nix::unistd::Pid::from_raw(pid)));
            }
            container::run(&store, &args.id, &opts, *detach)
        }
        Command::State { id } => {
            let state = store.load(id)?;
            let report = state.report(&store);
            println!(
                "{}",
                serde_json::to_string_pretty(&report)
                    .map_err(|e| RuntimeError::other(e.to_string()))?
            );
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = container::parse_signal(signal)?;
            container::kill_container(&store, id, sig, *all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            container::delete(&store, id, *force)?;
            Ok(0)
        }
        Command::Exec(args) => exec(&store, args),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(&store, id, format, ps_args),
        Command::List { format, quiet } => list(&store, format, *quiet),
        Command::Pause { id } => {
            container::pause(&store, id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            container::resume(&store, id)?;
            Ok(0)
        }
        Command::Update(args) => update(&store, args),
        Command::Events {
            stats,
            interval,
            id,
        } => events(&store, id, *stats, interval),
        Command::Spec { bundle } => {
            let rootless = cli.rootless.as_deref().is_some_and(|v| v != "false");
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(RuntimeError::other(
                    "File config.json exists. Remove it first.",
                ));
            }
            let doc = crate::spec::default_spec(rootless);
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| RuntimeError::other(e.to_string()))?;
            std::fs::write(&path, text).map_err(|e| RuntimeError::Io {
                context: format!("write {path:?}"),
                source: e,
            })?;
            Ok(0)
        }
        Command::Features => {
            let doc = crate::features::document();
            println!(
                "{}",
                serde_json::to_string_pretty(&doc)
                    .map_err(|e| RuntimeError::other(e.to_string()))?
            );
            Ok(0)
        }
        Command::Checkpoint { .. } | Command::Restore { .. } => Err(RuntimeError::other(
            "checkpoint/restore is not supported by orca-runtime (no CRIU integration)",
        )),
    }
}

fn create_options(a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
    }
}

fn exec(store: &StateStore, a: &ExecArgs) -> Result<i32> {
    let state = store.load(&a.id)?;
    let mut process = match &a.process {
        Some(p) => {
            let data = std::fs::read(p).map_err(|e| RuntimeError::Io {
                context: format!("read process file {p:?}"),
                source: e,
            })?;
            let de = &mut serde_json::Deserializer::from_slice(&data);
            serde_path_to_error::deserialize::<_, oci_spec::runtime::Process>(de).map_err(|e| {
                RuntimeError::Config(format!("process.json field {}: {}", e.path(), e.inner()))
            })?
        }
        None => {
            if a.command.is_empty() {
                return Err(RuntimeError::other(
                    "exec: no command given (args or --process)",
                ));
            }
            let mut p = state.spec.process().clone().unwrap_or_default();
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(a.env.iter().cloned());
            p.set_env(Some(env));
            if let Some(cwd) = &a.cwd {
                p.set_cwd(cwd.clone());
            }
            if let Some(u) = &a.user {
                let (uid, gid) = match u.split_once(':') {
                    Some((u, g)) => (u, Some(g)),
                    None => (u.as_str(), None),
                };
                let uid: u32 = uid
                    .parse()
                    .map_err(|_| RuntimeError::other(format!("invalid --user {u:?}")))?;
                p.user_mut().set_uid(uid);
                if let Some(g) = gid {
                    let gid: u32 = g
                        .parse()
                        .map_err(|_| RuntimeError::other(format!("invalid --user {u:?}")))?;
                    p.user_mut().set_gid(gid);
                }
            }
            if !a.additional_gids.is_empty() {
                p.user_mut()
                    .set_additional_gids(Some(a.additional_gids.clone()));
            }
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !a.cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                for c in &a.cap {
                    // runc (and docker) name them CAP_SYS_ADMIN; oci-spec parses SYS_ADMIN.
                    let short = c.strip_prefix("CAP_").unwrap_or(c);
                    let cap: oci_spec::runtime::Capability = short
                        .parse()
                        .map_err(|_| RuntimeError::other(format!("unknown capability {c:?}")))?;
                    let mut b = caps.bounding().clone().unwrap_or_default();
                    b.insert(cap);
                    caps.set_bounding(Some(b));
                    let mut e = caps.effective().clone().unwrap_or_default();
                    e.insert(cap);
                    caps.set_effective(Some(e));
                    let mut pm = caps.permitted().clone().unwrap_or_default();
                    pm.insert(cap);
                    caps.set_permitted(Some(pm));
                }
                p.set_capabilities(Some(caps));
            }
            p
        }
    };
    if a.process.is_some() && a.tty {
        process.set_terminal(Some(true));
    }
    let opts = ExecOptions {
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
        detach: a.detach,
    };
    container::exec(store, &a.id, &process, &opts)
}

fn ps(store: &StateStore, id: &str, format: &str, ps_args: &[String]) -> Result<i32> {
    let pids = container::pids(store, id)?;
    match format {
        "json" => {
            println!(
                "{}",
                serde_json::to_string(&pids).unwrap_or_else(|_| "[]".into())
            );
        }
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .map_err(|e| RuntimeError::Io {
                    context: "run ps".into(),
                    source: e,
                })?;
            if !out.status.success() {
                return Err(RuntimeError::other(format!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let pid_col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .ok_or_else(|| RuntimeError::other("couldn't find PID field in ps output"))?;
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{header}");
            for l in lines {
                let pid = l
                    .split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    let _ = writeln!(stdout, "{l}");
                }
            }
        }
        other => {
            return Err(RuntimeError::other(format!(
                "invalid format option {other:?}"
            )))
        }
    }
    Ok(0)
}

/// The name of `uid` from the host's /etc/passwd, read directly as runc's `list` does: the
/// binary is linked statically, so glibc's NSS lookups are not used.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_name(&passwd, uid)
}

fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

fn list(store: &StateStore, format: &str, quiet: bool) -> Result<i32> {
    let mut reports = Vec::new();
    for id in store.list()? {
        if let Ok(s) = store.load(&id) {
            let mut r = s.report(store);
            // As runc's list: the owner is the user owning the container's state directory
            // (`state` leaves it empty).
            if let Ok(md) = std::fs::metadata(store.dir(&id)) {
                let uid = std::os::unix::fs::MetadataExt::uid(&md);
                r.owner = user_name(uid).unwrap_or_else(|| format!("#{uid}"));
            }
            reports.push(r);
        }
    }
    if quiet {
        for r in &reports {
            println!("{}", r.id);
        }
        return Ok(0);
    }
    match format {
        "json" => {
            if reports.is_empty() {
                println!("null");
            } else {
                println!("{}", serde_json::to_string(&reports).unwrap_or_default());
            }
        }
        "table" => {
            let rows: Vec<[String; 6]> = reports
                .iter()
                .map(|r| {
                    [
                        r.id.clone(),
                        r.pid.to_string(),
                        r.status.clone(),
                        r.bundle.display().to_string(),
                        r.created.clone(),
                        r.owner.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                tabulate(
                    &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                    &rows
                )
            );
        }
        other => {
            return Err(RuntimeError::other(format!(
                "invalid format option {other:?}"
            )))
        }
    }
    Ok(0)
}

/// Columns as Go's tabwriter with minwidth 12, padding 3 (runc's list).
fn tabulate(header: &[&str; 6], rows: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for (i, h) in header.iter().enumerate() {
        widths[i] = h.len();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        for (i, c) in cells.iter().enumerate() {
            if i == cells.len() - 1 {
                out.push_str(c);
            } else {
                let w = (widths[i] + 3).max(12);
                out.push_str(&format!("{c:<w$}"));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

/// "512m", "1g", "1024" → bytes; "-1" → -1 (unlimited).
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let (num, mult) = match t.trim_end_matches('b').chars().last() {
        Some('k') => (&t[..t.trim_end_matches('b').len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 30),
        Some('t') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 40),
        _ => (t.trim_end_matches('b'), 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| RuntimeError::other(format!("invalid size: {s:?}")))?;
    Ok((n * mult as f64) as i64)
}

fn update(store: &StateStore, a: &UpdateArgs) -> Result<i32> {
    use oci_spec::runtime::*;
    let state = store.load(&a.id)?;
    let mut res: LinuxResources = match a.resources.as_deref() {
        Some(src) => {
            let data = if src == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map_err(|e| {
                    RuntimeError::Io {
                        context: "read resources from stdin".into(),
                        source: e,
                    }
                })?;
                v
            } else {
                std::fs::read(src).map_err(|e| RuntimeError::Io {
                    context: format!("read {src:?}"),
                    source: e,
                })?
            };
            let de = &mut serde_json::Deserializer::from_slice(&data);
            serde_path_to_error::deserialize(de).map_err(|e| {
                RuntimeError::Config(format!("resources field {}: {}", e.path(), e.inner()))
            })?
        }
        None => state
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .unwrap_or_default(),
    };
    let mut mem = res.memory().unwrap_or_default();
    let mut mem_set = res.memory().is_some();
    if let Some(m) = &a.memory {
        mem.set_limit(Some(parse_bytes(m)?));
        mem_set = true;
    }
    if let Some(m) = &a.memory_reservation {
        mem.set_reservation(Some(parse_bytes(m)?));
        mem_set = true;
    }
    if let Some(m) = &a.memory_swap {
        mem.set_swap(Some(parse_bytes(m)?));
        mem_set = true;
    }
    if mem_set {
        res.set_memory(Some(mem));
    }
    let mut cpu = res.cpu().clone().unwrap_or_default();
    let mut cpu_set = res.cpu().is_some();
    if let Some(v) = a.cpu_period {
        cpu.set_period(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_quota {
        cpu.set_quota(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_shares {
        cpu.set_shares(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_rt_period {
        cpu.set_realtime_period(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_rt_runtime {
        cpu.set_realtime_runtime(Some(v));
        cpu_set = true;
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
        cpu_set = true;
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
        cpu_set = true;
    }
    if cpu_set {
        res.set_cpu(Some(cpu));
    }
    if let Some(v) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(v);
        res.set_pids(Some(p));
    }
    if let Some(w) = a.blkio_weight {
        let mut b = res.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        res.set_block_io(Some(b));
    }
    if a.kernel_memory.is_some() {
        tracing::warn!("--kernel-memory is ignored (deprecated in the kernel)");
    }
    container::update(store, &a.id, &res)?;
    Ok(0)
}

/// "5s", "100ms", "1m", "2h", or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let bad = || RuntimeError::other(format!("invalid duration {s:?}"));
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| (&s[..i], &s[i..]))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs <= 0.0 {
        return Err(RuntimeError::other(
            "duration interval must be greater than 0",
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn events(store: &StateStore, id: &str, once: bool, interval: &str) -> Result<i32> {
    let interval = parse_duration(interval)?;
    let state = store.load(id)?;
    let paths = state
        .cgroup
        .clone()
        .ok_or_else(|| RuntimeError::other("container has no cgroup"))?;
    let cg = crate::cgroups::CgroupManager::from_paths(paths);
    let print_stats = |cg: &crate::cgroups::CgroupManager| -> Result<()> {
        let stats = cg.stats()?;
        let ev = serde_json::json!({"type": "stats", "id": id, "data": stats});
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ev}");
        let _ = out.flush();
        Ok(())
    };
    if state.status(store) == Status::Stopped {
        return Err(RuntimeError::NotRunning);
    }
    if once {
        print_stats(&cg)?;
        return Ok(0);
    }
    let mut oom = cg.oom_notifier().ok();
    let mut next = std::time::Instant::now();
    loop {
        if !state.init_alive() {
            return Ok(0);
        }
        if std::time::Instant::now() >= next {
            print_stats(&cg)?;
            next = std::time::Instant::now() + interval;
        }
        let wait = next.saturating_duration_since(std::time::Instant::now());
        match oom.as_mut() {
            Some(n) => {
                match n.wait(wait.min(std::time::Duration::from_secs(1))) {
                    Ok(true) => {
                        let ev = serde_json::json!({"type": "oom", "id": id});
                        println!("{ev}");
                    }
                    Ok(false) => {}
                    // The cgroup went away with the container: the stream ends.
                    Err(crate::cgroups::CgroupError::Removed(_)) => return Ok(0),
                    Err(e) => return Err(e.into()),
                }
            }
            None => std::thread::sleep(wait.min(std::time::Duration::from_secs(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_come_from_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\n\
                      daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(passwd_name(passwd, 4242), None);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(
            parse_duration("5s").unwrap(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            parse_duration("100ms").unwrap(),
            std::time::Duration::from_millis(100)
        );
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn flags_may_follow_the_id() {
        let c = Cli::try_parse_from([
            "orca-runtime",
            "create",
            "abc",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
        ])
        .unwrap();
        match c.command {
            Command::Create { args, .. } => {
                assert_eq!(args.id, "abc");
                assert_eq!(args.bundle, PathBuf::from("/b"));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["orca-runtime", "--root", "/r", "kill", "--all", "abc", "9"])
            .unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        match c.command {
            Command::Kill { all, id, signal } => assert!(all && id == "abc" && signal == "9"),
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["orca-runtime", "exec", "-t", "abc", "sh", "-c", "echo hi"])
            .unwrap();
        match c.command {
            Command::Exec(a) => assert_eq!(a.command, vec!["sh", "-c", "echo hi"]),
            other => panic!("{other:?}"),
        }
    }

    /// The hot-path parser gives exactly clap's result on the lines it
    /// takes, and leaves every other line to clap.
    #[test]
    fn hot_path_agrees_with_clap() {
        let taken: &[&[&str]] = &[
            &[
                "--root",
                "/r",
                "--log",
                "/b/log.json",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/init.pid",
                "abc",
            ],
            &[
                "--root=/r",
                "--log=/l",
                "--log-format=text",
                "create",
                "-b",
                "/b",
                "--console-socket",
                "/s.sock",
                "--no-pivot",
                "--no-new-keyring",
                "--preserve-fds",
                "2",
                "abc",
            ],
            &["--root", "/r", "create", "abc", "--bundle=/b", "-d"],
            &[
                "--root",
                "/r",
                "--systemd-cgroup",
                "--debug",
                "start",
                "abc",
            ],
            &["start", "abc"],
            &["--root", "/r", "delete", "--force", "abc"],
            &["delete", "abc", "-f"],
            &["--root", "/r", "kill", "--all", "abc", "9"],
            &["kill", "abc"],
            &["kill", "-a", "abc", "SIGKILL"],
            &["--log-format", "json", "state", "abc"],
        ];
        for line in taken {
            let args: Vec<String> = line.iter().map(|s| s.to_string()).collect();
            let hot = parse_hot_path(&args).unwrap_or_else(|| panic!("not taken: {line:?}"));
            let full =
                Cli::try_parse_from(std::iter::once("orca-runtime").chain(line.iter().copied()))
                    .unwrap_or_else(|e| panic!("clap rejects {line:?}: {e}"));
            assert_eq!(format!("{hot:?}"), format!("{full:?}"), "{line:?}");
        }
        let left: &[&[&str]] = &[
            &[],
            &["--help"],
            &["-v"],
            &["--rootless", "create", "abc"],
            &["create", "--help", "abc"],
            &["create"],
            &["create", "a", "b"],
            &["create", "--bundle"],
            &["create", "--bundle", "/b", "--bundle", "/c", "abc"],
            &["create", "--preserve-fds", "x", "abc"],
            &["create", "--pid-file=/p", "--unknown", "abc"],
            &["--log-format", "xml", "start", "abc"],
            &["start", "--root", "/r", "abc"],
            &["kill", "abc", "9", "extra"],
            &["delete", "--force", "--force", "abc"],
            &["run", "abc"],
            &["exec", "abc", "ls"],
            &["state", "--", "abc"],
        ];
        for line in left {
            let args: Vec<String> = line.iter().map(|s| s.to_string()).collect();
            assert!(parse_hot_path(&args).is_none(), "taken: {line:?}");
        }
    }

    #[test]
    fn table_has_runc_columns() {
        let t = tabulate(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &[[
                "a".into(),
                "1".into(),
                "running".into(),
                "/b".into(),
                "now".into(),
                "root".into(),
            ]],
        );
        assert!(
            t.starts_with("ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"),
            "{t}"
        );
    }
}
