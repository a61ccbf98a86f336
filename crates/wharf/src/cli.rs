//! Command-line flags. Every default makes one machine work without root
//! networking (see DESIGN.md).

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use wharf_api::ipfamily::{NodeIps, ServiceCidrs};

#[derive(Parser)]
#[command(name = "wharf", version, about = "Kubernetes Services, cluster IPs, DNS and the service proxy, in one program")]
pub struct Cli {
    /// Log lines as text or as JSON objects (the level comes from RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a long-running command runs and stops.
#[derive(Args, Clone)]
pub struct ProcessArgs {
    /// On SIGTERM/SIGINT, how long open connections and requests may take
    /// to finish before the process exits.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Once up, write the addresses this process serves as JSON to this
    /// file (for scripts and tests).
    #[arg(long)]
    pub addresses_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start everything on this machine with embedded defaults.
    Up(UpArgs),
    /// Run an API server and the cluster's controllers (several may share
    /// one etcd).
    Server(ServerCommandArgs),
    /// Run a node: its agent, cluster DNS and service proxy, talking to
    /// the API servers.
    Agent(AgentArgs),
    /// Print the admin kubeconfig of a data dir, or with `--user` one with a
    /// fresh client certificate for that user.
    Kubeconfig(KubeconfigArgs),
    /// Bootstrap tokens, with which new nodes join (`wharf agent --token`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Walk a service's chain (selector, pods, readiness, ports, slices,
    /// frontends, DNS) and name the first broken link; exit 1 if there is one.
    Why(WhyArgs),
    /// Print a one-time login URL for the dashboard (served under /ui/ on
    /// the API port), for the kubeconfig's user.
    Dashboard(ClientArgs),
    /// Print the service environment variables a pod of a namespace gets.
    Env(ClientArgs),
    /// Print the resolv.conf a pod of a namespace gets.
    ResolvConf(ClientArgs),
    /// Print the LoadBalancer and NodePort services and the URLs to open.
    Status(StatusArgs),
    /// Run a command as if in a pod of a namespace: that pod's
    /// /etc/resolv.conf (in a private mount namespace; needs root) and its
    /// service environment variables.
    Exec(ExecArgs),
}

#[derive(Args)]
pub struct WhyArgs {
    /// `svc/NAME`, or `pod/NAME` for every service that selects the pod.
    pub target: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The cluster DNS to ask (default: the kube-dns service's address).
    #[arg(long)]
    pub dns: Option<SocketAddr>,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it (`<id>.<secret>`).
    Create(TokenCreateArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Kubeconfig to use (default: $KUBECONFIG, then the data dir's).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How long the token can be used to join.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Why the token exists, kept in its Secret.
    #[arg(long, default_value = "joins a node with wharf agent --token")]
    pub description: String,
}

#[derive(Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// The user the certificate names (its CN); what it may do is up to
    /// RBAC bindings.
    #[arg(long)]
    pub user: Option<String>,
    /// The group the certificate names (its O). One: rcgen writes each
    /// subject attribute once; more groups come from bindings or a token.
    #[arg(long, requires = "user")]
    pub group: Option<String>,
    /// How long the certificate is valid.
    #[arg(long, default_value = "720h", value_parser = parse_duration, requires = "user")]
    pub expires: Duration,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The node IP node ports are on.
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: String,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Kubeconfig to use (default: $KUBECONFIG, then the data dir's).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace (of the pod, or of the service asked about).
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// DNS domain of the cluster.
    #[arg(long, default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}

/// The DNS domain of a cluster unless told otherwise, as in Kubernetes.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// 127/8 routes to loopback with no setup; the IPv6 range is a ULA next
/// to it, made local on `lo` where wharf may add the route.
pub const DEFAULT_SERVICE_CIDRS: &str = "127.96.0.0/12,fd77:6861:7266:96::/108";

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".wharf")
}

fn default_agent_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".wharf-agent")
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wharf-node".into())
}

#[derive(Args, Clone)]
pub struct DataDirArgs {
    /// Where state, certificates and the kubeconfig live.
    #[arg(long, default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
}

/// What an API server needs.
#[derive(Args, Clone)]
pub struct ServerArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Address of the Kubernetes API (HTTPS). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub api_listen: SocketAddr,
    /// Ranges cluster IPs come from: one, or an IPv4 and an IPv6 one
    /// (dual stack; the first is the primary). The primary's first address
    /// is the `kubernetes` service, its tenth the cluster DNS.
    #[arg(long, default_value = DEFAULT_SERVICE_CIDRS)]
    pub service_cidr: ServiceCidrs,
    /// Range node ports come from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: RangeInclusive<u16>,
    /// Addresses for LoadBalancer services (written to
    /// status.loadBalancer.ingress).
    #[arg(long, default_value = "127.240.0.0/16")]
    pub lb_pool: Ipv4Net,
    /// A node without a heartbeat for this long is marked NotReady.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// Non-mutating API requests served at once (watches excepted); more
    /// are answered 429 with Retry-After, as kube-apiserver does.
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// Mutating API requests served at once.
    #[arg(long, default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// API connections open at once; more are closed at accept.
    #[arg(long, default_value_t = 4096)]
    pub api_max_connections: usize,
    /// Events the embedded store keeps, at most, for watches that fall
    /// behind; of these, those older than 75 s are dropped beyond the last
    /// 1,000. A watch further behind gets 410 Gone and its client relists.
    #[arg(long, default_value_t = wharf_store::DEFAULT_WATCH_HISTORY)]
    pub watch_history: usize,
    /// How often a watch that allows bookmarks gets a BOOKMARK with the
    /// latest resourceVersion it has seen (kube-apiserver: about a minute).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub watch_bookmark_interval: Duration,
    /// Bearer tokens of users, kube-apiserver's CSV format, one per line:
    /// `token,user,uid,"group1,group2"`.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Which resources are encrypted at rest and with which keys, in
    /// kube-apiserver's EncryptionConfiguration format (default:
    /// `<data-dir>/encryption-config.yaml`, written at first start to
    /// encrypt Secrets with a fresh key).
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
    /// Events not updated for this long are deleted (kube-apiserver's
    /// `--event-ttl`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub event_ttl: Duration,
    /// How long the certificates nodes obtain are valid; agents renew
    /// theirs at two thirds of it.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub node_certificate_validity: Duration,
    /// `<data-dir>/audit.log` is rotated when it would pass this many MiB
    /// (three old files are kept).
    #[arg(long, default_value_t = 100)]
    pub audit_log_max_size_mb: u64,
    /// Ranges a Service's `externalIPs` may use, comma separated. Empty
    /// (the default) refuses every external IP, as Kubernetes'
    /// DenyServiceExternalIPs advises: they let a service claim any
    /// address for every node.
    #[arg(long, value_delimiter = ',')]
    pub external_ip_cidrs: Vec<ipnet::IpNet>,
}

/// What a node needs (its agent, DNS and proxy).
#[derive(Args, Clone)]
pub struct NodeArgs {
    /// Name of this node (default: the host name).
    #[arg(long, default_value_t = default_node_name())]
    pub node_name: String,
    /// This node's IPs, one or one of each family: pod IPs of its pods
    /// and the addresses of node ports (the first is the primary).
    #[arg(long, default_value = "127.0.0.1,::1")]
    pub node_ip: NodeIps,
    /// DNS domain of the cluster.
    #[arg(long, default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// Cluster DNS address, UDP and TCP (default: the tenth address of
    /// the service CIDR, port 53).
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// TTL of cluster DNS records, in seconds.
    #[arg(long, default_value_t = 5)]
    pub dns_ttl: u32,
    /// Resolvers for names outside the cluster: `IP[:PORT],...`, `none`
    /// (answer REFUSED), or empty for the host's /etc/resolv.conf.
    #[arg(long, default_value = "")]
    pub dns_upstream: String,
    /// UDP worker threads of the DNS server (default: one per CPU).
    #[arg(long)]
    pub dns_workers: Option<usize>,
    /// Clients whose names outside the cluster are forwarded upstream,
    /// comma separated (default: loopback, the node IP, the service CIDR);
    /// others get REFUSED, so the DNS is never an open resolver.
    #[arg(long, value_delimiter = ',')]
    pub dns_recursion_cidrs: Vec<ipnet::IpNet>,
    /// DNS-over-TCP connections open at once.
    #[arg(long, default_value_t = 1024)]
    pub dns_tcp_connections: usize,
    /// Address of the Prometheus metrics endpoint (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:9153")]
    pub metrics_listen: SocketAddr,
    /// Open connections to a removed endpoint are closed after this
    /// (e.g. 30s, 5m); 0 keeps them until they end.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// UDP flows idle this long are forgotten.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub udp_idle_timeout: Duration,
    /// Threads of the proxy's data plane (default: one per CPU).
    #[arg(long)]
    pub proxy_workers: Option<usize>,
    /// How the proxy forwards: `userspace` (sockets on every frontend),
    /// `nftables` (kernel DNAT rules in the `ip wharf` table; needs
    /// CAP_NET_ADMIN and the `nft` binary) or `auto` (nftables where it
    /// works, else userspace). The DNS keeps its own sockets in every mode.
    #[arg(long, default_value = "userspace")]
    pub proxy_mode: wharf_proxy::ProxyMode,
    /// How often the proxy and the DNS publish their state (sync, frontends
    /// not served, traffic per endpoint) on their Node, at most.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub node_status_interval: Duration,
    /// A proxied TCP connection with no byte either way for this long is closed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub proxy_tcp_idle_timeout: Duration,
    /// A proxied TCP connection half-closed (one side sent FIN) for this
    /// long is closed.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub proxy_tcp_half_closed_timeout: Duration,
    /// Proxied TCP connections open at once, over all frontends; more are reset.
    #[arg(long, default_value_t = 4096)]
    pub proxy_max_connections: usize,
    /// Proxied TCP connections open at once through one frontend.
    #[arg(long, default_value_t = 1024)]
    pub proxy_max_connections_per_frontend: usize,
    /// UDP flows (one upstream socket each) at once; a new one evicts the
    /// least recently active.
    #[arg(long, default_value_t = 4096)]
    pub proxy_max_udp_flows: usize,
    /// How often the agent refreshes its Node's Ready condition.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub node_heartbeat: Duration,
    /// Run readiness probes of type exec. wharf has no containers: an
    /// exec probe is a command on this host, so it is refused unless the
    /// node's operator allows it.
    #[arg(long)]
    pub allow_exec_probes: bool,
    /// The account exec probes run as when wharf runs as root.
    #[arg(long, default_value = "nobody")]
    pub probe_user: String,
    /// Serve `kubectl exec` on this node's pods. wharf has no containers:
    /// the command runs on this host (as `--exec-user`, with the pod's
    /// environment and resolv.conf), so only `wharf up` allows it unless
    /// told otherwise.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_exec: Option<bool>,
    /// The account `kubectl exec` commands run as when wharf runs as root.
    #[arg(long, default_value = "nobody")]
    pub exec_user: String,
    /// Addresses a probe's `host` field may name besides the pod's own,
    /// comma separated (default: none).
    #[arg(long, value_delimiter = ',')]
    pub probe_host_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The redb file in the data dir (one server).
    Embedded,
    /// An etcd cluster (`--etcd-endpoints`), shared by several servers.
    Etcd,
}

#[derive(Args)]
pub struct ServerCommandArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where objects are kept.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// etcd client URLs, comma separated (with `--store etcd`).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The CA of etcd's serving certificates: talk TLS to etcd (`https://`
    /// endpoints).
    #[arg(long, requires = "etcd_endpoints")]
    pub etcd_cafile: Option<PathBuf>,
    /// This server's client certificate for etcd (`--client-cert-auth`).
    #[arg(long, requires_all = ["etcd_cafile", "etcd_keyfile"])]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long, requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// The etcd user to authenticate as (etcd with `auth enable`).
    #[arg(long, requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (kept off the command line).
    #[arg(long, requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Extra names or addresses for the serving certificate.
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    #[command(flatten)]
    pub process: ProcessArgs,
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// API servers, `HOST:PORT` or `https://HOST:PORT`, comma separated;
    /// the agent uses whichever answers.
    #[arg(long, visible_alias = "join", value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// Where the node keeps its certificate, key and the cluster CA
    /// (owner only). A node that holds a valid certificate here needs no
    /// token.
    #[arg(long, default_value_os_t = default_agent_dir())]
    pub data_dir: PathBuf,
    /// A bootstrap token (`wharf token create`), exchanged once for the
    /// node's certificate.
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA (the server's `<data-dir>/pki/ca.crt`), to trust the
    /// API servers when joining; kept in `--data-dir` afterwards.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The cluster's service ranges (for the DNS address and reverse zones).
    #[arg(long, default_value = DEFAULT_SERVICE_CIDRS)]
    pub service_cidr: ServiceCidrs,
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// `500ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 30s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (low, high) = s.split_once('-').ok_or("expected LOW-HIGH, e.g. 30000-32767")?;
    let low: u16 = low.trim().parse().map_err(|e| format!("bad low port: {e}"))?;
    let high: u16 = high.trim().parse().map_err(|e| format!("bad high port: {e}"))?;
    if low == 0 || low > high {
        return Err(format!("{low}-{high} is not a range of ports"));
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 minutes").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("30000").is_err());
    }

    #[test]
    fn exec_takes_the_command_after_dashes() {
        let cli = Cli::parse_from(["wharf", "exec", "-n", "team", "--", "getent", "hosts", "web"]);
        let Command::Exec(args) = cli.command else { panic!("not exec") };
        assert_eq!(args.client.namespace, "team");
        assert_eq!(args.command, ["getent", "hosts", "web"]);
    }

    #[test]
    fn defaults_are_the_single_machine_ones() {
        let cli = Cli::parse_from(["wharf", "up"]);
        let Command::Up(args) = cli.command else { panic!("not up") };
        assert_eq!(args.server.api_listen.to_string(), "127.0.0.1:6443");
        assert_eq!(args.server.service_cidr.to_string(), "127.96.0.0/12,fd77:6861:7266:96::/108");
        assert_eq!(args.server.service_node_port_range, 30000..=32767);
        assert_eq!(args.node.cluster_domain, "cluster.local");
        assert_eq!(args.node.node_ip.to_string(), "127.0.0.1,::1");
    }
}
