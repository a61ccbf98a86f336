//! Which data plane carries the model: userspace listeners or nftables
//! rules (`--proxy-mode`), behind one interface for the proxy's loop.

use std::time::Duration;

use wharf_api::ipfamily::IpFamily;
use wharf_api::node_status::EndpointTraffic;

use crate::claims::{Applied, Owner};
use crate::dataplane::Dataplane;
use crate::model::ServicePort;
use crate::nftables::Nftables;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables where it works, else userspace.
    Auto,
    Nftables,
    #[default]
    Userspace,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ProxyMode::Auto),
            "nftables" => Ok(ProxyMode::Nftables),
            "userspace" => Ok(ProxyMode::Userspace),
            other => Err(format!("{other:?}: expected auto, nftables or userspace")),
        }
    }
}

// One per proxy: the size of the smaller variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Forwarding {
    Userspace(Dataplane),
    Kernel(Nftables),
}

impl Forwarding {
    /// The data plane `mode` asks for, and why it was chosen; `Err` when
    /// nftables was asked for and cannot be used.
    /// `families`: the families of the cluster's service ranges, each of
    /// which gets a table in nftables mode.
    pub fn choose(
        mode: ProxyMode,
        node: &str,
        families: Vec<IpFamily>,
        drain: Duration,
        userspace: Dataplane,
    ) -> std::io::Result<(Self, String)> {
        match mode {
            ProxyMode::Userspace => Ok((Forwarding::Userspace(userspace), "--proxy-mode userspace".into())),
            ProxyMode::Nftables => match Nftables::start(node.to_string(), families, drain) {
                Ok(kernel) => Ok((Forwarding::Kernel(kernel), "--proxy-mode nftables".into())),
                Err(e) => Err(std::io::Error::other(format!("--proxy-mode nftables: {e}"))),
            },
            ProxyMode::Auto => match Nftables::start(node.to_string(), families, drain) {
                Ok(kernel) => Ok((Forwarding::Kernel(kernel), "--proxy-mode auto: nftables works here".into())),
                Err(e) => Ok((Forwarding::Userspace(userspace), format!("--proxy-mode auto: nftables cannot be used ({e})"))),
            },
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Forwarding::Userspace(_) => "userspace",
            Forwarding::Kernel(_) => "nftables",
        }
    }

    pub fn apply(&mut self, owner: Owner, ports: &[ServicePort]) -> Applied {
        match self {
            Forwarding::Userspace(d) => d.apply(owner, ports),
            Forwarding::Kernel(k) => k.apply(owner, ports),
        }
    }

    /// Makes the changes applied since the last commit take effect (the
    /// userspace plane applies each at once).
    pub fn commit(&mut self) {
        if let Forwarding::Kernel(k) = self {
            k.commit();
        }
    }

    /// Timed work of the data plane (the kernel plane's drain deadlines).
    pub fn tick(&mut self) {
        if let Forwarding::Kernel(k) = self {
            k.expire_drains();
        }
    }

    pub fn service_ports(&self) -> usize {
        match self {
            Forwarding::Userspace(d) => d.service_ports(),
            Forwarding::Kernel(k) => k.service_ports(),
        }
    }

    /// Frontends served: listening sockets, or map elements.
    pub fn frontends(&self) -> usize {
        match self {
            Forwarding::Userspace(d) => d.listening(),
            Forwarding::Kernel(k) => k.frontends(),
        }
    }

    /// Traffic per endpoint (the kernel's path counts none).
    pub fn traffic(&self) -> Vec<EndpointTraffic> {
        match self {
            Forwarding::Userspace(d) => d.traffic(),
            Forwarding::Kernel(_) => Vec::new(),
        }
    }

    /// Stops taking new traffic: listeners close, or the table goes.
    pub fn stop(&mut self) {
        match self {
            Forwarding::Userspace(d) => d.stop_listening(),
            Forwarding::Kernel(k) => k.stop(),
        }
    }
}
