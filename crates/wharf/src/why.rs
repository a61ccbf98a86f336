//! `wharf why svc/NAME` and `wharf why pod/NAME`: the chain report of
//! `wharf_why`, printed; whether every chain asked about is whole.

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};

use crate::cli::WhyArgs;

/// The services of `namespace` whose selector picks `pod`.
async fn services_of(client: &kube::Client, namespace: &str, pod: &str) -> anyhow::Result<Vec<String>> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace).get(pod).await.with_context(|| format!("pod {pod}"))?;
    let labels = pod.metadata.labels.unwrap_or_default();
    let services = Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items;
    let selects = |s: &Service| {
        let selector = s.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    Ok(services.iter().filter(|s| selects(s)).filter_map(|s| s.metadata.name.clone()).collect())
}

pub async fn run(args: WhyArgs) -> anyhow::Result<bool> {
    let client =
        crate::client::from_file(&crate::client::kubeconfig_file(args.client.kubeconfig.as_deref(), &args.client.data.data_dir)).await?;
    let namespace = &args.client.namespace;
    let services = match args.target.split_once('/') {
        Some(("svc" | "service" | "services", name)) => vec![name.to_string()],
        Some(("pod" | "pods", name)) => {
            let services = services_of(&client, namespace, name).await?;
            if services.is_empty() {
                println!("pod {namespace}/{name} is selected by no service: give a service a selector matching its labels");
                return Ok(false);
            }
            services
        }
        _ => anyhow::bail!("{:?}: expected svc/NAME or pod/NAME", args.target),
    };
    let mut whole = true;
    for service in services {
        let inputs = wharf_why::fetch::gather(&client, namespace, &service, &args.client.cluster_domain, args.dns)
            .await
            .with_context(|| format!("service {namespace}/{service}"))?;
        let report = wharf_why::explain(&inputs);
        print!("{}", report.text);
        whole &= report.whole;
    }
    Ok(whole)
}
