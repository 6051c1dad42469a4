//! The `wasmgate` command line, after Workerman's `start|stop|restart|reload|status|connections`.
//!
//! `start` runs the roles a configuration file asks for (all of them, on loopback, when there
//! is no file), in the foreground or detached with `-d`. The other commands reach the running
//! server through its control socket ([`crate::process::control`]), found from the same configuration
//! file, so nobody needs to know a pid. The command lives in the library so that the
//! end-to-end tests run the very same code as separate processes.
//!
//! `new` and `check` serve plugin authors: a project to start from, and whether a built file
//! is a plugin this host loads.
//!
//! Exit codes: 0 success; 1 failure (a `start` that finds the server already running
//! included, a `check`ed component this host refuses); 2 bad usage; 3 `status`, `connections`
//! or `reload` when no server runs (LSB's "not running"); 65 a `check`ed file that is not a
//! component (sysexits' `EX_DATAERR`); 66 an input file that cannot be read; 78 an invalid
//! configuration (sysexits' `EX_CONFIG`). `stop` when no server runs succeeds, as LSB asks.

mod check;
mod daemon;
mod genconfig;
mod new;
mod render;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};
use crate::process::control::{self, AskError, Request, Response};
use crate::process::{self, Role, Triggers};

/// The configuration file used when none is named, if it exists.
const DEFAULT_FILE: &str = "wasmgate.toml";

/// LSB's exit code for "not running".
const NOT_RUNNING: u8 = 3;

/// sysexits' exit code for a bad configuration.
const BAD_CONFIG: u8 = 78;

/// sysexits' exit code for an input file that does not exist or cannot be read.
const NO_CONFIG: u8 = 66;

/// Longest `start -d` waits for its server to be ready beyond the server's own bound on
/// loading its plugins (`start_timeout`): binding, the register, the links.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "A long-connection application server with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server: the roles the configuration has (all of them without a file).
    Start {
        #[command(flatten)]
        target: Target,
        /// Runs in the background, logging to `[log] file`.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Stops the server gracefully and waits until its process has ended.
    Stop {
        #[command(flatten)]
        target: Target,
        /// Longest to wait for the process to end.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Stops the server, then starts it with these arguments; its clients are disconnected.
    Restart {
        #[command(flatten)]
        target: Target,
        /// Runs in the background, logging to `[log] file`.
        #[arg(short, long)]
        daemon: bool,
        /// Longest to wait for the old process to end.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Makes the worker host re-read its plugins directory now (as SIGUSR1 does).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Shows the roles, their clients and links, the plugins and the traffic.
    Status {
        #[command(flatten)]
        target: Target,
        /// Prints JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Lists the clients with their address, uid and groups.
    Connections {
        #[command(flatten)]
        target: Target,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Writes a configuration to start from, with a fresh random secret.
    Genconfig {
        /// Writes it to this file (created owner-only, never over an existing one) instead
        /// of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Creates a plugin project: sources, `build.sh`, a `wasmgate.toml` serving it on
    /// loopback, a README.
    New {
        /// The plugin's name: its directory and its app name (`plugins/NAME.wasm`).
        #[arg(value_parser = new::project_name)]
        name: String,
        /// The language it is written in.
        #[arg(short, long, value_enum)]
        lang: new::Lang,
        /// Where to create it [default: ./NAME].
        #[arg(short, long)]
        dir: Option<PathBuf>,
        /// Rust: the guest SDK to depend on [default: the wasmgate checkout around the new
        /// directory, else the one this binary was built from].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Says whether a file is a plugin this host loads: its world, exports, refused imports.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
}

/// Which server a command means.
#[derive(Args, Clone)]
struct Target {
    /// The configuration file [default: ./wasmgate.toml if it exists, else all roles on
    /// loopback].
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Only these roles of the configuration (repeatable). The control socket, pid file and
    /// log file then carry the roles' names, so the roles of one file can run side by side.
    #[arg(long, value_enum)]
    role: Vec<Role>,
}

/// A command's configuration, resolved.
struct Setup {
    /// How messages name the server: `wasmgate[FILE]`.
    label: String,
    config: Config,
    /// The control socket.
    socket: PathBuf,
}

impl Target {
    fn setup(&self) -> anyhow::Result<Setup> {
        let given = self.config.clone().or_else(|| {
            let default = PathBuf::from(DEFAULT_FILE);
            default.exists().then_some(default)
        });
        let (mut config, mut label) = match &given {
            Some(file) => (
                Config::load(&std::path::absolute(file)?)?,
                format!("wasmgate[{}]", file.display()),
            ),
            None => (
                Config::all_in_one("commands", &std::path::absolute(DEFAULT_FILE)?),
                "wasmgate[built-in configuration]".to_owned(),
            ),
        };
        process::select_roles(&mut config, &self.role);
        let mut roles: Vec<&str> = self.role.iter().map(|r| r.name()).collect();
        roles.sort_unstable();
        roles.dedup();
        if !roles.is_empty() {
            let tag = roles.join("-");
            label = format!("{label}[{}]", roles.join(","));
            for path in [
                &mut config.control.socket,
                &mut config.control.pid_file,
                &mut config.log.file,
            ] {
                *path = tagged(path, &tag);
            }
        }
        let socket = config.control.socket.clone();
        Ok(Setup {
            label,
            config,
            socket,
        })
    }

    /// The servers a command without `--role` means: the file's, or, when that one does not
    /// run, each of its roles started alone (`start --role …`), found by their control
    /// sockets beside the file's.
    fn servers(&self) -> anyhow::Result<Vec<Target>> {
        let socket = self.setup()?.socket;
        if !self.role.is_empty() || socket.exists() {
            return Ok(vec![self.clone()]);
        }
        let (Some(dir), Some(stem)) = (socket.parent(), socket.file_stem()) else {
            return Ok(vec![self.clone()]);
        };
        let prefix = format!("{}-", stem.to_string_lossy());
        let suffix = socket
            .extension()
            .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
        let mut found: Vec<Target> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let tag = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                let role = tag
                    .split('-')
                    .map(|r| <Role as clap::ValueEnum>::from_str(r, false).ok())
                    .collect::<Option<Vec<Role>>>()?;
                Some(Target {
                    config: self.config.clone(),
                    role,
                })
            })
            .collect();
        found.sort_by_key(|t| t.role.iter().map(|r| r.name()).collect::<Vec<_>>());
        Ok(if found.is_empty() {
            vec![self.clone()]
        } else {
            found
        })
    }

    /// The arguments that name this target again, for a detached `start`.
    fn args(&self) -> anyhow::Result<Vec<OsString>> {
        let mut args = Vec::new();
        if let Some(file) = &self.config {
            args.push("--config".into());
            args.push(std::path::absolute(file)?.into_os_string());
        }
        for role in &self.role {
            args.push("--role".into());
            args.push(role.name().into());
        }
        Ok(args)
    }
}

/// `dir/name.ext` → `dir/name-tag.ext`.
fn tagged(path: &Path, tag: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{tag}"),
    };
    path.with_file_name(name)
}

/// Turns glibc's fast bins off before anything is allocated. A freed block of under 128
/// bytes waits in a fast bin unmerged until a large allocation sweeps the bins; a gateway
/// frees many such blocks among the long-lived ones of its idle connections, and the bins
/// held about 90 bytes per idle connection that way (BENCHMARKS.md, "Fast bins off"). The
/// cost is about 1 % more instructions per message.
fn no_fast_bins() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes only the allocator's tuning, before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// Parses the command line and runs the command; returns the process's exit code.
pub fn main() -> ExitCode {
    no_fast_bins();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmgate: {e:#}");
            match e
                .chain()
                .find_map(|cause| cause.downcast_ref::<ConfigError>())
            {
                Some(ConfigError::Read { .. }) => ExitCode::from(NO_CONFIG),
                Some(_) => ExitCode::from(BAD_CONFIG),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Genconfig { output } => {
            genconfig::run(output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            new::run(&name, lang, dir.as_deref(), sdk.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => check::run(&file),
        Command::Start { target, daemon } => start(&target, daemon),
        Command::Stop { target, timeout } => each_server(&target, |setup| stop(setup, timeout)),
        Command::Restart {
            target,
            daemon,
            timeout,
        } => {
            let stopped = stop(&target.setup()?, timeout)?;
            if stopped != ExitCode::SUCCESS {
                return Ok(stopped);
            }
            start(&target, daemon)
        }
        Command::Reload { target } => {
            each_server(&target, |setup| match ask(setup, Request::Reload)? {
                None => Ok(ExitCode::from(NOT_RUNNING)),
                Some(Response::Reloading) => {
                    println!("{} reloading (grants and plugins)", setup.label);
                    Ok(ExitCode::SUCCESS)
                }
                Some(other) => unexpected(other),
            })
        }
        Command::Status { target, json } => {
            each_server(&target, |setup| match ask(setup, Request::Status)? {
                None => Ok(ExitCode::from(NOT_RUNNING)),
                Some(Response::Status(s)) if json => print_json(&s),
                Some(Response::Status(s)) => {
                    print!("{}", render::status(&setup.label, &s));
                    Ok(ExitCode::SUCCESS)
                }
                Some(other) => unexpected(other),
            })
        }
        Command::Connections { target, json } => {
            each_server(&target, |setup| match ask(setup, Request::Connections)? {
                None => Ok(ExitCode::from(NOT_RUNNING)),
                Some(Response::Connections(c)) if json => print_json(&c),
                Some(Response::Connections(c)) => {
                    print!("{}", render::connections(&c));
                    Ok(ExitCode::SUCCESS)
                }
                Some(other) => unexpected(other),
            })
        }
    }
}

/// Runs `command` for each server `target` means (see [`Target::servers`]); the first
/// failure's exit code, else success.
fn each_server(
    target: &Target,
    mut command: impl FnMut(&Setup) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let mut result = ExitCode::SUCCESS;
    for server in target.servers()? {
        let code = command(&server.setup()?)?;
        if code != ExitCode::SUCCESS && result == ExitCode::SUCCESS {
            result = code;
        }
    }
    Ok(result)
}

/// Asks the server; `None` (after saying so) when none runs.
fn ask(setup: &Setup, request: Request) -> anyhow::Result<Option<Response>> {
    match control::ask(&setup.socket, request) {
        Ok(response) => Ok(Some(response)),
        Err(AskError::NotRunning(_)) => {
            println!("{} not run", setup.label);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn unexpected(response: Response) -> anyhow::Result<ExitCode> {
    match response {
        Response::Error(message) => anyhow::bail!("the server refused: {message}"),
        other => anyhow::bail!("the server answered something else: {other:?}"),
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

fn stop(setup: &Setup, timeout: Duration) -> anyhow::Result<ExitCode> {
    let pid = match ask(setup, Request::Stop)? {
        None => return Ok(ExitCode::SUCCESS),
        Some(Response::Stopping { pid }) => pid,
        Some(other) => return unexpected(other),
    };
    println!("{} is stopping ...", setup.label);
    if daemon::wait_for_exit(pid, timeout)? {
        println!("{} stop success", setup.label);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} stop fail: process {pid} still runs after {timeout:?}",
            setup.label
        );
        Ok(ExitCode::FAILURE)
    }
}

fn start(target: &Target, detach: bool) -> anyhow::Result<ExitCode> {
    let setup = target.setup()?;
    if control::ask(&setup.socket, Request::Status).is_ok() {
        println!("{} already running", setup.label);
        return Ok(ExitCode::FAILURE);
    }
    if target.config.is_none() && !Path::new(DEFAULT_FILE).exists() {
        println!(
            "# no configuration file given; running with:\n{}",
            setup.config.to_toml()
        );
    }
    if detach {
        // Refused here too, so that the exit code says "bad configuration" (78), not "the
        // child died".
        setup.config.load_secret().map_err(ConfigError::from)?;
        let log = setup.config.log.file.clone();
        let mut args: Vec<OsString> = vec!["start".into()];
        args.extend(target.args()?);
        // The server itself reports ready within its `start_timeout`.
        let starting = setup.config.worker.as_ref().map(|w| w.start_timeout);
        let pid =
            daemon::spawn_detached(&args, &log, READY_TIMEOUT + starting.unwrap_or_default())?;
        println!(
            "{} start in DAEMON mode: pid {pid}, log {}",
            setup.label,
            log.display()
        );
        if let Ok(Response::Status(s)) = control::ask(&setup.socket, Request::Status) {
            print!("{}", render::status(&setup.label, &s));
        }
        // The same file and roles, or `stop` would look for another server.
        let mut stop = String::from("wasmgate stop");
        if let Some(file) = &target.config {
            stop = format!("{stop} -c {}", file.display());
        }
        for role in &target.role {
            stop = format!("{stop} --role {}", role.name());
        }
        println!("Input \"{stop}\" to stop. Start success.");
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(&setup.config.log.level);
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let served = runtime.block_on(async {
        let target = target.clone();
        let triggers = Triggers {
            reload: Default::default(),
            reread: Some(Arc::new(move || target.setup().map(|s| s.config))),
        };
        let shutdown = CancellationToken::new();
        // Installed before anything runs: SIGUSR1's default action would kill the process.
        let signals = Signals::install()?;
        tokio::spawn(signals.serve(triggers.clone(), shutdown.clone()));
        tracing::info!(
            config = %setup.label,
            pid = std::process::id(),
            "wasmgate {} starting; Ctrl+C or `wasmgate stop` stops it",
            env!("CARGO_PKG_VERSION")
        );
        process::run(setup.config, triggers, shutdown).await
    });
    // A plugin's abandoned host call may still hold a blocking thread (a read of a FIFO):
    // dropping the runtime would wait for it forever.
    runtime.shutdown_timeout(ABANDONED_GRACE);
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr at `level`, unless `RUST_LOG` says otherwise.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// How long a stopped server waits for work it abandoned (a plugin's blocked host call on a
/// blocking thread) before the process exits anyway.
const ABANDONED_GRACE: Duration = Duration::from_secs(1);

/// The exit code after a second stop signal cut the graceful stop short (128 + SIGTERM, as
/// a shell reports a process killed by it).
const EXIT_FORCED: i32 = 143;

/// The signals a server answers: SIGINT and SIGTERM stop it, SIGHUP (systemd's habit) and
/// SIGUSR1 (Workerman's) reload it.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    reload: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            reload: signal(SignalKind::user_defined1())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Stops the server at the first SIGINT or SIGTERM (or reloads at SIGHUP, SIGUSR1) and exits at
    /// once, with [`EXIT_FORCED`], at the second: an operator who asks twice does not wait
    /// for a graceful stop.
    async fn serve(mut self, triggers: Triggers, shutdown: CancellationToken) {
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
                _ = self.reload.recv() => {
                    tracing::info!("SIGUSR1: reloading");
                    triggers.reload.notify_one();
                    continue;
                }
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    triggers.reload.notify_one();
                    continue;
                }
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    continue;
                }
            }
            if stopping {
                tracing::warn!("second stop signal: exiting now, without a graceful stop");
                std::process::exit(EXIT_FORCED);
            }
            stopping = true;
            tracing::info!("stopping; a second SIGINT or SIGTERM exits at once");
            shutdown.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_tags_go_before_the_extension() {
        assert_eq!(
            tagged(Path::new("/etc/wasmgate.sock"), "gateway-worker"),
            Path::new("/etc/wasmgate-gateway-worker.sock")
        );
        assert_eq!(
            tagged(Path::new("run/x"), "worker"),
            Path::new("run/x-worker")
        );
    }
}
