//! `wasmgate check FILE.wasm`: whether a worker host would load a file as a plugin, in plain
//! words. The file goes through the runtime's own load path ([`Runtime::inspect`]), so the
//! verdict is the one a worker host would reach, never a second opinion.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::worker::runtime::{Inspection, Limits, LoadError, Runtime};

/// sysexits' exit code for input that is not what it should be: not a component at all.
const NOT_A_COMPONENT: u8 = 65;

/// sysexits' exit code for an input file that cannot be read.
const UNREADABLE: u8 = 66;

/// Checks `file` and prints the report; 0 when it is a plugin this host loads, 1 when it is
/// a component this host refuses, 65 when it is not a component, 66 when it cannot be read.
pub fn run(file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            println!("{}: cannot be read: {e}", file.display());
            return Ok(ExitCode::from(UNREADABLE));
        }
    };
    let runtime = Runtime::new(Limits::default())?;
    let (report, code) = match runtime.inspect(&bytes) {
        Ok(found) => {
            let code = match found.refused {
                None => ExitCode::SUCCESS,
                Some(_) => ExitCode::FAILURE,
            };
            (report(&found, &super::new::plugin_package()), code)
        }
        Err(e) => (
            format!("NOT a plugin: {e}\n"),
            ExitCode::from(NOT_A_COMPONENT),
        ),
    };
    print!("{}: {report}", file.display());
    Ok(code)
}

/// The report on a component: the verdict, the world it seems to target, what it exports
/// (and lacks) and imports, and why this host would refuse it. `package` is the plugin WIT
/// package this host implements (`wasmgate:plugin@x.y.z`).
fn report(found: &Inspection, package: &str) -> String {
    let (name, version) = package.split_once('@').unwrap_or((package, ""));
    let events = format!("{name}/events@{version}");
    let mut out = match &found.refused {
        None => format!("a valid plugin for this host ({package})\n"),
        Some(_) => "NOT a plugin for this host: a WebAssembly component it would refuse\n".into(),
    };
    let world = if found.exports.contains(&events) {
        format!("the {package} plugin world")
    } else if let Some(other) = found.exports.iter().find(|e| e.starts_with(name)) {
        format!("{other}: another version of the plugin world than this host's {package}")
    } else if found.exports.iter().any(|e| e.starts_with("wasi:cli/run@")) {
        "a WASI command (wasi:cli/command: a program with a `main`), not a plugin".into()
    } else {
        "none this host knows".into()
    };
    let _ = writeln!(out, "  world:    {world}");
    let _ = writeln!(out, "  exports:  {}", list(&found.exports));
    if !found.exports.contains(&events) {
        let _ = writeln!(
            out,
            "  missing:  the export {events}, which every plugin needs"
        );
    } else if found
        .exports
        .contains(&format!("{name}/presence@{version}"))
    {
        let _ = writeln!(
            out,
            "  presence: exported: told when uids come online and go offline"
        );
    } else {
        let _ = writeln!(
            out,
            "  presence: not exported (optional): told nothing about uids"
        );
    }
    let _ = writeln!(out, "  imports:  {}", list(&found.imports));
    match &found.refused {
        None => {
            let _ = writeln!(out, "  every import is one this host provides");
        }
        Some(LoadError::WrongWorld(e)) => {
            let _ = writeln!(out, "  refused:  {e:#}");
        }
        Some(other) => {
            let _ = writeln!(out, "  refused:  {other}");
        }
    }
    out
}

/// `a, b, c`, or `none`.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
