//! The sidecar's settings: flags with `TROUPE_*` environment fallbacks, and Asya's sidecar
//! variables, so the image can replace Asya's sidecar container unchanged.
//!
//! | Asya variable | Troupe flag |
//! |---|---|
//! | `ASYA_ACTOR_NAME` | `--actor` |
//! | `ASYA_NAMESPACE` | `--namespace` |
//! | `ASYA_TRANSPORT` (`rabbitmq`, `sqs`, ...) | `--transport` |
//! | `ASYA_SOCKET_DIR` | `--socket-dir` |
//! | `ASYA_RABBITMQ_URL` | `--amqp-url` |
//! | `ASYA_SQS_ENDPOINT` | `--sqs-url` |
//! | `ASYA_AWS_REGION` | `--sqs-region` |
//! | `ASYA_RESILIENCY_ACTOR_TIMEOUT` (Go duration) | `--timeout` |
//! | `ASYA_RESILIENCY_POLICIES` (JSON) | `--retry-policies` |
//! | `ASYA_RESILIENCY_RULES` (JSON) | `--retry-rules` |
//! | `ASYA_METRICS_ADDR` (`:8080` or `host:port`) | `--metrics-addr` |
//!
//! An Asya variable and the Troupe setting it maps to (flag or `TROUPE_*` variable) may both
//! be given only with the same value. Any other `ASYA_*` variable is refused by name, except
//! the runtime's own (`ASYA_HANDLER`, `ASYA_LOG_LEVEL`, `ASYA_RUNTIME_CONCURRENCY`), which a
//! shared environment may pass to both containers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use troupe::broker::{Broker, QueueArgs};
use troupe::layers::RetryPolicies;
use troupe::layers::asya_resiliency::{AsyaResiliencyError, retry_policies};
use troupe::layers::state::StateLimits;

use super::state_proxy;

/// `troupe sidecar`: serve one actor's queue with a handler runtime behind a Unix socket.
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// The actor served (its queue is `{prefix}-{namespace}-{actor}`).
    #[arg(long, env = "TROUPE_ACTOR")]
    pub actor: Option<String>,
    /// The queue's namespace and prefix, and the broker.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Folder of the runtime's socket (`asya-runtime.sock`) and its `runtime-ready` file.
    #[arg(long, env = "TROUPE_SOCKET_DIR", default_value = "/var/run/asya")]
    pub socket_dir: PathBuf,
    /// Calls to the runtime at once (1 like Asya; more for runtimes that serve concurrently).
    #[arg(long, env = "TROUPE_RUNTIME_CONCURRENCY", default_value_t = 1)]
    pub runtime_concurrency: usize,
    /// Per-call timeout (cut short by an envelope's `status.deadline_at`).
    #[arg(long, env = "TROUPE_ACTOR_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Named retry policies, Asya's JSON shape (see `troupe_layers::asya_resiliency`).
    #[arg(long, env = "TROUPE_RETRY_POLICIES")]
    pub retry_policies: Option<String>,
    /// Rules picking a policy by error type, Asya's JSON shape.
    #[arg(long, env = "TROUPE_RETRY_RULES")]
    pub retry_rules: Option<String>,
    /// Address of `/metrics`, `/healthz` (liveness) and `/readyz` (readiness).
    #[arg(long, env = "TROUPE_METRICS_ADDR", default_value = "0.0.0.0:8080", value_parser = socket_addr)]
    pub metrics_addr: SocketAddr,
    /// How long to wait for the runtime at start.
    #[arg(long, env = "TROUPE_RUNTIME_READY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub runtime_ready_timeout: Duration,
    /// Exit non-zero (so Kubernetes restarts the pod) once the runtime has taken calls but
    /// answered none (every call and health probe timed out) this long. A runtime that
    /// cannot be reached at all is waited for, however long, with `/readyz` false.
    #[arg(long, env = "TROUPE_RUNTIME_UNRESPONSIVE_LIMIT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub runtime_unresponsive_limit: Duration,
    /// Serve handler state to the runtime: Troupe's API socket (`troupe.sock`, for
    /// `troupe_runtime.state`) in `--state-socket-dir`, over the `--store`.
    #[arg(long, env = "TROUPE_STATE", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub state: bool,
    /// Asya's state mounts (`name:/path:write=buffered|passthrough;...`, or
    /// `ASYA_STATE_PROXY_MOUNTS`): a connector socket `{name}.sock` for each, so handlers
    /// that read and write files under those paths keep working. Implies `--state`.
    #[arg(long, env = "TROUPE_STATE_MOUNTS")]
    pub state_mounts: Option<String>,
    /// Folder of the state sockets (Asya's runtime looks in `/var/run/asya/state`).
    #[arg(long, env = "TROUPE_STATE_SOCKET_DIR", default_value = "/var/run/asya/state")]
    pub state_socket_dir: PathBuf,
    /// The largest state value, in bytes; a larger write is refused (HTTP 413, `EFBIG`).
    #[arg(long, env = "TROUPE_STATE_MAX_VALUE", default_value_t = StateLimits::default().max_value_bytes)]
    pub state_max_value: usize,
    /// The most state keys this actor keeps; a new key past it is refused (HTTP 507).
    #[arg(long, env = "TROUPE_STATE_MAX_KEYS", default_value_t = StateLimits::default().max_keys)]
    pub state_max_keys: usize,
}

/// A setting the sidecar cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No actor name.
    #[error("no actor to serve: pass --actor NAME (or set TROUPE_ACTOR or ASYA_ACTOR_NAME)")]
    MissingActor,
    /// An `ASYA_*` variable this sidecar does not know.
    #[error("{name} is set but this sidecar does not support it; unset it (supported: {supported})")]
    Unknown {
        /// The variable.
        name: String,
        /// What is supported.
        supported: String,
    },
    /// An Asya variable disagrees with the Troupe setting it maps to.
    #[error(
        "{asya}={asya_value:?} conflicts with {ours}={our_value:?}; set one of them, or both to the same value"
    )]
    Conflict {
        /// The Asya variable.
        asya: &'static str,
        /// Its value.
        asya_value: String,
        /// The Troupe flag or variable.
        ours: String,
        /// Its value.
        our_value: String,
    },
    /// A value cannot be read.
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        /// The variable or flag.
        name: &'static str,
        /// What was given.
        value: String,
        /// Why.
        reason: String,
    },
    /// The retry settings are unusable.
    #[error("retry settings: {0}")]
    Retry(#[from] AsyaResiliencyError),
}

/// Accepts Go's `:8080` (all interfaces) as well as `host:port`.
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    SocketAddr::from_str(&full).map_err(|e| format!("expected host:port or :port, got {s:?}: {e}"))
}

/// Settled settings.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The actor.
    pub actor: String,
    /// The rest, Asya variables applied.
    pub args: SidecarArgs,
    /// Retry policies built from the JSON settings.
    pub retry: RetryPolicies,
    /// Asya's state mounts, served as connector sockets.
    pub mounts: Vec<state_proxy::Mount>,
}

/// The runtime's socket, in its socket directory (`ASYA_SOCKET_DIR`).
pub const RUNTIME_SOCKET: &str = "asya-runtime.sock";

impl SidecarConfig {
    /// The runtime's socket.
    pub fn socket(&self) -> PathBuf {
        self.args.socket_dir.join(RUNTIME_SOCKET)
    }

    /// The state sockets to serve (mount names, and Troupe's API), none without state.
    pub fn state_spaces(&self) -> Vec<String> {
        if !self.args.state && self.mounts.is_empty() {
            return Vec::new();
        }
        let mut spaces = vec![state_proxy::API_SOCKET.to_owned()];
        spaces.extend(self.mounts.iter().map(|m| m.name.clone()));
        spaces
    }

    /// What the actor's state may hold.
    pub fn state_limits(&self) -> StateLimits {
        StateLimits {
            max_value_bytes: self.args.state_max_value,
            max_keys: self.args.state_max_keys,
        }
    }
}

const SUPPORTED: [&str; 12] = [
    "ASYA_ACTOR_NAME",
    "ASYA_NAMESPACE",
    "ASYA_TRANSPORT",
    "ASYA_SOCKET_DIR",
    "ASYA_RABBITMQ_URL",
    "ASYA_SQS_ENDPOINT",
    "ASYA_AWS_REGION",
    "ASYA_RESILIENCY_ACTOR_TIMEOUT",
    "ASYA_RESILIENCY_POLICIES",
    "ASYA_RESILIENCY_RULES",
    "ASYA_METRICS_ADDR",
    "ASYA_STATE_PROXY_MOUNTS",
];
const RUNTIME_ONLY: [&str; 3] = ["ASYA_HANDLER", "ASYA_LOG_LEVEL", "ASYA_RUNTIME_CONCURRENCY"];

/// Applies Asya's variables (from `env`) over `args`, as parsed into `matches`.
pub fn resolve(
    mut args: SidecarArgs,
    matches: &ArgMatches,
    env: &[(String, String)],
) -> Result<SidecarConfig, ConfigError> {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for (name, _) in env {
        if name.starts_with("ASYA_")
            && !SUPPORTED.contains(&name.as_str())
            && !RUNTIME_ONLY.contains(&name.as_str())
        {
            return Err(ConfigError::Unknown {
                name: name.clone(),
                supported: SUPPORTED.join(", "),
            });
        }
    }
    // Where the Troupe side was given explicitly, its source (for the conflict message).
    let given = |id: &str, flag: &str, var: &str| match matches.value_source(id) {
        Some(ValueSource::CommandLine) => Some(format!("--{flag}")),
        Some(ValueSource::EnvVariable) => Some(var.to_owned()),
        _ => None,
    };
    macro_rules! apply {
        ($asya:literal, $id:literal, $flag:literal, $var:literal, $field:expr, $parse:expr, $show:expr) => {
            if let Some(raw) = get($asya) {
                let value = ($parse)(raw.as_str()).map_err(|reason: String| ConfigError::Invalid {
                    name: $asya,
                    value: raw.clone(),
                    reason,
                })?;
                if let Some(ours) = given($id, $flag, $var) {
                    if $field != value {
                        return Err(ConfigError::Conflict {
                            asya: $asya,
                            asya_value: raw,
                            ours,
                            our_value: ($show)(&$field),
                        });
                    }
                }
                $field = value;
            }
        };
    }
    let text = |s: &str| Ok::<_, String>(s.to_owned());
    let some_text = |s: &str| Ok::<_, String>(Some(s.to_owned()));
    let show_text = |s: &String| s.clone();
    let show_opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let duration = |s: &str| humantime::parse_duration(s.trim()).map_err(|e| e.to_string());
    let show_duration = |d: &Duration| humantime::format_duration(*d).to_string();
    apply!(
        "ASYA_ACTOR_NAME",
        "actor",
        "actor",
        "TROUPE_ACTOR",
        args.actor,
        some_text,
        show_opt
    );
    apply!(
        "ASYA_NAMESPACE",
        "namespace",
        "namespace",
        "TROUPE_NAMESPACE",
        args.queue.namespace,
        text,
        show_text
    );
    apply!(
        "ASYA_TRANSPORT",
        "transport",
        "transport",
        "TROUPE_TRANSPORT",
        args.queue.transport,
        |s: &str| Broker::from_str(s).map_err(|e| e.to_string()),
        |b: &Broker| b.to_string()
    );
    apply!(
        "ASYA_SOCKET_DIR",
        "socket_dir",
        "socket-dir",
        "TROUPE_SOCKET_DIR",
        args.socket_dir,
        |s: &str| Ok::<_, String>(PathBuf::from(s)),
        |p: &PathBuf| p.display().to_string()
    );
    apply!(
        "ASYA_RABBITMQ_URL",
        "amqp_url",
        "amqp-url",
        "TROUPE_AMQP_URL",
        args.queue.brokers.amqp_url,
        text,
        show_text
    );
    apply!(
        "ASYA_SQS_ENDPOINT",
        "sqs_url",
        "sqs-url",
        "TROUPE_SQS_URL",
        args.queue.brokers.sqs_url,
        some_text,
        show_opt
    );
    apply!(
        "ASYA_AWS_REGION",
        "sqs_region",
        "sqs-region",
        "TROUPE_SQS_REGION",
        args.queue.sqs_region,
        text,
        show_text
    );
    apply!(
        "ASYA_RESILIENCY_ACTOR_TIMEOUT",
        "timeout",
        "timeout",
        "TROUPE_ACTOR_TIMEOUT",
        args.timeout,
        duration,
        show_duration
    );
    apply!(
        "ASYA_RESILIENCY_POLICIES",
        "retry_policies",
        "retry-policies",
        "TROUPE_RETRY_POLICIES",
        args.retry_policies,
        some_text,
        show_opt
    );
    apply!(
        "ASYA_RESILIENCY_RULES",
        "retry_rules",
        "retry-rules",
        "TROUPE_RETRY_RULES",
        args.retry_rules,
        some_text,
        show_opt
    );
    apply!(
        "ASYA_METRICS_ADDR",
        "metrics_addr",
        "metrics-addr",
        "TROUPE_METRICS_ADDR",
        args.metrics_addr,
        socket_addr,
        |a: &SocketAddr| a.to_string()
    );
    apply!(
        "ASYA_STATE_PROXY_MOUNTS",
        "state_mounts",
        "state-mounts",
        "TROUPE_STATE_MOUNTS",
        args.state_mounts,
        some_text,
        show_opt
    );
    let mounts =
        state_proxy::parse_mounts(args.state_mounts.as_deref().unwrap_or_default()).map_err(|reason| {
            ConfigError::Invalid {
                name: "--state-mounts (ASYA_STATE_PROXY_MOUNTS)",
                value: args.state_mounts.clone().unwrap_or_default(),
                reason,
            }
        })?;
    let actor = args
        .actor
        .clone()
        .filter(|a| !a.trim().is_empty())
        .ok_or(ConfigError::MissingActor)?;
    if args.runtime_concurrency == 0 {
        return Err(ConfigError::Invalid {
            name: "--runtime-concurrency",
            value: "0".into(),
            reason: "at least 1 call must be allowed".into(),
        });
    }
    let retry = retry_policies(args.retry_policies.as_deref(), args.retry_rules.as_deref())?;
    Ok(SidecarConfig {
        actor,
        args,
        retry,
        mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SidecarArgs,
    }

    fn resolve_with(argv: &[&str], env: &[(&str, &str)]) -> Result<SidecarConfig, ConfigError> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("sidecar").chain(argv.iter().copied()))
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(cli.args, &matches, &env)
    }

    #[test]
    fn asya_variables_fill_in_the_settings() {
        let c = resolve_with(
            &[],
            &[
                ("ASYA_ACTOR_NAME", "judge"),
                ("ASYA_NAMESPACE", "prod"),
                ("ASYA_TRANSPORT", "rabbitmq"),
                ("ASYA_SOCKET_DIR", "/tmp/sock"),
                ("ASYA_RESILIENCY_ACTOR_TIMEOUT", "1m30s"),
                ("ASYA_METRICS_ADDR", ":9090"),
                ("ASYA_RESILIENCY_POLICIES", r#"{"default": {"maxAttempts": 4}}"#),
                ("ASYA_HANDLER", "app.handler"),
            ],
        )
        .unwrap();
        assert_eq!(c.actor, "judge");
        assert_eq!(c.args.queue.namespace, "prod");
        assert_eq!(c.args.queue.transport, Broker::Amqp);
        assert_eq!(c.socket(), PathBuf::from("/tmp/sock/asya-runtime.sock"));
        assert_eq!(c.args.timeout, Duration::from_secs(90));
        assert_eq!(c.args.metrics_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(
            c.retry
                .policy_for(&troupe::core::HandlerError::new("E", "x"))
                .max_attempts,
            4
        );
    }

    #[test]
    fn unknown_and_conflicting_settings_are_named() {
        let err = resolve_with(&["--actor", "a"], &[("ASYA_GATEWAY_URL", "http://gw")]).unwrap_err();
        assert!(err.to_string().starts_with("ASYA_GATEWAY_URL is set"), "{err}");
        let err = resolve_with(&["--actor", "a"], &[("ASYA_ACTOR_NAME", "b")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("ASYA_ACTOR_NAME=\"b\" conflicts with --actor=\"a\""),
            "{err}"
        );
        resolve_with(&["--actor", "a"], &[("ASYA_ACTOR_NAME", "a")]).expect("the same value twice is fine");
        let err =
            resolve_with(&["--actor", "a"], &[("ASYA_RESILIENCY_ACTOR_TIMEOUT", "forever")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("ASYA_RESILIENCY_ACTOR_TIMEOUT=\"forever\""),
            "{err}"
        );
        let err = resolve_with(&[], &[]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingActor));
        let err = resolve_with(
            &[
                "--actor",
                "a",
                "--retry-rules",
                "[{\"errors\": [\"E\"], \"policy\": \"x\"}]",
            ],
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
    }
}
