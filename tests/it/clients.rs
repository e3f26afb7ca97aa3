//! The client packages' own test suites, run against the binary built here, so `cargo test` (the
//! README's one test command) runs them too.

use std::process::Command;

use crate::tools;

/// Runs `program args` in `clients/<package>` with CONVEYOR_BIN set and the private Python
/// first on PATH; fails with its output and `setup` (what the suite needs installed) when it
/// fails.
fn suite(package: &str, program: &str, args: &[&str], setup: &str) {
    let dir = format!("{}/clients/{package}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CONVEYOR_BIN", env!("CARGO_BIN_EXE_conveyor"))
        .env("PATH", tools::path_with_python())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs the {package} client's tests: {e}"));
    assert!(
        out.status.success(),
        "{}{}\n(the {package} tests need {setup}; {})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tools::SETUP
    );
}

/// `clients/python`: `run-tests.sh` builds the wheel, installs it, checks what a PyPI user gets
/// (metadata, the lowest dependency versions it allows), and runs pytest against the installed
/// package, which starts `conveyor dev` itself and drives it with the client and worker.
#[test]
fn the_python_client_tests_pass() {
    suite(
        "python",
        "sh",
        &["run-tests.sh", "-q", "-p", "no:cacheprovider"],
        "clients/python/requirements-dev.txt",
    );
}

/// `clients/typescript`: `npm test` packs the package, installs the tarball in a scratch project
/// and runs node:test suites against it that start `conveyor dev` themselves, plus `buf lint`,
/// the checks that src/gen and the dashboard's bundle are current and what the tarball holds; the
/// dashboard's suite drives headless Chromium.
#[test]
fn the_typescript_client_tests_pass() {
    suite(
        "typescript",
        "npm",
        &["test", "--silent"],
        "clients/typescript's npm packages, and Debian's `chromium` for the dashboard test",
    );
}

/// `clients/examples/video`: the video pipeline (`conveyor dev`, the Python render worker, the
/// backend that submits and watches) runs to a rendered video, with every stage reported.
#[test]
fn the_video_pipeline_example_runs() {
    let port = crate::harness::free_port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/examples/video/run.sh");
    let out = Command::new("sh")
        .arg(script)
        .env("CONVEYOR_BIN", env!("CARGO_BIN_EXE_conveyor"))
        .env("PORT", &port)
        .env("STEP_SECONDS", "0.02")
        .env("PATH", tools::path_with_python())
        .output()
        .expect("sh runs the example");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "bundle",
        "composition",
        "render",
        "upload",
        "cleanup",
        "JOB_STATE_SUCCEEDED",
    ] {
        assert!(said.contains(stage), "{stage} in {said}");
    }
    assert!(said.contains("weather.mp4 ("), "{said}");
}
