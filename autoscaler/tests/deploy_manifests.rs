//! Offline checks of the Kubernetes manifests in `deploy/`: every kustomization renders with
//! `kubectl kustomize`, built-in objects pass `kubernetes-validate --strict`, `AsyncActor`s
//! pass both the CRD's schema and the Rust type, and the objects agree with each other: scale
//! targets, the settings of the container that consumes each queue (the `troupe sidecar`, or
//! the standalone `troupe-gpu-worker`), probes, grace periods, RBAC, and credentials that stay
//! in Secrets created out of band. Every container is hardened (non-root with a numeric uid and
//! gid, read-only root filesystem, no privilege escalation or capabilities, RuntimeDefault
//! seccomp, cpu and memory requests and limits), writes only to size-limited emptyDirs (the
//! gateway's SQLite task store: to a PersistentVolumeClaim, which outlives the pod), and
//! NetworkPolicies admit only Prometheus, to the metrics ports, except the gateway's one
//! port: it is the front door, open to every source (the API needs a key).
//!
//! Needs `kubectl` (or `TROUPE_KUBECTL`) and kubernetes-validate, which
//! `bash .ci/k8s-validate-setup.sh` installs (or `TROUPE_K8S_VALIDATE`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use troupe_autoscaler::crd::AsyncActor;

/// Broker overlays, each named after the transport it selects.
const BROKER_OVERLAYS: [&str; 4] = ["nats", "kafka", "sqs", "amqp"];
/// The GPU overlay and the broker overlay it builds on.
const GPU_OVERLAY: (&str, &str) = ("gpu", "nats");
/// The oldest Kubernetes the manifests must be valid for: the API level the autoscaler is
/// built against (k8s-openapi's `v1_33`). Each render is also checked against the newest
/// version the tool knows.
const OLDEST_KUBERNETES: &str = "1.33.0";

/// The sidecar's defaults (bin/src/sidecar/config.rs) for settings a manifest may leave out;
/// the GPU worker's (gpu-worker/src/args.rs) are the same, socket aside.
const DEFAULT_SOCKET_DIR: &str = "/var/run/asya";
const DEFAULT_METRICS_PORT: u16 = 8080;
const DEFAULT_ACTOR_TIMEOUT: &str = "5m";
const DEFAULT_QUEUE_PREFIX: &str = "asya";
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: u64 = 30;
/// The GPU worker's `--max-batch-size` default; its `--prefetch` defaults to twice that.
const DEFAULT_MAX_BATCH_SIZE: u64 = 16;
/// The least time a GPU actor's startup probe must allow for loading and warming up a model.
const MIN_MODEL_LOAD_SECONDS: u64 = 300;
/// The namespace label, and its value, of the only pods that may reach Troupe's pods: Prometheus
/// scraping `/metrics` (deploy/base/network-policy.yaml).
const PROMETHEUS_NAMESPACE: (&str, &str) = ("kubernetes.io/metadata.name", "monitoring");

/// Everything the autoscaler may do, as (API group, resource, verb); nothing more.
const AUTOSCALER_RULES: [(&str, &str, &str); 10] = [
    ("asya.sh", "asyncactors", "get"),
    ("asya.sh", "asyncactors", "list"),
    ("asya.sh", "asyncactors", "watch"),
    ("asya.sh", "asyncactors/status", "get"),
    ("asya.sh", "asyncactors/status", "patch"),
    ("asya.sh", "asyncactors/status", "update"),
    ("apps", "deployments/scale", "get"),
    ("apps", "deployments/scale", "patch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

/// Broker and store connection settings: never written inline in a manifest, whatever
/// their value.
const BROKER_SETTINGS: [&str; 16] = [
    "TROUPE_STORE",
    "TROUPE_NATS_URL",
    "TROUPE_AMQP_URL",
    "TROUPE_AMQP_MANAGEMENT_URL",
    "TROUPE_AMQP_MANAGEMENT_USER",
    "TROUPE_AMQP_MANAGEMENT_PASSWORD",
    "TROUPE_SQS_URL",
    "TROUPE_KAFKA_BOOTSTRAP",
    "TROUPE_KAFKA_PROPERTIES",
    "TROUPE_KAFKA_PRODUCER_PROPERTIES",
    "TROUPE_KAFKA_CONSUMER_PROPERTIES",
    "ASYA_RABBITMQ_URL",
    "ASYA_SQS_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];
/// The same settings as command-line flags.
const BROKER_FLAGS: [&str; 11] = [
    "--store",
    "--nats-url",
    "--amqp-url",
    "--amqp-management-url",
    "--amqp-management-user",
    "--amqp-management-password",
    "--sqs-url",
    "--kafka-bootstrap",
    "--kafka-property",
    "--kafka-producer-property",
    "--kafka-consumer-property",
];
/// Words that mark a variable or key as a credential.
const SENSITIVE_WORDS: [&str; 8] = [
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "ACCESS_KEY",
    "PRIVATE_KEY",
    "API_KEY",
];

/// A test failure whose `Debug` is its text, so that multi-line reports print as lines.
struct Failure(String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure(text)
    }
}

type TestResult = Result<(), Failure>;

/// Passes when nothing was found; otherwise lists every problem.
fn finish(what: &str, problems: Vec<String>) -> TestResult {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure(format!(
        "{what}: {} problem(s)\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    )))
}

/// One kustomization's output.
struct Render {
    /// `base` or `overlays/<name>`, under `deploy/`.
    name: String,
    objects: Vec<Value>,
}

impl Render {
    fn overlay(&self) -> Option<&str> {
        self.name.strip_prefix("overlays/")
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> {
        self.objects.iter().filter(move |o| kind_of(o) == kind)
    }

    fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| kind_of(o) == kind && namespace_of(o) == namespace && name_of(o) == name)
    }

    /// Each `AsyncActor` with the Deployment its `scaleTargetRef` names, if the render has it.
    fn scaled_actors(&self) -> Vec<(&Value, Option<&Value>)> {
        self.of_kind("AsyncActor")
            .map(|actor| {
                let target = text(actor, "/spec/scaleTargetRef/name")
                    .and_then(|name| self.find("Deployment", namespace_of(actor), name));
                (actor, target)
            })
            .collect()
    }

    /// Objects with a pod template (or pods), with that pod spec.
    fn workloads(&self) -> impl Iterator<Item = (&Value, &Value)> {
        self.objects
            .iter()
            .filter_map(|o| pod_spec(o).map(|pod| (o, pod)))
    }

    /// Every container of every workload, with who it is for messages.
    fn containers(&self) -> impl Iterator<Item = (String, &Value)> {
        self.workloads().flat_map(move |(workload, pod)| {
            containers(pod).map(move |container| {
                let who = format!(
                    "[{}] {} container {:?}",
                    self.name,
                    describe(workload),
                    name_of_container(container)
                );
                (who, container)
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// Rendering and parsing

fn repo_root() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the autoscaler crate has no parent folder".to_owned())
}

/// `base`, then every overlay (sorted); fails when an expected overlay is missing.
fn kustomization_dirs(root: &Path) -> Result<Vec<String>, String> {
    let overlays = root.join("deploy/overlays");
    let entries = fs::read_dir(&overlays).map_err(|e| format!("cannot list {}: {e}", overlays.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", overlays.display()))?;
        if entry.path().join("kustomization.yaml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    for expected in BROKER_OVERLAYS.into_iter().chain([GPU_OVERLAY.0]) {
        if !names.iter().any(|n| n == expected) {
            return Err(format!(
                "deploy/overlays/{expected}/kustomization.yaml is missing"
            ));
        }
    }
    Ok(std::iter::once("base".to_owned())
        .chain(names.into_iter().map(|n| format!("overlays/{n}")))
        .collect())
}

fn kubectl() -> OsString {
    std::env::var_os("TROUPE_KUBECTL").unwrap_or_else(|| OsString::from("kubectl"))
}

fn render(root: &Path, dir: &str) -> Result<Render, String> {
    let path = root.join("deploy").join(dir);
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(path)
        .output()
        .map_err(|e| {
            format!(
                "cannot run `kubectl kustomize` ({e}): install kubectl (it bundles kustomize) \
                 or set TROUPE_KUBECTL to it"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`kubectl kustomize deploy/{dir}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let yaml = String::from_utf8(output.stdout)
        .map_err(|e| format!("`kubectl kustomize deploy/{dir}` printed non-UTF-8 text: {e}"))?;
    let objects = parse_documents(&yaml).map_err(|e| format!("deploy/{dir}: {e}"))?;
    if objects.is_empty() {
        return Err(format!("deploy/{dir} renders no objects"));
    }
    Ok(Render {
        name: dir.to_owned(),
        objects,
    })
}

/// Every document of a multi-document YAML stream, as JSON values (empty documents dropped).
fn parse_documents(yaml: &str) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(document).map_err(|e| format!("YAML document {index}: {e}"))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// Every kustomization, rendered once for all tests.
fn renders() -> Result<&'static [Render], String> {
    static RENDERS: OnceLock<Result<Vec<Render>, String>> = OnceLock::new();
    RENDERS
        .get_or_init(|| {
            let root = repo_root()?;
            kustomization_dirs(&root)?
                .iter()
                .map(|dir| render(&root, dir))
                .collect()
        })
        .as_deref()
        .map_err(Clone::clone)
}

fn find_render(name: &str) -> Result<&'static Render, String> {
    renders()?
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no render of deploy/{name}"))
}

// ---------------------------------------------------------------------------------------
// Reading objects

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn items<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn strings<'a>(value: &'a Value, pointer: &str) -> Vec<&'a str> {
    items(value, pointer).iter().filter_map(Value::as_str).collect()
}

fn kind_of(object: &Value) -> &str {
    text(object, "/kind").unwrap_or("")
}

fn name_of(object: &Value) -> &str {
    text(object, "/metadata/name").unwrap_or("")
}

fn namespace_of(object: &Value) -> &str {
    text(object, "/metadata/namespace").unwrap_or("default")
}

fn describe(object: &Value) -> String {
    format!("{}/{}", kind_of(object), name_of(object))
}

fn pod_spec(object: &Value) -> Option<&Value> {
    match kind_of(object) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            object.pointer("/spec/template/spec")
        }
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template/spec"),
        "Pod" => object.get("spec"),
        _ => None,
    }
}

/// The pod template's annotations (for scrape settings).
fn pod_annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    items(pod, "/containers")
        .iter()
        .chain(items(pod, "/initContainers"))
}

fn command_line(container: &Value) -> Vec<&str> {
    let mut words = strings(container, "/command");
    words.extend(strings(container, "/args"));
    words
}

fn is_sidecar(container: &Value) -> bool {
    command_line(container).contains(&"sidecar")
}

fn is_gateway(container: &Value) -> bool {
    command_line(container).contains(&"gateway")
}

fn is_autoscaler(container: &Value) -> bool {
    text(container, "/image").is_some_and(|image| image.contains("/troupe-autoscaler"))
}

fn is_gpu_worker(container: &Value) -> bool {
    !is_sidecar(container)
        && text(container, "/image").is_some_and(|image| image.contains("/troupe-gpu-worker"))
}

/// What consumes an actor's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumerKind {
    /// `troupe sidecar`, calling a runtime container over a socket.
    Sidecar,
    /// `troupe-gpu-worker`, alone: it runs the model itself.
    GpuWorker,
}

/// The container that consumes an actor's queue, and of which kind.
#[derive(Clone, Copy)]
struct Consumer<'a> {
    kind: ConsumerKind,
    container: &'a Value,
}

impl<'a> Consumer<'a> {
    /// "the sidecar" or "the GPU worker", for messages.
    fn what(&self) -> &'static str {
        match self.kind {
            ConsumerKind::Sidecar => "the sidecar",
            ConsumerKind::GpuWorker => "the GPU worker",
        }
    }

    /// A setting as this consumer reads it: the flag, else its Troupe variable, else (the
    /// sidecar only, which also reads Asya's names) one of the Asya variables.
    fn setting(&self, flag: &str, troupe: &str, asya: &[&str]) -> Option<String> {
        let mut variables = vec![troupe];
        if self.kind == ConsumerKind::Sidecar {
            variables.extend_from_slice(asya);
        }
        sidecar_setting(self.container, flag, &variables)
    }

    /// The entry of the first of these variables it reads that is set.
    fn variable(&self, troupe: &str, asya: &[&str]) -> Option<&'a Value> {
        let asya = if self.kind == ConsumerKind::Sidecar {
            asya
        } else {
            &[]
        };
        std::iter::once(&troupe)
            .chain(asya)
            .find_map(|v| env_var(self.container, v))
    }

    fn metrics_port(&self) -> Result<u16, String> {
        let variables: &[&str] = match self.kind {
            ConsumerKind::Sidecar => &["TROUPE_METRICS_ADDR", "ASYA_METRICS_ADDR"],
            ConsumerKind::GpuWorker => &["TROUPE_METRICS_ADDR"],
        };
        metrics_port(self.container, variables)
    }
}

/// The pod's one queue consumer: a `troupe sidecar` or a `troupe-gpu-worker` container.
fn consumer_of(pod: &Value) -> Result<Consumer<'_>, String> {
    let consumers: Vec<Consumer<'_>> = items(pod, "/containers")
        .iter()
        .filter_map(|container| {
            let kind = if is_sidecar(container) {
                ConsumerKind::Sidecar
            } else if is_gpu_worker(container) {
                ConsumerKind::GpuWorker
            } else {
                return None;
            };
            Some(Consumer { kind, container })
        })
        .collect();
    match consumers.as_slice() {
        [one] => Ok(*one),
        other => Err(format!(
            "has {} queue consumers (`troupe sidecar` or troupe-gpu-worker containers), expected 1",
            other.len()
        )),
    }
}

/// `--flag value` or `--flag=value` in the container's command line.
fn flag_value(container: &Value, flag: &str) -> Option<String> {
    let words = command_line(container);
    let with_value = format!("{flag}=");
    for (index, word) in words.iter().enumerate() {
        if let Some(value) = word.strip_prefix(with_value.as_str()) {
            return Some(value.to_owned());
        }
        if *word == flag {
            return words.get(index + 1).map(|value| (*value).to_owned());
        }
    }
    None
}

/// The entry Kubernetes uses for a variable: the last one of that name.
fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    items(container, "/env")
        .iter()
        .rev()
        .find(|e| text(e, "/name") == Some(name))
}

fn env_literal<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env_var(container, name).and_then(|e| text(e, "/value"))
}

/// A setting as the sidecar reads it: the flag, else a variable with a literal value (the
/// sidecar refuses a Troupe and an Asya variable that disagree, so either one is the value).
fn sidecar_setting(container: &Value, flag: &str, variables: &[&str]) -> Option<String> {
    flag_value(container, flag).or_else(|| {
        variables
            .iter()
            .find_map(|v| env_literal(container, v).map(str::to_owned))
    })
}

/// The names of the Secrets a container loads whole (`envFrom`).
fn env_from_secrets(container: &Value) -> BTreeSet<&str> {
    items(container, "/envFrom")
        .iter()
        .filter_map(|e| text(e, "/secretRef/name"))
        .collect()
}

fn metrics_port(container: &Value, variables: &[&str]) -> Result<u16, String> {
    match sidecar_setting(container, "--metrics-addr", variables) {
        None => Ok(DEFAULT_METRICS_PORT),
        Some(address) => address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("metrics address {address:?} has no port")),
    }
}

/// The port an HTTP probe hits, a named port resolved through the container's ports.
fn probe_port(container: &Value, probe: &str) -> Option<u16> {
    let as_port = |n: &Value| n.as_u64().and_then(|n| u16::try_from(n).ok());
    match container.pointer(&format!("/{probe}/httpGet/port"))? {
        Value::String(name) => items(container, "/ports")
            .iter()
            .find(|p| text(p, "/name") == Some(name.as_str()))
            .and_then(|p| p.get("containerPort"))
            .and_then(as_port),
        number => as_port(number),
    }
}

/// The volume mounted at `path` in the container.
fn mounted_volume<'a>(container: &'a Value, path: &str) -> Option<&'a str> {
    let path = path.trim_end_matches('/');
    items(container, "/volumeMounts")
        .iter()
        .find(|m| text(m, "/mountPath").map(|p| p.trim_end_matches('/')) == Some(path))
        .and_then(|m| text(m, "/name"))
}

/// Where a runtime container puts its socket (python/README.md's variables).
fn runtime_socket_dir(container: &Value) -> String {
    let socket_path = ["TROUPE_SOCKET_PATH", "ASYA_SOCKET_PATH"]
        .iter()
        .find_map(|v| env_literal(container, v));
    if let Some(path) = socket_path {
        return Path::new(path)
            .parent()
            .map_or_else(|| "/".to_owned(), |p| p.display().to_string());
    }
    ["TROUPE_SOCKET_DIR", "ASYA_SOCKET_DIR"]
        .iter()
        .find_map(|v| env_literal(container, v))
        .unwrap_or(DEFAULT_SOCKET_DIR)
        .to_owned()
}

/// Checks a container's HTTP probes: liveness on /healthz and readiness on /readyz, both on
/// the metrics port; and the pod's Prometheus scrape annotations for that port.
fn check_probes(workload: &Value, container: &Value, port: u16, who: &str, problems: &mut Vec<String>) {
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let actual = text(container, &format!("/{probe}/httpGet/path"));
        if actual != Some(path) {
            problems.push(format!("{who}: {probe} should GET {path}, has {actual:?}"));
        }
        let actual = probe_port(container, probe);
        if actual != Some(port) {
            problems.push(format!(
                "{who}: {probe} should hit the metrics port {port}, hits {actual:?}"
            ));
        }
    }
    let port = port.to_string();
    for (key, expected) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", port.as_str()),
        ("prometheus.io/path", "/metrics"),
    ] {
        let actual = pod_annotation(workload, key);
        if actual != Some(expected) {
            problems.push(format!(
                "{who}: pod annotation {key} should be {expected:?}, is {actual:?}"
            ));
        }
    }
}

fn normalize_transport(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name == "rabbitmq" {
        "amqp".to_owned()
    } else {
        name
    }
}

/// Why a name/value pair is a credential written in plain text, if it is one.
fn credential_in(name: &str, value: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    // `..._FILE=/path`: where a mounted Secret is, not the secret itself.
    let names_a_file = upper.ends_with("_FILE") && value.starts_with('/');
    if !names_a_file && SENSITIVE_WORDS.iter().any(|word| upper.contains(word)) {
        return Some("its name marks a credential");
    }
    if has_userinfo_url(value) {
        return Some("it is a URL with user:password@");
    }
    let lower = value.to_ascii_lowercase();
    if ["password=", "secret=", "token="]
        .iter()
        .any(|k| lower.contains(k))
    {
        return Some("it holds a password property");
    }
    None
}

/// `scheme://user:password@host...` anywhere in the text.
fn has_userinfo_url(value: &str) -> bool {
    value.match_indices("://").any(|(index, _)| {
        let rest = &value[index + 3..];
        let authority = rest.split(['/', '?', '#', ' ', ',', ';']).next().unwrap_or("");
        authority
            .split_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

// ---------------------------------------------------------------------------------------
// Validation tools

fn k8s_validate_tool() -> Result<PathBuf, String> {
    if let Some(tool) = std::env::var_os("TROUPE_K8S_VALIDATE") {
        return Ok(PathBuf::from(tool));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let tool = Path::new(&home).join(".cache/troupe/k8s-validate/bin/kubernetes-validate");
        if tool.is_file() {
            return Ok(tool);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("kubernetes-validate"))
                .find(|tool| tool.is_file())
        })
        .ok_or_else(|| {
            "kubernetes-validate is not installed: run `bash .ci/k8s-validate-setup.sh` \
             (or set TROUPE_K8S_VALIDATE to the tool)"
                .to_owned()
        })
}

/// Writes each object to its own file, named after it, so the tool's report names it too.
fn write_objects<'a>(dir: &Path, objects: impl Iterator<Item = &'a Value>) -> Result<Vec<PathBuf>, String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for (index, object) in objects.enumerate() {
        let label: String = format!("{}-{}", kind_of(object), name_of(object))
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let file = dir.join(format!("{index:03}-{label}.yaml"));
        // JSON is YAML, and serde_json writes it without a second YAML library.
        let body = serde_json::to_string_pretty(object)
            .map_err(|e| format!("cannot serialize {}: {e}", describe(object)))?;
        fs::write(&file, body).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        files.push(file);
    }
    Ok(files)
}

/// Runs `kubernetes-validate --strict`; an unknown kind or version, which the tool only
/// warns about, fails too.
fn run_k8s_validate(tool: &Path, files: &[PathBuf], version: Option<&str>) -> Result<(), String> {
    let mut command = Command::new(tool);
    command.arg("--strict").arg("--quiet");
    if let Some(version) = version {
        command.arg("--kubernetes-version").arg(version);
    }
    let output = command.args(files).output().map_err(|e| {
        format!(
            "cannot run {} ({e}): run `bash .ci/k8s-validate-setup.sh`",
            tool.display()
        )
    })?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let flagged = report
        .lines()
        .any(|line| line.starts_with("ERROR") || line.starts_with("WARN"));
    if output.status.success() && !flagged {
        return Ok(());
    }
    let against = version.unwrap_or("the newest version it knows");
    Err(format!(
        "kubernetes-validate --strict against {against} ({}):\n{}",
        output.status,
        report.trim_end()
    ))
}

fn crd_schema(root: &Path) -> Result<Value, String> {
    let path = root.join("deploy/base/asyncactor-crd.yaml");
    let source = fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {} ({e}): generate it with `troupe-autoscaler crd`",
            path.display()
        )
    })?;
    let crd: Value = serde_yaml_ng::from_str(&source).map_err(|e| format!("{}: {e}", path.display()))?;
    items(&crd, "/spec/versions")
        .iter()
        .find(|v| text(v, "/name") == Some("v1alpha1"))
        .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
        .cloned()
        .ok_or_else(|| format!("{} has no v1alpha1 openAPIV3Schema", path.display()))
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn built_in_objects_pass_kubernetes_validate() -> TestResult {
    let tool = k8s_validate_tool()?;
    let scratch = std::env::temp_dir().join(format!("troupe-deploy-manifests-{}", std::process::id()));
    let mut problems = Vec::new();
    for render in renders()? {
        let dir = scratch.join(render.name.replace('/', "-"));
        let files = write_objects(&dir, render.objects.iter().filter(|o| kind_of(o) != "AsyncActor"))?;
        for version in [Some(OLDEST_KUBERNETES), None] {
            if let Err(e) = run_k8s_validate(&tool, &files, version) {
                problems.push(format!("[{}] {e}", render.name));
            }
        }
    }
    let _ = fs::remove_dir_all(scratch);
    finish("kubernetes-validate", problems)
}

#[test]
fn async_actors_match_the_crd_schema_and_the_rust_type() -> TestResult {
    let root = repo_root()?;
    let schema = crd_schema(&root)?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| format!("the CRD's openAPIV3Schema is not a usable JSON Schema: {e}"))?;
    let mut problems = Vec::new();
    for render in renders()? {
        let actors: Vec<&Value> = render.of_kind("AsyncActor").collect();
        if actors.is_empty() {
            problems.push(format!("[{}] renders no AsyncActor", render.name));
        }
        for actor in actors {
            let who = format!("[{}] {}", render.name, describe(actor));
            if text(actor, "/apiVersion") != Some("asya.sh/v1alpha1") {
                problems.push(format!("{who}: apiVersion should be asya.sh/v1alpha1"));
            }
            for error in validator.iter_errors(actor) {
                problems.push(format!(
                    "{who}: CRD schema: {error} (at {})",
                    error.instance_path()
                ));
            }
            if let Err(e) = serde_json::from_value::<AsyncActor>(actor.clone()) {
                problems.push(format!(
                    "{who}: troupe_autoscaler::crd::AsyncActor refuses it: {e}"
                ));
            }
        }
    }
    finish("AsyncActor validation", problems)
}

#[test]
fn every_render_installs_the_crd_it_uses() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        let crds: Vec<&Value> = render
            .of_kind("CustomResourceDefinition")
            .filter(|c| name_of(c) == "asyncactors.asya.sh")
            .collect();
        let [crd] = crds.as_slice() else {
            problems.push(format!(
                "[{}] should render the asyncactors.asya.sh CRD once, renders it {} times",
                render.name,
                crds.len()
            ));
            continue;
        };
        for (pointer, expected) in [
            ("/spec/group", "asya.sh"),
            ("/spec/scope", "Namespaced"),
            ("/spec/names/kind", "AsyncActor"),
            ("/spec/names/plural", "asyncactors"),
        ] {
            let actual = text(crd, pointer);
            if actual != Some(expected) {
                problems.push(format!(
                    "[{}] CRD {pointer} should be {expected:?}, is {actual:?}",
                    render.name
                ));
            }
        }
        let version = items(crd, "/spec/versions")
            .iter()
            .find(|v| text(v, "/name") == Some("v1alpha1"));
        match version {
            None => problems.push(format!("[{}] CRD has no version v1alpha1", render.name)),
            Some(v) if v.pointer("/subresources/status").is_none() => {
                problems.push(format!(
                    "[{}] CRD v1alpha1 lacks the status subresource",
                    render.name
                ));
            }
            Some(_) => {}
        }
    }
    finish("AsyncActor CRD", problems)
}

#[test]
fn autoscaled_deployments_leave_replicas_to_the_autoscaler() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for (actor, deployment) in render.scaled_actors() {
            let who = format!("[{}] {}", render.name, describe(actor));
            let Some(deployment) = deployment else {
                problems.push(format!(
                    "{who}: scaleTargetRef names Deployment {:?}, which is not in namespace {} of the render",
                    text(actor, "/spec/scaleTargetRef/name").unwrap_or(""),
                    namespace_of(actor)
                ));
                continue;
            };
            if let Some(replicas) = deployment.pointer("/spec/replicas") {
                problems.push(format!(
                    "{who}: its Deployment sets spec.replicas ({replicas}); every apply would reset \
                     the autoscaler's choice, so leave it out"
                ));
            }
        }
    }
    finish("scale targets", problems)
}

#[test]
fn actor_pods_have_one_queue_consumer_with_its_socket_and_probes() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for (actor, deployment) in render.scaled_actors() {
            let Some(deployment) = deployment else { continue };
            let who = format!("[{}] {}", render.name, describe(deployment));
            let Some(pod) = pod_spec(deployment) else { continue };
            let consumer = match consumer_of(pod) {
                Ok(consumer) => consumer,
                Err(e) => {
                    problems.push(format!("{who} (scaled by {}): {e}", describe(actor)));
                    continue;
                }
            };
            match consumer.kind {
                ConsumerKind::Sidecar => check_socket(pod, consumer.container, &who, &mut problems),
                // It runs the model itself: a container beside it would be idle or a runtime
                // left over from the sidecar layout.
                ConsumerKind::GpuWorker => {
                    for other in items(pod, "/containers").iter().filter(|c| !is_gpu_worker(c)) {
                        problems.push(format!(
                            "{who}: container {:?} beside the GPU worker, which needs no sidecar \
                             and no runtime",
                            name_of_container(other)
                        ));
                    }
                }
            }
            match consumer.metrics_port() {
                Ok(port) => check_probes(
                    deployment,
                    consumer.container,
                    port,
                    &format!("{who} {}", consumer.what()),
                    &mut problems,
                ),
                Err(e) => problems.push(format!("{who} {}: {e}", consumer.what())),
            }
        }
    }
    finish("actor pods", problems)
}

/// The sidecar and every runtime beside it mount one emptyDir at their socket folders.
fn check_socket(pod: &Value, sidecar: &Value, who: &str, problems: &mut Vec<String>) {
    let socket_dir = sidecar_setting(sidecar, "--socket-dir", &["TROUPE_SOCKET_DIR", "ASYA_SOCKET_DIR"])
        .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_owned());
    let Some(volume) = mounted_volume(sidecar, &socket_dir) else {
        problems.push(format!(
            "{who}: the sidecar mounts no volume at its socket folder {socket_dir}"
        ));
        return;
    };
    let declared = items(pod, "/volumes")
        .iter()
        .find(|v| text(v, "/name") == Some(volume));
    if declared.is_none_or(|v| v.get("emptyDir").is_none()) {
        problems.push(format!(
            "{who}: socket volume {volume:?} should be an emptyDir of the pod"
        ));
    }
    let runtimes: Vec<&Value> = items(pod, "/containers")
        .iter()
        .filter(|c| !is_sidecar(c))
        .collect();
    if runtimes.is_empty() {
        problems.push(format!("{who}: no runtime container beside the sidecar"));
    }
    for runtime in runtimes {
        let dir = runtime_socket_dir(runtime);
        if mounted_volume(runtime, &dir) != Some(volume) {
            problems.push(format!(
                "{who}: container {:?} should mount volume {volume:?} at its socket \
                 folder {dir}, as the sidecar does",
                name_of_container(runtime)
            ));
        }
    }
}

fn name_of_container(container: &Value) -> &str {
    text(container, "/name").unwrap_or("")
}

#[test]
fn queue_consumers_read_the_queue_their_async_actor_measures() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        let overlay_transport = match render.overlay() {
            Some(overlay) if BROKER_OVERLAYS.contains(&overlay) => Some(overlay),
            Some(overlay) if overlay == GPU_OVERLAY.0 => Some(GPU_OVERLAY.1),
            _ => None,
        };
        for (actor, deployment) in render.scaled_actors() {
            let who = format!("[{}] {}", render.name, describe(actor));
            let transport = text(actor, "/spec/transport/type").unwrap_or("");
            if let Some(expected) = overlay_transport
                && transport != expected
            {
                problems.push(format!(
                    "{who}: spec.transport.type is {transport:?}, but overlay {} is for {expected:?}",
                    render.name
                ));
            }
            let Some(pod) = deployment.and_then(pod_spec) else {
                continue;
            };
            let Ok(consumer) = consumer_of(pod) else { continue };
            let what = consumer.what();

            let consumer_transport = normalize_transport(
                &consumer
                    .setting("--transport", "TROUPE_TRANSPORT", &["ASYA_TRANSPORT"])
                    .unwrap_or_else(|| "memory".to_owned()),
            );
            if consumer_transport != transport {
                problems.push(format!(
                    "{who}: {what}'s transport is {consumer_transport:?}, the AsyncActor's {transport:?}"
                ));
            }

            let actor_name = text(actor, "/spec/actor").unwrap_or("");
            let consumer_actor = consumer.setting("--actor", "TROUPE_ACTOR", &["ASYA_ACTOR_NAME"]);
            if consumer_actor.as_deref() != Some(actor_name) {
                problems.push(format!(
                    "{who}: {what} serves actor {consumer_actor:?}, the AsyncActor measures {actor_name:?}"
                ));
            }

            let prefix = text(actor, "/spec/queuePrefix").unwrap_or(DEFAULT_QUEUE_PREFIX);
            let consumer_prefix = consumer
                .setting("--queue-prefix", "TROUPE_QUEUE_PREFIX", &[])
                .unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_owned());
            if consumer_prefix != prefix {
                problems.push(format!(
                    "{who}: {what}'s queue prefix is {consumer_prefix:?}, the AsyncActor's {prefix:?}"
                ));
            }

            let namespace = text(actor, "/spec/queueNamespace").unwrap_or(namespace_of(actor));
            let consumer_namespace =
                match consumer.setting("--namespace", "TROUPE_NAMESPACE", &["ASYA_NAMESPACE"]) {
                    Some(literal) => literal,
                    None => {
                        let field = consumer
                            .variable("TROUPE_NAMESPACE", &["ASYA_NAMESPACE"])
                            .and_then(|e| text(e, "/valueFrom/fieldRef/fieldPath"));
                        match (field, deployment) {
                            (Some("metadata.namespace"), Some(d)) => namespace_of(d).to_owned(),
                            (Some(other), _) => format!("<fieldRef {other}>"),
                            (None, _) => "default".to_owned(),
                        }
                    }
                };
            if consumer_namespace != namespace {
                problems.push(format!(
                    "{who}: {what}'s queue namespace is {consumer_namespace:?}, the AsyncActor's {namespace:?}"
                ));
            }
        }
    }
    finish("queues and transports", problems)
}

#[test]
fn grace_period_covers_the_handler_timeout() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for (_, deployment) in render.scaled_actors() {
            let Some(deployment) = deployment else { continue };
            let who = format!("[{}] {}", render.name, describe(deployment));
            let Some(pod) = pod_spec(deployment) else { continue };
            let Ok(consumer) = consumer_of(pod) else { continue };
            let raw = consumer
                .setting(
                    "--timeout",
                    "TROUPE_ACTOR_TIMEOUT",
                    &["ASYA_RESILIENCY_ACTOR_TIMEOUT"],
                )
                .unwrap_or_else(|| DEFAULT_ACTOR_TIMEOUT.to_owned());
            let timeout = match humantime::parse_duration(raw.trim()) {
                Ok(timeout) => timeout,
                Err(e) => {
                    problems.push(format!(
                        "{who}: {}'s timeout {raw:?} does not parse: {e}",
                        consumer.what()
                    ));
                    continue;
                }
            };
            let grace = pod
                .pointer("/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            if Duration::from_secs(grace) < timeout {
                problems.push(format!(
                    "{who}: terminationGracePeriodSeconds {grace} is shorter than the handler timeout \
                     {raw}: a scale-down would kill calls in flight"
                ));
            }
            let runtimes = items(pod, "/containers")
                .iter()
                .filter(|c| consumer.kind == ConsumerKind::Sidecar && !is_sidecar(c));
            for runtime in runtimes {
                for variable in ["TROUPE_RUNTIME_SHUTDOWN_GRACE_S", "ASYA_RUNTIME_SHUTDOWN_GRACE_S"] {
                    let Some(value) = env_literal(runtime, variable) else {
                        continue;
                    };
                    let container = name_of_container(runtime);
                    match value.trim().parse::<f64>() {
                        Ok(seconds) if seconds < timeout.as_secs_f64() => problems.push(format!(
                            "{who}: {container} {variable}={value} is shorter than the handler timeout \
                             {raw}: SIGTERM would cut calls in flight"
                        )),
                        Ok(seconds) if seconds > grace as f64 => problems.push(format!(
                            "{who}: {container} {variable}={value} outlasts terminationGracePeriodSeconds \
                             {grace}"
                        )),
                        Ok(_) => {}
                        Err(e) => problems.push(format!("{who}: {container} {variable}={value:?}: {e}")),
                    }
                }
            }
        }
    }
    finish("grace periods", problems)
}

#[test]
fn credentials_stay_in_secrets_created_out_of_band() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for secret in render.of_kind("Secret") {
            problems.push(format!(
                "[{}] renders {}: broker Secrets are created by the operator (docs/deploy.md), \
                 never kept in git",
                render.name,
                describe(secret)
            ));
        }
        for config_map in render.of_kind("ConfigMap") {
            let data = config_map
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten();
            for (key, value) in data {
                if let Some(why) = credential_in(key, value.as_str().unwrap_or("")) {
                    problems.push(format!(
                        "[{}] {} key {key}: {why}; put it in a Secret",
                        render.name,
                        describe(config_map)
                    ));
                }
            }
        }
        for (who, container) in render.containers() {
            for entry in items(container, "/env") {
                let name = text(entry, "/name").unwrap_or("");
                let Some(value) = text(entry, "/value") else {
                    continue;
                };
                if BROKER_SETTINGS.contains(&name) {
                    problems.push(format!(
                        "{who}: {name} is written inline; broker settings come from the Secret \
                             (envFrom or secretKeyRef)"
                    ));
                } else if let Some(why) = credential_in(name, value) {
                    problems.push(format!("{who}: env {name} is inline and {why}"));
                }
            }
            for word in command_line(container) {
                if BROKER_FLAGS
                    .iter()
                    .any(|flag| word == *flag || word.starts_with(&format!("{flag}=")))
                {
                    problems.push(format!(
                        "{who}: argument {word:?} sets a broker setting inline; use the Secret"
                    ));
                } else if has_userinfo_url(word) {
                    problems.push(format!("{who}: an argument holds a URL with user:password@"));
                }
            }
        }
    }
    finish("inline credentials", problems)
}

/// Every overlay (a real broker) gives its queue consumers a shared, durable idempotency
/// store, required from the Secret: with the in-memory default, effectively-once would not
/// survive a restart nor span replicas. The base (the embedded broker) keeps the default.
#[test]
fn overlays_require_a_durable_store_from_the_secret() -> TestResult {
    let mut problems = Vec::new();
    let mut consumers = 0;
    for render in renders()?.iter().filter(|r| r.overlay().is_some()) {
        for (who, container) in render.containers() {
            if !is_sidecar(container) && !is_gpu_worker(container) {
                continue;
            }
            consumers += 1;
            let Some(store) = env_var(container, "TROUPE_STORE") else {
                problems.push(format!(
                    "{who}: TROUPE_STORE is not set; the sidecar would keep hop records in memory"
                ));
                continue;
            };
            let required_secret = text(store, "/valueFrom/secretKeyRef/key") == Some("TROUPE_STORE")
                && store
                    .pointer("/valueFrom/secretKeyRef/optional")
                    .and_then(Value::as_bool)
                    != Some(true);
            if !required_secret {
                problems.push(format!(
                    "{who}: TROUPE_STORE must come from the Secret's TROUPE_STORE key, not optional: {store}"
                ));
            }
        }
    }
    if consumers == 0 {
        problems.push("no overlay has a sidecar or GPU worker to check".to_owned());
    }
    finish("durable store", problems)
}

#[test]
fn broker_settings_reach_the_queue_consumer_and_the_autoscaler_from_the_secret() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        let autoscaler_secrets: Vec<(&str, BTreeSet<&str>)> = render
            .workloads()
            .flat_map(|(workload, pod)| {
                items(pod, "/containers")
                    .iter()
                    .filter(|c| is_autoscaler(c))
                    .map(move |c| (namespace_of(workload), env_from_secrets(c)))
            })
            .collect();
        for (actor, deployment) in render.scaled_actors() {
            let who = format!("[{}] {}", render.name, describe(actor));
            let Some(secret) = text(actor, "/spec/transport/connectionSecretRef/name") else {
                problems.push(format!("{who}: spec.transport.connectionSecretRef is not set"));
                continue;
            };
            if let Some(consumer) = deployment
                .and_then(pod_spec)
                .and_then(|pod| consumer_of(pod).ok())
                && !env_from_secrets(consumer.container).contains(secret)
            {
                problems.push(format!(
                    "{who}: {} does not load Secret {secret:?} (envFrom)",
                    consumer.what()
                ));
            }
            for (namespace, secrets) in &autoscaler_secrets {
                if *namespace == namespace_of(actor) && !secrets.contains(secret) {
                    problems.push(format!(
                        "{who}: the autoscaler does not load Secret {secret:?} (envFrom)"
                    ));
                }
            }
        }
    }
    finish("broker Secret", problems)
}

/// Every render runs the gateway on the broker its actors use, with the broker Secret and
/// API keys from a Secret, behind a Service; every queue consumer reaches that Service for
/// canceled and paused tasks, with an API key from a Secret.
#[test]
fn the_gateway_records_from_the_actors_broker_and_the_actors_reach_it() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        let gateways: Vec<(&Value, &Value, &Value)> = render
            .workloads()
            .flat_map(|(workload, pod)| {
                items(pod, "/containers")
                    .iter()
                    .filter(|c| is_gateway(c))
                    .map(move |c| (workload, pod, c))
            })
            .collect();
        let [(workload, _, gateway)] = gateways.as_slice() else {
            problems.push(format!(
                "[{}] renders {} gateways, not one",
                render.name,
                gateways.len()
            ));
            continue;
        };
        let who = format!("[{}] {}", render.name, describe(workload));
        let transport = normalize_transport(env_literal(gateway, "TROUPE_TRANSPORT").unwrap_or("memory"));
        for (actor, _) in render.scaled_actors() {
            let theirs = normalize_transport(text(actor, "/spec/transport/type").unwrap_or(""));
            if theirs != transport {
                problems.push(format!(
                    "{who}: records from {transport}, but {} runs on {theirs}",
                    describe(actor)
                ));
            }
            if let Some(secret) = text(actor, "/spec/transport/connectionSecretRef/name")
                && !env_from_secrets(gateway).contains(secret)
            {
                problems.push(format!(
                    "{who}: does not load the broker Secret {secret:?} (envFrom)"
                ));
            }
        }
        if env_literal(gateway, "TROUPE_GATEWAY_API_KEYS").is_some() {
            problems.push(format!(
                "{who}: API keys are written inline; mount them from a Secret"
            ));
        }
        let labels = pod_labels(workload).cloned().unwrap_or_default();
        let service = render.of_kind("Service").find(|svc| {
            namespace_of(svc) == namespace_of(workload)
                && svc
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        let Some(service) = service else {
            problems.push(format!("{who}: no Service selects its pods"));
            continue;
        };
        let port = items(service, "/spec/ports")
            .first()
            .and_then(|p| p.get("port"))
            .and_then(Value::as_u64)
            .unwrap_or(80);
        let expected = if port == 80 {
            format!("http://{}", name_of(service))
        } else {
            format!("http://{}:{port}", name_of(service))
        };
        for (_, deployment) in render.scaled_actors() {
            let Some(consumer) = deployment
                .and_then(pod_spec)
                .and_then(|pod| consumer_of(pod).ok())
            else {
                continue;
            };
            let who = format!(
                "[{}] {} {}",
                render.name,
                describe(deployment.unwrap_or(&Value::Null)),
                consumer.what()
            );
            let url = env_literal(consumer.container, "TROUPE_GATEWAY_URL");
            if url.map(|u| u.trim_end_matches('/')) != Some(expected.as_str()) {
                problems.push(format!(
                    "{who}: TROUPE_GATEWAY_URL is {url:?}, not the gateway's Service {expected:?}"
                ));
            }
            let key_from_secret = env_var(consumer.container, "TROUPE_GATEWAY_API_KEY")
                .is_some_and(|v| v.pointer("/valueFrom/secretKeyRef").is_some());
            if !key_from_secret {
                problems.push(format!(
                    "{who}: TROUPE_GATEWAY_API_KEY should come from a Secret (secretKeyRef)"
                ));
            }
        }
    }
    finish("gateway", problems)
}

#[test]
fn autoscaler_is_one_least_privilege_replica() -> TestResult {
    let expected: BTreeSet<(String, String, String)> = AUTOSCALER_RULES
        .iter()
        .map(|(group, resource, verb)| ((*group).to_owned(), (*resource).to_owned(), (*verb).to_owned()))
        .collect();
    let mut problems = Vec::new();
    for render in renders()? {
        let at = render.name.as_str();
        let deployments: Vec<&Value> = render
            .of_kind("Deployment")
            .filter(|d| pod_spec(d).is_some_and(|pod| items(pod, "/containers").iter().any(is_autoscaler)))
            .collect();
        let [deployment] = deployments.as_slice() else {
            problems.push(format!(
                "[{at}] should run the autoscaler in one Deployment, has {}",
                deployments.len()
            ));
            continue;
        };
        let who = format!("[{at}] {}", describe(deployment));
        if deployment.pointer("/spec/replicas").and_then(Value::as_u64) != Some(1) {
            problems.push(format!("{who}: spec.replicas should be exactly 1"));
        }
        if text(deployment, "/spec/strategy/type") != Some("Recreate") {
            problems.push(format!(
                "{who}: strategy should be Recreate, so a rollout never runs two autoscalers"
            ));
        }
        let Some(pod) = pod_spec(deployment) else { continue };
        for container in items(pod, "/containers").iter().filter(|c| is_autoscaler(c)) {
            if !command_line(container).contains(&"run") {
                problems.push(format!(
                    "{who}: the autoscaler container should run `troupe-autoscaler run`"
                ));
            }
            for (variable, field) in [
                ("POD_NAME", "metadata.name"),
                ("POD_NAMESPACE", "metadata.namespace"),
            ] {
                let actual =
                    env_var(container, variable).and_then(|e| text(e, "/valueFrom/fieldRef/fieldPath"));
                if actual != Some(field) {
                    problems.push(format!(
                        "{who}: {variable} should come from the downward API ({field})"
                    ));
                }
            }
            match metrics_port(container, &["TROUPE_METRICS_ADDR"]) {
                Ok(port) => check_probes(deployment, container, port, &who, &mut problems),
                Err(e) => problems.push(format!("{who}: {e}")),
            }
        }

        let namespace = namespace_of(deployment);
        let account = text(pod, "/serviceAccountName").unwrap_or("default");
        if account == "default" {
            problems.push(format!("{who}: should run as its own ServiceAccount"));
        } else if render.find("ServiceAccount", namespace, account).is_none() {
            problems.push(format!(
                "{who}: ServiceAccount {namespace}/{account} is not in the render"
            ));
        }
        for kind in ["Role", "RoleBinding"] {
            for object in render.of_kind(kind) {
                problems.push(format!(
                    "[{at}] unexpected {}: the autoscaler's rights are one ClusterRole",
                    describe(object)
                ));
            }
        }
        let bindings: Vec<&Value> = render
            .of_kind("ClusterRoleBinding")
            .filter(|b| {
                items(b, "/subjects").iter().any(|s| {
                    text(s, "/kind") == Some("ServiceAccount")
                        && text(s, "/name") == Some(account)
                        && text(s, "/namespace") == Some(namespace)
                })
            })
            .collect();
        let [binding] = bindings.as_slice() else {
            problems.push(format!(
                "[{at}] ServiceAccount {namespace}/{account} should be bound by one ClusterRoleBinding, is by {}",
                bindings.len()
            ));
            continue;
        };
        if items(binding, "/subjects").len() != 1 {
            problems.push(format!(
                "[{at}] {} should bind only the autoscaler",
                describe(binding)
            ));
        }
        if text(binding, "/roleRef/kind") != Some("ClusterRole") {
            problems.push(format!("[{at}] {} should grant a ClusterRole", describe(binding)));
        }
        let role_name = text(binding, "/roleRef/name").unwrap_or("");
        let roles: Vec<&Value> = render.of_kind("ClusterRole").collect();
        if roles.len() != 1 {
            problems.push(format!(
                "[{at}] should render exactly one ClusterRole, renders {}",
                roles.len()
            ));
        }
        let Some(role) = roles.iter().find(|r| name_of(r) == role_name) else {
            problems.push(format!(
                "[{at}] ClusterRole {role_name:?} (bound to the autoscaler) is not in the render"
            ));
            continue;
        };
        let mut granted = BTreeSet::new();
        for rule in items(role, "/rules") {
            for key in ["resourceNames", "nonResourceURLs"] {
                if rule.get(key).is_some() {
                    problems.push(format!("[{at}] {}: unexpected {key} in a rule", describe(role)));
                }
            }
            for group in strings(rule, "/apiGroups") {
                for resource in strings(rule, "/resources") {
                    for verb in strings(rule, "/verbs") {
                        granted.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
                    }
                }
            }
        }
        for (group, resource, verb) in granted.difference(&expected) {
            problems.push(format!(
                "[{at}] {} grants more than needed: {verb} {resource} (group {group:?})",
                describe(role)
            ));
        }
        for (group, resource, verb) in expected.difference(&granted) {
            problems.push(format!(
                "[{at}] {} lacks {verb} {resource} (group {group:?})",
                describe(role)
            ));
        }
    }
    finish("autoscaler", problems)
}

/// The GPUs a container asks for (`nvidia.com/gpu` limit; 0 when none).
fn gpu_limit(container: &Value) -> u64 {
    let limit = container
        .pointer("/resources/limits")
        .and_then(|l| l.get("nvidia.com/gpu"));
    match limit {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn gpu_overlay_runs_the_gpu_worker_on_gpu_nodes_and_scales_on_its_own_terms() -> TestResult {
    let gpu = find_render(&format!("overlays/{}", GPU_OVERLAY.0))?;
    let mut problems = Vec::new();
    let mut gpu_actors = 0;
    for (actor, deployment) in gpu.scaled_actors() {
        let who = format!("[{}] {}", gpu.name, describe(actor));
        let Some(pod) = deployment.and_then(pod_spec) else {
            continue;
        };
        for sidecar in items(pod, "/containers").iter().filter(|c| is_sidecar(c)) {
            if gpu_limit(sidecar) > 0 {
                problems.push(format!(
                    "{who}: sidecar {:?} should not hold a GPU",
                    name_of_container(sidecar)
                ));
            }
        }
        // A pod without exactly one consumer is reported by the actor pod test.
        let Ok(consumer) = consumer_of(pod) else { continue };
        if consumer.kind == ConsumerKind::GpuWorker {
            gpu_actors += 1;
            check_gpu_actor(actor, pod, consumer, &who, &mut problems);
        }
    }
    if gpu_actors == 0 {
        problems.push(format!(
            "[{}] has no actor served by the troupe-gpu-worker image",
            gpu.name
        ));
    }
    for render in renders()?.iter().filter(|r| r.name != gpu.name) {
        for (workload, pod) in render.workloads() {
            if containers(pod).any(|c| gpu_limit(c) > 0) {
                problems.push(format!(
                    "[{}] {} asks for a GPU outside the gpu overlay",
                    render.name,
                    describe(workload)
                ));
            }
        }
    }
    finish("gpu overlay", problems)
}

/// A GPU worker actor: one GPU on a GPU node, its model on a read-only volume, probes that
/// wait for the model, batching the worker accepts, and GPU-sized scaling.
fn check_gpu_actor(
    actor: &Value,
    pod: &Value,
    consumer: Consumer<'_>,
    who: &str,
    problems: &mut Vec<String>,
) {
    let worker = consumer.container;
    if gpu_limit(worker) < 1 {
        problems.push(format!("{who}: the GPU worker has no nvidia.com/gpu limit"));
    }
    if consumer.setting("--device", "TROUPE_DEVICE", &[]).as_deref() == Some("cpu") {
        problems.push(format!(
            "{who}: the GPU worker runs on the CPU (TROUPE_DEVICE=cpu)"
        ));
    }
    if pod
        .get("nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|selector| selector.is_empty())
    {
        problems.push(format!("{who}: no nodeSelector for the GPU node pool"));
    }
    if !items(pod, "/tolerations")
        .iter()
        .any(|t| text(t, "/key").is_some_and(|k| k.contains("gpu")))
    {
        problems.push(format!("{who}: no toleration for the GPU nodes' taint"));
    }

    match consumer.setting("--model", "TROUPE_MODEL", &[]) {
        None => problems.push(format!("{who}: TROUPE_MODEL (the TorchScript file) is not set")),
        Some(model) if !model.starts_with('/') => {
            problems.push(format!(
                "{who}: TROUPE_MODEL {model:?} should be an absolute path"
            ));
        }
        Some(model) => check_model_volume(pod, worker, &model, who, problems),
    }

    // Liveness answers while the model loads; readiness and the startup probe wait for it.
    let readiness = text(worker, "/readinessProbe/httpGet/path");
    if readiness != Some("/readyz") {
        problems.push(format!(
            "{who}: the GPU worker's readinessProbe should GET /readyz (model loaded and warmed \
             up), has {readiness:?}"
        ));
    }
    match worker.get("startupProbe") {
        None => problems.push(format!(
            "{who}: the GPU worker has no startupProbe; loading and warming up a model takes minutes"
        )),
        Some(probe) => {
            let path = text(probe, "/httpGet/path");
            if path != Some("/readyz") {
                problems.push(format!(
                    "{who}: the startupProbe should GET /readyz, so it waits for the model; has {path:?}"
                ));
            }
            let budget = startup_budget(probe);
            if budget < MIN_MODEL_LOAD_SECONDS {
                problems.push(format!(
                    "{who}: the startupProbe gives up after {budget} s; a model load needs at least \
                     {MIN_MODEL_LOAD_SECONDS} s"
                ));
            }
        }
    }

    let count = |flag: &str, variable: &str| -> Result<Option<u64>, String> {
        consumer
            .setting(flag, variable, &[])
            .map(|raw| {
                raw.trim()
                    .parse::<u64>()
                    .map_err(|e| format!("{who}: {variable}={raw:?}: {e}"))
            })
            .transpose()
    };
    let (max_batch, prefetch) = match (
        count("--max-batch-size", "TROUPE_MAX_BATCH_SIZE"),
        count("--prefetch", "TROUPE_PREFETCH"),
    ) {
        (Ok(max_batch), Ok(prefetch)) => {
            let max_batch = max_batch.unwrap_or(DEFAULT_MAX_BATCH_SIZE);
            (max_batch, prefetch.unwrap_or(2 * max_batch))
        }
        (Err(e), _) | (_, Err(e)) => {
            problems.push(e);
            return;
        }
    };
    if prefetch < 2 * max_batch {
        problems.push(format!(
            "{who}: TROUPE_PREFETCH {prefetch} is less than twice TROUPE_MAX_BATCH_SIZE {max_batch}: \
             the worker refuses to start"
        ));
    }
    // A parse failure is reported by the CRD test.
    if let Ok(parsed) = serde_json::from_value::<AsyncActor>(actor.clone()) {
        let queue_length = u64::from(parsed.spec.scaling.queue_length);
        if queue_length < max_batch {
            problems.push(format!(
                "{who}: queueLength {queue_length} is below TROUPE_MAX_BATCH_SIZE {max_batch}: \
                 replicas would be added before one fills a batch"
            ));
        }
    }
    if actor.pointer("/spec/scaling/maxReplicaCount").is_none() {
        problems.push(format!(
            "{who}: maxReplicaCount is not set; GPU actors need their own limit, not the default"
        ));
    }
}

/// The model file lies on a volume of the pod, mounted read-only.
fn check_model_volume(pod: &Value, worker: &Value, model: &str, who: &str, problems: &mut Vec<String>) {
    let Some(mount) = mount_holding(worker, model) else {
        problems.push(format!(
            "{who}: no volume is mounted over the model {model}; the image holds no model"
        ));
        return;
    };
    let name = text(mount, "/name").unwrap_or("");
    let at = text(mount, "/mountPath").unwrap_or("");
    if mount.get("readOnly").and_then(Value::as_bool) != Some(true) {
        problems.push(format!(
            "{who}: the model volume {name:?} at {at} should be mounted readOnly"
        ));
    }
    match items(pod, "/volumes")
        .iter()
        .find(|v| text(v, "/name") == Some(name))
    {
        None => problems.push(format!(
            "{who}: the model volume {name:?} is not a volume of the pod"
        )),
        Some(volume) => {
            if let Some(claim) = volume.get("persistentVolumeClaim")
                && claim.get("readOnly").and_then(Value::as_bool) != Some(true)
            {
                problems.push(format!(
                    "{who}: the model's PersistentVolumeClaim (volume {name:?}) should be readOnly"
                ));
            }
        }
    }
}

/// The mount whose folder holds `path` (the deepest one), if any.
fn mount_holding<'a>(container: &'a Value, path: &str) -> Option<&'a Value> {
    items(container, "/volumeMounts")
        .iter()
        .filter(|m| {
            text(m, "/mountPath").is_some_and(|dir| {
                path.strip_prefix(dir.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .max_by_key(|m| text(m, "/mountPath").map_or(0, str::len))
}

/// Seconds a startup probe allows before the container is restarted (Kubernetes' defaults
/// for the fields left out).
fn startup_budget(probe: &Value) -> u64 {
    let field = |name: &str, default: u64| probe.get(name).and_then(Value::as_u64).unwrap_or(default);
    field("initialDelaySeconds", 0) + field("periodSeconds", 10) * field("failureThreshold", 3)
}

#[test]
fn pods_run_as_non_root_under_the_restricted_profile() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for (workload, pod) in render.workloads() {
            let who = format!("[{}] {}", render.name, describe(workload));
            for key in ["hostNetwork", "hostPID", "hostIPC"] {
                if pod.get(key).and_then(Value::as_bool) == Some(true) {
                    problems.push(format!("{who}: {key} is not allowed"));
                }
            }
            for volume in items(pod, "/volumes") {
                if volume.get("hostPath").is_some() {
                    problems.push(format!("{who}: hostPath volume {:?}", text(volume, "/name")));
                }
            }
            let pod_level = |pointer: &str| pod.pointer(&format!("/securityContext{pointer}"));
            for container in containers(pod) {
                let who = format!("{who} container {:?}", name_of_container(container));
                let setting = |pointer: &str| {
                    container
                        .pointer(&format!("/securityContext{pointer}"))
                        .or_else(|| pod_level(pointer))
                };
                if setting("/runAsNonRoot").and_then(Value::as_bool) != Some(true) {
                    problems.push(format!("{who}: runAsNonRoot should be true"));
                }
                // A number, so the kubelet can check runAsNonRoot whatever the image's USER
                // (the troupe and autoscaler images name theirs, `nonroot`).
                for field in ["runAsUser", "runAsGroup"] {
                    match setting(&format!("/{field}")) {
                        None => problems.push(format!("{who}: {field} is not set (e.g. 65532)")),
                        Some(id) => match id.as_u64() {
                            None => problems.push(format!("{who}: {field} {id} should be a number")),
                            Some(0) => problems.push(format!("{who}: {field} is 0 (root)")),
                            Some(_) => {}
                        },
                    }
                }
                let own = |pointer: &str| container.pointer(&format!("/securityContext{pointer}"));
                if own("/allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false) {
                    problems.push(format!("{who}: allowPrivilegeEscalation should be false"));
                }
                if own("/privileged").and_then(Value::as_bool) == Some(true) {
                    problems.push(format!("{who}: privileged"));
                }
                if own("/readOnlyRootFilesystem").and_then(Value::as_bool) != Some(true) {
                    problems.push(format!("{who}: readOnlyRootFilesystem should be true"));
                }
                if !strings(container, "/securityContext/capabilities/drop").contains(&"ALL") {
                    problems.push(format!("{who}: capabilities should drop ALL"));
                }
                let added = strings(container, "/securityContext/capabilities/add");
                if added.iter().any(|c| *c != "NET_BIND_SERVICE") {
                    problems.push(format!("{who}: adds capabilities {added:?}"));
                }
                let seccomp = setting("/seccompProfile/type").and_then(Value::as_str);
                if seccomp != Some("RuntimeDefault") {
                    problems.push(format!(
                        "{who}: seccompProfile should be RuntimeDefault, is {seccomp:?}"
                    ));
                }
            }
        }
    }
    finish("pod security", problems)
}

/// A resource quantity (`250m`, `"2"`, `1Gi`, `512M`) in cores or bytes.
fn quantity(value: &Value) -> Result<f64, String> {
    let raw = match value {
        Value::Number(n) => return n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Value::String(s) => s.trim(),
        other => return Err(format!("{other} is not a quantity")),
    };
    let binary = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ]
    .into_iter()
    .find_map(|(suffix, power)| raw.strip_suffix(suffix).map(|n| (n, 2f64.powi(power))));
    let decimal = || {
        [
            ("n", -9),
            ("u", -6),
            ("m", -3),
            ("k", 3),
            ("M", 6),
            ("G", 9),
            ("T", 12),
            ("P", 15),
            ("E", 18),
        ]
        .into_iter()
        .find_map(|(suffix, power)| raw.strip_suffix(suffix).map(|n| (n, 10f64.powi(power))))
    };
    let (number, scale) = binary.or_else(decimal).unwrap_or((raw, 1.0));
    number
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|e| format!("{raw:?} is not a quantity: {e}"))
}

#[test]
fn containers_request_and_limit_cpu_and_memory() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for (who, container) in render.containers() {
            for resource in ["cpu", "memory"] {
                // By `get`: extended resources (nvidia.com/gpu) hold a `/`.
                let amount = |side: &str| {
                    container
                        .pointer(&format!("/resources/{side}"))
                        .and_then(|r| r.get(resource))
                };
                let (Some(request), Some(limit)) = (amount("requests"), amount("limits")) else {
                    for side in ["requests", "limits"] {
                        if amount(side).is_none() {
                            problems.push(format!("{who}: resources.{side}.{resource} is not set"));
                        }
                    }
                    continue;
                };
                match (quantity(request), quantity(limit)) {
                    (Ok(request), Ok(limit)) if request <= 0.0 || request > limit => {
                        problems.push(format!(
                            "{who}: {resource} request {request} should be above 0 and at most \
                                 the limit {limit}"
                        ));
                    }
                    (Ok(_), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => problems.push(format!("{who}: {resource}: {e}")),
                }
            }
        }
    }
    finish("resources", problems)
}

/// The Python runtime, as its handler variables (python/README.md) or its image show.
fn is_python_runtime(container: &Value) -> bool {
    text(container, "/image").is_some_and(|image| image.contains("/troupe-python-runtime"))
        || ["TROUPE_HANDLER", "ASYA_HANDLER"]
            .iter()
            .any(|v| env_var(container, v).is_some())
}

/// The folders a container writes (its root filesystem being read-only), with what it puts
/// there, as its program and settings say: the sidecar its runtime's socket folder, a
/// runtime that folder (socket and ready file) and, for Python, /tmp; the GPU worker /tmp
/// (libtorch's and CUDA's scratch files) and CUDA's JIT cache. The autoscaler writes none.
fn written_dirs(pod: &Value, container: &Value) -> Vec<(String, &'static str)> {
    let mut dirs = Vec::new();
    if is_sidecar(container) {
        let socket_dir = sidecar_setting(
            container,
            "--socket-dir",
            &["TROUPE_SOCKET_DIR", "ASYA_SOCKET_DIR"],
        )
        .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_owned());
        dirs.push((socket_dir, "the runtime's socket"));
    } else if is_gpu_worker(container) {
        dirs.push(("/tmp".to_owned(), "libtorch's and CUDA's scratch files"));
        if let Some(cache) = env_literal(container, "CUDA_CACHE_PATH") {
            dirs.push((cache.to_owned(), "CUDA's JIT cache (CUDA_CACHE_PATH)"));
        }
    } else if items(pod, "/containers").iter().any(is_sidecar) {
        dirs.push((runtime_socket_dir(container), "its socket and ready file"));
        if is_python_runtime(container) {
            dirs.push(("/tmp".to_owned(), "the handler's temporary files"));
        }
    }
    dirs
}

/// The mount at `dir`, else the deepest one holding it.
fn mount_covering<'a>(container: &'a Value, dir: &str) -> Option<&'a Value> {
    let dir = dir.trim_end_matches('/');
    items(container, "/volumeMounts")
        .iter()
        .find(|m| text(m, "/mountPath").map(|p| p.trim_end_matches('/')) == Some(dir))
        .or_else(|| mount_holding(container, dir))
}

/// The gateway's SQLite file lives on a writable PersistentVolumeClaim: its tasks outlive the
/// pod. (From a Secret, `TROUPE_GATEWAY_DATABASE` is a PostgreSQL URL: nothing is written.)
fn check_task_store(pod: &Value, container: &Value, who: &str, problems: &mut Vec<String>) {
    let from_secret =
        env_var(container, "TROUPE_GATEWAY_DATABASE").is_some_and(|v| v.get("valueFrom").is_some());
    if from_secret {
        return;
    }
    let Some(file) = env_literal(container, "TROUPE_GATEWAY_DATABASE").filter(|f| f.starts_with('/')) else {
        problems.push(format!(
            "{who}: TROUPE_GATEWAY_DATABASE should name a file by its absolute path, on a volume"
        ));
        return;
    };
    let dir = Path::new(file).parent().and_then(Path::to_str).unwrap_or("/");
    let Some(mount) = mount_covering(container, dir) else {
        problems.push(format!(
            "{who}: nothing is mounted at {dir}, the task store's folder"
        ));
        return;
    };
    let name = text(mount, "/name").unwrap_or("");
    if mount.get("readOnly").and_then(Value::as_bool) == Some(true) {
        problems.push(format!(
            "{who}: the task store's volume {name:?} is mounted readOnly"
        ));
    }
    let volume = items(pod, "/volumes")
        .iter()
        .find(|v| text(v, "/name") == Some(name));
    if volume.is_none_or(|v| v.get("persistentVolumeClaim").is_none()) {
        problems.push(format!(
            "{who}: the task store's volume {name:?} should be a PersistentVolumeClaim; tasks would \
             be lost with the pod"
        ));
    }
}

#[test]
fn written_paths_are_size_limited_empty_dirs() -> TestResult {
    let mut problems = Vec::new();
    for render in renders()? {
        for (workload, pod) in render.workloads() {
            let pod_who = format!("[{}] {}", render.name, describe(workload));
            for volume in items(pod, "/volumes") {
                if let Some(empty_dir) = volume.get("emptyDir")
                    && empty_dir.get("sizeLimit").is_none()
                {
                    problems.push(format!(
                        "{pod_who}: emptyDir {:?} has no sizeLimit; a runaway writer would fill the \
                         node's disk (or, with medium Memory, its memory)",
                        text(volume, "/name").unwrap_or("")
                    ));
                }
            }
            for container in containers(pod) {
                let who = format!("{pod_who} container {:?}", name_of_container(container));
                for (dir, what) in written_dirs(pod, container) {
                    let Some(mount) = mount_covering(container, &dir) else {
                        problems.push(format!(
                            "{who}: nothing is mounted at {dir} ({what}); the root filesystem is \
                             read-only"
                        ));
                        continue;
                    };
                    let name = text(mount, "/name").unwrap_or("");
                    if mount.get("readOnly").and_then(Value::as_bool) == Some(true) {
                        problems.push(format!(
                            "{who}: volume {name:?} at {dir} ({what}) is mounted readOnly"
                        ));
                    }
                    let volume = items(pod, "/volumes")
                        .iter()
                        .find(|v| text(v, "/name") == Some(name));
                    if volume.is_none_or(|v| v.get("emptyDir").is_none()) {
                        problems.push(format!(
                            "{who}: {dir} ({what}) should be an emptyDir of the pod, is volume {name:?}"
                        ));
                    }
                }
                if is_python_runtime(container)
                    && env_literal(container, "PYTHONDONTWRITEBYTECODE").is_none_or(str::is_empty)
                {
                    problems.push(format!(
                        "{who}: PYTHONDONTWRITEBYTECODE should be set (\"1\"): Python would try to \
                         write .pyc files on the read-only root filesystem"
                    ));
                }
                if is_gateway(container) {
                    check_task_store(pod, container, &who, &mut problems);
                }
                if is_gpu_worker(container) && env_literal(container, "CUDA_CACHE_PATH").is_none() {
                    problems.push(format!(
                        "{who}: CUDA_CACHE_PATH should name a writable folder: CUDA's JIT cache \
                         defaults to one under $HOME, on the read-only root filesystem"
                    ));
                }
            }
        }
    }
    finish("written paths", problems)
}

/// The labels of an object's pods.
fn pod_labels(object: &Value) -> Option<&serde_json::Map<String, Value>> {
    let pointer = match kind_of(object) {
        "Pod" => "/metadata/labels",
        "CronJob" => "/spec/jobTemplate/spec/template/metadata/labels",
        _ => "/spec/template/metadata/labels",
    };
    object.pointer(pointer).and_then(Value::as_object)
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects these labels; an
/// empty selector selects everything.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let label = |key: &str| labels.get(key).and_then(Value::as_str);
    let by_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key).is_some_and(|l| Some(l) == value.as_str()));
    let by_expressions = items(selector, "/matchExpressions").iter().all(|expression| {
        let value = label(text(expression, "/key").unwrap_or(""));
        let values = strings(expression, "/values");
        match text(expression, "/operator") {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// The container serving a pod's `/metrics` (the autoscaler, or the actor's queue consumer)
/// and its port; `None` for a pod with neither.
fn metrics_endpoint(pod: &Value) -> Option<Result<(&Value, u16), String>> {
    if let Some(autoscaler) = items(pod, "/containers").iter().find(|c| is_autoscaler(c)) {
        return Some(metrics_port(autoscaler, &["TROUPE_METRICS_ADDR"]).map(|port| (autoscaler, port)));
    }
    // The gateway serves /metrics on its one port, beside the API.
    if let Some(gateway) = items(pod, "/containers").iter().find(|c| is_gateway(c)) {
        return Some(metrics_port(gateway, &["TROUPE_GATEWAY_LISTEN"]).map(|port| (gateway, port)));
    }
    consumer_of(pod)
        .ok()
        .map(|consumer| consumer.metrics_port().map(|port| (consumer.container, port)))
}

/// Whether a NetworkPolicy port entry is exactly this TCP port of the container, by number
/// or by the name of the container's port.
fn names_port(entry: &Value, container: &Value, port: u16) -> bool {
    if text(entry, "/protocol").unwrap_or("TCP") != "TCP" || entry.get("endPort").is_some() {
        return false;
    }
    match entry.get("port") {
        Some(Value::Number(n)) => n.as_u64() == Some(u64::from(port)),
        Some(Value::String(name)) => items(container, "/ports").iter().any(|p| {
            text(p, "/name") == Some(name.as_str())
                && p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(port))
        }),
        _ => false,
    }
}

#[test]
fn network_policies_admit_only_prometheus_to_the_metrics_ports() -> TestResult {
    let (label, prometheus) = PROMETHEUS_NAMESPACE;
    let mut problems = Vec::new();
    for render in renders()? {
        let policies: Vec<&Value> = render.of_kind("NetworkPolicy").collect();
        if policies.is_empty() {
            problems.push(format!("[{}] renders no NetworkPolicy", render.name));
            continue;
        }
        for policy in &policies {
            let who = format!("[{}] {}", render.name, describe(policy));
            let types = strings(policy, "/spec/policyTypes");
            if types != ["Ingress"] {
                problems.push(format!(
                    "{who}: policyTypes should be [\"Ingress\"] (egress stays open: docs/deploy.md), \
                     is {types:?}"
                ));
            }
            // The gateway's policy may admit every source: checked below to name only
            // gateway pods and, per pod, only the gateway's port.
            let front_door = policy
                .pointer("/spec/podSelector/matchLabels/app.kubernetes.io~1component")
                .and_then(Value::as_str)
                == Some("gateway");
            for (index, rule) in items(policy, "/spec/ingress").iter().enumerate() {
                let from = items(rule, "/from");
                if front_door {
                    if items(rule, "/ports").is_empty() {
                        problems.push(format!("{who}: ingress rule {index} admits every port"));
                    }
                    continue;
                }
                if from.is_empty() {
                    problems.push(format!("{who}: ingress rule {index} admits every source"));
                }
                for peer in from {
                    let only_prometheus = peer.as_object().is_some_and(|p| p.len() == 1)
                        && peer.get("namespaceSelector").is_some_and(|selector| {
                            selector.get("matchExpressions").is_none()
                                && selector
                                    .get("matchLabels")
                                    .and_then(Value::as_object)
                                    .is_some_and(|m| {
                                        m.len() == 1
                                            && m.get(label).and_then(Value::as_str) == Some(prometheus)
                                    })
                        });
                    if !only_prometheus {
                        problems.push(format!(
                            "{who}: ingress rule {index} admits {peer}, not only the namespace \
                             {prometheus:?} (namespaceSelector {label}={prometheus})"
                        ));
                    }
                }
                if items(rule, "/ports").is_empty() {
                    problems.push(format!("{who}: ingress rule {index} admits every port"));
                }
            }
        }
        for (workload, pod) in render.workloads() {
            let who = format!("[{}] {}", render.name, describe(workload));
            let no_labels = serde_json::Map::new();
            let labels = pod_labels(workload).unwrap_or(&no_labels);
            let selecting: Vec<&Value> = policies
                .iter()
                .copied()
                .filter(|p| namespace_of(p) == namespace_of(workload))
                .filter(|p| p.pointer("/spec/podSelector").is_some_and(|s| selects(s, labels)))
                .collect();
            if !selecting
                .iter()
                .any(|p| strings(p, "/spec/policyTypes").contains(&"Ingress"))
            {
                problems.push(format!(
                    "{who}: no NetworkPolicy selects its pods for ingress, so anything may reach them"
                ));
                continue;
            }
            let endpoint = match metrics_endpoint(pod) {
                Some(Ok(endpoint)) => Some(endpoint),
                Some(Err(e)) => {
                    problems.push(format!("{who}: {e}"));
                    continue;
                }
                None => None,
            };
            let mut scraped = false;
            for rule in selecting.iter().flat_map(|p| items(p, "/spec/ingress")) {
                for entry in items(rule, "/ports") {
                    match endpoint {
                        Some((container, port)) if names_port(entry, container, port) => scraped = true,
                        Some((_, port)) => problems.push(format!(
                            "{who}: a NetworkPolicy admits port {entry}, not only the metrics port {port}"
                        )),
                        None => problems.push(format!(
                            "{who}: a NetworkPolicy admits port {entry} of pods that serve no metrics"
                        )),
                    }
                }
            }
            if let Some((_, port)) = endpoint
                && !scraped
            {
                problems.push(format!(
                    "{who}: no NetworkPolicy admits Prometheus (namespace {prometheus:?}) to its \
                     metrics port {port}"
                ));
            }
        }
    }
    finish("network policies", problems)
}

#[test]
fn images_are_pinned_to_a_tag_or_digest() -> TestResult {
    let pinned = |image: &str| {
        if image.contains("@sha256:") {
            return true;
        }
        let last = image.rsplit('/').next().unwrap_or(image);
        matches!(last.split_once(':'), Some((_, tag)) if !tag.is_empty() && tag != "latest")
    };
    let mut problems = Vec::new();
    for render in renders()? {
        for (workload, pod) in render.workloads() {
            for container in containers(pod) {
                let image = text(container, "/image").unwrap_or("");
                if !pinned(image) {
                    problems.push(format!(
                        "[{}] {} container {:?}: image {image:?} has no tag (set it in `images:`)",
                        render.name,
                        describe(workload),
                        name_of_container(container)
                    ));
                }
            }
        }
    }
    finish("images", problems)
}
