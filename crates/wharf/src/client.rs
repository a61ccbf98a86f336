//! Kubernetes clients for the in-process controllers and the CLI helpers.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub async fn from_kubeconfig_text(text: &str) -> anyhow::Result<kube::Client> {
    wharf_kube::client::from_kubeconfig_text(text).await.context("building a Kubernetes client from the kubeconfig")
}

/// The kubeconfig a CLI helper uses: `--kubeconfig`, else `$KUBECONFIG`,
/// else the data dir's admin kubeconfig.
pub fn kubeconfig_file(explicit: Option<&Path>, data_dir: &Path) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| crate::up::kubeconfig_path(data_dir))
}

pub async fn from_file(path: &Path) -> anyhow::Result<kube::Client> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    from_kubeconfig_text(&text).await
}
