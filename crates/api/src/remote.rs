//! Sessions the API server asks a node's agent to run for a client:
//! `kubectl exec` (a command with the pod's view of the cluster) and
//! `kubectl port-forward` (a TCP connection to a pod's port). The API
//! server offers a session over the agent's tunnel (a WebSocket the agent
//! keeps open); the agent answers by opening the session's own WebSocket,
//! which the API server joins to the client's.

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol of tunnels and sessions, and the one
/// `kubectl exec` prefers: binary frames whose first byte is the channel.
pub const CHANNEL_PROTOCOL: &str = "v5.channel.k8s.io";
/// The older channel protocol kubectl also offers (no stdin close).
pub const CHANNEL_PROTOCOL_V4: &str = "v4.channel.k8s.io";

/// Channels of the channel protocols.
pub mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// The command's end, as a `metav1.Status`.
    pub const STATUS: u8 = 3;
    /// Terminal size changes, `{"Width": w, "Height": h}`.
    pub const RESIZE: u8 = 4;
    /// v5: the client closes one of its channels (`[255, channel]`).
    pub const CLOSE: u8 = 255;
}

/// A session the API server offers an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOffer {
    /// Where the agent connects back: `.../sessions/{id}`.
    pub id: String,
    pub request: SessionRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SessionRequest {
    /// Runs `command` as if in the pod; the session speaks `protocol`.
    #[serde(rename_all = "camelCase")]
    Exec {
        namespace: String,
        pod: String,
        container: Option<String>,
        command: Vec<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
        protocol: String,
    },
    /// A TCP connection to the pod's `port`; the session carries its bytes
    /// as binary frames.
    Connect { namespace: String, pod: String, port: u16 },
}

/// The `metav1.Status` that ends an exec on the status channel: success,
/// or a non-zero exit code as kubectl reads it (`reason: NonZeroExitCode`,
/// the code in a cause), or another failure.
pub fn exec_status(exit: Result<i32, String>) -> serde_json::Value {
    match exit {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(message) => serde_json::json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_as_json() {
        let offer = SessionOffer {
            id: "abc".into(),
            request: SessionRequest::Exec {
                namespace: "default".into(),
                pod: "p".into(),
                container: None,
                command: vec!["cat".into(), "/etc/resolv.conf".into()],
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false,
                protocol: CHANNEL_PROTOCOL.into(),
            },
        };
        let text = serde_json::to_string(&offer).unwrap();
        assert!(text.contains(r#""kind":"exec""#), "{text}");
        assert_eq!(serde_json::from_str::<SessionOffer>(&text).unwrap(), offer);
        assert_eq!(exec_status(Ok(3))["details"]["causes"][0]["message"], "3");
        assert_eq!(exec_status(Ok(0))["status"], "Success");
    }
}
