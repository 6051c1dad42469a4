//! Builds the plugins the end-to-end tests load and writes their paths to `$OUT_DIR/plugins.rs`.
//!
//! This is wasmtime's test-programs pattern: a nested `cargo build` of the guest crates for
//! `wasm32-wasip2`. It uses its own target directory, `target/plugins`, so it never waits for the
//! lock the outer build holds, and the `plugin` profile, so tests load the same small, optimised
//! components that users deploy.

use std::env;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// One row per plugin: the constant, the package, the file it builds and the constant's doc.
/// A cdylib's file is named after its lib (`-` becomes `_`), a bin's after the bin.
const PLUGINS: &[(&str, &str, &str, &str)] = &[
    (
        "COMMANDS",
        "commands",
        "commands.wasm",
        "`examples/commands`, the reference plugin: one message is one command.",
    ),
    (
        "ECHO",
        "echo",
        "echo.wasm",
        "`examples/echo`: replies every message to its sender.",
    ),
    (
        "CHAT",
        "chat",
        "chat.wasm",
        "`examples/chat`, the chat demo's plugin: nicknames, rooms, who is online.",
    ),
    (
        "MISBEHAVE",
        "misbehave",
        "misbehave.wasm",
        "`tests/plugins/misbehave`: loops, allocates, traps or refuses to start on request.",
    ),
    (
        "NOT_A_PLUGIN",
        "not-a-plugin",
        "not-a-plugin.wasm",
        "`tests/plugins/not-a-plugin`: a WASI command, a valid component of the wrong world.",
    ),
];

/// What the plugins are built from, relative to the workspace: a change rebuilds them.
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "wit",
    "guest-sdk/Cargo.toml",
    "guest-sdk/src",
    "examples/commands/Cargo.toml",
    "examples/commands/src",
    "examples/echo/Cargo.toml",
    "examples/echo/src",
    "examples/chat/Cargo.toml",
    "examples/chat/src",
    "tests/plugins/misbehave/Cargo.toml",
    "tests/plugins/misbehave/src",
    "tests/plugins/not-a-plugin/Cargo.toml",
    "tests/plugins/not-a-plugin/src",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    println!("cargo:rerun-if-changed=build.rs");
    for source in SOURCES {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(source).display()
        );
    }

    ensure_target_installed();
    let target_dir = workspace.join("target").join("plugins");
    build_plugins(workspace, &target_dir);

    let built = target_dir.join(TARGET).join(PROFILE);
    let mut code = String::new();
    for (constant, _, file, doc) in PLUGINS {
        let path = built.join(file);
        assert!(
            path.is_file(),
            "the plugin build did not produce {}",
            path.display()
        );
        let path = path.to_str().expect("the workspace path is not UTF-8");
        writeln!(code, "/// {doc}\npub const {constant}: &str = {path:?};").unwrap();
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::write(out_dir.join("plugins.rs"), code).unwrap();
}

fn ensure_target_installed() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == TARGET)
        });
    if installed {
        return;
    }
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        added,
        "the test plugins need the {TARGET} target, which is missing and could not be installed: \
         run `rustup target add {TARGET}`"
    );
}

fn build_plugins(workspace: &Path, target_dir: &Path) {
    let mut cargo = Command::new(env::var_os("CARGO").unwrap());
    cargo
        .arg("build")
        .args(["--profile", PROFILE, "--target", TARGET])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (_, package, _, _) in PLUGINS {
        cargo.args(["-p", package]);
    }
    for (key, _) in env::vars_os() {
        if is_outer_build_only(&key) {
            cargo.env_remove(key);
        }
    }
    let output = cargo
        .output()
        .expect("could not run cargo to build the test plugins");
    assert!(
        output.status.success(),
        "building the test plugins for {TARGET} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether an inherited variable belongs to the outer build and must not reach the inner one.
///
/// Kept on purpose: `CARGO_MAKEFLAGS`, so the inner cargo takes its jobs from the outer build's
/// jobserver instead of starting as many again, and `RUSTC` and `RUSTUP_TOOLCHAIN`, so both
/// builds use the same compiler.
fn is_outer_build_only(key: &OsStr) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    matches!(
        key,
        // Flags for host code (a `-C target-cpu`, coverage) that cargo would apply to wasm too.
        "CARGO_ENCODED_RUSTFLAGS" | "RUSTFLAGS"
        // Wrappers around the host rustc: clippy's driver, sccache, coverage or fix tools.
        | "RUSTC_WORKSPACE_WRAPPER" | "RUSTC_WRAPPER"
        // Overridden by our arguments; dropped so the command line tells the whole story.
        | "CARGO_TARGET_DIR" | "CARGO_BUILD_TARGET"
        // This build script's own inputs. Cargo sets them anew for every inner build script,
        // but crates without one would see ours.
        | "TARGET" | "HOST" | "OUT_DIR" | "PROFILE" | "OPT_LEVEL" | "DEBUG" | "NUM_JOBS"
    )
    // The outer crate's cfg and features: inner build scripts would take them for their own
    // (`CARGO_CFG_UNIX` on a wasm build), as cargo only adds variables, never clears them.
    || key.starts_with("CARGO_CFG_")
    || key.starts_with("CARGO_FEATURE_")
}
