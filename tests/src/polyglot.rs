//! The reference plugin's Python and JavaScript builds (`examples/commands-py`,
//! `examples/commands-js`), made with componentize-py and componentize-js as their READMEs say,
//! the tools installed by [`tools`] from the registries.
//!
//! A build takes seconds (each component embeds a whole interpreter), so it is made once per
//! change of its inputs and kept in `target/polyglot/`; the tests and the bench share it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::tools::{self, DirLock, Skip};

/// A language the reference plugin is written in besides Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `examples/commands-py`, built with componentize-py.
    Python,
    /// `examples/commands-js`, built with componentize-js.
    JavaScript,
}

impl Language {
    /// Both of them.
    pub const ALL: [Language; 2] = [Language::Python, Language::JavaScript];

    /// The language's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
        }
    }

    /// The example's directory name, also the built file's name.
    pub fn example(self) -> &'static str {
        match self {
            Language::Python => "commands-py",
            Language::JavaScript => "commands-js",
        }
    }

    /// The files the build reads besides `wit/`: the source (the first), the tool's pin and,
    /// for Python, the world it is built for.
    fn inputs(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["app.py", "requirements.txt", "wit/plugin-http.wit"],
            Language::JavaScript => &["commands.js", "package.json"],
        }
    }
}

/// The built component of the reference plugin in `language`: built now if its inputs changed
/// since the last build, or a [`Skip`] if the toolchain cannot be installed here.
pub fn commands(language: Language) -> Result<PathBuf, Skip> {
    static BUILT: [OnceLock<Result<PathBuf, Skip>>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILT[language as usize]
        .get_or_init(|| build(language))
        .clone()
}

fn build(language: Language) -> Result<PathBuf, Skip> {
    let workspace = tools::workspace();
    let example = workspace.join("examples").join(language.example());
    let out_dir = workspace.join("target").join("polyglot");
    std::fs::create_dir_all(&out_dir).expect("creating target/polyglot");
    let out = out_dir.join(format!("{}.wasm", language.example()));
    let stamp = out.with_extension("inputs");
    let inputs = fingerprint(&workspace, &example, language);

    let wit = workspace.join("wit");
    // The commands of the examples' READMEs, with the WIT directory given absolute.
    let mut command = match language {
        Language::Python => {
            let bin = tools::python_venv("componentize-py", &example.join("requirements.txt"))?;
            let wit = python_wit(&wit, &example, &out_dir)?;
            let mut command = Command::new(bin.join("componentize-py"));
            command.arg("-d").arg(&wit);
            command.args(["-w", "plugin-http", "componentize", "app", "-o"]);
            command
        }
        Language::JavaScript => {
            let modules = tools::npm_install("componentize-js", &example.join("package.json"))?;
            let mut command = Command::new(modules.join(".bin").join("componentize-js"));
            command.args(["commands.js", "--wit"]).arg(&wit);
            // `--disable fetch-event`: plugins export `events`, not wasi:http's incoming
            // handler. The `http` feature stays: it is `fetch()`, over the outgoing handler
            // every worker host links.
            command.args([
                "--world-name",
                "plugin",
                "--disable",
                "fetch-event",
                "--out",
            ]);
            command
        }
    };
    let _lock = DirLock::acquire(&out_dir);
    if out.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&inputs) {
        return Ok(out);
    }
    // Built from a copy of the source: componentize-py's embedded CPython writes __pycache__
    // beside the module it imports, whatever the environment says.
    let source = language.inputs()[0];
    let staging = out_dir.join(format!("{}-src", language.example()));
    std::fs::create_dir_all(&staging).expect("creating the build directory");
    std::fs::copy(example.join(source), staging.join(source)).expect("copying the source");
    // Built aside and renamed in: a half-written file is never taken for a build.
    let partial = out.with_extension("wasm.partial");
    tools::run(
        command.arg(&partial).current_dir(&staging),
        &format!("building {}", language.example()),
    )?;
    std::fs::rename(&partial, &out).expect("moving the built component into place");
    std::fs::write(&stamp, &inputs).expect("writing the build stamp");
    Ok(out)
}

/// The WIT directory the Python plugin is built from: `wit/`, the example's `plugin-http`
/// world, and under `deps/` the wasi:http packages (and those they use) of the
/// wasmtime-wasi-http crate the host is built with, taken from the cargo registry.
fn python_wit(wit: &Path, example: &Path, out_dir: &Path) -> Result<PathBuf, Skip> {
    let deps = wasi_http_wit()?.join("deps");
    let dir = out_dir.join("commands-py-wit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("deps")).expect("creating the WIT directory");
    let copy_all = |from: &Path, to: &Path| {
        for entry in std::fs::read_dir(from).expect("reading a WIT directory") {
            let path = entry.expect("reading a WIT directory").path();
            if path.extension().is_some_and(|e| e == "wit") {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).expect("copying WIT");
            }
        }
    };
    copy_all(wit, &dir);
    copy_all(&example.join("wit"), &dir);
    copy_all(&deps, &dir.join("deps"));
    // Our own dependencies (wasi:keyvalue), a folder each.
    for entry in std::fs::read_dir(wit.join("deps")).into_iter().flatten() {
        let from = entry.expect("reading wit/deps").path();
        if from.is_dir() {
            let to = dir.join("deps").join(from.file_name().unwrap());
            std::fs::create_dir_all(&to).expect("creating the WIT directory");
            copy_all(&from, &to);
        }
    }
    Ok(dir)
}

/// The `wit/` directory of the wasmtime-wasi-http crate in this workspace's lock file, as
/// cargo unpacked it to build the host. Looked up in the registry's sources directly:
/// `cargo metadata` would want every platform's dependencies downloaded.
fn wasi_http_wit() -> Result<PathBuf, Skip> {
    let lock =
        std::fs::read_to_string(tools::workspace().join("Cargo.lock")).expect("reading Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasmtime-wasi-http\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("wasmtime-wasi-http is a dependency of the host");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or_else(|| Skip::new("neither CARGO_HOME nor HOME is set"))?;
    let crate_dir = format!("wasmtime-wasi-http-{version}");
    std::fs::read_dir(cargo_home.join("registry").join("src"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|index| index.path().join(&crate_dir).join("wit"))
        .find(|wit| wit.join("deps").is_dir())
        .ok_or_else(|| Skip::new(format!("{crate_dir} is not in cargo's registry sources")))
}

/// A digest of everything the build reads: the example's inputs and the WIT package.
fn fingerprint(workspace: &Path, example: &Path, language: Language) -> String {
    let mut hasher = DefaultHasher::new();
    let mut wit = Vec::new();
    files_under(&workspace.join("wit"), &mut wit);
    wit.sort();
    let files = language.inputs().iter().map(|f| example.join(f)).chain(wit);
    for file in files {
        std::fs::read(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
            .hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// Every file under `dir`, its subdirectories (`wit/deps/…`) included.
fn files_under(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("reading a WIT directory").path();
        if path.is_dir() {
            files_under(&path, files);
        } else {
            files.push(path);
        }
    }
}
