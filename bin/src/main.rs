//! `troupe`: the command-line entry point of the mesh.

#![forbid(unsafe_code)]

mod aggregate;
mod by_hand;
mod demo;
mod gateway;
mod merge_runtime;
mod runtime_bench;
mod sidecar;
mod tail_once;

// The mesh allocates many small, short-lived objects per envelope (JSON nodes, futures);
// mimalloc handles that pattern markedly better than glibc malloc (see benches/).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// Troupe: a routing mesh for async actors.
#[derive(Debug, Parser)]
#[command(name = "troupe", version, about)]
struct Cli {
    /// Threads running the command's tasks (default: one per core). A sidecar is mostly
    /// waiting on sockets: one thread spares it the wake-ups between threads, which on
    /// some virtual machines cost more than the work they hand over.
    #[arg(long, global = true, env = "TROUPE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a realistic multi-actor pipeline in this process on the embedded broker.
    Demo(demo::DemoArgs),
    /// Serve an aggregator: rejoin the slices of fan-outs into one merge per origin.
    Aggregate(aggregate::AggregateArgs),
    /// Serve the pipeline's front door: submit tasks, follow them, stream their events.
    Gateway(gateway::GatewayArgs),
    /// Serve one actor's queue with a handler runtime (e.g. Python) behind a Unix socket.
    Sidecar(sidecar::SidecarArgs),
    /// Publish one envelope to an actor's queue; prints its id.
    Send(by_hand::SendArgs),
    /// Print the envelopes arriving at an actor's queue (e.g. x-sink), one JSON line each.
    Tail(by_hand::TailArgs),
    /// Measure the per-call cost of a running runtime (sidecar -> runtime -> sidecar).
    RuntimeBench(runtime_bench::RuntimeBenchArgs),
}

/// Any command's failure, for the exit message.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    #[error(transparent)]
    Aggregate(#[from] aggregate::AggregateError),
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayCommandError),
    #[error(transparent)]
    Sidecar(#[from] sidecar::SidecarError),
    #[error(transparent)]
    ByHand(#[from] by_hand::ByHandError),
    #[error(transparent)]
    Bench(#[from] runtime_bench::BenchError),
}

fn main() -> std::process::ExitCode {
    // Parsed through `ArgMatches` so the sidecar can tell flags given from defaults.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli, matches)),
        Err(e) => {
            eprintln!("troupe: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, matches: clap::ArgMatches) -> std::process::ExitCode {
    troupe::logging::init("warn");
    let result: Result<(), CommandError> = match cli.command {
        Command::Demo(args) => demo::run(args).await.map_err(Into::into),
        Command::Aggregate(args) => aggregate::run(args).await.map_err(Into::into),
        Command::Gateway(args) => gateway::run(args).await.map_err(Into::into),
        Command::Sidecar(args) => {
            let sub = matches.subcommand_matches("sidecar").cloned().unwrap_or_default();
            sidecar::run(args, &sub).await.map_err(Into::into)
        }
        Command::Send(args) => by_hand::send(args).await.map_err(Into::into),
        Command::Tail(args) => by_hand::tail(args).await.map_err(Into::into),
        Command::RuntimeBench(args) => runtime_bench::run(args).await.map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("troupe: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
