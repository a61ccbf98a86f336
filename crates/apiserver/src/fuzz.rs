//! A seeded fuzz test of the API's input paths, as the DNS server has one
//! for packets: mutated and random documents through every patch type,
//! server-side apply, the codecs' defaulting and validation, label and field
//! selectors, and the protobuf decoder. Nothing may panic; whatever is
//! accepted must come out as an object the kind's codec stores.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use wharf_api::selector::{FieldSelector, LabelSelector};

use crate::kind::{self, Kind};
use crate::object::FieldValidation;
use crate::patch::{self, PatchKind};

const SEED: u64 = 0x0077_6861_7266;
const ROUNDS: usize = 10_000;

fn seeds() -> Vec<(&'static Kind, Value)> {
    vec![
        (
            &kind::SERVICE,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
                     "type": "NodePort", "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local"}}),
        ),
        (
            &kind::POD,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "finalizers": ["a"]},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}],
                     "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}}], "terminationGracePeriodSeconds": 30}}),
        ),
        (
            &kind::ENDPOINT_SLICE,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "default"},
            "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}], "ports": [{"port": 80}]}),
        ),
        (&kind::NAMESPACE, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})),
    ]
}

/// A random value, at most `depth` levels deep.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>() >> rng.random_range(0..63)),
        3 => json!(random_string(rng)),
        4 => json!(rng.random::<f64>()),
        5 => Value::Array((0..rng.random_range(0..4)).map(|_| random_value(rng, depth - 1)).collect()),
        _ => Value::Object((0..rng.random_range(0..4)).map(|_| (random_key(rng), random_value(rng, depth - 1))).collect()),
    }
}

fn random_string(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "",
        "a",
        "web",
        "80",
        "-1",
        "TCP",
        "UDP",
        "$patch",
        "replace",
        "delete",
        "None",
        "127.0.0.1",
        "::1",
        "x/y",
        "é",
        "\0",
        "ClientIP",
        "LoadBalancer",
    ];
    let mut s = String::new();
    for _ in 0..rng.random_range(0..3) {
        s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    s
}

fn random_key(rng: &mut StdRng) -> String {
    const KEYS: &[&str] = &[
        "metadata",
        "spec",
        "status",
        "name",
        "namespace",
        "labels",
        "annotations",
        "ports",
        "port",
        "protocol",
        "targetPort",
        "nodePort",
        "selector",
        "type",
        "containers",
        "finalizers",
        "ownerReferences",
        "uid",
        "clusterIP",
        "externalIPs",
        "$patch",
        "$setElementOrder/ports",
        "$retainKeys",
        "$deleteFromPrimitiveList/finalizers",
        "endpoints",
        "addresses",
        "conditions",
    ];
    KEYS[rng.random_range(0..KEYS.len())].to_string()
}

/// `doc` with one random change somewhere inside.
fn mutate(rng: &mut StdRng, doc: &mut Value) {
    // Walk down to a random node (as a JSON pointer), then change it.
    let mut pointer = String::new();
    let mut node: &Value = doc;
    for _ in 0..rng.random_range(0..5) {
        let step = match node {
            Value::Object(map) if !map.is_empty() => map.keys().nth(rng.random_range(0..map.len())).cloned(),
            Value::Array(items) if !items.is_empty() => Some(rng.random_range(0..items.len()).to_string()),
            _ => None,
        };
        let Some(step) = step else { break };
        let escaped = step.replace('~', "~0").replace('/', "~1");
        match node.get(&step).or_else(|| step.parse::<usize>().ok().and_then(|i| node.get(i))) {
            Some(next) => {
                node = next;
                pointer.push('/');
                pointer.push_str(&escaped);
            }
            None => break,
        }
    }
    let Some(target) = doc.pointer_mut(&pointer) else { return };
    match target {
        Value::Object(map) if rng.random_bool(0.5) => {
            map.insert(random_key(rng), random_value(rng, 3));
        }
        Value::Array(items) if rng.random_bool(0.5) => items.push(random_value(rng, 3)),
        other => *other = random_value(rng, 3),
    }
}

fn json_patch(rng: &mut StdRng) -> Value {
    let ops: Vec<Value> = (0..rng.random_range(0..6))
        .map(|_| {
            let op = ["add", "remove", "replace", "move", "copy", "test", "bogus"][rng.random_range(0..7)];
            let path = ["", "/metadata", "/metadata/labels/x", "/spec/ports/0", "/spec/ports/-", "/spec", "/nope/deeper", "/spec/ports/99"]
                [rng.random_range(0..8)];
            json!({"op": op, "path": path, "from": "/metadata", "value": random_value(rng, 2)})
        })
        .collect();
    Value::Array(ops)
}

#[test]
fn random_input_through_every_path_never_panics() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let seeds = seeds();
    let mut accepted = 0;
    for round in 0..ROUNDS {
        let (kind, seed) = &seeds[round % seeds.len()];
        let (stored, _) = kind.codec.prepare(seed.clone(), None, FieldValidation::Ignore).expect("the seed is valid");
        // A mutated object as a create or an update.
        let mut candidate = seed.clone();
        mutate(&mut rng, &mut candidate);
        for validation in [FieldValidation::Ignore, FieldValidation::Strict] {
            let _ = kind.codec.prepare(candidate.clone(), None, validation);
            let _ = kind.codec.prepare(candidate.clone(), Some(&stored), validation);
        }
        // Every patch type, with a mutated patch, onto the stored object.
        let mut strategic = json!({"metadata": {"labels": {"k": "v"}}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        mutate(&mut rng, &mut strategic);
        let patches =
            [(PatchKind::Merge, strategic.clone()), (PatchKind::Strategic, strategic.clone()), (PatchKind::Json, json_patch(&mut rng))];
        for (format, doc) in patches {
            if let Ok(out) = patch::apply(format, kind, &stored, &doc) {
                if let Ok((prepared, _)) = kind.codec.prepare(out, Some(&stored), FieldValidation::Ignore) {
                    assert!(prepared.is_object());
                    accepted += 1;
                }
            }
        }
        let mut applied = seed.clone();
        mutate(&mut rng, &mut applied);
        for force in [false, true] {
            let _ = crate::ssa::server_side_apply(kind, &stored, &applied, "fuzz", force);
        }
        // Selectors from random text.
        let text: String = (0..rng.random_range(0..6))
            .map(|_| ["a", "=", "!=", "==", ",", " in ", "(", ")", "!", "x", "notin", "-", "."][rng.random_range(0..13)])
            .collect();
        if let Ok(sel) = LabelSelector::parse(&text) {
            let _ = sel.matches(&[("a".to_string(), "x".to_string())].into());
        }
        if let Ok(sel) = FieldSelector::parse(&text) {
            let _ = sel.matches(|_| Some("x".into()));
            let _ = crate::registry::check_field_selector(kind, &sel);
        }
        // The protobuf decoder: random bytes, and a valid body cut short.
        let bytes: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let _ = crate::protobuf::decode(&bytes);
        let mut framed = b"k8s\0".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = crate::protobuf::decode(&framed);
    }
    assert!(accepted > ROUNDS / 10, "too few inputs were accepted ({accepted}) to have reached the deeper paths");
}
