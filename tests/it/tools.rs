//! The tools the suites beside Rust's run with: the private environment `tests/run` (the
//! README's test command) installs under `target/test-env` (or `CONVEYOR_TEST_ENV`) from pinned
//! files: a Python virtual environment, and the npm packages of `clients/typescript` and `helm`.

use std::path::{Path, PathBuf};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What to say when a tool is missing.
pub const SETUP: &str = "run `tests/run` once (the README's test command): it installs the \
                         test tools under target/test-env";

pub fn env_dir() -> PathBuf {
    std::env::var_os("CONVEYOR_TEST_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/test-env"))
}

fn installed(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: {SETUP}", path.display());
    path
}

/// The private environment's Python (with the client's and the chart's test requirements).
pub fn python() -> PathBuf {
    installed(env_dir().join("python/bin/python3"))
}

/// The folder holding the private environment's executables (`python3`, `pytest`, ...), to put
/// first on a child's PATH.
pub fn python_bin() -> PathBuf {
    installed(env_dir().join("python/bin"))
}

/// A PATH with the private Python first.
pub fn path_with_python() -> std::ffi::OsString {
    let mut paths = vec![python_bin()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries hold no separator")
}

/// An executable an npm package installed (`node_modules/.bin/NAME`) for `package`
/// (`typescript` or `helm`).
pub fn npm_bin(package: &str, name: &str) -> PathBuf {
    installed(env_dir().join(format!("npm/{package}/node_modules/.bin/{name}")))
}
