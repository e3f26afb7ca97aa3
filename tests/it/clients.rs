//! The client packages' own test suites, run against the binary built here, so `cargo test` (the
//! README's one test command) runs them too.

use std::process::Command;

/// Runs `program args` in `clients/<package>` with CONVEYOR_BIN set; fails with its output and
/// `setup` (what the suite needs installed) when it fails.
fn suite(package: &str, program: &str, args: &[&str], setup: &str) {
    let dir = format!("{}/clients/{package}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CONVEYOR_BIN", env!("CARGO_BIN_EXE_conveyor"))
        .output()
        .unwrap_or_else(|e| panic!("{program} runs the {package} client's tests: {e}"));
    assert!(
        out.status.success(),
        "{}{}\n(the {package} tests need {setup}, which .ci/run does)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `clients/python`: `pytest` starts `conveyor dev` itself and drives it with the package's
/// client and worker.
#[test]
fn the_python_client_tests_pass() {
    suite(
        "python",
        "python3",
        &["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        "`python3 -m pip install -r clients/python/requirements-dev.txt`",
    );
}

/// `clients/typescript`: `npm test` compiles the package and runs node:test suites that start
/// `conveyor dev` themselves, plus `buf lint` and checks that src/gen and the dashboard's bundle
/// are current; the dashboard's suite drives headless Chromium against it.
#[test]
fn the_typescript_client_tests_pass() {
    suite(
        "typescript",
        "npm",
        &["test", "--silent"],
        "`npm ci` in clients/typescript, and Debian's `chromium` for the dashboard test",
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
