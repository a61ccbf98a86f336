//! `wharf server`: an API server and the controllers, on the embedded
//! store or on etcd. With etcd several servers share the cluster; the
//! controllers run on the one that holds the leader lease.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{ServerCommandArgs, StoreKind};
use crate::control;

/// How long a leader's lease on the controllers lasts without renewal.
const LEADER_LEASE: Duration = Duration::from_secs(6);

async fn open_store(args: &ServerCommandArgs) -> anyhow::Result<Arc<dyn wharf_store::Store>> {
    match args.store {
        StoreKind::Embedded => {
            let dir = &args.server.data.data_dir;
            std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
            Ok(Arc::new(wharf_store::EmbeddedStore::open(&dir.join("state.redb")).context("opening the store")?))
        }
        StoreKind::Etcd => open_etcd(&args.etcd_endpoints).await,
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: &[String]) -> anyhow::Result<Arc<dyn wharf_store::Store>> {
    anyhow::ensure!(!endpoints.is_empty(), "--store etcd needs --etcd-endpoints");
    Ok(Arc::new(wharf_store::EtcdStore::connect(endpoints).await.context("connecting to etcd")?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_: &[String]) -> anyhow::Result<Arc<dyn wharf_store::Store>> {
    anyhow::bail!("this wharf was built without etcd support: build with `--features etcd` (needs protoc)")
}

pub async fn run(args: ServerCommandArgs) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    let advertise = args.server.api_listen.ip();
    let control = control::start(&args.server, store.clone(), None, advertise, &args.tls_san).await?;
    let id = format!("{}-{}", control.endpoint, std::process::id());
    let leading = wharf_apiserver::election::campaign(store, "/wharf/leader/controllers".into(), id, LEADER_LEASE);
    let controllers = control::controllers_when_leading(control.client.clone(), &args.server, leading);
    println!(
        "wharf server is up.\n\n  API server:  https://{}\n  Kubeconfig:  {}\n",
        control.endpoint,
        control.kubeconfig.display()
    );
    let server = control.server;
    crate::node::supervise(vec![
        ("API server", tokio::spawn(async move {
            server.await?;
            anyhow::bail!("stopped")
        })),
        ("controllers", tokio::spawn(async move {
            controllers.await?;
            anyhow::bail!("stopped")
        })),
    ])
    .await
}
