//! Running the chart's tools for the tests: the helm that helm/package.json pins, PyYAML and
//! kubernetes-validate from helm/requirements-dev.txt; and reading what they render.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The Kubernetes version `helm template` renders for (the chart's floor is in Chart.yaml).
pub const KUBERNETES: &str = "1.30.0";
use crate::tools::{self, SETUP};

pub fn chart() -> String {
    format!("{ROOT}/helm/conveyor")
}

/// Every optional feature on.
pub fn full_values() -> String {
    format!("{ROOT}/helm/conveyor/ci/full-values.yaml")
}

pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}; {SETUP}"))
}

/// stdout and stderr, for failure messages and checks of what a tool said.
pub fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn helm(args: &[&str]) -> Output {
    run(tools::npm_bin("helm", "helm"), args)
}

/// `helm lint --strict` of the chart with `values` files.
pub fn lint(values: &[&str]) -> Output {
    let chart = chart();
    let mut args = vec!["lint", "--strict", &chart];
    values.iter().for_each(|v| args.extend(["-f", *v]));
    helm(&args)
}

/// `helm template` of the chart (release `conveyor`, namespace `jobs`) with `values` files.
pub fn template(values: &[&str]) -> Output {
    let chart = chart();
    let mut args = vec!["template", "conveyor", &chart, "--namespace", "jobs"];
    args.extend(["--kube-version", KUBERNETES]);
    values.iter().for_each(|v| args.extend(["-f", *v]));
    helm(&args)
}

/// Rendered manifests: the file (for kubernetes-validate) and its documents.
pub struct Rendered {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub docs: Vec<Value>,
}

/// The chart rendered with `values` files; panics with helm's words when it refuses them.
pub fn render(values: &[&str]) -> Rendered {
    let out = template(values);
    assert!(out.status.success(), "helm template:\n{}", said(&out));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifests.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    let docs = yaml_documents(&path);
    Rendered {
        _dir: dir,
        path,
        docs,
    }
}

/// The chart with default values and with every feature on, named for failure messages.
pub fn both() -> [(&'static str, Rendered); 2] {
    [
        ("default", render(&[])),
        ("full", render(&[&full_values()])),
    ]
}

/// The YAML documents of `path` as JSON, read by PyYAML (which kubernetes-validate brings).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
                  json.dump(docs, sys.stdout)";
    let out = run(tools::python(), &["-c", script, &path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "PyYAML: {}; the chart tests need {SETUP}",
        said(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

/// The documents of `kind` whose component label is `component` (server, worker).
pub fn component<'a>(
    docs: &'a [Value],
    kind: &'a str,
    which: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    of_kind(docs, kind)
        .filter(move |d| d["metadata"]["labels"]["app.kubernetes.io/component"] == which)
}

/// The one document of `kind` and `component`.
pub fn one<'a>(docs: &'a [Value], kind: &'a str, which: &'a str) -> &'a Value {
    let found: Vec<_> = component(docs, kind, which).collect();
    assert_eq!(found.len(), 1, "one {which} {kind}");
    found[0]
}

pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Seconds of a duration as the chart writes them (`20s`).
pub fn seconds(text: &str) -> u64 {
    let n = text.strip_suffix('s').and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("{text:?} is not a duration in seconds"))
}

/// A container's env entry by name.
pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// Whether `text` holds a URL with a password (`scheme://user:secret@host`).
pub fn has_password(text: &str) -> bool {
    text.split("://").skip(1).any(|rest| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
    })
}
