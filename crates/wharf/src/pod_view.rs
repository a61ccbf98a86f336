//! What a pod of a namespace sees: its resolv.conf and service variables;
//! `wharf exec` runs a program with both.

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context};

use crate::cli::{ClientArgs, ExecArgs};

async fn cluster_dns_ip(client: &kube::Client) -> anyhow::Result<String> {
    wharf_agent::podview::cluster_dns_ip(client).await.context("reading service kube-system/kube-dns")
}

async fn client(args: &ClientArgs) -> anyhow::Result<kube::Client> {
    crate::client::from_file(&crate::client::kubeconfig_file(args.kubeconfig.as_deref(), &args.data.data_dir)).await
}

pub async fn print_resolv_conf(args: ClientArgs) -> anyhow::Result<()> {
    let client = client(&args).await?;
    print!("{}", wharf_agent::podview::resolv_conf(&cluster_dns_ip(&client).await?, &args.namespace, &args.cluster_domain));
    Ok(())
}

/// Gathers the pod's view, then replaces this process with the command
/// in a private mount namespace whose /etc/resolv.conf is the pod's.
pub fn exec(args: ExecArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (resolv, env) = runtime.block_on(async {
        let client = client(&args.client).await?;
        let dns = cluster_dns_ip(&client).await?;
        let env = wharf_agent::podview::service_env(&client, &args.client.namespace).await?;
        anyhow::Ok((wharf_agent::podview::resolv_conf(&dns, &args.client.namespace, &args.client.cluster_domain), env))
    })?;
    drop(runtime);
    enter_mount_namespace(&resolv)?;
    let (program, rest) = args.command.split_first().context("no command given")?;
    let err = std::process::Command::new(program).args(rest).envs(env).exec();
    bail!("cannot run {program}: {err}")
}

fn enter_mount_namespace(resolv: &str) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    use std::io::Write;
    // A random name, created exclusively and readable by its owner only:
    // nothing predictable in /tmp for another user to plant first.
    let mut temp = tempfile::Builder::new().prefix("wharf-resolv-").tempfile().context("creating a temporary resolv.conf")?;
    temp.write_all(resolv.as_bytes()).context("writing the temporary resolv.conf")?;
    std::fs::set_permissions(temp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).context("making resolv.conf readable")?;
    let file = temp.path().to_path_buf();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("wharf exec needs root (CAP_SYS_ADMIN) to give the command its own /etc/resolv.conf")?;
    // Keep the new mounts out of the host's mount namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).context("making / private")?;
    mount(Some(&file), "/etc/resolv.conf", None::<&str>, MsFlags::MS_BIND, None::<&str>).context("bind-mounting resolv.conf")?;
    // The mount holds the file; its name is no longer needed.
    drop(temp);
    Ok(())
}
