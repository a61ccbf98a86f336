//! Creates objects through the Kubernetes API as fast as a client can:
//! the setup step of the API and endpoints benchmarks.

use clap::{Parser, Subcommand};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

#[derive(Parser)]
struct Cli {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create N ClusterIP services named svc-0 .. svc-N-1 in a namespace.
    Services {
        count: usize,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = kube::Client::try_default().await?;
    match cli.command {
        Command::Services { count, namespace } => {
            let api: Api<Service> = Api::namespaced(client, &namespace);
            let started = std::time::Instant::now();
            stream::iter(0..count)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        let svc: Service = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("app-{i}")}},
                            "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
                        }))?;
                        api.create(&PostParams::default(), &svc).await?;
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(cli.concurrency)
                .try_collect::<()>()
                .await?;
            let secs = started.elapsed().as_secs_f64();
            println!("created {count} services in {secs:.2}s ({:.0}/s)", count as f64 / secs);
        }
    }
    Ok(())
}
