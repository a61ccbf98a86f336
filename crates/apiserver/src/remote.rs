//! `kubectl exec` and `kubectl port-forward`: the API server does not run
//! commands or reach pods itself; the pod's node does. Every agent keeps
//! a tunnel open here (`/apis/wharf.dev/v1/nodes/{node}/tunnel`, a
//! WebSocket over its usual API connection); a client's exec is offered to
//! the pod's node through it, the agent opens the session's own WebSocket
//! (`.../sessions/{id}`), and the two are joined frame for frame.
//!
//! Bounds: offers queued per tunnel, sessions waiting for their agent, and
//! how long an agent may take to answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use wharf_api::remote::{self, SessionOffer, SessionRequest};

use crate::error::{ApiError, ApiResult};
use crate::{kind, App};

/// Offers queued for one agent before new sessions are refused.
const OFFERS_PER_TUNNEL: usize = 64;
/// Sessions waiting at once for their agent to connect back.
const MAX_WAITING: usize = 1024;
/// How long an agent may take to connect back for a session.
const AGENT_ANSWER: Duration = Duration::from_secs(10);

/// The connected agents, by node, and the sessions waiting for them.
#[derive(Default)]
pub struct Tunnels {
    nodes: Mutex<HashMap<String, (u64, mpsc::Sender<SessionOffer>)>>,
    /// By session id: the node that must answer, and where its socket goes.
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<WebSocket>)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Tunnels {
    fn register(&self, node: &str) -> (u64, mpsc::Receiver<SessionOffer>) {
        let (tx, rx) = mpsc::channel(OFFERS_PER_TUNNEL);
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_string(), (generation, tx));
        (generation, rx)
    }

    /// Forgets a tunnel, unless a newer one of the same node replaced it.
    fn unregister(&self, node: &str, generation: u64) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if nodes.get(node).is_some_and(|(g, _)| *g == generation) {
            nodes.remove(node);
        }
    }

    /// Offers `request` to `node`'s agent and waits for its session.
    pub(crate) async fn open(&self, node: &str, request: SessionRequest) -> ApiResult<WebSocket> {
        let unavailable = |why: String| ApiError::Internal(format!("node {node:?}: {why}"));
        let offers = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(node).map(|(_, tx)| tx.clone());
        let offers = offers.ok_or_else(|| unavailable("its agent is not connected to this API server".into()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let (answer, answered) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.len() >= MAX_WAITING {
                wharf_limits::reached("remote_sessions_waiting", MAX_WAITING, "refused a session");
                return Err(ApiError::TooManyRequests);
            }
            waiting.insert(id.clone(), (node.to_string(), answer));
        }
        let offered = offers.try_send(SessionOffer { id: id.clone(), request });
        let socket = match offered {
            Ok(()) => tokio::time::timeout(AGENT_ANSWER, answered).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        socket.ok_or_else(|| unavailable("its agent did not take the session".into()))
    }

    /// Hands `socket` to session `id`, if it is one offered to `node` (a
    /// node cannot take over another node's sessions).
    fn answer(&self, node: &str, id: &str, socket: WebSocket) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.get(id).is_some_and(|(for_node, _)| for_node == node) {
            if let Some((_, answer)) = waiting.remove(id) {
                let _ = answer.send(socket);
            }
        }
    }
}

/// An agent's tunnel: session offers go down it as JSON text frames.
pub async fn tunnel(State(app): State<App>, Path(node): Path<String>, ws: WebSocketUpgrade) -> Response {
    ws.protocols([remote::CHANNEL_PROTOCOL]).on_upgrade(move |socket| serve_tunnel(app, node, socket))
}

async fn serve_tunnel(app: App, node: String, socket: WebSocket) {
    let (generation, mut offers) = app.tunnels.register(&node);
    tracing::info!(node = %node, "agent tunnel connected");
    let (mut to_agent, mut from_agent) = socket.split();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            offer = offers.recv() => {
                let Some(offer) = offer else { break };
                let Ok(text) = serde_json::to_string(&offer) else { continue };
                if to_agent.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            // The agent only pings; anything else, or nothing, ends the tunnel.
            message = from_agent.next() => match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => break,
            },
        }
    }
    app.tunnels.unregister(&node, generation);
    tracing::info!(node = %node, "agent tunnel closed");
}

/// An agent connecting back for session `id`.
pub async fn session(State(app): State<App>, Path((node, id)): Path<(String, String)>, ws: WebSocketUpgrade) -> Response {
    ws.protocols([remote::CHANNEL_PROTOCOL]).on_upgrade(move |socket| async move { app.tunnels.answer(&node, &id, socket) })
}

/// `command=a&command=b&stdin=true&...`: repeated keys kept, in order.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn flag(pairs: &[(String, String)], key: &str) -> bool {
    pairs.iter().any(|(k, v)| k == key && crate::request::parse_bool(v) == Some(true))
}

/// The node a pod is bound to.
pub(crate) async fn node_of(app: &App, namespace: &str, pod: &str) -> ApiResult<String> {
    let obj = app.registry.get(&kind::POD, namespace, pod).await?;
    obj["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(String::from)
        .ok_or_else(|| ApiError::BadRequest(format!("pod {pod} is not bound to a node")))
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec` over WebSocket.
pub async fn exec(
    State(app): State<App>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let pairs = query_pairs(raw.as_deref());
    let command: Vec<String> = pairs.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if command.is_empty() {
        return ApiError::BadRequest("you must specify at least 1 command".into()).into_response();
    }
    let node = match node_of(&app, &namespace, &pod).await {
        Ok(node) => node,
        Err(e) => return e.into_response(),
    };
    let container = pairs.iter().find(|(k, _)| k == "container").map(|(_, v)| v.clone()).filter(|c| !c.is_empty());
    let (stdin, stdout, stderr, tty) = (flag(&pairs, "stdin"), flag(&pairs, "stdout"), flag(&pairs, "stderr"), flag(&pairs, "tty"));
    let ws = ws.protocols([remote::CHANNEL_PROTOCOL, remote::CHANNEL_PROTOCOL_V4]);
    let protocol = ws.selected_protocol().and_then(|p| p.to_str().ok()).unwrap_or(remote::CHANNEL_PROTOCOL_V4).to_string();
    let request = SessionRequest::Exec { namespace, pod, container, command, stdin, stdout, stderr, tty, protocol };
    ws.on_upgrade(move |client| join(app, node, request, client))
}

/// Joins the client's socket to the agent's session, frame for frame.
async fn join(app: App, node: String, request: SessionRequest, mut client: WebSocket) {
    let agent = match app.tunnels.open(&node, request).await {
        Ok(agent) => agent,
        Err(e) => {
            let mut frame = vec![remote::channel::STATUS];
            frame.extend(serde_json::to_vec(&remote::exec_status(Err(e.to_string()))).unwrap_or_default());
            let _ = client.send(Message::Binary(frame.into())).await;
            let _ = client.send(normal_close()).await;
            return;
        }
    };
    relay(client, agent, app.shutdown.clone()).await;
}

async fn relay(client: WebSocket, agent: WebSocket, shutdown: tokio_util::sync::CancellationToken) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let up = async {
        while let Some(Ok(message)) = client_rx.next().await {
            let done = matches!(message, Message::Close(_));
            if agent_tx.send(message).await.is_err() || done {
                break;
            }
        }
        let _ = agent_tx.close().await;
    };
    let down = async {
        while let Some(Ok(message)) = agent_rx.next().await {
            if matches!(message, Message::Close(_)) || client_tx.send(message).await.is_err() {
                break;
            }
        }
        let _ = client_tx.send(normal_close()).await;
    };
    // The session ends when the agent's side does (the command exited);
    // a client that goes away ends it too.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = down => {}
        _ = async { up.await; std::future::pending::<()>().await } => {}
    }
}

/// kubectl reads a close without a code (1005) as a failed stream.
pub(crate) fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() }))
}

/// The shared registry of tunnels an `App` carries.
pub fn tunnels() -> Arc<Tunnels> {
    Arc::new(Tunnels::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_keys_are_kept_in_order() {
        let pairs = query_pairs(Some("command=sh&command=-c&command=exit%203&stdin=true&tty=1&stdout=false"));
        let command: Vec<&str> = pairs.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.as_str()).collect();
        assert_eq!(command, ["sh", "-c", "exit 3"]);
        assert!(flag(&pairs, "stdin") && flag(&pairs, "tty") && !flag(&pairs, "stdout") && !flag(&pairs, "stderr"));
    }
}
