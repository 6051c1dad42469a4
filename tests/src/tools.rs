//! Outside tools some tests need, installed by the tests themselves into `target/` from the
//! package registries with their ordinary clients: a Python venv (componentize-py), npm packages
//! (componentize-js, playwright-core) and Debian's Chromium.
//!
//! A test that cannot get a tool because a registry is unreachable, or because the machine lacks
//! Python, Node.js or apt, is skipped loudly: [`Skip::report`] prints a banner to the real stderr
//! (not the test harness's captured one) and appends a line to [`SKIPS_FILE`], which `.ci/run`
//! counts. Any other failure (a bad pin, a build error) fails the test.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where skipped tests are recorded, one line each, relative to the workspace.
pub const SKIPS_FILE: &str = "target/test-skips.log";

/// Why a test could not run here.
#[derive(Debug, Clone)]
pub struct Skip(String);

impl Skip {
    /// A skip for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// Announces that `test` is skipped and records it in [`SKIPS_FILE`].
    pub fn report(&self, test: &str) {
        let line = format!("SKIPPED {test}: {}", self.0);
        // Straight to the process's stderr: `eprintln!` would be captured, and shown only if
        // the test failed, which a skipped test does not.
        let _ = writeln!(
            std::io::stderr(),
            "\n{bar}\n{line}\n{bar}",
            bar = "!".repeat(72)
        );
        let record = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(workspace().join(SKIPS_FILE));
        if let Ok(mut file) = record {
            let _ = writeln!(file, "{line}");
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Unwraps `tool`, or reports `test` as skipped and returns `None`:
/// `let Some(path) = tools::or_skip(build(), "conformance::python") else { return };`
pub fn or_skip<T>(tool: Result<T, Skip>, test: &str) -> Option<T> {
    tool.inspect_err(|skip| skip.report(test)).ok()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// `target/tools/NAME`, created if missing: one tool's installation.
fn tool_dir(name: &str) -> PathBuf {
    let dir = workspace().join("target").join("tools").join(name);
    std::fs::create_dir_all(&dir).expect("creating target/tools");
    dir
}

/// Holds an exclusive lock on `dir/.lock` while alive, so that tests running at the same time
/// (on threads of the test binary, or a bench beside it) never install or build into one
/// directory at once. Each holder opens the file itself, so threads exclude each other too.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Waits for the lock on `dir`.
    pub fn acquire(dir: &Path) -> Self {
        let file = File::create(dir.join(".lock")).expect("creating a lock file");
        file.lock().expect("locking");
        Self { _file: file }
    }
}

/// Runs `command`; its output if it succeeded. If it failed and its output shows a network
/// error, the registry is unreachable: a [`Skip`]. Any other failure panics with the output.
pub fn run(command: &mut Command, what: &str) -> Result<Output, Skip> {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    if output.status.success() {
        return Ok(output);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(marker) = NETWORK_ERRORS.iter().find(|m| text.contains(*m)) {
        return Err(Skip::new(format!(
            "{what}: a package registry is unreachable ({marker})"
        )));
    }
    panic!("{what} failed ({}):\n{text}", output.status);
}

/// What pip, npm and apt print when they cannot reach a registry.
const NETWORK_ERRORS: &[&str] = &[
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ProxyError",
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "Could not resolve",
    "Failed to fetch",
    "Unable to fetch some archives",
    "Temporary failure resolving",
    // apt-get install after an `apt-get update` that could not fetch the package lists.
    "Unable to locate package",
];

/// Whether `program` can be started at all (`program --version` runs).
fn exists(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A venv at `target/tools/NAME` with `requirements` (a requirements file) installed; its
/// `bin` directory. Reinstalls only when the requirements file changed.
pub fn python_venv(name: &str, requirements: &Path) -> Result<PathBuf, Skip> {
    if !exists("python3") {
        return Err(Skip::new("python3 is not installed"));
    }
    let dir = tool_dir(name);
    let _lock = DirLock::acquire(&dir);
    let wanted = std::fs::read(requirements).expect("reading the requirements");
    let stamp = dir.join("installed.txt");
    let bin = dir.join("venv").join("bin");
    if std::fs::read(&stamp).ok() != Some(wanted.clone()) {
        run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(dir.join("venv")),
            "creating a Python venv",
        )?;
        run(
            Command::new(bin.join("pip"))
                .args(["install", "--retries", "2", "--timeout", "60", "-r"])
                .arg(requirements),
            "pip install",
        )?;
        std::fs::write(&stamp, &wanted).expect("writing the install stamp");
    }
    Ok(bin)
}

/// The packages of `package_json` (copied to `target/tools/NAME`) installed there with npm; the
/// `node_modules` directory. Reinstalls only when the manifest changed.
pub fn npm_install(name: &str, package_json: &Path) -> Result<PathBuf, Skip> {
    if !exists("node") || !exists("npm") {
        return Err(Skip::new("Node.js and npm are not installed"));
    }
    let dir = tool_dir(name);
    let _lock = DirLock::acquire(&dir);
    let wanted = std::fs::read(package_json).expect("reading package.json");
    let modules = dir.join("node_modules");
    if std::fs::read(dir.join("package.json")).ok() != Some(wanted.clone()) || !modules.is_dir() {
        // A fresh tree: npm installing over one made for another package.json can leave it
        // without packages the new one needs.
        let _ = std::fs::remove_dir_all(&modules);
        let _ = std::fs::remove_file(dir.join("package-lock.json"));
        std::fs::write(dir.join("package.json"), &wanted).expect("copying package.json");
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund"])
                // Bounded: without network, revalidating the cache could otherwise stall for
                // many minutes; what the cache holds is used as it is.
                .args([
                    "--prefer-offline",
                    "--fetch-retries=1",
                    "--fetch-timeout=120000",
                ])
                .arg("--prefix")
                .arg(&dir),
            "npm install",
        )
        .inspect_err(|_| {
            // Not installed: the next run must try again.
            let _ = std::fs::remove_file(dir.join("package.json"));
        })?;
    }
    Ok(modules)
}

/// Debian's Chromium, installed with apt-get (with `chromium-driver`) when missing; its path.
pub fn chromium() -> Result<PathBuf, Skip> {
    // With recommends: they bring the fonts the page's text renders in.
    apt_install(
        Path::new("/usr/bin/chromium"),
        "Chromium",
        &["install", "-y", "chromium", "chromium-driver"],
    )
}

/// Debian's `redis-server`, installed with apt-get when missing; its path.
pub fn redis_server() -> Result<PathBuf, Skip> {
    apt_install(
        Path::new("/usr/bin/redis-server"),
        "redis-server",
        &["install", "-y", "--no-install-recommends", "redis-server"],
    )
}

/// Debian's `nats-server` (2.9), installed with apt-get when missing; its path.
pub fn nats_server() -> Result<PathBuf, Skip> {
    apt_install(
        Path::new("/usr/sbin/nats-server"),
        "nats-server",
        &["install", "-y", "--no-install-recommends", "nats-server"],
    )
}

/// `program` if it is installed, else what `apt-get <install>` (as root, after an update)
/// puts there.
fn apt_install(program: &Path, what: &str, install: &[&str]) -> Result<PathBuf, Skip> {
    if program.is_file() {
        return Ok(program.to_owned());
    }
    if !exists("apt-get") {
        return Err(Skip::new(format!(
            "{what} is not installed and there is no apt-get"
        )));
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        return Err(Skip::new(format!(
            "{what} is not installed, and only root can apt-get {}",
            install.join(" ")
        )));
    }
    let dir = tool_dir("apt");
    let _lock = DirLock::acquire(&dir);
    if !program.is_file() {
        run(Command::new("apt-get").arg("update"), "apt-get update")?;
        run(
            Command::new("apt-get")
                .args(install)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get install {what}"),
        )?;
    }
    Ok(program.to_owned())
}

/// The `bin` directory of Debian's PostgreSQL server (`initdb`, `pg_ctl`), installed with
/// apt-get (package `postgresql`) when missing.
pub fn postgres() -> Result<PathBuf, Skip> {
    let find = || {
        let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
        let mut bins: Vec<PathBuf> = versions
            .filter_map(|v| Some(v.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
            .collect();
        bins.sort();
        bins.pop()
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    if !exists("apt-get") {
        return Err(Skip::new(
            "PostgreSQL is not installed and there is no apt-get",
        ));
    }
    if !is_root() {
        return Err(Skip::new(
            "PostgreSQL is not installed, and only root can apt-get install postgresql",
        ));
    }
    let dir = tool_dir("apt");
    let _lock = DirLock::acquire(&dir);
    if find().is_none() {
        run(Command::new("apt-get").arg("update"), "apt-get update")?;
        run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install postgresql",
        )?;
    }
    find().ok_or_else(|| Skip::new("apt-get installed postgresql, but no initdb was found"))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Whether a process here may hold `needed` descriptors: its hard limit, up to which
/// [`raise_descriptor_limit`] raises it; why not, if not.
pub fn descriptor_limit_allows(needed: u64) -> Result<(), Skip> {
    let hard = descriptor_limit()
        .map_err(|e| Skip::new(format!("getrlimit: {e}")))?
        .rlim_max;
    if hard < needed {
        return Err(Skip::new(format!(
            "{needed} descriptors per process are needed, the hard limit is {hard}"
        )));
    }
    Ok(())
}

/// Raises the calling process's open-descriptor limit to its hard limit. Two system calls
/// and no allocation: a child may make them between fork and exec.
pub fn raise_descriptor_limit() -> std::io::Result<()> {
    let mut limit = descriptor_limit()?;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a plain system call on a struct of the right type.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling process's open-descriptor limits.
fn descriptor_limit() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call writing a struct of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}
