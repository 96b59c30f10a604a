//! Prometheus `/metrics` on every node's API port (viewer role, like any
//! read; Prometheus sends a token with `authorization.credentials_file`).
//!
//! Each scrape builds a fresh registry from what the node knows at that
//! moment, so the series of a deleted VM or a removed host are simply gone
//! from the next scrape. Every node reports itself (its Raft view, its
//! certificate, the API calls it answered) and the guests it runs (CPU
//! time, memory, disk and network bytes from libvirt). Cluster-wide gauges
//! (hosts, their allocation and heartbeats, every VM's state) come only
//! from the leader, so a sum over all nodes' scrapes never counts a VM
//! twice. The hosts and VMs are read through the same in-process calls the
//! REST API makes, so they match `node list -o json` and `vm list -o json`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kvmesh_proto as pb;
use pb::cluster_server::Cluster;
use pb::vms_server::Vms;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tonic::Request;

use super::rest::{Rest, METRICS_METHOD};
use crate::hypervisor::blocking;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// API calls answered by this node, by gRPC method (a REST call counts as
/// the method its route is); kept for the life of the process.
fn api_calls() -> &'static Family<Labels, Counter> {
    static CALLS: OnceLock<Family<Labels, Counter>> = OnceLock::new();
    CALLS.get_or_init(Family::default)
}

/// The label for `method` (a gRPC method path): only the API's own
/// methods, since anything else would let a caller make up label values
/// without bound.
fn method_label(method: &str) -> &str {
    if known_methods().contains(method) {
        method
    } else {
        "other"
    }
}

/// Every method the node serves: its gRPC services' (from their compiled
/// descriptors), the health and reflection services', and the REST-only
/// pseudo-methods of the policy table.
fn known_methods() -> &'static std::collections::HashSet<String> {
    static KNOWN: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message;
        let mut known = std::collections::HashSet::new();
        for set in [pb::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        let (package, name) = (file.package(), service.name());
                        known.insert(format!("/{package}.{name}/{}", method.name()));
                    }
                }
            }
        }
        for reflection in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
            known.insert(format!("/{reflection}.ServerReflection/ServerReflectionInfo"));
        }
        known.extend([METRICS_METHOD.to_string(), "/kvmesh.v1.Cluster/OpenApi".to_string()]);
        known
    })
}

/// Counts one call of `method`, as the gate lets it in.
pub fn count_call(method: &str) {
    api_calls().get_or_create(&vec![("method".to_string(), method_label(method).to_string())]).inc();
}

/// Times one answered request of `method`: its code is the gRPC code the
/// answer carries (a REST refusal's `x-kvmesh-code`; `Ok` otherwise).
pub fn time_call<B>(method: &str, response: &http::Response<B>, took: std::time::Duration) {
    let headers = response.headers();
    let code = match headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) {
        Some(n) => format!("{:?}", tonic::Code::from_i32(n)),
        None => match headers.get("x-kvmesh-code").and_then(|v| v.to_str().ok()) {
            Some(code) => code.to_string(),
            None if response.status().is_client_error() || response.status().is_server_error() => {
                format!("http-{}", response.status().as_u16())
            }
            None => "Ok".to_string(),
        },
    };
    crate::telemetry::get().api_request(method_label(method), &code, took);
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), else the
/// classic text format, which `promtool check metrics` and older tools read.
pub async fn scrape(State(rest): State<Rest>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match render(&rest).await {
        Ok(text) if openmetrics => {
            let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            (StatusCode::OK, [(header::CONTENT_TYPE, kind)], text).into_response()
        }
        Ok(text) => {
            let kind = "text/plain; version=0.0.4; charset=utf-8";
            (StatusCode::OK, [(header::CONTENT_TYPE, kind)], classic_text(&text)).into_response()
        }
        Err(status) => super::rest::problem(&status),
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter's
/// HELP and TYPE name its `_total` samples, and there is no `# EOF`.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines().filter(|l| *l != "# EOF") {
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

async fn render(rest: &Rest) -> Result<String, tonic::Status> {
    let ctx = &rest.ctx;
    let mut registry = Registry::with_prefix("kvmesh");
    let me = ctx.name.clone();

    // This node's Raft view.
    let m = ctx.raft.metrics().borrow().clone();
    let leader = m.current_leader == Some(ctx.id);
    gauge(&mut registry, "raft_term", "The Raft term this node is in", m.current_term as i64);
    gauge(&mut registry, "raft_is_leader", "1 on the leader", leader as i64);
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0) as i64;
    gauge(&mut registry, "raft_applied_index", "The last log index applied to this node's state", applied);
    let last = m.last_log_index.unwrap_or(0) as i64;
    gauge(&mut registry, "raft_last_log_index", "The last index in this node's log", last);
    let snapshot = m.snapshot.map(|l| l.index).unwrap_or(0) as i64;
    gauge(&mut registry, "raft_snapshot_index", "The index this node's last snapshot covers", snapshot);
    gauge(&mut registry, "raft_has_leader", "1 while this node knows a leader", m.current_leader.is_some() as i64);
    let snapshot_file = ctx.config.data_dir.join("raft").join("snapshot.bin");
    let snapshot_bytes = std::fs::metadata(snapshot_file).map(|m| m.len() as i64).unwrap_or(0);
    gauge(&mut registry, "raft_snapshot_bytes", "The size of this node's current snapshot file", snapshot_bytes);

    // This node's certificate.
    let not_after = ctx
        .tls
        .as_ref()
        .and_then(|t| t.certified_key())
        .and_then(|k| crate::tls::ca::info(&k.cert[0]).ok())
        .map(|i| i.not_after);
    if let Some(not_after) = not_after {
        let left = match not_after.duration_since(std::time::SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let g: FloatGauge = Gauge::default();
        g.set(left);
        registry.register("certificate_expiry_seconds", "Seconds until this node's certificate expires", g);
    }

    // The API calls it answered.
    registry.register("api_calls", "API calls this node let in, by gRPC method", api_calls().clone());
    crate::telemetry::get().register(&mut registry);

    // The guests it runs.
    let usage = match blocking(&ctx.hypervisor, |hv| hv.usage()).await {
        Ok(usage) => {
            gauge(&mut registry, "hypervisor_up", "1 while libvirt answers this node", 1);
            usage
        }
        Err(e) => {
            // Without it the guests' series are missing, not zero.
            tracing::warn!(error = %e, "no guest statistics for /metrics");
            gauge(&mut registry, "hypervisor_up", "1 while libvirt answers this node", 0);
            Vec::new()
        }
    };
    let names: std::collections::BTreeMap<u64, String> =
        ctx.read(|d| d.state.vms.values().map(|v| (v.id, v.name.clone())).collect());
    let cpu: Family<Labels, FloatCounter> = Family::default();
    let memory: Family<Labels, Gauge> = Family::default();
    let disk: Family<Labels, Counter> = Family::default();
    let net: Family<Labels, Counter> = Family::default();
    for u in &usage {
        let Some(vm) = names.get(&u.vm_id) else { continue };
        let base = [("vm", vm.as_str()), ("node", me.as_str())];
        cpu.get_or_create(&labels(&base)).inc_by(u.cpu_seconds);
        memory.get_or_create(&labels(&base)).set(u.memory_bytes as i64);
        for (dir, bytes) in [("read", u.disk_read_bytes), ("write", u.disk_write_bytes)] {
            disk.get_or_create(&labels(&[base[0], base[1], ("direction", dir)])).inc_by(bytes);
        }
        for (dir, bytes) in [("rx", u.net_rx_bytes), ("tx", u.net_tx_bytes)] {
            net.get_or_create(&labels(&[base[0], base[1], ("direction", dir)])).inc_by(bytes);
        }
    }
    registry.register("vm_cpu_seconds", "CPU time the guest used in this run", cpu);
    registry.register("vm_memory_bytes", "Memory the guest has now", memory);
    registry.register("vm_disk_bytes", "Bytes the guest read from or wrote to its disks in this run", disk);
    registry.register("vm_network_bytes", "Bytes the guest received or sent on its NICs in this run", net);

    // The cluster, from the leader only.
    // Without them (the leader's own calls failing), the node's series
    // still go out.
    if leader {
        if let Err(status) = cluster_gauges(rest, &mut registry).await {
            tracing::warn!(error = %status.message(), "no cluster-wide series for /metrics");
        }
    }
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| tonic::Status::internal(format!("encoding metrics: {e}")))?;
    Ok(text)
}

async fn cluster_gauges(rest: &Rest, registry: &mut Registry) -> Result<(), tonic::Status> {
    let nodes = rest.cluster.list_nodes(Request::new(pb::ListNodesRequest { consistent: false })).await?;
    let (cpus, memory, vcpus, allocated, heartbeat, up): (
        Family<Labels, Gauge>,
        Family<Labels, Gauge>,
        Family<Labels, Gauge>,
        Family<Labels, Gauge>,
        Family<Labels, FloatGauge>,
        Family<Labels, Gauge>,
    ) = Default::default();
    for n in &nodes.into_inner().nodes {
        let l = labels(&[("node", &n.name)]);
        cpus.get_or_create(&l).set(n.cpus as i64);
        memory.get_or_create(&l).set((n.memory_mib << 20) as i64);
        vcpus.get_or_create(&l).set(n.allocated_vcpus as i64);
        allocated.get_or_create(&l).set((n.allocated_memory_mib << 20) as i64);
        // Hosts the leader has not heard from since it was elected have no age.
        if let Some(age) = n.heartbeat_age_ms {
            heartbeat.get_or_create(&l).set(age as f64 / 1000.0);
        }
        let state = crate::cli::json::node_state(n.state);
        let fencing = n.fencing.as_deref().unwrap_or("none");
        up.get_or_create(&labels(&[("node", &n.name), ("state", state), ("fencing", fencing)])).set(1);
    }
    registry.register("node_cpus", "CPUs a host offers (leader's view)", cpus);
    registry.register("node_memory_bytes", "Memory a host offers", memory);
    registry.register("node_allocated_vcpus", "vCPUs of the VMs placed on a host", vcpus);
    registry.register("node_allocated_memory_bytes", "Memory of the VMs placed on a host", allocated);
    registry.register("node_heartbeat_age_seconds", "Seconds since the leader heard from a host", heartbeat);
    registry.register("node_info", "1 per host, with its state and fencing level", up);

    let vms = rest.vms.list(Request::new(pb::ListVmsRequest { consistent: false })).await?.into_inner().vms;
    let info: Family<Labels, Gauge> = Family::default();
    for v in &vms {
        let node = v.node.clone().unwrap_or_default();
        let state = crate::cli::json::shown_state(v);
        let l =
            labels(&[("vm", &v.name), ("node", &node), ("state", state), ("ha", if v.ha { "true" } else { "false" })]);
        info.get_or_create(&l).set(1);
    }
    registry.register("vm_info", "1 per VM, with its host, state and HA flag (leader's view)", info);

    let capacity = rest.cluster.capacity(Request::new(pb::CapacityRequest {})).await?.into_inner();
    gauge(
        registry,
        "cluster_n_plus_1",
        "1 while the HA VMs of any one host could restart on the others",
        capacity.n_plus_1 as i64,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_in_the_classic_format() {
        let om = "# HELP x_calls Calls.\n# TYPE x_calls counter\nx_calls_total{m=\"a\"} 2\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        let text = classic_text(om);
        assert_eq!(
            text,
            "# HELP x_calls_total Calls.\n# TYPE x_calls_total counter\nx_calls_total{m=\"a\"} 2\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }
}
