//! The agent's side of `kubectl exec` and `kubectl port-forward`: a tunnel
//! to the API server (a WebSocket over the agent's own API client, so the
//! same credentials and connection path), on which the server offers
//! sessions; for each, the agent connects back and serves it. An exec is
//! refused unless the node allows it (`--allow-exec`).

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wharf_api::remote::{channel, exec_status, SessionOffer, SessionRequest};

use crate::exec::{self, PodView, TerminalSize};
use crate::probe::ProbeUser;

/// What the node allows sessions to do.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    pub node_name: String,
    pub node_ip: std::net::IpAddr,
    /// `--allow-exec`.
    pub allow_exec: bool,
    /// `--exec-user`: commands run as this account when wharf is root.
    pub exec_user: Option<ProbeUser>,
    pub cluster_domain: String,
}

type Socket = tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

#[derive(Debug, thiserror::Error)]
enum RemoteError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Http(#[from] http::Error),
    #[error("the tunnel closed")]
    Closed,
}

const PING: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Keeps a tunnel open through each of `clients` (one per API server)
/// until `token` is cancelled.
pub async fn serve(clients: Vec<kube::Client>, config: RemoteConfig, token: CancellationToken) {
    let config = Arc::new(config);
    futures::future::join_all(clients.iter().map(|client| keep_tunnel(client, &config, &token))).await;
}

/// One tunnel, reconnected with backoff.
async fn keep_tunnel(client: &kube::Client, config: &Arc<RemoteConfig>, token: &CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        let opened = tokio::time::Instant::now();
        match tunnel(client, config, token).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "exec tunnel to the API server failed"),
        }
        if opened.elapsed() > MAX_BACKOFF {
            delay = Duration::from_millis(500);
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

async fn connect(client: &kube::Client, path: String) -> Result<Socket, RemoteError> {
    let request = http::Request::get(path).body(Vec::new())?;
    Ok(client.connect(request).await?.into_stream())
}

async fn tunnel(client: &kube::Client, config: &Arc<RemoteConfig>, token: &CancellationToken) -> Result<(), RemoteError> {
    let mut socket = connect(client, format!("/apis/wharf.dev/v1/nodes/{}/tunnel", config.node_name)).await?;
    let mut ping = tokio::time::interval(PING);
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                let _ = socket.close(None).await;
                return Ok(());
            }
            _ = ping.tick() => socket.send(Message::Ping(Default::default())).await.map_err(|_| RemoteError::Closed)?,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<SessionOffer>(&text) {
                    Ok(offer) => {
                        let (client, config, token) = (client.clone(), config.clone(), token.clone());
                        tokio::spawn(async move {
                            if let Err(e) = session(&client, &config, offer, token).await {
                                tracing::warn!(error = %e, "exec session failed");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable session offer"),
                },
                Some(Ok(_)) => {}
                _ => return Err(RemoteError::Closed),
            },
        }
    }
}

async fn session(client: &kube::Client, config: &RemoteConfig, offer: SessionOffer, token: CancellationToken) -> Result<(), RemoteError> {
    let socket = connect(client, format!("/apis/wharf.dev/v1/nodes/{}/sessions/{}", config.node_name, offer.id)).await?;
    match offer.request {
        SessionRequest::Exec { namespace, pod, container, command, stdin, tty, protocol, .. } => {
            if !config.allow_exec {
                let why = format!("node {} refuses exec: its agent was started without --allow-exec", config.node_name);
                return finish(socket, Err(why)).await;
            }
            let view = match pod_view(client, config, &namespace, &pod, container.as_deref()).await {
                Ok(view) => view,
                Err(e) => return finish(socket, Err(e.to_string())).await,
            };
            run(socket, &command, &view, stdin, tty, protocol == wharf_api::remote::CHANNEL_PROTOCOL, token).await
        }
        SessionRequest::Connect { namespace, pod, port } => {
            let ip = pod_ip(client, config, &namespace, &pod).await?;
            forward(socket, std::net::SocketAddr::new(ip, port), token).await
        }
    }
}

/// The address a pod is reached at: a status IP, else the node's.
async fn pod_ip(client: &kube::Client, config: &RemoteConfig, namespace: &str, pod: &str) -> Result<std::net::IpAddr, RemoteError> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace).get(pod).await?;
    Ok(pod.status.and_then(|s| s.pod_ip).and_then(|ip| ip.parse().ok()).unwrap_or(config.node_ip))
}

/// The pod's view for a command in `container` (the first by default).
async fn pod_view(
    client: &kube::Client,
    config: &RemoteConfig,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<PodView, kube::Error> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace).get(name).await?;
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let chosen = match container {
        Some(c) => containers.iter().find(|k| k.name == c),
        None => containers.first(),
    };
    let dns = crate::podview::cluster_dns_ip(client).await?;
    let mut env = vec![
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOSTNAME".to_string(), name.to_string()),
        ("HOME".to_string(), "/".to_string()),
    ];
    env.extend(crate::podview::service_env(client, namespace).await?);
    // The container's own literal variables come last and win.
    env.extend(chosen.into_iter().flat_map(|c| c.env.iter().flatten()).filter_map(|e| Some((e.name.clone(), e.value.clone()?))));
    Ok(PodView {
        env,
        resolv_conf: crate::podview::resolv_conf(&dns, namespace, &config.cluster_domain),
        workdir: chosen.and_then(|c| c.working_dir.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into()).into(),
        user: config.exec_user,
    })
}

/// Sends the command's end on the status channel and closes.
async fn finish(mut socket: Socket, exit: Result<i32, String>) -> Result<(), RemoteError> {
    let mut frame = vec![channel::STATUS];
    frame.extend(serde_json::to_vec(&exec_status(exit)).unwrap_or_default());
    let _ = socket.send(Message::Binary(frame.into())).await;
    let _ = socket.close(Some(normal_close())).await;
    Ok(())
}

/// kubectl reads a close without a code (1005) as a failed stream.
fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

/// Bytes the command wrote, on their way to the client.
enum Output {
    Data(u8, Vec<u8>),
    Closed,
}

/// Copies one of the command's outputs to `tx` as frames of `channel`.
fn pump(mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static, channel: u8, tx: tokio::sync::mpsc::Sender<Output>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Output::Data(channel, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Output::Closed).await;
    });
}

/// A message from the client, as the socket reads it.
type ClientMessage = Result<Message, tokio_tungstenite::tungstenite::Error>;

/// How long a terminal session waits for the client's size before its
/// command starts in a terminal of unknown size.
const SIZE_WAIT: Duration = Duration::from_secs(1);

/// kubectl sends the terminal's size as soon as the session is up: the
/// command starts in a terminal of that size (waiting `SIZE_WAIT` at most),
/// so it never reads a size a resize replaces a moment later. Any other
/// first message is handed back, to be handled first.
async fn initial_size(socket: &mut Socket) -> (TerminalSize, Option<ClientMessage>) {
    match tokio::time::timeout(SIZE_WAIT, socket.next()).await {
        Ok(Some(Ok(Message::Binary(frame)))) if frame.first() == Some(&channel::RESIZE) => (size_of(&frame[1..]).unwrap_or_default(), None),
        Ok(first) => (TerminalSize::default(), first),
        Err(_) => (TerminalSize::default(), None),
    }
}

/// The message handed back by `initial_size`, then the client's next.
async fn next_message<S>(early: &mut Option<ClientMessage>, from_client: &mut S) -> Option<ClientMessage>
where
    S: futures::Stream<Item = ClientMessage> + Unpin,
{
    match early.take() {
        Some(message) => Some(message),
        None => from_client.next().await,
    }
}

/// A resize message's size (`{"Width":…,"Height":…}`).
fn size_of(json: &[u8]) -> Option<TerminalSize> {
    let size: serde_json::Value = serde_json::from_slice(json).ok()?;
    let dim = |k: &str| size[k].as_u64().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
    Some(TerminalSize { width: dim("Width"), height: dim("Height") })
}

/// Runs the command and carries its streams over the channel protocol
/// until it exits; its exit code ends the session on the status channel.
async fn run(
    mut socket: Socket,
    command: &[String],
    view: &PodView,
    want_stdin: bool,
    tty: bool,
    v5: bool,
    token: CancellationToken,
) -> Result<(), RemoteError> {
    let (size, mut early) = if tty { initial_size(&mut socket).await } else { (TerminalSize::default(), None) };
    let mut started = match exec::start(command, view, tty.then_some(size)) {
        Ok(started) => started,
        Err(e) => return finish(socket, Err(e.to_string())).await,
    };
    let (outputs_tx, mut outputs) = tokio::sync::mpsc::channel::<Output>(16);
    let mut open_outputs = 0;
    let terminal = started.terminal.take();
    let mut stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = if let Some(terminal) = &terminal {
        let reader = std::fs::File::from(terminal.try_clone().map_err(|_| RemoteError::Closed)?);
        let writer = std::fs::File::from(terminal.try_clone().map_err(|_| RemoteError::Closed)?);
        pump(tokio::fs::File::from_std(reader), channel::STDOUT, outputs_tx.clone());
        open_outputs += 1;
        Some(Box::new(tokio::fs::File::from_std(writer)))
    } else {
        if let Some(out) = started.child.stdout.take() {
            pump(out, channel::STDOUT, outputs_tx.clone());
            open_outputs += 1;
        }
        if let Some(err) = started.child.stderr.take() {
            pump(err, channel::STDERR, outputs_tx.clone());
            open_outputs += 1;
        }
        started.child.stdin.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>)
    };
    drop(outputs_tx);
    if !want_stdin {
        stdin = None;
    }
    let (mut to_client, mut from_client) = socket.split();
    let mut exited: Option<i32> = None;
    loop {
        if let Some(code) = exited.filter(|_| open_outputs == 0 || terminal.is_some()) {
            let mut socket = to_client.reunite(from_client).map_err(|_| RemoteError::Closed)?;
            // Drain what a terminal still holds, briefly.
            while let Ok(Some(Output::Data(ch, data))) = tokio::time::timeout(Duration::from_millis(50), outputs.recv()).await {
                let mut frame = vec![ch];
                frame.extend(data);
                let _ = socket.send(Message::Binary(frame.into())).await;
            }
            return finish(socket, Ok(code)).await;
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            status = started.child.wait(), if exited.is_none() => {
                exited = Some(status.ok().and_then(|s| s.code()).unwrap_or(137));
            }
            output = outputs.recv(), if open_outputs > 0 => match output {
                Some(Output::Data(ch, data)) => {
                    let mut frame = vec![ch];
                    frame.extend(data);
                    if to_client.send(Message::Binary(frame.into())).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Output::Closed) | None => open_outputs -= 1,
            },
            message = next_message(&mut early, &mut from_client) => match message {
                Some(Ok(Message::Binary(frame))) => match frame.first().copied() {
                    Some(channel::STDIN) => {
                        if let Some(input) = stdin.as_mut() {
                            if input.write_all(&frame[1..]).await.is_err() || input.flush().await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Some(channel::RESIZE) => {
                        if let (Some(terminal), Some(size)) = (&terminal, size_of(&frame[1..])) {
                            exec::resize(terminal, size);
                        }
                    }
                    Some(channel::CLOSE) if v5 && frame.get(1) == Some(&channel::STDIN) => {
                        // The client's stdin ended: so does the command's.
                        if let Some(mut input) = stdin.take() {
                            let _ = input.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
                // The client went away: the command goes with it.
                None | Some(Err(_)) => return Ok(()),
            },
        }
    }
}

/// Carries a TCP connection to `target` over the session's binary frames;
/// an empty frame from the server means the client is done sending, and a
/// text frame to it is the error that ended the connection.
async fn forward(mut socket: Socket, target: std::net::SocketAddr, token: CancellationToken) -> Result<(), RemoteError> {
    let stream = match tokio::net::TcpStream::connect(target).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = socket.send(Message::Text(format!("dial tcp {target}: {e}").into())).await;
            let _ = socket.close(Some(normal_close())).await;
            return Ok(());
        }
    };
    let (mut read, mut write) = stream.into_split();
    let (mut to_client, mut from_client) = socket.split();
    let up = async {
        while let Some(Ok(message)) = from_client.next().await {
            match message {
                Message::Binary(data) if data.is_empty() => {
                    let _ = write.shutdown().await;
                }
                Message::Binary(data) if write.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.send(Message::Close(Some(normal_close()))).await;
    };
    // The pod's side closing ends the connection; so does the server's.
    tokio::select! {
        _ = token.cancelled() => {}
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}
