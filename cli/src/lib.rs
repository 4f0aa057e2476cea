//! `orca`: the Docker-compatible command line client. It speaks the Docker
//! Engine API (HTTP/1.1 on a unix socket, version negotiated from the
//! daemon's answers) to orcad, or to any Docker-API daemon, and mirrors docker's
//! commands, flags, output formats and exit codes.
//!
//! | module | concept |
//! |---|---|
//! | [`args`] | clap definitions of every command and flag |
//! | [`commands`] | one function per command: requests and rendering |
//! | [`client`] | the HTTP client: negotiation, JSON calls, streams, hijacking |
//! | [`host`] | `-H` / `$ORCA_HOST` / `$DOCKER_HOST` selection |
//! | [`stdcopy`] | the multiplexed stdout/stderr stream format |
//! | [`streams`] | copying attach/exec/logs output and stdin |
//! | [`template`] | the Go-template subset of `--format` |
//! | [`table`] | tabwriter-style column alignment |
//! | [`humanize`] | docker's sizes and durations |
//! | [`progress`] | pull/load progress rendering |
//! | [`reference`] | image reference splitting |
//! | [`terminal`] | raw mode and terminal size |

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod host;
pub mod humanize;
pub mod progress;
pub mod reference;
pub mod stdcopy;
pub mod streams;
pub mod table;
pub mod template;
pub mod terminal;

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use args::Cli;

/// The client's version string.
pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs `orca` with `argv` (program name first) and returns the exit code.
pub fn run_cli(argv: Vec<OsString>) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => return report_usage_error(e),
    };
    init_tracing(&cli);
    if cli.version {
        println!("Orca version {CLI_VERSION}, build orca-cli");
        return 0;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return 0;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orca: cannot start the I/O runtime: {e}");
            return 1;
        }
    };
    host::set_tls_flags(host::TlsFlags {
        tls: cli.tls,
        tlsverify: cli.tlsverify,
        tlscacert: cli.tlscacert.clone(),
        tlscert: cli.tlscert.clone(),
        tlskey: cli.tlskey.clone(),
    });
    let result = runtime.block_on(commands::dispatch(cli.host.as_deref(), command));
    // Do not wait for a stdin reader blocked in read(2).
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            let text = e.to_string();
            if !text.is_empty() {
                eprintln!("{text}");
            }
            e.exit_code()
        }
    }
}

fn init_tracing(cli: &Cli) {
    let level = if cli.debug {
        "debug".to_string()
    } else {
        cli.log_level.clone().unwrap_or_else(|| "warn".into())
    };
    // A plain target filter: EnvFilter's directive parser (regex-backed)
    // cost more CPU at every start than the rest of a short command.
    use tracing_subscriber::prelude::*;
    let level: tracing::Level = level.parse().unwrap_or(tracing::Level::WARN);
    let filter = tracing_subscriber::filter::Targets::new().with_target("orca_cli", level);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

/// Prints a command line error the way docker does; returns the exit code
/// (0 for help, 1 for an unknown command or missing arguments, 125 for
/// bad flags).
fn report_usage_error(e: clap::Error) -> i32 {
    let str_context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::InvalidSubcommand => {
            let name = str_context(ContextKind::InvalidSubcommand).unwrap_or_default();
            eprintln!(
                "orca: unknown command: orca {name}\n\nRun 'orca --help' for more information"
            );
            1
        }
        ErrorKind::MissingRequiredArgument
        | ErrorKind::TooFewValues
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ErrorKind::MissingSubcommand => {
            eprint!("orca: {}", e.render());
            1
        }
        ErrorKind::UnknownArgument => {
            let arg = str_context(ContextKind::InvalidArg).unwrap_or_default();
            if arg.starts_with('-') {
                eprintln!("unknown flag: {arg}\n\nRun 'orca --help' for more information");
            } else {
                eprint!("orca: {}", e.render());
            }
            125
        }
        _ => {
            eprint!("orca: {}", e.render());
            125
        }
    }
}
