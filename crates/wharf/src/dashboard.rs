//! `wharf dashboard`: a one-time login URL for the dashboard, for the
//! kubeconfig's user. The code is in the URL's fragment, which browsers
//! never send to a server.

use anyhow::Context;

use crate::cli::ClientArgs;

pub async fn login_url(args: ClientArgs) -> anyhow::Result<String> {
    let path = crate::client::kubeconfig_file(args.kubeconfig.as_deref(), &args.data.data_dir);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).context("parsing the kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.context("the kubeconfig")?;
    let server = config.cluster_url.to_string();
    let client = crate::client::from_kubeconfig_text(&text).await?;
    let request = http::Request::post("/ui/api/login-codes").body(Vec::new()).context("building the request")?;
    let answer = client.request_text(request).await.context("asking the API server for a login code")?;
    let answer: serde_json::Value = serde_json::from_str(&answer).context("the login code answer")?;
    let code_path = answer["path"].as_str().context("the login code answer has no path")?;
    Ok(format!("{}{code_path}", server.trim_end_matches('/')))
}
