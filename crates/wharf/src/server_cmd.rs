//! `wharf server`: an API server and the controllers, on the embedded
//! store or on etcd. With etcd several servers share the cluster; the
//! controllers run on the one that holds the leader lease.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use wharf_store::{Measured, StoreMetrics};

use crate::cli::{ServerCommandArgs, StoreKind};
use crate::control;
use crate::lifecycle::Lifecycle;

/// How long a leader's lease on the controllers lasts without renewal.
const LEADER_LEASE: Duration = Duration::from_secs(6);

async fn open_store(args: &ServerCommandArgs, metrics: StoreMetrics) -> anyhow::Result<Arc<dyn wharf_store::Store>> {
    match args.store {
        StoreKind::Embedded => {
            let dir = &args.server.data.data_dir;
            crate::files::private_dir(dir)?;
            let store = wharf_store::EmbeddedStore::open_with(
                &dir.join("state.redb"),
                metrics.clone(),
                wharf_store::WatchHistory::events(args.server.watch_history),
            )
            .context("opening the store")?;
            Ok(Arc::new(Measured::new(store, metrics)))
        }
        StoreKind::Etcd => {
            crate::files::private_dir(&args.server.data.data_dir)?;
            Ok(Arc::new(Measured::new(open_etcd(args).await?, metrics)))
        }
    }
}

fn read(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

/// `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile`, when given.
fn etcd_tls(args: &ServerCommandArgs) -> anyhow::Result<Option<wharf_store::EtcdTls>> {
    let Some(ca) = &args.etcd_cafile else { return Ok(None) };
    let client = match (&args.etcd_certfile, &args.etcd_keyfile) {
        (Some(cert), Some(key)) => Some((read("--etcd-certfile", cert)?, read("--etcd-keyfile", key)?)),
        _ => None,
    };
    Ok(Some(wharf_store::EtcdTls { ca_pem: read("--etcd-cafile", ca)?, client }))
}

/// `--etcd-user` and the password in `--etcd-password-file`, when given.
fn etcd_credentials(args: &ServerCommandArgs) -> anyhow::Result<Option<wharf_store::EtcdCredentials>> {
    let (Some(user), Some(file)) = (&args.etcd_user, &args.etcd_password_file) else { return Ok(None) };
    let password = read("--etcd-password-file", file)?.trim_end_matches(['\n', '\r']).to_string();
    Ok(Some(wharf_store::EtcdCredentials { user: user.clone(), password }))
}

async fn open_etcd(args: &ServerCommandArgs) -> anyhow::Result<wharf_store::EtcdStore> {
    anyhow::ensure!(!args.etcd_endpoints.is_empty(), "--store etcd needs --etcd-endpoints");
    let tls = etcd_tls(args)?;
    wharf_store::EtcdStore::connect(&args.etcd_endpoints, tls.as_ref(), etcd_credentials(args)?).await.context("connecting to etcd")
}

pub async fn run(args: ServerCommandArgs) -> anyhow::Result<()> {
    let mut life = Lifecycle::new();
    let mut registry = Registry::default();
    let store_metrics = StoreMetrics::default();
    store_metrics.register(&mut registry);
    let store = open_store(&args, store_metrics).await?;
    let advertise = args.server.api_listen.ip();
    let site = control::Site {
        default_node: None,
        advertise_fallback: advertise,
        extra_sans: &args.tls_san,
        // The server has no DNS of its own: the dashboard asks kube-dns.
        cluster_domain: crate::cli::DEFAULT_CLUSTER_DOMAIN,
        dns: None,
    };
    let control = control::start(&args.server, store.clone(), site, &mut life, &mut registry).await?;
    let id = wharf_apiserver::election::holder_identity();
    let leading = wharf_apiserver::election::campaign(
        store,
        wharf_apiserver::election::lease_key("wharf-controllers"),
        id,
        LEADER_LEASE,
        life.token.clone(),
    );
    let controller_metrics = wharf_kube::ControllerMetrics::default();
    controller_metrics.register(&mut registry);
    let controllers = control::controllers_when_leading(
        control.controllers_client().await?,
        args.server.clone(),
        controller_metrics,
        leading,
        life.token.clone(),
    );
    life.spawn("controllers", async move {
        controllers.await;
        Ok(())
    });
    let addresses = crate::files::Addresses {
        api: Some(format!("https://{}", control.endpoint)),
        kubeconfig: Some(control.kubeconfig.clone()),
        ..Default::default()
    };
    addresses.write(args.process.addresses_file.as_deref())?;
    println!("wharf server is up.\n\n  API server:  https://{}\n  Kubeconfig:  {}\n", control.endpoint, control.kubeconfig.display());
    drop(registry);
    life.run(args.process.shutdown_grace).await
}
