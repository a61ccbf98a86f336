//! The `wharf` command: parses flags and wires the parts together.

mod agent_cmd;
mod cli;
mod client;
mod control;
mod dashboard;
mod env;
mod files;
mod lifecycle;
mod metrics;
mod node;
mod pod_view;
mod server_cmd;
mod status;
mod token;
mod up;
mod why;

use clap::Parser;

/// jemalloc: at 100,000 endpoints an idle `wharf up` holds 16 MiB (12%)
/// less than with mimalloc, for the same CPU; glibc's per-thread arenas
/// kept several times the live size (docs/BENCHMARKS.md, ninth round).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`malloc_conf`, by its name in the prefixed build):
/// background threads give freed pages back to the system a second after
/// they were last used, so an idle server returns what a burst took
/// without an allocation to prompt it. Small objects live in slabs of
/// one page, not up to seven: a slab that keeps a few long-lived objects
/// after a burst freed the rest holds one page, not seven (3.5 MiB less at
/// 100,000 endpoints, for no measurable CPU; docs/BENCHMARKS.md, twelfth
/// round).
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 80] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:1-4096:1\0";

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn init_logging(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    init_logging(cli.log_format);
    match wharf_limits::raise_open_files() {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    match cli.command {
        cli::Command::Up(args) => runtime()?.block_on(up::run(args)),
        cli::Command::Server(args) => runtime()?.block_on(server_cmd::run(args)),
        cli::Command::Agent(args) => runtime()?.block_on(agent_cmd::run(args)),
        cli::Command::Env(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(env::print(args))
        }
        cli::Command::Status(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(status::print(args.client, args.node_ip))
        }
        cli::Command::ResolvConf(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(pod_view::print_resolv_conf(args))
        }
        cli::Command::Exec(args) => pod_view::exec(args),
        cli::Command::Why(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let whole = runtime.block_on(why::run(args))?;
            drop(runtime);
            std::process::exit(if whole { 0 } else { 1 })
        }
        cli::Command::Dashboard(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            println!("{}", runtime.block_on(dashboard::login_url(args))?);
            Ok(())
        }
        cli::Command::Token(cli::TokenCommand::Create(args)) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            println!("{}", runtime.block_on(token::create(args))?);
            Ok(())
        }
        cli::Command::Kubeconfig(args) => {
            print!("{}", files::kubeconfig(&args)?);
            Ok(())
        }
    }
}
