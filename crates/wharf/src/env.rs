//! `wharf env -n NS`: the service variables a kubelet would give a pod of
//! that namespace.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

use crate::cli::ClientArgs;

/// The services a pod of `namespace` sees: its own namespace's, and the
/// `kubernetes` service of `default`.
pub async fn lookup(client: kube::Client, namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut services = Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items;
    if namespace != "default" {
        if let Some(api) = Api::<Service>::namespaced(client, "default").get_opt("kubernetes").await? {
            services.push(api);
        }
    }
    Ok(wharf_api::service_env::namespace_vars(&services, namespace, true))
}

pub async fn print(args: ClientArgs) -> anyhow::Result<()> {
    let path = crate::client::kubeconfig_file(args.kubeconfig.as_deref(), &args.data.data_dir);
    let client = crate::client::from_file(&path).await?;
    for (name, value) in lookup(client, &args.namespace).await? {
        println!("{name}={value}");
    }
    Ok(())
}
