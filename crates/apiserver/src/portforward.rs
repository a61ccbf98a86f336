//! `kubectl port-forward` (`pods/portforward`): kubectl 1.32 opens a
//! WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io` and speaks
//! SPDY inside it. Each local connection is a pair of SPDY streams (an
//! error stream, then a data stream, sharing a `requestid`); the data
//! stream becomes one `Connect` session through the pod's node's agent,
//! which dials the pod's port. `kubectl port-forward svc/...` picks a pod
//! of the service itself, so only pods are forwarded here.
//!
//! Bounds: forwarded connections per session (`MAX_CONNECTIONS`), frames
//! queued each way (`FRAMES_AHEAD`), and the SPDY codec's frame limits.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wharf_api::remote::SessionRequest;

use crate::remote::{node_of, normal_close};
use crate::spdy::{Codec, Frame, REFUSED_STREAM};
use crate::App;

/// The subprotocol of SPDY tunnelled in a WebSocket, as kubectl asks it.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Connections forwarded at once in one `kubectl port-forward`.
const MAX_CONNECTIONS: usize = 128;
/// Frames queued towards one connection, and towards the client.
const FRAMES_AHEAD: usize = 64;

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/portforward`.
pub async fn portforward(State(app): State<App>, Path((namespace, pod)): Path<(String, String)>, ws: WebSocketUpgrade) -> Response {
    let node = match node_of(&app, &namespace, &pod).await {
        Ok(node) => node,
        Err(e) => return e.into_response(),
    };
    let target = Target { app, node, namespace, pod };
    ws.protocols([TUNNEL_PROTOCOL]).on_upgrade(move |socket| serve(target, socket))
}

/// The pod whose ports a session forwards.
#[derive(Clone)]
struct Target {
    app: App,
    node: String,
    namespace: String,
    pod: String,
}

/// What a forwarded connection sends the client.
enum Out {
    Data(u32, Vec<u8>),
    /// The stream ends from this side.
    Fin(u32),
}

/// What the client sends a forwarded connection: bytes, or the end of
/// its bytes (a FIN).
type FromClient = Option<Vec<u8>>;

/// One SPDY session: frames in from the client, frames out to it.
struct Session {
    target: Target,
    codec: Codec,
    /// Error streams waiting for their data stream, by `requestid`.
    error_streams: HashMap<String, u32>,
    /// Data streams the client may still send on.
    data_streams: HashMap<u32, mpsc::Sender<FromClient>>,
    connections: JoinSet<()>,
    out: mpsc::Sender<Out>,
}

async fn serve(target: Target, socket: WebSocket) {
    let shutdown = target.app.shutdown.clone();
    let (mut to_client, mut from_client) = socket.split();
    let (out, mut outgoing) = mpsc::channel(FRAMES_AHEAD);
    let mut session = Session {
        target,
        codec: Codec::default(),
        error_streams: HashMap::new(),
        data_streams: HashMap::new(),
        connections: JoinSet::new(),
        out,
    };
    loop {
        let reply = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(out) = outgoing.recv() => vec![match out {
                Out::Data(stream, data) => Codec::data(stream, false, &data),
                Out::Fin(stream) => Codec::data(stream, true, &[]),
            }],
            message = from_client.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match session.receive(&bytes).await {
                    Ok(replies) => replies,
                    Err(e) => {
                        tracing::warn!(error = %e, pod = %session.target.pod, "port-forward session ended on a bad frame");
                        break;
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))) => Vec::new(),
                _ => break,
            },
        };
        for frame in reply {
            if to_client.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
    }
    let _ = to_client.send(normal_close()).await;
}

impl Session {
    /// Takes bytes of the SPDY stream; returns the frames that answer them.
    async fn receive(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, crate::spdy::SpdyError> {
        self.codec.feed(bytes);
        let mut replies = Vec::new();
        while let Some(frame) = self.codec.next_frame()? {
            match frame {
                Frame::SynStream { stream, headers } => replies.push(self.open(stream, &headers)),
                Frame::Data { stream, fin, data } => self.data(stream, fin, data).await,
                // The client gave the connection up: so does its task.
                Frame::RstStream { stream } => drop(self.data_streams.remove(&stream)),
                Frame::Ping { id } => replies.push(Codec::ping(id)),
                Frame::GoAway => self.data_streams.clear(),
                Frame::Ignored => {}
            }
        }
        Ok(replies)
    }

    /// A new stream: an error stream is kept for its pair; a data stream
    /// starts the connection.
    fn open(&mut self, stream: u32, headers: &[(String, String)]) -> Vec<u8> {
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
        let request_id = header("requestid").to_string();
        let port = header("port").parse::<u16>().ok().filter(|p| *p > 0);
        while self.connections.try_join_next().is_some() {}
        // A connection whose pod side ended is gone even if the client never
        // closed its stream.
        self.data_streams.retain(|_, tx| !tx.is_closed());
        match (header("streamtype"), port) {
            ("error", Some(_)) if self.error_streams.len() < MAX_CONNECTIONS => {
                self.error_streams.insert(request_id, stream);
            }
            ("data", Some(port)) if self.connections.len().max(self.data_streams.len()) < MAX_CONNECTIONS => {
                let error_stream = self.error_streams.remove(&request_id);
                let (tx, rx) = mpsc::channel(FRAMES_AHEAD);
                self.data_streams.insert(stream, tx);
                let target = self.target.clone();
                let out = self.out.clone();
                self.connections.spawn(connection(target, port, stream, error_stream, rx, out));
            }
            _ => {
                wharf_limits::reached("port_forward_connections", MAX_CONNECTIONS, "refused a stream");
                return Codec::rst_stream(stream, REFUSED_STREAM);
            }
        }
        self.codec.syn_reply(stream)
    }

    async fn data(&mut self, stream: u32, fin: bool, data: Vec<u8>) {
        let Some(tx) = self.data_streams.get(&stream) else { return };
        let mut delivered = data.is_empty() || tx.send(Some(data)).await.is_ok();
        if fin {
            delivered = delivered && tx.send(None).await.is_ok();
        }
        if fin || !delivered {
            self.data_streams.remove(&stream);
        }
    }
}

/// One forwarded connection: the client's data stream joined to a
/// `Connect` session on the pod's node.
async fn connection(
    target: Target,
    port: u16,
    stream: u32,
    error_stream: Option<u32>,
    mut from_client: mpsc::Receiver<FromClient>,
    out: mpsc::Sender<Out>,
) {
    let request = SessionRequest::Connect { namespace: target.namespace.clone(), pod: target.pod.clone(), port };
    let agent = match target.app.tunnels.open(&target.node, request).await {
        Ok(agent) => agent,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod {}/{}: {e}", target.namespace, target.pod);
            return finish(&out, stream, error_stream, Some(message)).await;
        }
    };
    let (mut to_agent, mut from_agent) = agent.split();
    // Ends only when the client resets the stream; a FIN half-closes.
    let up = async {
        while let Some(piece) = from_client.recv().await {
            let Some(data) = piece else {
                // An empty frame tells the agent the client is done sending.
                let _ = to_agent.send(Message::Binary(Default::default())).await;
                return std::future::pending().await;
            };
            if to_agent.send(Message::Binary(data.into())).await.is_err() {
                break;
            }
        }
        let _ = to_agent.send(normal_close()).await;
    };
    let down = async {
        let mut error = None;
        while let Some(Ok(message)) = from_agent.next().await {
            match message {
                Message::Binary(data) if out.send(Out::Data(stream, data.to_vec())).await.is_err() => break,
                Message::Text(text) => error = Some(text.to_string()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        error
    };
    tokio::select! {
        _ = up => {}
        error = down => finish(&out, stream, error_stream, error).await,
    }
}

/// Ends both streams of a connection, with the error if there was one.
async fn finish(out: &mpsc::Sender<Out>, stream: u32, error_stream: Option<u32>, error: Option<String>) {
    if let Some(errors) = error_stream {
        if let Some(message) = error {
            let _ = out.send(Out::Data(errors, message.into_bytes())).await;
        }
        let _ = out.send(Out::Fin(errors)).await;
    }
    let _ = out.send(Out::Fin(stream)).await;
}
