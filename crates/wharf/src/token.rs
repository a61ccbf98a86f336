//! `wharf token create`: a bootstrap token, stored as its Secret in
//! `kube-system`, printed for `wharf agent --token`.

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use crate::cli::TokenCreateArgs;

pub async fn create(args: TokenCreateArgs) -> anyhow::Result<String> {
    let client = crate::client::from_file(&crate::client::kubeconfig_file(args.kubeconfig.as_deref(), &args.data.data_dir)).await?;
    let ttl = jiff::SignedDuration::try_from(args.ttl).context("--ttl")?;
    let expires = jiff::Timestamp::now().checked_add(ttl).context("--ttl is too long")?;
    let (token, secret) = wharf_auth::bootstrap::new_token(expires, &args.description);
    let secrets: Api<Secret> = Api::namespaced(client, wharf_auth::bootstrap::NAMESPACE);
    secrets.create(&PostParams::default(), &secret).await.context("storing the bootstrap token")?;
    Ok(token)
}
