//! `wasmgate new NAME --lang rust|python|js`: a plugin project that builds with one command
//! (`./build.sh`) and runs with `wasmgate start`. The files are templates in `host/templates/`
//! (and the WIT files of `wit/` for the languages that need them), carried in the binary; only
//! `{{…}}` placeholders are filled in.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The language of a new plugin project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with the wasmgate guest SDK, built with cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        })
    }
}

/// One file of a project: its path in the project, its template, whether it is a script.
type Template = (&'static str, &'static str, bool);

/// What every project has.
const COMMON: &[Template] = &[
    (
        "wasmgate.toml",
        include_str!("../../templates/wasmgate.toml"),
        false,
    ),
    (
        ".gitignore",
        include_str!("../../templates/gitignore"),
        false,
    ),
];

/// The plugin contract, for the languages whose tools read WIT files (Rust's is in the SDK).
const WIT: &[Template] = &[
    (
        "wit/plugin.wit",
        include_str!("../../../wit/plugin.wit"),
        false,
    ),
    ("wit/sql.wit", include_str!("../../../wit/sql.wit"), false),
    (
        "wit/deps/keyvalue/store.wit",
        include_str!("../../../wit/deps/keyvalue/store.wit"),
        false,
    ),
    (
        "wit/deps/keyvalue/atomic.wit",
        include_str!("../../../wit/deps/keyvalue/atomic.wit"),
        false,
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        include_str!("../../../wit/deps/keyvalue/batch.wit"),
        false,
    ),
    (
        "wit/deps/keyvalue/world.wit",
        include_str!("../../../wit/deps/keyvalue/world.wit"),
        false,
    ),
];

const RUST: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
        false,
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../templates/rust/build.sh"),
        true,
    ),
    (
        "README.md",
        include_str!("../../templates/rust/README.md"),
        false,
    ),
];

const PYTHON: &[Template] = &[
    (
        "app.py",
        include_str!("../../templates/python/app.py"),
        false,
    ),
    (
        "requirements.txt",
        include_str!("../../templates/python/requirements.txt"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../templates/python/build.sh"),
        true,
    ),
    (
        "README.md",
        include_str!("../../templates/python/README.md"),
        false,
    ),
];

const JS: &[Template] = &[
    ("app.js", include_str!("../../templates/js/app.js"), false),
    (
        "package.json",
        include_str!("../../templates/js/package.json"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../templates/js/build.sh"),
        true,
    ),
    (
        "README.md",
        include_str!("../../templates/js/README.md"),
        false,
    ),
];

/// The SDK of the checkout this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// The plugin WIT package this host implements, `wasmgate:plugin@x.y.z`.
pub fn plugin_package() -> String {
    WIT[0]
        .1
        .lines()
        .find_map(|l| l.trim().strip_prefix("package ")?.strip_suffix(';'))
        .expect("wit/plugin.wit names its package")
        .to_owned()
}

/// Checks a project name: it becomes the app name (`plugins/NAME.wasm`), a directory and a
/// crate or package name, so lower-case ASCII letters, digits, `-` and `_`, starting with a
/// letter, at most 64.
pub fn project_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let fits = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if fits {
        Ok(name.to_owned())
    } else {
        Err("a lower-case letter, then letters, digits, `-` or `_` (at most 64)".into())
    }
}

/// Writes project `name` in `lang` into `dir` (default `./NAME`), which must not exist yet.
/// `sdk` is the guest SDK a Rust project depends on (default: see [`find_sdk`]).
pub fn run(name: &str, lang: Lang, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir.unwrap_or(Path::new(name)))?;
    anyhow::ensure!(
        !dir.exists(),
        "{} already exists: `wasmgate new` writes a new directory only",
        dir.display()
    );
    let package = plugin_package();
    let version = package.split_once('@').map_or("", |(_, v)| v);
    let sdk = match lang {
        Lang::Rust => find_sdk(&dir, sdk)?,
        Lang::Python | Lang::Js => String::new(),
    };
    let files: Vec<&Template> = match lang {
        Lang::Rust => COMMON.iter().chain(RUST).collect(),
        Lang::Python => COMMON.iter().chain(PYTHON).chain(WIT).collect(),
        Lang::Js => COMMON.iter().chain(JS).chain(WIT).collect(),
    };
    let crate_name = name.replace('-', "_");
    for (path, template, script) in files {
        let text = template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{sdk}}", &sdk)
            .replace("{{version}}", version);
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a file in the project"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        if *script {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    println!(
        "created {} ({lang} plugin `{name}` for {package})\n\
         next:  cd {} && ./build.sh && wasmgate start\n\
         then:  a WebSocket client on ws://127.0.0.1:7272 gets back what it sends",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The guest SDK a Rust project depends on by path, as it goes into `Cargo.toml`: `given`;
/// else a wasmgate checkout the project is made inside (a relative path, so the checkout can
/// move); else the checkout this binary was built from (absolute). The SDK is not on
/// crates.io, so there is no registry version to fall back to.
fn find_sdk(dir: &Path, given: Option<&Path>) -> anyhow::Result<String> {
    let is_sdk = |path: &Path| {
        std::fs::read_to_string(path.join("Cargo.toml"))
            .is_ok_and(|t| t.contains("name = \"wasmgate-sdk\""))
    };
    if let Some(given) = given {
        let given = std::path::absolute(given)?;
        anyhow::ensure!(
            is_sdk(&given),
            "--sdk {}: no wasmgate-sdk Cargo.toml there",
            given.display()
        );
        return Ok(given.display().to_string());
    }
    for (up, ancestor) in dir.ancestors().skip(1).enumerate() {
        if is_sdk(&ancestor.join("guest-sdk")) {
            return Ok(format!("{}guest-sdk", "../".repeat(up + 1)));
        }
    }
    let built_from = PathBuf::from(BUILT_FROM_SDK);
    anyhow::ensure!(
        is_sdk(&built_from),
        "cannot find the wasmgate guest SDK (not on crates.io yet): pass --sdk PATH, the \
         guest-sdk directory of a wasmgate checkout"
    );
    Ok(std::fs::canonicalize(built_from)?.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_a_directory_a_crate_and_an_app() {
        for good in ["echo", "my-chat", "a_2"] {
            assert_eq!(project_name(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "Echo",
            "2chat",
            "-x",
            "a b",
            "a/b",
            "a.b",
            &"x".repeat(65),
        ] {
            assert!(project_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_package_is_the_wit_files() {
        assert!(plugin_package().starts_with("wasmgate:plugin@"));
    }

    #[test]
    fn a_project_inside_a_checkout_finds_its_sdk_relatively() {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dir = checkout.join("examples/mine");
        assert_eq!(find_sdk(&dir, None).unwrap(), "../../guest-sdk");
        assert!(find_sdk(&dir, Some(&checkout.join("wit"))).is_err());
    }
}
