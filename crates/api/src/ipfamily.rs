//! IP families: the cluster's service ranges (`--service-cidr`, one per
//! family, the first the primary), and how a Service's `ipFamilyPolicy`,
//! `ipFamilies` and `clusterIPs` are settled against them, as Kubernetes'
//! service registry settles them (`initIPFamilyFields`). Allocation of the
//! addresses themselves needs the store and lives in the API server.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ServiceSpec;

use crate::field::{FieldError, FieldErrors, Value};
use crate::service::{is_headless, CLUSTER_IP_NONE};

pub const SINGLE_STACK: &str = "SingleStack";
pub const PREFER_DUAL_STACK: &str = "PreferDualStack";
pub const REQUIRE_DUAL_STACK: &str = "RequireDualStack";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// As the API writes it: `IPv4`, `IPv6` (also EndpointSlice address types).
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }

    pub fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

/// A service's `spec.ipFamilies` as the parts' views keep it: the first two
/// listed (the API allows no more; unknown names left out), inline, where a
/// list was 16 bytes and an allocation in every view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListedFamilies([Option<IpFamily>; 2]);

impl ListedFamilies {
    pub fn of(spec: &ServiceSpec) -> Self {
        let mut listed = spec.ip_families.iter().flatten().filter_map(|f| IpFamily::parse(f));
        ListedFamilies([listed.next(), listed.next()])
    }

    /// The listed families in order, or `unlisted` alone when none is.
    pub fn or(self, unlisted: IpFamily) -> impl Iterator<Item = IpFamily> {
        let listed = if self.0[0].is_none() { [Some(unlisted), None] } else { self.0 };
        listed.into_iter().flatten()
    }
}

/// The family of an address written as text, if it is one.
pub fn family_of(ip: &str) -> Option<IpFamily> {
    ip.parse::<IpAddr>().ok().map(|ip| IpFamily::of(&ip))
}

/// A service range holds at least 2^4 addresses.
const MIN_HOST_BITS: u8 = 4;

/// The service ranges: one or two, of different families; the first is
/// the primary (single-stack services and the built-in ones use it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCidrs(Vec<IpNet>);

impl FromStr for ServiceCidrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let nets = s
            .split(',')
            .map(|part| part.trim().parse::<IpNet>().map(|n| n.trunc()).map_err(|e| format!("{part:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(small) = nets.iter().find(|n| n.max_prefix_len() - n.prefix_len() < MIN_HOST_BITS) {
            return Err(format!("{small}: a service range needs at least {} addresses (the DNS service is the tenth)", 1 << MIN_HOST_BITS));
        }
        match nets.as_slice() {
            [_] => Ok(ServiceCidrs(nets)),
            [a, b] if IpFamily::of(&a.addr()) != IpFamily::of(&b.addr()) => Ok(ServiceCidrs(nets)),
            [_, _] => Err(format!("{s:?}: two ranges must be of different IP families")),
            _ => Err(format!("{s:?}: one range, or one IPv4 and one IPv6 range")),
        }
    }
}

impl fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl ServiceCidrs {
    pub fn primary(&self) -> IpNet {
        self.0[0]
    }

    pub fn get(&self, family: IpFamily) -> Option<IpNet> {
        self.0.iter().copied().find(|n| IpFamily::of(&n.addr()) == family)
    }

    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.0.iter().copied()
    }

    pub fn is_dual_stack(&self) -> bool {
        self.0.len() == 2
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The `n`th address of the primary range (`1` is the `kubernetes`
    /// service, `10` the cluster DNS).
    pub fn nth_primary(&self, n: u128) -> IpAddr {
        nth(self.primary(), n)
    }
}

/// A node's addresses: one, or one of each family (kubelet's `--node-ip`);
/// the first is the primary. Pods of the host-network model get them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIps(Vec<IpAddr>);

impl FromStr for NodeIps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ips = s.split(',').map(|p| p.trim().parse::<IpAddr>().map_err(|e| format!("{p:?}: {e}"))).collect::<Result<Vec<_>, _>>()?;
        match ips.as_slice() {
            [_] => Ok(NodeIps(ips)),
            [a, b] if IpFamily::of(a) != IpFamily::of(b) => Ok(NodeIps(ips)),
            _ => Err(format!("{s:?}: one address, or one IPv4 and one IPv6 address")),
        }
    }
}

impl fmt::Display for NodeIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(IpAddr::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl From<IpAddr> for NodeIps {
    fn from(ip: IpAddr) -> Self {
        NodeIps(vec![ip])
    }
}

impl NodeIps {
    pub fn primary(&self) -> IpAddr {
        self.0[0]
    }

    pub fn get(&self, family: IpFamily) -> Option<IpAddr> {
        self.0.iter().copied().find(|ip| IpFamily::of(ip) == family)
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().copied()
    }
}

/// The `n`th address of `net`, counting its network address as 0.
pub fn nth(net: IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::V4((u32::from(v4.network()).wrapping_add(n as u32)).into()),
        IpNet::V6(v6) => IpAddr::V6((u128::from(v6.network()).wrapping_add(n)).into()),
    }
}

fn policy(spec: &ServiceSpec) -> &str {
    spec.ip_family_policy.as_deref().unwrap_or(SINGLE_STACK)
}

fn cluster_ips(spec: &ServiceSpec) -> &[String] {
    spec.cluster_ips.as_deref().unwrap_or_default()
}

fn families(spec: &ServiceSpec) -> &[String] {
    spec.ip_families.as_deref().unwrap_or_default()
}

/// A PreferDualStack service whose addresses and families did not change
/// is left as it is, even if the cluster's families did.
fn unchanged_prefer_dual_stack(spec: &ServiceSpec, old: &ServiceSpec) -> bool {
    spec.ip_family_policy.as_deref() == Some(PREFER_DUAL_STACK)
        && old.ip_family_policy.as_deref().is_none_or(|p| p == PREFER_DUAL_STACK)
        && spec.type_ == old.type_
        && cluster_ips(spec) == cluster_ips(old)
        && families(spec) == families(old)
}

/// Settles the policy and families of a Service that gets cluster IPs (or
/// is headless) against the cluster's ranges: defaults what is unset,
/// trims what a move to SingleStack releases, infers families from
/// requested addresses, adds the second family where the policy asks for
/// dual stack and the cluster has it. `clusterIPs` are left for the
/// allocator to fill, one per family.
pub fn settle(spec: &mut ServiceSpec, old: Option<&ServiceSpec>, cluster: &ServiceCidrs) -> FieldErrors {
    if old.is_some_and(|old| unchanged_prefer_dual_stack(spec, old)) {
        return Vec::new();
    }
    let selectorless_headless = is_headless(spec) && spec.selector.as_ref().is_none_or(|s| s.is_empty());
    if spec.ip_family_policy.is_none() {
        spec.ip_family_policy = Some(match old.and_then(|o| o.ip_family_policy.clone()) {
            Some(before) => before,
            None if selectorless_headless => REQUIRE_DUAL_STACK.into(),
            None => SINGLE_STACK.into(),
        });
    }
    let mut errs = Vec::new();
    if let Some(old) = old {
        if policy(spec) == SINGLE_STACK {
            // Setting SingleStack with the rest unchanged releases the secondary.
            if cluster_ips(spec) == cluster_ips(old) {
                if let Some(ips) = spec.cluster_ips.as_mut() {
                    ips.truncate(1);
                }
            }
            if families(spec) == families(old) {
                if let Some(list) = spec.ip_families.as_mut() {
                    list.truncate(1);
                }
            }
        } else {
            let reduced = |new: usize, old: usize| new > 0 && new < old;
            if reduced(cluster_ips(spec).len(), cluster_ips(old).len()) {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    policy(spec),
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if reduced(families(spec).len(), families(old).len()) {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    policy(spec),
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if policy(spec) == SINGLE_STACK {
        if cluster_ips(spec).len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                policy(spec),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families(spec).len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                policy(spec),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    // Families of requested addresses that name none.
    let requested: Vec<Option<IpFamily>> =
        cluster_ips(spec).iter().take_while(|ip| *ip != CLUSTER_IP_NONE).map(|ip| family_of(ip)).collect();
    for (i, family) in requested.into_iter().enumerate() {
        let Some(family) = family else { continue };
        if i < families(spec).len() {
            continue;
        }
        if cluster.get(family).is_none() {
            errs.push(FieldError::invalid(
                format!("spec.clusterIPs[{i}]"),
                Value::strings(cluster_ips(spec)),
                format!("{} is not configured on this cluster", family.as_str()),
            ));
        } else {
            spec.ip_families.get_or_insert_with(Vec::new).push(family.as_str().into());
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    let primary = IpFamily::of(&cluster.primary().addr());
    let dual = policy(spec) != SINGLE_STACK;
    if selectorless_headless {
        // Allowed any two families, even on a single-stack cluster.
        fill_families(spec, primary, dual);
        return errs;
    }
    if policy(spec) == REQUIRE_DUAL_STACK && !cluster.is_dual_stack() {
        errs.push(FieldError::invalid("spec.ipFamilyPolicy", policy(spec), "this cluster is not configured for dual-stack services"));
    }
    for (i, family) in families(spec).iter().enumerate() {
        if IpFamily::parse(family).and_then(|f| cluster.get(f)).is_none() {
            errs.push(FieldError::invalid(format!("spec.ipFamilies[{i}]"), family, "not configured on this cluster"));
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    fill_families(spec, primary, dual && cluster.is_dual_stack());
    errs
}

/// The primary family where none is set, and the other one after it when
/// `second` is asked for.
fn fill_families(spec: &mut ServiceSpec, primary: IpFamily, second: bool) {
    let list = spec.ip_families.get_or_insert_with(Vec::new);
    if list.is_empty() {
        list.push(primary.as_str().into());
    }
    if second && list.len() == 1 {
        let other = IpFamily::parse(&list[0]).unwrap_or(primary).other();
        list.push(other.as_str().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dual() -> ServiceCidrs {
        "127.96.0.0/12,fd77:6861:7266:96::/108".parse().unwrap()
    }

    fn single() -> ServiceCidrs {
        "127.96.0.0/12".parse().unwrap()
    }

    fn spec(policy: Option<&str>, families: &[&str], ips: &[&str]) -> ServiceSpec {
        let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        ServiceSpec {
            ip_family_policy: policy.map(Into::into),
            ip_families: list(families),
            cluster_ips: list(ips),
            selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..Default::default()
        }
    }

    fn settled(mut s: ServiceSpec, old: Option<&ServiceSpec>, cluster: &ServiceCidrs) -> Result<(String, Vec<String>), Vec<String>> {
        let errs = settle(&mut s, old, cluster);
        if errs.is_empty() {
            Ok((s.ip_family_policy.unwrap_or_default(), s.ip_families.unwrap_or_default()))
        } else {
            Err(errs.iter().map(|e| e.to_string()).collect())
        }
    }

    #[test]
    fn ranges_parse_as_one_or_a_pair_of_families() {
        let d = dual();
        assert_eq!(d.to_string(), "127.96.0.0/12,fd77:6861:7266:96::/108");
        assert!(d.is_dual_stack() && d.get(IpFamily::V6).is_some());
        assert_eq!(d.nth_primary(10).to_string(), "127.96.0.10");
        assert_eq!(nth(d.get(IpFamily::V6).unwrap(), 10).to_string(), "fd77:6861:7266:96::a");
        assert!("127.96.0.0/12,10.0.0.0/8".parse::<ServiceCidrs>().is_err());
        assert!("a,b,c".parse::<ServiceCidrs>().is_err());
        assert!("fd00::/108,127.0.0.0/8,::/0".parse::<ServiceCidrs>().is_err());
        assert!("127.0.0.5/32".parse::<ServiceCidrs>().is_err(), "one address");
        assert!("127.0.0.0/28,fd00::/125".parse::<ServiceCidrs>().is_err(), "8 IPv6 addresses");
        assert!("127.0.0.0/28,fd00::/124".parse::<ServiceCidrs>().is_ok());
    }

    #[test]
    fn node_ips_are_one_or_one_of_each_family() {
        let ips: NodeIps = "127.0.0.1, ::1".parse().unwrap();
        assert_eq!((ips.primary().to_string(), ips.get(IpFamily::V6).map(|ip| ip.to_string())), ("127.0.0.1".into(), Some("::1".into())));
        assert_eq!(ips.to_string(), "127.0.0.1,::1");
        assert!("127.0.0.1,127.0.0.2".parse::<NodeIps>().is_err());
        assert!("nope".parse::<NodeIps>().is_err());
    }

    #[test]
    fn policies_default_and_add_the_second_family_where_the_cluster_has_it() {
        let v4 = || "IPv4".to_string();
        let v6 = || "IPv6".to_string();
        assert_eq!(settled(spec(None, &[], &[]), None, &dual()), Ok((SINGLE_STACK.into(), vec![v4()])));
        assert_eq!(settled(spec(Some(PREFER_DUAL_STACK), &[], &[]), None, &dual()), Ok((PREFER_DUAL_STACK.into(), vec![v4(), v6()])));
        assert_eq!(settled(spec(Some(PREFER_DUAL_STACK), &[], &[]), None, &single()), Ok((PREFER_DUAL_STACK.into(), vec![v4()])));
        assert_eq!(
            settled(spec(Some(REQUIRE_DUAL_STACK), &["IPv6"], &[]), None, &dual()),
            Ok((REQUIRE_DUAL_STACK.into(), vec![v6(), v4()]))
        );
        // The family of a requested address.
        assert_eq!(settled(spec(None, &[], &["fd77:6861:7266:96::5"]), None, &dual()), Ok((SINGLE_STACK.into(), vec![v6()])));
        // Headless without a selector: both families, even on one.
        let mut headless = spec(None, &[], &["None"]);
        headless.cluster_ip = Some("None".into());
        headless.selector = None;
        assert_eq!(settled(headless, None, &single()), Ok((REQUIRE_DUAL_STACK.into(), vec![v4(), v6()])));
    }

    #[test]
    fn refusals_name_the_field_as_kubernetes_does() {
        let err = settled(spec(Some(REQUIRE_DUAL_STACK), &[], &[]), None, &single()).unwrap_err();
        assert_eq!(
            err,
            ["spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"]
        );
        let err = settled(spec(None, &["IPv4", "IPv6"], &[]), None, &dual()).unwrap_err();
        assert!(err[0].contains("when multiple IP families are specified"), "{err:?}");
        let err = settled(spec(Some(SINGLE_STACK), &["IPv6"], &[]), None, &single()).unwrap_err();
        assert_eq!(err, ["spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"]);
        let err = settled(spec(None, &[], &["fd00::1"]), None, &single()).unwrap_err();
        assert_eq!(err, ["spec.clusterIPs[0]: Invalid value: []string{\"fd00::1\"}: IPv6 is not configured on this cluster"]);
    }

    #[test]
    fn updates_keep_the_policy_and_release_the_secondary_only_when_single_stack_is_asked() {
        let old = spec(Some(PREFER_DUAL_STACK), &["IPv4", "IPv6"], &["127.96.0.5", "fd77:6861:7266:96::5"]);
        // A manifest without the fields keeps what the service had.
        let mut same = old.clone();
        same.ip_family_policy = None;
        assert_eq!(settled(same, Some(&old), &dual()).unwrap().1.len(), 2);
        // SingleStack with the rest unchanged trims to the primary.
        let mut down = old.clone();
        down.ip_family_policy = Some(SINGLE_STACK.into());
        let errs = settle(&mut down, Some(&old), &dual());
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!((cluster_ips(&down), families(&down)), (&["127.96.0.5".to_string()][..], &["IPv4".to_string()][..]));
        // Dropping the secondary without SingleStack is refused.
        let mut dropped = old.clone();
        dropped.cluster_ips = Some(vec!["127.96.0.5".into()]);
        dropped.ip_families = Some(vec!["IPv4".into()]);
        let err = settled(dropped, Some(&old), &dual()).unwrap_err();
        assert!(err.iter().any(|e| e.contains("must be 'SingleStack' to release the secondary cluster IP")), "{err:?}");
        // Upgrading a single-stack service adds the second family.
        let one = spec(Some(SINGLE_STACK), &["IPv4"], &["127.96.0.5"]);
        let mut up = one.clone();
        up.ip_family_policy = Some(REQUIRE_DUAL_STACK.into());
        assert_eq!(settled(up, Some(&one), &dual()).unwrap().1, ["IPv4", "IPv6"]);
    }
}
