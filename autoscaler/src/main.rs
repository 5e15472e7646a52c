//! `troupe-autoscaler`: scales each AsyncActor's Deployment on its queue depth.
//!
//! - `troupe-autoscaler run`: the controller (in a cluster, or against a kubeconfig);
//! - `troupe-autoscaler crd`: prints the AsyncActor CRD (the YAML under `deploy/`);
//! - `troupe-autoscaler simulate --trace FILE`: replays an arrival trace against the policy
//!   and KEDA's default, writes a plot and prints a table.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::Api;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use troupe::broker::BrokerArgs;
use troupe::http::Probes as HttpProbes;
use troupe_autoscaler::controller::{self, Context, Settings};
use troupe_autoscaler::crd::AsyncActor;
use troupe_autoscaler::metrics::Metrics;
use troupe_autoscaler::probe::Probes;
use troupe_autoscaler::simulate;

#[derive(Debug, Parser)]
#[command(
    name = "troupe-autoscaler",
    version,
    about = "Scales each actor's Deployment 0..N on its queue depth"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the controller.
    Run(Box<RunArgs>),
    /// Prints the AsyncActor CustomResourceDefinition as YAML.
    Crd,
    /// Replays an arrival trace against the policy and KEDA's default.
    Simulate(simulate::SimulateArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch AsyncActors of this namespace only (default: every namespace).
    #[arg(long, env = "TROUPE_AUTOSCALER_NAMESPACE")]
    namespace: Option<String>,
    /// How often to poll an actor at zero replicas; bounds the delay from its first
    /// envelope to the scale-up.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration, env = "TROUPE_IDLE_POLL_INTERVAL")]
    idle_poll_interval: Duration,
    /// Wait after a failed poll (unreachable broker or API server, invalid spec).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "TROUPE_RETRY_AFTER")]
    retry_after: Duration,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "TROUPE_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// This instance in Kubernetes Events (the downward API's pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    #[command(flatten)]
    brokers: BrokerArgs,
}

/// Why the autoscaler stopped.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Serve(#[from] troupe::http::ServeError),
    #[error("cannot write the CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    Simulate(#[from] simulate::SimulateError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    troupe::logging::init("info");
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Crd => crd(),
        Command::Simulate(args) => simulate::main(&args).map_err(Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn crd() -> Result<(), Error> {
    print!("{}", troupe_autoscaler::crd::crd_yaml()?);
    Ok(())
}

fn run(args: RunArgs) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let shutdown = troupe::CancellationToken::new();
        let bound = troupe::http::serve(
            args.metrics_addr,
            Arc::new(registry),
            HttpProbes::default(),
            shutdown.clone(),
        )
        .await?;
        tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
        let reporter = Reporter {
            controller: "troupe-autoscaler".to_owned(),
            instance: args.pod_name.clone(),
        };
        let ctx = Context::new(
            client.clone(),
            Probes::new(args.brokers.config()),
            metrics,
            reporter,
            Settings {
                idle_poll_interval: args.idle_poll_interval,
                retry_after: args.retry_after,
            },
        );
        let api: Api<AsyncActor> = match &args.namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        };
        troupe::signal::cancel_on_signal(shutdown.clone());
        controller::run(api, ctx, shutdown).await;
        Ok(())
    })
}
