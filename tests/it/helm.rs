//! The Helm chart (`helm/conveyor`): it lints, renders with default values and with every
//! feature on, the built-in kinds pass the Kubernetes API schemas, and the rendered pods keep the
//! rules that matter in a cluster (credentials only from Secrets, locked-down containers, probes,
//! a drain before SIGTERM and time enough for it). Bad values are refused before anything renders.

mod chart;

use std::path::Path;

use chart::{
    ROOT, both, component, env, full_values, has_password, lint, of_kind, one, render, run, said,
    seconds, strings, template, yaml_documents,
};

/// Kubernetes versions the manifests are validated against: the chart's floor (Chart.yaml
/// `kubeVersion`: gRPC probes are on by default from 1.24; the schemas start at 1.25) and the
/// version the other tests render for.
const VALIDATE: [&str; 2] = ["1.25.0", chart::KUBERNETES];
/// Custom resources kubernetes-validate has no schema for (it warns and passes them);
/// `custom_resources_point_at_the_service` checks them instead.
const CRDS: [(&str, &str); 3] = [
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
    ("HTTPRoute", "gateway.networking.k8s.io/v1"),
    ("GRPCRoute", "gateway.networking.k8s.io/v1"),
];
/// Settings that are credentials: they may only come from a Secret.
const CREDENTIALS: [&str; 7] = [
    "REDIS_URL",
    "DATABASE_URL",
    "CONVEYOR_S3_ACCESS_KEY",
    "CONVEYOR_S3_SECRET_KEY",
    "CONVEYOR_WEBHOOK_SECRET",
    "CONVEYOR_KEY",
    "CONVEYOR_BOOTSTRAP_KEY",
];

#[test]
fn the_chart_lints_strictly_with_default_and_full_values() {
    for values in [vec![], vec![full_values()]] {
        let out = lint(&values.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "helm lint {values:?}:\n{}",
            said(&out)
        );
    }
}

#[test]
fn rendered_manifests_pass_the_kubernetes_schemas() {
    for (values, rendered) in both() {
        let file = rendered.path.to_string_lossy().to_string();
        let mut args = vec!["-m", "kubernetes_validate", "--strict"];
        for version in VALIDATE {
            args.extend(["-k", version]);
        }
        args.push(&file);
        let out = run(crate::tools::python(), &args);
        let report = said(&out);
        assert!(out.status.success(), "{values} values:\n{report}");
        let is_crd = |kind: &str| CRDS.iter().any(|(k, _)| *k == kind);
        let built_in = rendered
            .docs
            .iter()
            .filter(|d| !is_crd(d["kind"].as_str().unwrap()));
        let passed = report
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "));
        assert_eq!(
            passed.count(),
            built_in.count() * VALIDATE.len(),
            "{values}:\n{report}"
        );
        // Whatever it could not check is one of the custom resources, and nothing else.
        for line in report.lines().filter(|l| !l.starts_with("INFO")) {
            let crd = CRDS.iter().any(|(kind, api)| {
                line.starts_with("WARN")
                    && line.contains(&format!("kind {kind} with api version {api} "))
            });
            assert!(crd, "{values} values: {line}");
        }
    }
}

#[test]
fn custom_resources_point_at_the_service() {
    let docs = render(&[&full_values()]).docs;
    for (kind, api) in CRDS {
        let found: Vec<_> = of_kind(&docs, kind).collect();
        assert!(
            found.len() == 1 && found[0]["apiVersion"] == api,
            "one {kind} of {api}"
        );
    }
    let service = one(&docs, "Service", "server");
    let ports = service["spec"]["ports"].as_array().unwrap();
    let port = |name: &str| ports.iter().find(|p| p["name"] == name).unwrap();
    assert_eq!(
        (
            port("grpc")["port"].as_u64(),
            port("grpc")["appProtocol"].as_str()
        ),
        (Some(50051), Some("grpc"))
    );
    assert_eq!(port("http")["port"].as_u64(), Some(9090));

    let monitor = one(&docs, "ServiceMonitor", "server");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        (endpoint["port"].as_str(), endpoint["path"].as_str()),
        (Some("http"), Some("/metrics"))
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let labels = &service["metadata"]["labels"];
    assert!(
        selector.iter().all(|(k, v)| labels[k] == *v),
        "the ServiceMonitor selects the Service"
    );
    for kind in ["HTTPRoute", "GRPCRoute"] {
        let route = one(&docs, kind, "server");
        assert!(
            !strings(&route["spec"]["hostnames"]).is_empty(),
            "{kind} names its hosts"
        );
        assert!(
            route["spec"]["parentRefs"][0]["name"].is_string(),
            "{kind} names its Gateway"
        );
        let backend = &route["spec"]["rules"][0]["backendRefs"][0];
        assert_eq!(backend["name"], service["metadata"]["name"], "{kind}");
        assert_eq!(backend["port"], 50051, "{kind}");
    }
}

/// `helm template` as a user types it, with the chart's own pinned helm and no
/// `--kube-version` (which helm 3.10 takes to be 1.25 when no cluster is asked).
#[test]
fn the_chart_renders_with_no_extra_flag() {
    let chart = chart::chart();
    let out = chart::helm(&["template", "conveyor", &chart, "--namespace", "jobs"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: Deployment"));
}

/// A fresh install serves without a key made by hand: the servers read the first admin key
/// from the credentials Secret, where it is optional, or from a Secret of its own, which must
/// hold it.
#[test]
fn the_first_admin_key_comes_from_a_secret() {
    let key_of = |docs: &[serde_json::Value]| {
        let server =
            &one(docs, "Deployment", "server")["spec"]["template"]["spec"]["containers"][0];
        let key = env(server, "CONVEYOR_BOOTSTRAP_KEY").expect("CONVEYOR_BOOTSTRAP_KEY");
        let tenant = env(server, "CONVEYOR_BOOTSTRAP_TENANT").expect("its tenant");
        (
            key["valueFrom"]["secretKeyRef"].clone(),
            tenant["value"].clone(),
        )
    };
    let (from, tenant) = key_of(&render(&[]).docs);
    assert_eq!(from["name"], "conveyor-credentials");
    assert_eq!(from["key"], "CONVEYOR_BOOTSTRAP_KEY");
    assert_eq!(from["optional"], true, "the shared Secret may lack it");
    assert_eq!(tenant, "default");

    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &own,
        "bootstrapKey:\n  existingSecret: conveyor-admin\n  key: admin\n  tenant: ops\n",
    )
    .unwrap();
    let (from, tenant) = key_of(&render(&[own.to_str().unwrap()]).docs);
    assert_eq!(
        (&from["name"], &from["key"]),
        (&"conveyor-admin".into(), &"admin".into())
    );
    assert!(
        from["optional"].is_null(),
        "a Secret named for it must hold it"
    );
    assert_eq!(tenant, "ops");
}

/// Workers and watchers can go straight to the replicas: a headless Service resolves to every
/// ready server pod, and carries the gRPC port only (nothing scrapes it twice).
#[test]
fn a_headless_service_names_every_ready_replica() {
    let docs = render(&[]).docs;
    let replicas = one(&docs, "Service", "replicas");
    let server = one(&docs, "Service", "server");
    assert_eq!(replicas["spec"]["clusterIP"], "None");
    assert_eq!(replicas["spec"]["publishNotReadyAddresses"], false);
    assert_eq!(replicas["spec"]["selector"], server["spec"]["selector"]);
    let ports: Vec<_> = replicas["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["grpc"]);
}

#[test]
fn credentials_come_only_from_secrets() {
    for (values, rendered) in both() {
        let docs = &rendered.docs;
        assert_eq!(
            of_kind(docs, "Secret").count(),
            0,
            "{values}: the chart makes no Secret"
        );
        for map in of_kind(docs, "ConfigMap") {
            for (key, value) in map["data"].as_object().unwrap() {
                assert!(
                    !CREDENTIALS.contains(&key.as_str()),
                    "{values}: {key} in a ConfigMap"
                );
                assert!(
                    !has_password(value.as_str().unwrap()),
                    "{values}: {key} holds a password"
                );
            }
        }
        for deployment in of_kind(docs, "Deployment") {
            let containers = deployment["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap();
            for entry in containers
                .iter()
                .flat_map(|c| c["env"].as_array().into_iter().flatten())
            {
                let name = entry["name"].as_str().unwrap();
                let Some(value) = entry["value"].as_str() else {
                    continue;
                };
                assert!(
                    !CREDENTIALS.contains(&name),
                    "{values}: {name} given as a value"
                );
                assert!(!has_password(value), "{values}: {name} holds a password");
            }
        }
        let server =
            &one(docs, "Deployment", "server")["spec"]["template"]["spec"]["containers"][0];
        let mut wanted = vec!["REDIS_URL", "DATABASE_URL"];
        if values == "full" {
            wanted.extend([
                "CONVEYOR_S3_ACCESS_KEY",
                "CONVEYOR_S3_SECRET_KEY",
                "CONVEYOR_WEBHOOK_SECRET",
            ]);
        }
        for name in wanted {
            let from = env(server, name).map(|e| &e["valueFrom"]["secretKeyRef"]);
            assert!(
                from.is_some_and(|r| r["name"].is_string() && r["key"].is_string()),
                "{values}: {name}"
            );
        }
    }
    let docs = render(&[&full_values()]).docs;
    let workers: Vec<_> = component(&docs, "Deployment", "worker").collect();
    assert_eq!(workers.len(), 2, "full values have two worker pools");
    for worker in workers {
        let container = &worker["spec"]["template"]["spec"]["containers"][0];
        let token = env(container, "CONVEYOR_KEY").expect("a worker token");
        assert!(token["valueFrom"]["secretKeyRef"]["name"].is_string());
    }
}

#[test]
fn every_container_is_locked_down() {
    for (values, rendered) in both() {
        for deployment in of_kind(&rendered.docs, "Deployment") {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(
                pod["automountServiceAccountToken"], false,
                "{values}: {name}"
            );
            let seccomp = &pod["securityContext"]["seccompProfile"]["type"];
            assert_eq!(seccomp, "RuntimeDefault", "{values}: {name}");
            let lists = [&pod["containers"], &pod["initContainers"]];
            for container in lists.iter().filter_map(|c| c.as_array()).flatten() {
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{values}: {name}");
                assert_eq!(
                    security["allowPrivilegeEscalation"], false,
                    "{values}: {name}"
                );
                let dropped = strings(&security["capabilities"]["drop"]);
                assert!(
                    dropped.contains(&"ALL"),
                    "{values}: {name} drops every capability"
                );
                let non_root = [security, &pod["securityContext"]]
                    .iter()
                    .any(|s| s["runAsNonRoot"] == true);
                assert!(non_root, "{values}: {name} runs as non-root");
            }
        }
    }
}

#[test]
fn servers_are_probed_and_drain_before_they_stop() {
    for (values, rendered) in both() {
        let docs = &rendered.docs;
        let config = &one(docs, "ConfigMap", "server")["data"];
        // The server's own default is 127.0.0.1, which no probe or Service reaches in a pod.
        assert_eq!(config["CONVEYOR_LISTEN"], "0.0.0.0:50051", "{values}");
        assert_eq!(config["CONVEYOR_HTTP_LISTEN"], "0.0.0.0:9090", "{values}");
        let pod = &one(docs, "Deployment", "server")["spec"]["template"]["spec"];
        let server = &pod["containers"][0];
        assert_eq!(
            server["startupProbe"]["httpGet"]["path"], "/healthz",
            "{values}"
        );
        assert_eq!(
            server["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{values}"
        );
        let readiness = &server["readinessProbe"];
        if values == "full" {
            // With TLS on the gRPC port; the kubelet's gRPC probe speaks plaintext.
            assert_eq!(readiness["httpGet"]["path"], "/readyz", "{values}");
        } else {
            assert_eq!(readiness["grpc"]["port"], 50051, "{values}");
        }
        let hook = strings(&server["lifecycle"]["preStop"]["exec"]["command"]);
        let [
            "/usr/local/bin/conveyor",
            "drain",
            "--http",
            "127.0.0.1:9090",
            "--wait",
            wait,
        ] = hook[..]
        else {
            panic!("{values}: the pre-stop hook is `conveyor drain`: {hook:?}");
        };
        let shutdown = seconds(config["CONVEYOR_SHUTDOWN_TIMEOUT"].as_str().unwrap());
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let drain = seconds(wait);
        assert!(
            grace > drain + shutdown,
            "{values}: grace {grace}s, drain {drain}s + shutdown {shutdown}s"
        );
    }
    let docs = render(&[&full_values()]).docs;
    for worker in component(&docs, "Deployment", "worker") {
        let pod = &worker["spec"]["template"]["spec"];
        let timeout = env(&pod["containers"][0], "CONVEYOR_SHUTDOWN_TIMEOUT").unwrap();
        let timeout = seconds(timeout["value"].as_str().unwrap());
        assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > timeout);
    }
}

#[test]
fn a_config_change_rolls_the_servers() {
    let checksum = |values: &[&str]| {
        let docs = render(values).docs;
        let template = &one(&docs, "Deployment", "server")["spec"]["template"];
        let sum = template["metadata"]["annotations"]["checksum/config"].as_str();
        sum.expect("a checksum/config annotation").to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let debug = dir.path().join("debug.yaml");
    std::fs::write(&debug, "server:\n  logLevel: debug\n").unwrap();
    assert_ne!(checksum(&[]), checksum(&[debug.to_str().unwrap()]));
}

/// Bad values files, each with a word its refusal must name. `helm lint` only notes a
/// template's `fail`, so each of these must be refused by values.schema.json.
const BAD_VALUES: [(&str, &str); 12] = [
    ("server:\n  replicas: three\n", "server.replicas"),
    ("redis:\n  url: redis://:hunter2@redis:6379\n", "url"),
    ("database:\n  password: hunter2\n", "password"),
    (
        "server:\n  config:\n    DATABASE_URL: postgres://app:hunter2@db/app\n",
        "DATABASE_URL",
    ),
    (
        "server:\n  extraEnv:\n    - name: REDIS_URL\n      value: redis://:hunter2@r\n",
        "extraEnv",
    ),
    (
        "server:\n  extraEnv:\n    - name: HOOKS\n      value: https://a:hunter2@h\n",
        "extraEnv",
    ),
    ("s3:\n  bucket: media\n  secretKey: hunter2\n", "secretKey"),
    (
        "server:\n  config:\n    CONVEYOR_WEBHOOK_ALLOW: https://a:hunter2@h\n",
        "CONVEYOR_WEBHOOK_ALLOW",
    ),
    (
        "workers:\n  enabled: true\n  pools:\n    render:\n      image: {repository: r, tag: \"1\"}\n      \
         queues: [render]\n      command: [sh]\n      env:\n        - name: CONVEYOR_KEY\n          \
         value: cvw_hunter2\n",
        "env",
    ),
    (
        "server:\n  shutdownMarginSeconds: 0\n",
        "shutdownMarginSeconds",
    ),
    ("tls:\n  enabled: true\n", "existingSecret"),
    (
        "tls:\n  enabled: true\n  existingSecret: tls\nserver:\n  probes:\n    readiness:\n      mode: grpc\n",
        "readiness.mode",
    ),
];

#[test]
fn bad_values_are_refused_without_echoing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (values, named)) in BAD_VALUES.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let file = file.to_str().unwrap();
        for (what, out) in [("lint", lint(&[file])), ("template", template(&[file]))] {
            let words = said(&out);
            assert!(!out.status.success(), "helm {what} took:\n{values}");
            assert!(
                words.contains(named),
                "helm {what} should name {named}:\n{words}"
            );
            assert!(
                !words.contains("hunter2"),
                "helm {what} echoed a secret:\n{words}"
            );
        }
    }
}

#[test]
fn the_readme_documents_every_value() {
    let readme = std::fs::read_to_string(format!("{ROOT}/helm/conveyor/README.md")).unwrap();
    let values = yaml_documents(Path::new(&format!("{ROOT}/helm/conveyor/values.yaml")));
    let mut missing = Vec::new();
    let mut walk = vec![(String::new(), &values[0])];
    while let Some((path, value)) = walk.pop() {
        let row = format!("| `{path}` |");
        match value.as_object() {
            // A map documented as one value (resources, a security context) is a leaf.
            Some(map) if !map.is_empty() && !readme.contains(&row) => {
                for (key, child) in map {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk.push((child_path, child));
                }
            }
            _ if !readme.contains(&row) => missing.push(path),
            _ => {}
        }
    }
    assert!(
        missing.is_empty(),
        "helm/conveyor/README.md's values table lacks {missing:?}"
    );
}
