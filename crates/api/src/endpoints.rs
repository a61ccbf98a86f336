//! Endpoints (core/v1) and EndpointSlices (discovery.k8s.io/v1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::field::{FieldError, FieldErrors, Path};
use crate::kinds::{KindInfo, ENDPOINTS, ENDPOINT_SLICE};
use crate::meta::validate_object_meta;
use crate::names;
use crate::object::ApiObject;

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const MAX_SLICE_ENDPOINTS: usize = 1000;
const MAX_SLICE_PORTS: usize = 100;
const MAX_ENDPOINT_ADDRESSES: usize = 100;

fn validate_port_number(port: i32, path: &Path) -> Option<FieldError> {
    (!(1..=65535).contains(&port)).then(|| FieldError::invalid(path, port, "must be between 1 and 65535, inclusive"))
}

fn validate_protocol(protocol: Option<&str>, path: &Path) -> Option<FieldError> {
    let protocol = protocol.unwrap_or("TCP");
    (!PROTOCOLS.contains(&protocol)).then(|| FieldError::not_supported(path, protocol, PROTOCOLS))
}

impl ApiObject for Endpoints {
    fn info() -> &'static KindInfo {
        &ENDPOINTS
    }

    fn apply_defaults(&mut self) {
        for subset in self.subsets.iter_mut().flatten() {
            for port in subset.ports.iter_mut().flatten() {
                port.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1123_subdomain);
        for (i, subset) in self.subsets.iter().flatten().enumerate() {
            let path = Path::new("subsets").index(i);
            let ready = subset.addresses.iter().flatten().map(|a| (a, "addresses"));
            let not_ready = subset.not_ready_addresses.iter().flatten().map(|a| (a, "notReadyAddresses"));
            let mut counts = std::collections::HashMap::new();
            for (address, field) in ready.chain(not_ready) {
                let n = counts.entry(field).or_insert(0usize);
                let p = path.child(field).index(*n).child("ip");
                *n += 1;
                if address.ip.parse::<IpAddr>().is_err() {
                    errs.push(FieldError::invalid(p, &address.ip, "must be a valid IP address"));
                }
            }
            for (j, port) in subset.ports.iter().flatten().enumerate() {
                let p = path.child("ports").index(j);
                errs.extend(validate_port_number(port.port, &p.child("port")));
                errs.extend(validate_protocol(port.protocol.as_deref(), &p.child("protocol")));
            }
        }
        errs
    }
}

fn address_fits(address_type: &str, address: &str) -> Option<&'static str> {
    match address_type {
        "IPv4" => address.parse::<Ipv4Addr>().is_err().then_some("must be a valid IPv4 address"),
        "IPv6" => address.parse::<Ipv6Addr>().is_err().then_some("must be a valid IPv6 address"),
        _ => (!names::dns1123_subdomain(address).is_empty()).then_some("must be a valid DNS subdomain"),
    }
}

impl ApiObject for EndpointSlice {
    fn info() -> &'static KindInfo {
        &ENDPOINT_SLICE
    }

    fn apply_defaults(&mut self) {
        // kubectl describe dereferences port names without a nil check.
        for port in self.ports.iter_mut().flatten() {
            port.name.get_or_insert_with(String::new);
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1123_subdomain);
        if !ADDRESS_TYPES.contains(&self.address_type.as_str()) {
            errs.push(FieldError::not_supported("addressType", self.address_type.as_str(), ADDRESS_TYPES));
        }
        if self.endpoints.len() > MAX_SLICE_ENDPOINTS {
            errs.push(FieldError::invalid(
                "endpoints",
                self.endpoints.len() as i64,
                format!("must have at most {MAX_SLICE_ENDPOINTS} items"),
            ));
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let p = Path::new("endpoints").index(i).child("addresses");
            if ep.addresses.is_empty() || ep.addresses.len() > MAX_ENDPOINT_ADDRESSES {
                errs.push(FieldError::required(&p, format!("must contain at least 1 and at most {MAX_ENDPOINT_ADDRESSES} addresses")));
            }
            for (j, address) in ep.addresses.iter().enumerate() {
                if let Some(msg) = address_fits(&self.address_type, address) {
                    errs.push(FieldError::invalid(p.index(j), address, msg));
                }
            }
        }
        let ports = self.ports.as_deref().unwrap_or_default();
        if ports.len() > MAX_SLICE_PORTS {
            errs.push(FieldError::invalid("ports", ports.len() as i64, format!("must have at most {MAX_SLICE_PORTS} items")));
        }
        for (i, port) in ports.iter().enumerate() {
            let p = Path::new("ports").index(i);
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                for msg in names::dns1123_label(name) {
                    errs.push(FieldError::invalid(p.child("name"), name, msg));
                }
            }
            if let Some(n) = port.port {
                errs.extend(validate_port_number(n, &p.child("port")));
            }
            errs.extend(validate_protocol(port.protocol.as_deref(), &p.child("protocol")));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        if self.address_type != old.address_type {
            return vec![FieldError::invalid("addressType", self.address_type.as_str(), "field is immutable")];
        }
        Vec::new()
    }
}
