//! The client packages' own test suites, run against the binary built here, so `cargo test` (the
//! README's one test command) runs them too.

use std::process::Command;

/// `clients/python`: `pytest` starts `conveyor dev` itself (CONVEYOR_BIN) and drives it with
/// the package's client and worker.
#[test]
fn the_python_client_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(dir)
        .env("CONVEYOR_BIN", env!("CARGO_BIN_EXE_conveyor"))
        .output()
        .expect("python3 runs the Python client's tests");
    assert!(
        out.status.success(),
        "{}{}\n(the Python tests need `python3 -m pip install -r clients/python/requirements-dev.txt`, which .ci/run does)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `clients/typescript`: `npm test` compiles the package and runs node:test suites that start
/// `conveyor dev` themselves (CONVEYOR_BIN), plus `buf lint` and a check that src/gen is current.
#[test]
fn the_typescript_client_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/typescript");
    let out = Command::new("npm")
        .args(["test", "--silent"])
        .current_dir(dir)
        .env("CONVEYOR_BIN", env!("CARGO_BIN_EXE_conveyor"))
        .output()
        .expect("npm runs the TypeScript client's tests");
    assert!(
        out.status.success(),
        "{}{}\n(the TypeScript tests need `npm ci` in clients/typescript, which .ci/run does)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
