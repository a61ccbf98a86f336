//! `wharf env -n NS`: the service variables a kubelet would give a pod of
//! that namespace.

use crate::cli::ClientArgs;

pub async fn print(args: ClientArgs) -> anyhow::Result<()> {
    let path = crate::client::kubeconfig_file(args.kubeconfig.as_deref(), &args.data.data_dir);
    let client = crate::client::from_file(&path).await?;
    for (name, value) in wharf_agent::podview::service_env(&client, &args.namespace).await? {
        println!("{name}={value}");
    }
    Ok(())
}
