//! Files the commands write: the data dir (owner only), and the addresses
//! a process serves, as JSON for scripts and tests.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Creates `dir` (and its parents) readable by its owner only, and
/// tightens it if it exists: it holds keys and tokens.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("restricting {}", dir.display()))
}

/// Where a running process can be reached.
#[derive(Default, serde::Serialize)]
pub struct Addresses {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

impl Addresses {
    /// Writes them to `path`, if given, atomically.
    pub fn write(&self, path: Option<&Path>) -> anyhow::Result<()> {
        let Some(path) = path else { return Ok(()) };
        let text = serde_json::to_string_pretty(self)?;
        wharf_apiserver::pki::write_private(path, &text).with_context(|| format!("--addresses-file {}", path.display()))
    }
}

/// `wharf kubeconfig`: the admin kubeconfig of a data dir, or, with
/// `--user`, one for that user with a fresh certificate from the data
/// dir's CA (same server, same CA).
pub fn kubeconfig(args: &crate::cli::KubeconfigArgs) -> anyhow::Result<String> {
    let data_dir = &args.data.data_dir;
    let path = crate::control::kubeconfig_path(data_dir);
    let admin = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}; start `wharf up --data-dir {}` first", path.display(), data_dir.display()))?;
    let Some(user) = &args.user else { return Ok(admin) };
    let server =
        admin.lines().find_map(|l| l.trim().strip_prefix("server: ")).with_context(|| format!("{} names no server", path.display()))?;
    let pki = data_dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).with_context(|| format!("reading {}", pki.join("ca.crt").display()))?;
    let (cert, key) = wharf_apiserver::pki::client_certificate(&pki, user, args.group.as_deref(), args.expires)
        .with_context(|| format!("signing a certificate with the CA in {}", pki.display()))?;
    Ok(wharf_apiserver::pki::certificate_kubeconfig(&ca, server, user, &cert, &key))
}
