// wharf's dashboard: reads the Kubernetes API with the user's token
// (list, then watch; every change re-renders, no reloads), and the
// `wharf why` chain from /ui/api/chain. Text from objects only ever goes
// into the page as text (textContent), never as markup.
"use strict";

const TOKEN_KEY = "wharf-token";
const PROXY_STATUS = "proxy.wharf.dev/status";
const DNS_STATUS = "dns.wharf.dev/status";
const HISTORY = 30; // traffic samples kept per service
const SAMPLE_EVERY_MS = 2000;
const CHAIN_EVERY_MS = 2000;

let token = sessionStorage.getItem(TOKEN_KEY);

// ---- DOM ----------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function sparkline(values) {
  const w = 64, hgt = 20;
  const s = svg("svg", { class: "spark", width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}` });
  const max = Math.max(1e-9, ...values);
  const pts = values.map((v, i) => `${(i / Math.max(1, HISTORY - 1)) * w},${hgt - 1 - (v / max) * (hgt - 2)}`);
  if (pts.length > 1) s.append(svg("polyline", { points: pts.join(" ") }));
  return s;
}

function pill(ok, text) {
  return h("span", { class: "pill " + (ok === true ? "ok" : ok === false ? "bad" : "hint") }, text);
}

function human(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return n >= 10 || n === 0 ? Math.round(n).toString() : n.toFixed(1);
}

function ago(ts) {
  if (!ts) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 90) return s + "s ago";
  if (s < 5400) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

// ---- API ----------------------------------------------------------------

function logout() {
  if (token) fetch("/ui/api/sessions", { method: "DELETE", headers: { Authorization: "Bearer " + token } }).catch(() => {});
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  location.hash = "#/";
  location.reload();
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token, Accept: "application/json" }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    logout();
    throw new Error("unauthorized");
  }
  return response;
}

const key = (o) => (o.metadata.namespace ? o.metadata.namespace + "/" : "") + o.metadata.name;

// One kind's objects, listed and then watched; relists on 410 Gone and
// reconnects with backoff, so it always converges to what is stored.
class Informer {
  constructor(path) {
    this.path = path;
    this.items = new Map();
    this.listeners = [];
    this.synced = false;
    this.run();
  }
  on(f) { this.listeners.push(f); }
  changed() { for (const f of this.listeners) f(); }
  async run() {
    let failures = 0;
    let rv = null;
    for (;;) {
      try {
        if (rv === null) {
          const list = await (await api(this.path)).json();
          if (!list.items) throw new Error(list.message || "list failed");
          this.items = new Map(list.items.map((o) => [key(o), o]));
          rv = list.metadata.resourceVersion;
          this.synced = true;
          this.changed();
        }
        const { next, events } = await this.watch(rv);
        rv = next;
        // Only a watch that delivered something counts as healthy: one
        // that ends at once (or a relist that fails again) backs off.
        failures = events > 0 ? 0 : failures + 1;
      } catch (e) {
        if (e.message === "unauthorized") return;
        failures++;
        setLive(false);
      }
      await new Promise((r) => setTimeout(r, Math.min(30000, failures ? 250 * 2 ** failures : 200)));
    }
  }
  // Follows the watch from `rv`: where to go on (null: relist), and how
  // many events came.
  async watch(rv) {
    const sep = this.path.includes("?") ? "&" : "?";
    const response = await api(`${this.path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${rv}`);
    if (!response.ok) throw new Error(`watch ${this.path}: ${response.status}`);
    setLive(true);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let events = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return { next: rv, events };
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line) continue;
        const event = JSON.parse(line);
        if (event.type === "ERROR") {
          reader.cancel().catch(() => {});
          return { next: null, events };
        }
        events++;
        rv = event.object.metadata.resourceVersion || rv;
        if (event.type === "BOOKMARK") continue;
        if (event.type === "DELETED") this.items.delete(key(event.object));
        else this.items.set(key(event.object), event.object);
        this.changed();
      }
    }
  }
}

function setLive(on) {
  const el = document.getElementById("live");
  if (el) el.classList.toggle("on", on);
}

// ---- what the objects say -------------------------------------------------

function podReady(pod) {
  return (pod.status?.conditions || []).some((c) => c.type === "Ready" && c.status === "True");
}

function nodeReady(node) {
  return (node.status?.conditions || []).find((c) => c.type === "Ready");
}

function published(node, annotation) {
  try {
    return JSON.parse(node.metadata.annotations?.[annotation] || "null");
  } catch {
    return null;
  }
}

const count = (v) => (Number.isFinite(v) ? v : 0);

// A node writes its own annotation: take only well-formed parts of it.
function proxyStatus(node) {
  const status = published(node, PROXY_STATUS);
  if (!status || typeof status !== "object") return null;
  const list = (v) => (Array.isArray(v) ? v.filter((x) => x && typeof x === "object") : []);
  return {
    mode: String(status.mode || ""), synced: status.synced === true,
    servicePorts: count(status.servicePorts), frontends: count(status.frontends),
    failing: list(status.failing),
    endpoints: list(status.endpoints).filter((t) => typeof t.servicePort === "string"),
  };
}

function slicesOf(store, svc) {
  return [...store.slices.items.values()].filter(
    (s) => s.metadata.namespace === svc.metadata.namespace && s.metadata.labels?.["kubernetes.io/service-name"] === svc.metadata.name);
}

function endpointsOf(store, svc) {
  return slicesOf(store, svc).flatMap((s) => (s.endpoints || []).map((e) => ({ e, ports: s.ports || [] })));
}

function externalAddress(svc) {
  const ingress = svc.status?.loadBalancer?.ingress || [];
  const ips = ingress.map((i) => i.ip || i.hostname).concat(svc.spec.externalIPs || []);
  if (ips.length) return ips.join(", ");
  return svc.spec.type === "LoadBalancer" ? "<pending>" : "";
}

function portsText(svc) {
  return (svc.spec.ports || []).map((p) => `${p.port}${p.nodePort ? ":" + p.nodePort : ""}/${p.protocol || "TCP"}`).join(", ");
}

// Per service: totals over every node's published endpoint traffic.
function trafficTotals(store) {
  const totals = new Map();
  for (const node of store.nodes.items.values()) {
    for (const t of proxyStatus(node)?.endpoints || []) {
      const svc = t.servicePort.slice(0, t.servicePort.lastIndexOf(":"));
      const sum = totals.get(svc) || { connections: 0, bytes: 0, errors: 0, active: 0 };
      sum.connections += count(t.connections);
      sum.bytes += count(t.bytesToEndpoint) + count(t.bytesToClient);
      sum.errors += count(t.connectErrors);
      sum.active += count(t.active);
      totals.set(svc, sum);
    }
  }
  return totals;
}

// Rates over the last RATE_WINDOW samples (nodes publish every few
// seconds, so a rate between two samples alone would jitter), and a
// short history of them per service.
const RATE_WINDOW = 5;
class Traffic {
  constructor(store) {
    this.store = store;
    this.samples = []; // [{at, totals}]
    this.rates = new Map();
    setInterval(() => this.sample(), SAMPLE_EVERY_MS);
  }
  sample() {
    const now = { at: Date.now(), totals: trafficTotals(this.store) };
    this.samples = this.samples.concat(now).slice(-(RATE_WINDOW + 1));
    const then = this.samples[0];
    const dt = (now.at - then.at) / 1000;
    if (dt > 0) {
      for (const [svc, t] of now.totals) {
        const prev = then.totals.get(svc) || { connections: t.connections, bytes: t.bytes };
        const r = this.rates.get(svc) || { cps: [], bps: [] };
        r.cps = r.cps.concat(Math.max(0, (t.connections - prev.connections) / dt)).slice(-HISTORY);
        r.bps = r.bps.concat(Math.max(0, (t.bytes - prev.bytes) / dt)).slice(-HISTORY);
        this.rates.set(svc, r);
      }
    }
    render();
  }
  of(svc) {
    const r = this.rates.get(svc) || { cps: [], bps: [] };
    const t = (this.samples.at(-1)?.totals || new Map()).get(svc) || { connections: 0, errors: 0, active: 0 };
    return {
      cps: r.cps, bps: r.bps, cpsNow: r.cps.at(-1) || 0, bpsNow: r.bps.at(-1) || 0,
      connections: t.connections, errors: t.errors, active: t.active,
    };
  }
}

// ---- pages ----------------------------------------------------------------

function servicesPage(store, traffic) {
  const rows = [...store.services.items.values()]
    .sort((a, b) => key(a).localeCompare(key(b)))
    .map((svc) => {
      const k = key(svc);
      const eps = endpointsOf(store, svc);
      const ready = eps.filter(({ e }) => e.conditions?.ready).length;
      const t = traffic.of(k);
      const headless = svc.spec.clusterIP === "None";
      return h("tr", { "data-service": k },
        h("td", {}, h("span", { class: "muted" }, svc.metadata.namespace + "/"),
          h("a", { href: `#/svc/${svc.metadata.namespace}/${svc.metadata.name}` }, svc.metadata.name),
          h("div", { class: "mono muted small" }, `${svc.metadata.name}.${svc.metadata.namespace}.svc`)),
        h("td", {}, svc.spec.type || "ClusterIP"),
        h("td", { class: "mono" }, headless ? "None" : svc.spec.clusterIP || ""),
        h("td", { class: "mono" }, externalAddress(svc)),
        h("td", { class: "mono" }, portsText(svc)),
        h("td", { class: "endpoints" }, svc.spec.type === "ExternalName" ? h("span", { class: "muted" }, "external")
          : pill(ready > 0 ? (ready === eps.length ? true : undefined) : false, `${ready}/${eps.length}`)),
        h("td", { class: "num conns" }, human(t.connections)),
        h("td", { class: "rate" }, sparkline(t.cps), " ", human(t.cpsNow) + "/s"),
        h("td", { class: "rate" }, sparkline(t.bps), " ", h("span", { class: "muted" }, human(t.bpsNow) + "B/s")),
        h("td", { class: "num" }, t.errors ? pill(false, String(t.errors)) : h("span", { class: "muted" }, "0")));
    });
  return [
    h("h1", {}, "Services"),
    h("div", { class: "panel" }, h("table", { id: "services" },
      h("thead", {}, h("tr", {}, ["Service / DNS name", "Type", "Cluster IP", "External", "Ports", "Ready", "Conns", "Conn/s", "Bytes/s", "Errors"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows))),
    rows.length ? null : h("div", { class: "empty" }, store.services.synced ? "No services." : "Loading…"),
  ];
}

// The last probe result of a pod, from its Events and its Ready condition.
function probeResult(store, pod) {
  if (!pod) return "";
  const events = [...store.events.items.values()].filter(
    (e) => e.involvedObject?.namespace === pod.metadata.namespace && e.involvedObject?.name === pod.metadata.name && e.reason === "Unhealthy");
  events.sort((a, b) => Date.parse(b.lastTimestamp || 0) - Date.parse(a.lastTimestamp || 0));
  if (podReady(pod)) return "passing";
  return events.length ? `${events[0].message} (${ago(events[0].lastTimestamp)})` : "not ready";
}

function chainView(report) {
  if (!report) return h("div", { class: "empty" }, "Walking the chain…");
  if (report.error) return h("div", { class: "error" }, report.error);
  const groups = [];
  for (const link of report.links) {
    if (link.depth <= 1 || !groups.length) groups.push({ head: link, children: [] });
    else groups.at(-1).children.push(link);
  }
  const boxes = [];
  groups.forEach((g, i) => {
    const worst = [g.head, ...g.children].some((l) => l.mark === "broken") ? "broken" : g.head.mark === "hint" ? "hint" : "whole";
    if (i) boxes.push(h("div", { class: "arrow" }));
    boxes.push(h("div", { class: "link " + worst, "data-mark": worst },
      h("div", {}, g.head.text),
      g.children.length ? h("ul", {}, g.children.map((c) => h("li", { class: c.mark }, c.text))) : null));
  });
  const verdict = report.whole
    ? h("div", { class: "verdict ok", id: "verdict" }, "The chain is whole.")
    : h("div", { class: "verdict bad", id: "verdict" }, `First broken link: ${report.broken.link} → ${report.broken.fix}`);
  return [verdict, h("div", { class: "chain", id: "chain" }, boxes)];
}

const chains = new Map(); // "ns/name" -> report
const chainWanted = new Map(); // "ns/name" -> timer
const chainAt = new Map(); // "ns/name" -> the generation it was asked at
let generation = 0; // bumped by every change an informer sees

// Fetches the chain again when what it is judged from changed, at most
// once per CHAIN_EVERY_MS (each fetch costs the server several lists).
function refreshChain(ns, name) {
  const k = `${ns}/${name}`;
  if (chainWanted.has(k) || chainAt.get(k) === generation) return;
  chainWanted.set(k, setTimeout(async () => {
    chainAt.set(k, generation);
    chainWanted.delete(k);
    try {
      const response = await api(`/ui/api/chain/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`);
      const body = await response.json();
      chains.set(k, response.ok ? body : { error: body.message || response.statusText });
    } catch (e) {
      chains.set(k, { error: String(e) });
    }
    render();
  }, CHAIN_EVERY_MS));
}

function servicePage(store, traffic, ns, name) {
  const svc = store.services.items.get(`${ns}/${name}`);
  if (!svc) return [h("h1", {}, `${ns}/${name}`), h("div", { class: "empty" }, store.services.synced ? "No such service." : "Loading…")];
  const pods = new Map([...store.pods.items.values()].filter((p) => p.metadata.namespace === ns).map((p) => [p.metadata.name, p]));
  const t = traffic.of(`${ns}/${name}`);
  const eps = endpointsOf(store, svc);
  const endpointRows = eps.map(({ e, ports }) => {
    const pod = e.targetRef?.kind === "Pod" ? pods.get(e.targetRef.name) : null;
    const ready = !!e.conditions?.ready;
    return h("tr", { "data-endpoint": e.addresses.join(","), "data-ready": String(ready) },
      h("td", { class: "mono" }, e.addresses.join(", ")),
      h("td", { class: "mono" }, ports.map((p) => `${p.name ? p.name + ":" : ""}${p.port}`).join(", ")),
      h("td", {}, e.targetRef?.name || ""),
      h("td", {}, e.nodeName || ""),
      h("td", {}, pill(ready, ready ? "ready" : e.conditions?.terminating ? "terminating" : "not ready")),
      h("td", { class: "probe wrap" }, probeResult(store, pod)));
  });
  const involved = new Set([name, ...eps.map(({ e }) => e.targetRef?.name).filter(Boolean)]);
  const events = [...store.events.items.values()]
    .filter((e) => e.involvedObject?.namespace === ns && involved.has(e.involvedObject?.name))
    .sort((a, b) => Date.parse(b.lastTimestamp || b.eventTime || 0) - Date.parse(a.lastTimestamp || a.eventTime || 0))
    .slice(0, 20)
    .map((e) => h("tr", {},
      h("td", {}, pill(e.type !== "Warning" ? true : false, e.type || "Normal")),
      h("td", {}, e.reason || ""),
      h("td", {}, `${e.involvedObject.kind}/${e.involvedObject.name}`),
      h("td", { class: "wrap" }, e.message || ""),
      h("td", { class: "num" }, e.count || 1),
      h("td", { class: "muted" }, ago(e.lastTimestamp || e.eventTime))));
  refreshChain(ns, name);
  return [
    h("h1", {}, `${ns}/${name}`),
    h("div", { class: "summary" },
      h("div", {}, h("b", {}, "Type"), svc.spec.type || "ClusterIP"),
      h("div", {}, h("b", {}, "Cluster IP"), h("span", { class: "mono" }, svc.spec.clusterIP || "")),
      h("div", {}, h("b", {}, "External"), h("span", { class: "mono" }, externalAddress(svc) || "—")),
      h("div", {}, h("b", {}, "Ports"), h("span", { class: "mono" }, portsText(svc))),
      h("div", {}, h("b", {}, "Connections/s"), human(t.cpsNow), " ", sparkline(t.cps)),
      h("div", {}, h("b", {}, "Active"), String(t.active)),
      h("div", {}, h("b", {}, "Connect errors"), String(t.errors))),
    h("h2", {}, "Chain"),
    chainView(chains.get(`${ns}/${name}`)),
    h("h2", {}, "Endpoints"),
    h("div", { class: "panel" }, h("table", { id: "endpoints" },
      h("thead", {}, h("tr", {}, ["Address", "Ports", "Pod", "Node", "State", "Last probe"].map((c) => h("th", {}, c)))),
      h("tbody", {}, endpointRows))),
    endpointRows.length ? null : h("div", { class: "empty" }, "No endpoints."),
    h("h2", {}, "Recent events"),
    h("div", { class: "panel" }, h("table", { id: "events" }, h("tbody", {}, events))),
    events.length ? null : h("div", { class: "empty" }, "No recent events."),
  ];
}

function nodesPage(store) {
  const rows = [...store.nodes.items.values()].sort((a, b) => key(a).localeCompare(key(b))).map((node) => {
    const ready = nodeReady(node);
    const proxy = proxyStatus(node);
    const dns = published(node, DNS_STATUS);
    const failing = proxy?.failing?.length || 0;
    return h("tr", { "data-node": node.metadata.name },
      h("td", {}, node.metadata.name),
      h("td", {}, pill(ready?.status === "True", ready?.status === "True" ? "Ready" : "NotReady")),
      h("td", { class: "muted" }, ago(ready?.lastHeartbeatTime)),
      h("td", { class: "mono" }, (node.status?.addresses || []).map((a) => a.address).join(", ")),
      h("td", {}, proxy?.mode || "—"),
      h("td", { class: "dns-sync" }, dns ? pill(dns.synced, dns.synced ? `synced, ${dns.services} services` : "syncing") : pill(undefined, "no state")),
      h("td", { class: "proxy-sync" }, proxy ? pill(proxy.synced, proxy.synced ? "synced" : "syncing") : pill(undefined, "no state")),
      h("td", { class: "num" }, proxy ? String(proxy.servicePorts) : ""),
      h("td", { class: "num" }, proxy ? String(proxy.frontends) : ""),
      h("td", {}, failing ? pill(false, `${failing} not served`) : h("span", { class: "muted" }, "none")));
  });
  return [
    h("h1", {}, "Nodes"),
    h("div", { class: "panel" }, h("table", { id: "nodes" },
      h("thead", {}, h("tr", {}, ["Name", "Status", "Heartbeat", "Addresses", "Proxy", "DNS", "Proxy sync", "Service ports", "Frontends", "Failing"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows))),
  ];
}

// ---- login ----------------------------------------------------------------

async function useToken(candidate) {
  const response = await fetch("/apis/authentication.k8s.io/v1/selfsubjectreviews", {
    method: "POST",
    headers: { Authorization: "Bearer " + candidate, "Content-Type": "application/json" },
    body: JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" }),
  });
  if (!response.ok) throw new Error(response.status === 401 ? "The API does not accept this token." : `Login failed (${response.status}).`);
  sessionStorage.setItem(TOKEN_KEY, candidate);
  token = candidate;
}

function loginPage(message) {
  const input = h("input", { id: "login-token", type: "password", autocomplete: "off", placeholder: "bearer token" });
  const error = h("div", { class: "error", id: "login-error" }, message || "");
  const submit = async (ev) => {
    ev.preventDefault();
    try {
      await useToken(input.value.trim());
      start();
    } catch (e) {
      error.textContent = e.message;
    }
  };
  document.getElementById("main").replaceChildren(h("form", { class: "login", onsubmit: submit },
    h("h1", {}, "Log in to wharf"),
    h("div", { class: "muted" }, "Run ", h("span", { class: "mono" }, "wharf dashboard"), " for a one-time login link, or paste a token the API accepts."),
    input,
    h("button", { id: "login-button", type: "submit" }, "Log in"),
    error));
}

// ---- the app --------------------------------------------------------------

let store = null;
let traffic = null;
let scheduled = false;

function render() {
  if (!store || scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    const route = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    let page = "services", content;
    if (route[0] === "svc" && route.length === 3) content = servicePage(store, traffic, route[1], route[2]);
    else if (route[0] === "nodes") { page = "nodes"; content = nodesPage(store); }
    else content = servicesPage(store, traffic);
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
    document.getElementById("main").replaceChildren(...[content].flat(Infinity).filter(Boolean));
  });
}

async function start() {
  const review = await (await api("/apis/authentication.k8s.io/v1/selfsubjectreviews", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" }),
  })).json();
  document.getElementById("who").textContent = review.status?.userInfo?.username || "";
  const logoutButton = document.getElementById("logout");
  logoutButton.hidden = false;
  logoutButton.onclick = logout;
  store = {
    services: new Informer("/api/v1/services"),
    slices: new Informer("/apis/discovery.k8s.io/v1/endpointslices"),
    pods: new Informer("/api/v1/pods"),
    nodes: new Informer("/api/v1/nodes"),
    events: new Informer("/api/v1/events"),
  };
  for (const informer of Object.values(store)) informer.on(() => { generation++; render(); });
  traffic = new Traffic(store);
  window.addEventListener("hashchange", render);
  render();
}

async function boot() {
  const code = new URLSearchParams(location.hash.replace(/^#/, "")).get("code");
  if (code) {
    history.replaceState(null, "", "/ui/#/");
    const response = await fetch("/ui/api/sessions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code }),
    });
    const body = await response.json();
    if (!response.ok) return loginPage(body.message);
    sessionStorage.setItem(TOKEN_KEY, body.token);
    token = body.token;
  }
  if (!token) return loginPage();
  start().catch((e) => loginPage(String(e.message || e)));
}

// A login URL opened on an open page changes only the fragment.
window.addEventListener("hashchange", () => {
  if (location.hash.includes("code=")) location.reload();
});

boot();
