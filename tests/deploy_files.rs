//! Checks the deployment files (docker-compose.yml and everything under deploy/): they
//! parse, the Kubernetes manifests are well formed and refer to each other correctly, and
//! every `wxpush_*` metric that the alert rules, the dashboard or the deploy README mention
//! is one that the code exports. The exported names are read from src/admin/metrics.rs at
//! compile time, so renaming a metric on either side fails this test.
//!
//! No services are needed. When `docker compose` / `kubectl` are installed, the compose
//! file and the kustomization are also rendered by the real tools; otherwise that part is
//! skipped with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use saphyr::{LoadableYamlNode, Scalar, Yaml};
use serde_json::{Map, Value};

/// The one list of metric names (`pub const X: &str = "name";`).
const METRICS_RS: &str = include_str!("../src/admin/metrics.rs");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Files under `dir` (recursively) whose extension is one of `exts`, sorted.
fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot read {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// YAML -> serde_json::Value, so YAML and JSON files are inspected the same way.
// ---------------------------------------------------------------------------------------

fn scalar_to_json(s: &Scalar) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::from(*i),
        Scalar::FloatingPoint(f) => Value::from(f.into_inner()),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

fn yaml_to_json(y: &Yaml, file: &str) -> Value {
    match y {
        Yaml::Value(s) => scalar_to_json(s),
        Yaml::Representation(s, _, _) => Value::String(s.to_string()),
        Yaml::Sequence(items) => {
            Value::Array(items.iter().map(|i| yaml_to_json(i, file)).collect())
        }
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match yaml_to_json(k, file) {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("{file}: unsupported mapping key {other}"),
                };
                out.insert(key, yaml_to_json(v, file));
            }
            Value::Object(out)
        }
        Yaml::Tagged(_, inner) => yaml_to_json(inner, file),
        Yaml::Alias(_) => panic!("{file}: YAML aliases are not used in deploy files; expand them"),
        Yaml::BadValue => panic!("{file}: invalid YAML value"),
    }
}

/// Every document of a YAML file; panics with the file name and position on a parse error
/// (syntax errors, duplicate keys, tabs in indentation, ...).
fn load_yaml(path: &Path) -> Vec<Value> {
    let text = read(path);
    let name = rel(path);
    let docs = Yaml::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: invalid YAML: {e}"));
    docs.iter().map(|d| yaml_to_json(d, &name)).collect()
}

/// The single document of a YAML file.
fn load_yaml_one(path: &Path) -> Value {
    let mut docs = load_yaml(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: expected exactly one YAML document",
        rel(path)
    );
    docs.remove(0)
}

fn load_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", rel(path)))
}

/// `v[a][b]...` as a string, or a panic naming the path.
fn s<'a>(v: &'a Value, path: &[&str], what: &str) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{what}: {} is not a string: {cur}", path.join(".")))
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

#[test]
fn every_yaml_file_parses() {
    let mut files = files_with_ext(&deploy_dir(), &["yaml", "yml"]);
    files.push(root().join("docker-compose.yml"));
    assert!(
        files.len() >= 9,
        "expected the compose file, k8s manifests and alert rules"
    );
    for f in &files {
        let docs = load_yaml(f);
        assert!(!docs.is_empty(), "{}: empty YAML file", rel(f));
        for d in &docs {
            assert!(d.is_object(), "{}: top level must be a mapping", rel(f));
        }
    }
}

#[test]
fn every_json_file_parses() {
    let files = files_with_ext(&deploy_dir(), &["json"]);
    assert!(
        files.len() >= 2,
        "expected the dashboard and the RabbitMQ definitions"
    );
    for f in &files {
        assert!(
            load_json(f).is_object(),
            "{}: top level must be an object",
            rel(f)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

fn k8s_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// Every manifest by kind (one resource per file).
fn k8s_by_kind() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for f in files_with_ext(&k8s_dir(), &["yaml", "yml"]) {
        let doc = load_yaml_one(&f);
        let kind = s(&doc, &["kind"], &rel(&f)).to_string();
        assert!(
            out.insert(kind.clone(), doc).is_none(),
            "two manifests of kind {kind}: keep one resource per file"
        );
    }
    out
}

#[test]
fn kubernetes_manifests_have_api_version_kind_and_name() {
    for f in files_with_ext(&k8s_dir(), &["yaml", "yml"]) {
        let name = rel(&f);
        let doc = load_yaml_one(&f);
        assert!(
            !s(&doc, &["apiVersion"], &name).is_empty(),
            "{name}: empty apiVersion"
        );
        let kind = s(&doc, &["kind"], &name);
        assert!(!kind.is_empty(), "{name}: empty kind");
        if kind != "Kustomization" {
            assert!(
                !s(&doc, &["metadata", "name"], &name).is_empty(),
                "{name}: no name"
            );
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let kust = load_yaml_one(&k8s_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = kust["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_string())
        .collect();
    let present: BTreeSet<String> = files_with_ext(&k8s_dir(), &["yaml", "yml"])
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs files in deploy/kubernetes"
    );
}

fn labels_match(selector: &Value, labels: &Value, what: &str) {
    let sel = selector
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no selector"));
    assert!(!sel.is_empty(), "{what}: empty selector");
    for (k, v) in sel {
        assert_eq!(
            &labels[k], v,
            "{what}: selector {k} does not match the pod labels"
        );
    }
}

#[test]
fn kubernetes_manifests_refer_to_each_other() {
    let k = k8s_by_kind();
    let dep = &k["Deployment"];
    let dep_name = s(dep, &["metadata", "name"], "Deployment");
    let pod = &dep["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    labels_match(
        &dep["spec"]["selector"]["matchLabels"],
        pod_labels,
        "Deployment",
    );
    labels_match(&k["Service"]["spec"]["selector"], pod_labels, "Service");
    labels_match(
        &k["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        pod_labels,
        "PDB",
    );

    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/wxpush/wxpush.toml"]);

    // Probes and metrics all on the admin port that the config listens on.
    let cm = &k["ConfigMap"];
    let toml_text = s(cm, &["data", "wxpush.toml"], "ConfigMap");
    let cfg: toml::Table = toml::from_str(toml_text).expect("ConfigMap wxpush.toml is TOML");
    let listen = cfg["admin"]["listen"].as_str().expect("[admin] listen");
    let port: i64 = listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .expect("admin port");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "admin must listen on all interfaces in a pod"
    );
    assert_eq!(container["ports"][0]["containerPort"], port);
    assert_eq!(
        s(
            pod,
            &["metadata", "annotations", "prometheus.io/port"],
            "Deployment"
        ),
        port.to_string()
    );
    assert_eq!(
        s(container, &["livenessProbe", "httpGet", "path"], "liveness"),
        "/healthz"
    );
    assert_eq!(
        s(
            container,
            &["readinessProbe", "httpGet", "path"],
            "readiness"
        ),
        "/readyz"
    );
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period");
    assert!(
        grace > 30,
        "the pod's grace period must exceed the worker's 30 s shutdown grace"
    );

    // Config from the ConfigMap, secrets from the Secret, and no secret in the TOML.
    let mounted_cm = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("a ConfigMap volume");
    assert_eq!(mounted_cm, s(cm, &["metadata", "name"], "ConfigMap"));
    let secret = &k["Secret"];
    let secret_name = s(secret, &["metadata", "name"], "Secret");
    let env_from = container["envFrom"][0]["secretRef"]["name"]
        .as_str()
        .expect("envFrom secret");
    assert_eq!(env_from, secret_name);
    for (app, table) in cfg["apps"].as_table().expect("[apps]") {
        let t = table.as_table().unwrap();
        assert!(
            !t.contains_key("secret"),
            "apps.{app}: secrets never go in the TOML"
        );
        let var = t["secret_env"].as_str().expect("secret_env");
        assert!(
            secret["stringData"][var].is_string(),
            "Secret has no {var} for apps.{app}"
        );
    }

    // KEDA: scales this Deployment, authenticates with a key of this Secret.
    let so = &k["ScaledObject"];
    assert_eq!(
        s(so, &["spec", "scaleTargetRef", "name"], "ScaledObject"),
        dep_name
    );
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(s(trigger, &["type"], "trigger"), "rabbitmq");
    assert_eq!(
        s(trigger, &["metadata", "queueName"], "trigger"),
        cfg["amqp"]["queue"].as_str().unwrap()
    );
    let ta = &k["TriggerAuthentication"];
    assert_eq!(
        s(trigger, &["authenticationRef", "name"], "trigger"),
        s(ta, &["metadata", "name"], "TriggerAuthentication")
    );
    let target = &ta["spec"]["secretTargetRef"][0];
    assert_eq!(s(target, &["parameter"], "secretTargetRef"), "host");
    assert_eq!(s(target, &["name"], "secretTargetRef"), secret_name);
    let key = s(target, &["key"], "secretTargetRef");
    assert!(
        secret["stringData"][key].is_string(),
        "Secret has no {key} for KEDA"
    );
}

// ---------------------------------------------------------------------------------------
// RabbitMQ definitions vs the config
// ---------------------------------------------------------------------------------------

#[test]
fn rabbitmq_definitions_match_the_config() {
    let defs = load_json(&deploy_dir().join("rabbitmq/definitions.json"));
    let cm = &k8s_by_kind()["ConfigMap"];
    let cfg: toml::Table = toml::from_str(s(cm, &["data", "wxpush.toml"], "ConfigMap")).unwrap();
    let amqp = &cfg["amqp"];
    let exchange = amqp["exchange"].as_str().unwrap();
    let queue = amqp["queue"].as_str().unwrap();
    let dead = amqp["dead_letter_queue"].as_str().unwrap();
    assert_eq!(
        amqp["queue_type"].as_str(),
        Some("quorum"),
        "config must match the definitions"
    );

    let ex = defs["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == exchange)
        .expect("events exchange");
    assert_eq!(ex["type"], "topic");
    assert_eq!(ex["durable"], true);

    let queues = defs["queues"].as_array().unwrap();
    for name in [queue, dead] {
        let q = queues
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(q["durable"], true, "{name}");
        // The worker re-declares these at start: any argument here must be one it
        // declares too, or the broker answers PRECONDITION_FAILED.
        let args = q["arguments"].as_object().unwrap();
        assert_eq!(args.len(), 1, "{name}: only x-queue-type");
        assert_eq!(args["x-queue-type"], "quorum", "{name}");
    }
    // Retry tiers are declared by the worker with its own TTL/dead-letter arguments.
    assert!(
        queues.iter().all(|q| !q["name"]
            .as_str()
            .unwrap()
            .starts_with("wxpush.events.retry")),
        "leave the retry tier queues to the worker"
    );
    assert!(
        defs["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == exchange
                && b["destination"] == queue
                && b["destination_type"] == "queue"
                && b["routing_key"] == "#"),
        "binding # from the exchange to the events queue"
    );
}

// ---------------------------------------------------------------------------------------
// Metric names: deploy files vs src/admin/metrics.rs
// ---------------------------------------------------------------------------------------

fn exported_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in METRICS_RS.lines() {
        let line = line.trim();
        if !line.starts_with("pub const ") || !line.contains("str") {
            continue;
        }
        if let Some((_, value)) = line.split_once('=') {
            let value = value.trim().trim_end_matches(';').trim();
            if let Some(name) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// Every `wxpush_...` token in `text` (Prometheus name characters).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wxpush_") {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_name(c));
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        // A trailing ':' is prose punctuation ("wxpush_in_flight: ..."), not the name.
        let name = tail[..end].trim_end_matches(':');
        if before_ok && name.len() > "wxpush_".len() {
            out.insert(name.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The exported metric a referenced series belongs to (histograms add suffixes).
fn resolve<'a>(name: &str, exported: &'a BTreeSet<String>) -> Option<&'a String> {
    exported.get(name).or_else(|| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).and_then(|base| exported.get(base)))
    })
}

#[test]
fn metrics_source_lists_the_names() {
    let exported = exported_metrics();
    assert!(
        exported.len() >= 10,
        "could not read the metric names from metrics.rs"
    );
    for n in &exported {
        assert!(
            n.starts_with("wxpush_"),
            "{n}: metric names start with wxpush_"
        );
    }
    assert_eq!(
        referenced_metrics(
            "a wxpush_x_total{b} (wxpush_y_bucket[5m]) Xwxpush_no wxpush_* wxpush_z:"
        ),
        BTreeSet::from(["wxpush_x_total", "wxpush_y_bucket", "wxpush_z"].map(String::from))
    );
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let exported = exported_metrics();
    let files = [
        deploy_dir().join("prometheus/alerts.yaml"),
        deploy_dir().join("grafana/wxpush-dashboard.json"),
        deploy_dir().join("README.md"),
    ];
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for f in &files {
        let refs = referenced_metrics(&read(f));
        if f.extension().is_some_and(|e| e != "md") {
            assert!(!refs.is_empty(), "{}: no wxpush_ metric referenced", rel(f));
        }
        for r in refs {
            match resolve(&r, &exported) {
                Some(base) => {
                    used.insert(base.clone());
                }
                None => unknown.push(format!("{}: {r}", rel(f))),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not exported by src/admin/metrics.rs: {unknown:#?}\nexported: {exported:#?}"
    );
    let unused: Vec<_> = exported.difference(&used).collect();
    if !unused.is_empty() {
        println!("note: exported but not on the dashboard or in alerts: {unused:?}");
    }
}

#[test]
fn alert_rules_are_complete() {
    let rules = load_yaml_one(&deploy_dir().join("prometheus/alerts.yaml"));
    let mut names = BTreeSet::new();
    let mut count = 0;
    for group in rules["groups"].as_array().expect("groups") {
        assert!(group["name"].is_string(), "group without a name");
        for rule in group["rules"].as_array().expect("rules") {
            count += 1;
            let alert = s(rule, &["alert"], "rule");
            assert!(names.insert(alert.to_string()), "duplicate alert {alert}");
            assert!(
                !s(rule, &["expr"], alert).trim().is_empty(),
                "{alert}: empty expr"
            );
            let sev = s(rule, &["labels", "severity"], alert);
            assert!(
                ["critical", "warning", "info"].contains(&sev),
                "{alert}: severity {sev}"
            );
            for a in ["summary", "description", "runbook_url"] {
                assert!(
                    !s(rule, &["annotations", a], alert).is_empty(),
                    "{alert}: no {a}"
                );
            }
            assert!(
                s(rule, &["annotations", "runbook_url"], alert).contains("README.md#operations"),
                "{alert}: runbook_url points to the README's operations section"
            );
        }
    }
    assert!(count >= 7, "expected the full set of alerts, found {count}");
}

#[test]
fn dashboard_is_importable() {
    let d = load_json(&deploy_dir().join("grafana/wxpush-dashboard.json"));
    assert_eq!(d["schemaVersion"], 39);
    assert!(
        d["__inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS"),
        "the datasource is an import input"
    );
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    for p in d["panels"].as_array().expect("panels") {
        let title = s(p, &["title"], "panel");
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate id: {title}"
        );
        assert!(p["gridPos"]["w"].is_number(), "{title}: no gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            s(p, &["datasource", "uid"], title),
            "${DS_PROMETHEUS}",
            "{title}"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(
                s(t, &["datasource", "uid"], title),
                "${DS_PROMETHEUS}",
                "{title}"
            );
            assert!(!s(t, &["expr"], title).is_empty(), "{title}: empty expr");
            exprs += 1;
        }
    }
    assert!(
        exprs >= 10,
        "expected the full dashboard, found {exprs} queries"
    );
}

// ---------------------------------------------------------------------------------------
// Compose file and Dockerfile
// ---------------------------------------------------------------------------------------

#[test]
fn compose_file_runs_the_stack() {
    let path = root().join("docker-compose.yml");
    let c = load_yaml_one(&path);
    let services = c["services"].as_object().expect("services");
    for svc in ["rabbitmq", "redis", "mock-wechat", "worker"] {
        assert!(services.contains_key(svc), "service {svc}");
    }
    let worker = &services["worker"];
    let replicas = worker["deploy"]["replicas"].as_i64().unwrap_or(1);
    assert!(replicas >= 2, "two workers show horizontal scaling");
    let env = worker["environment"]
        .as_object()
        .expect("worker environment map");
    for key in [
        "WXPUSH_AMQP__URL",
        "WXPUSH_REDIS__URL",
        "WXPUSH_WECHAT__API_BASE",
        "WXPUSH_ADMIN__LISTEN",
        "WXPUSH_DEFAULT_SECRET",
    ] {
        assert!(env.contains_key(key), "worker env {key}");
    }
    assert!(
        worker["volumes"].as_array().unwrap().iter().any(|v| v
            .as_str()
            .is_some_and(|v| v.starts_with("./examples/wxpush.toml:/etc/wxpush/wxpush.toml"))),
        "the example config is mounted"
    );

    // The workers run the production image (the Dockerfile's last stage); the emulator has
    // its own target, since the production binary has no `mock-wechat`.
    let stages = dockerfile_stages();
    let production = &stages.last().unwrap().name;
    let target = |svc: &str| {
        assert_eq!(
            s(&services[svc], &["build", "dockerfile"], svc),
            "deploy/Dockerfile"
        );
        services[svc]["build"]["target"].as_str().map(str::to_owned)
    };
    assert!(
        target("worker").is_none_or(|t| &t == production),
        "the workers build the production stage `{production}`"
    );
    let mock = &services["mock-wechat"];
    let mock_target = target("mock-wechat").expect("mock-wechat: build.target");
    assert_eq!(
        mock_target, "mock-wechat",
        "the emulator's Dockerfile target"
    );
    stage(&stages, &mock_target);
    assert_ne!(
        mock["image"], worker["image"],
        "the emulator and the workers are different images: they need different tags"
    );
    let argv: Vec<&str> = [&mock["entrypoint"], &mock["command"]]
        .into_iter()
        .flat_map(|v| v.as_array().into_iter().flatten())
        .map(|v| v.as_str().expect("exec form: a list of strings"))
        .collect();
    assert_eq!(
        argv,
        ["wxpush-mock-wechat", "--listen", "0.0.0.0:8088"],
        "mock-wechat: entrypoint + command"
    );

    match Command::new("docker").args(["compose", "version"]).output() {
        Err(_) => println!("note: docker is not on PATH; skipped `docker compose config -q`"),
        Ok(o) if !o.status.success() => {
            println!("note: `docker compose` (v2 plugin) unavailable; skipped `config -q`")
        }
        Ok(_) => {
            let out = Command::new("docker")
                .args(["compose", "-f", "docker-compose.yml", "config", "-q"])
                .current_dir(root())
                .output()
                .expect("run docker compose config");
            assert!(
                out.status.success(),
                "docker compose config -q failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn kustomization_renders_with_kubectl() {
    match Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(root())
        .output()
    {
        Err(_) => println!("note: kubectl is not on PATH; skipped `kubectl kustomize`"),
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize deploy/kubernetes failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rendered = String::from_utf8_lossy(&out.stdout);
            let docs = Yaml::load_from_str(&rendered).expect("kustomize output is YAML");
            let kust = load_yaml_one(&k8s_dir().join("kustomization.yaml"));
            let listed = kust["resources"].as_array().expect("resources").len();
            assert_eq!(docs.len(), listed, "one document per listed resource");
        }
    }
}

/// One `FROM` stage of deploy/Dockerfile: its name (`AS name`, lowercased) and its
/// instruction lines, trimmed, comments and blank lines left out.
struct Stage {
    name: String,
    lines: Vec<String>,
}

impl Stage {
    fn has(&self, prefix: &str) -> bool {
        self.lines.iter().any(|l| l.starts_with(prefix))
    }

    /// The `cargo build` lines of this stage (usually continuation lines of a `RUN`).
    fn cargo_builds(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.contains("cargo build"))
            .map(String::as_str)
            .collect()
    }
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = read(&deploy_dir().join("Dockerfile"));
    let mut stages: Vec<Stage> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(from) = line.strip_prefix("FROM ") {
            let words: Vec<&str> = from.split_whitespace().collect();
            let name = match words.as_slice() {
                [.., as_, name] if as_.eq_ignore_ascii_case("as") => name.to_lowercase(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                lines: Vec::new(),
            });
        }
        if let Some(stage) = stages.last_mut() {
            stage.lines.push(line.to_string());
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("deploy/Dockerfile has no stage `{name}`"))
}

/// `--bin NAME` (or `-p NAME`) as a whole word of a command line: `--bin wxpush` must not
/// match `--bin wxpush-mock-wechat`.
fn has_arg(line: &str, flag: &str, value: &str) -> bool {
    line.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == flag && w[1] == value)
}

#[test]
fn dockerfile_builds_a_non_root_wxpush_image() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage");
    assert!(
        stages.iter().any(|s| s.has("FROM rust:")),
        "a Rust builder stage"
    );
    // The default target (the last stage) is the production image that workers run.
    let runtime = stages.last().unwrap();
    assert!(
        !runtime.has("FROM rust:"),
        "the last stage is the runtime, not a builder"
    );
    assert!(runtime.has("EXPOSE 9464"));
    assert!(runtime.has(r#"ENTRYPOINT ["wxpush"]"#));
    assert!(runtime.has(r#"CMD ["run"]"#));
    let user = runtime
        .lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER instruction in the runtime stage");
    let uid = user.split(':').next().unwrap().trim();
    assert!(
        uid != "0" && uid != "root",
        "the image runs as non-root, not {uid}"
    );
}

#[test]
fn dockerfile_production_build_has_no_developer_tools() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let copies: Vec<&String> = runtime
        .lines
        .iter()
        .filter(|l| l.starts_with("COPY --from="))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the production image copies one binary, wxpush: {copies:?}"
    );
    assert!(
        copies[0].ends_with("/usr/local/bin/wxpush"),
        "{}",
        copies[0]
    );
    let from = copies[0]
        .strip_prefix("COPY --from=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let builds = stage(&stages, &from.to_lowercase()).cargo_builds();
    assert_eq!(
        builds.len(),
        1,
        "stage {from} builds exactly one thing: {builds:?}"
    );
    let build = builds[0];
    assert!(has_arg(build, "--bin", "wxpush"), "{build}");
    // Without the default `dev-tools` feature: no `mock-wechat`, no `demo` in production.
    for flag in [
        "--release",
        "--locked",
        "--offline",
        "--no-default-features",
    ] {
        assert!(
            build.split_whitespace().any(|w| w == flag),
            "the production build needs {flag}: {build}"
        );
    }
    assert!(
        !build.contains("--features") && !build.contains("--all-features"),
        "no features switched back on: {build}"
    );

    // `cargo fetch` reads the whole workspace: every member's manifest must be copied in.
    let text = read(&deploy_dir().join("Dockerfile"));
    let crates = fs::read_dir(root().join("crates")).expect("crates/");
    for entry in crates {
        let dir = entry.unwrap().path();
        if dir.join("Cargo.toml").is_file() {
            let manifest = format!("{}/Cargo.toml", rel(&dir));
            assert!(
                text.lines()
                    .any(|l| l.trim().starts_with("COPY ") && l.contains(&manifest)),
                "deploy/Dockerfile must COPY {manifest} (with placeholder sources) before `cargo fetch`"
            );
        }
    }
}

#[test]
fn dockerfile_has_an_emulator_target_for_compose() {
    let stages = dockerfile_stages();
    let mock = stage(&stages, "mock-wechat");
    assert!(mock.has(r#"ENTRYPOINT ["wxpush-mock-wechat"]"#));
    assert!(mock.has("USER 65532"), "the emulator runs as non-root too");
    let from = mock
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("COPY --from="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the emulator stage copies its binary from a builder");
    let builds = stage(&stages, &from.to_lowercase()).cargo_builds();
    assert!(
        builds
            .iter()
            .any(|b| has_arg(b, "-p", "wxpush-mock-wechat")
                && has_arg(b, "--bin", "wxpush-mock-wechat")),
        "stage {from} builds the wxpush-mock-wechat binary: {builds:?}"
    );
}
