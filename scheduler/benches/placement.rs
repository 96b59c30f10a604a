//! Scheduler benchmarks: `cargo bench -p kvmesh-scheduler`.
//!
//! 1. Placing 10,000 VMs one by one onto 1,000 nodes (each placement reserves
//!    capacity, so later decisions see a fuller cluster).
//! 2. Planning the restart of one dead host's 200 VMs onto the other 999.
//!
//! Before the criterion runs, each scenario is timed decision by decision to
//! report placements per second and p50/p99 decision time, next to a
//! baseline measured in the same process: a first-fit scan over the same
//! nodes, which is the least work any placement can do.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use kvmesh_scheduler::*;

fn cluster(n: u64) -> Vec<NodeView> {
    (0..n)
        .map(|i| {
            let mut node = NodeView::new(i + 1, &format!("node-{i:04}"), 32 + (i % 4) as u32 * 16, 262_144);
            node.labels.insert("rack".into(), format!("r{}", i % 40));
            node
        })
        .collect()
}

fn vms(n: u64, seed: u64) -> Vec<VmRequest> {
    (0..n)
        .map(|i| {
            let mut v = VmRequest::new(seed + i, &format!("vm-{i}"), 1 + (i % 4) as u32, 512 * (1 + i % 8));
            if i % 10 == 0 {
                v.anti_affinity = Some(format!("svc-{}", i % 50));
            }
            if i % 7 == 0 {
                v.preferred_labels.insert("rack".into(), format!("r{}", i % 40));
            }
            v
        })
        .collect()
}

/// The baseline: the first node with room, no filters beyond capacity, no scoring.
fn first_fit(nodes: &[NodeView], vm: &VmRequest, s: &Settings) -> Option<usize> {
    nodes.iter().position(|n| n.free_vcpus(s) >= vm.vcpus as u64 && n.free_memory_mib(s) >= vm.memory_mib)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut times: Vec<Duration>, baseline: Duration, total: Duration) {
    times.sort();
    let per_s = times.len() as f64 / total.as_secs_f64();
    println!(
        "{name}: {:.0} placements/s, p50 {:?}, p99 {:?}; {:.2}x the first-fit baseline ({:?}/decision)",
        per_s,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        (total.as_secs_f64() / times.len() as f64) / baseline.as_secs_f64(),
        baseline,
    );
}

fn place_10k_on_1k(s: &Settings) -> (Vec<Duration>, Duration) {
    let mut nodes = cluster(1000);
    let mut times = Vec::with_capacity(10_000);
    let start = Instant::now();
    for vm in vms(10_000, 1) {
        let t = Instant::now();
        let d = place(&nodes, &vm, s);
        times.push(t.elapsed());
        if let Decision::Place { node_id, .. } = d {
            nodes[node_id as usize - 1].reserve(&vm);
        }
    }
    (times, start.elapsed())
}

fn baseline_10k_on_1k(s: &Settings) -> Duration {
    let mut nodes = cluster(1000);
    let start = Instant::now();
    for vm in vms(10_000, 1) {
        if let Some(i) = first_fit(&nodes, &vm, s) {
            nodes[i].reserve(&vm);
        }
    }
    start.elapsed() / 10_000
}

/// A dead host's 200 VMs onto the 999 others, which are already 60 % full.
fn restart_setup() -> (Vec<NodeView>, Vec<VmRequest>) {
    let s = Settings::default();
    let mut nodes = cluster(1000);
    for vm in vms(6_000, 100_000) {
        if let Decision::Place { node_id, .. } = place(&nodes, &vm, &s) {
            nodes[node_id as usize - 1].reserve(&vm);
        }
    }
    nodes.remove(0);
    let mut dead = vms(200, 1_000_000);
    for (i, v) in dead.iter_mut().enumerate() {
        v.priority = (i % 5) as i32;
    }
    (nodes, dead)
}

fn summary() {
    let s = Settings::default();
    // Warm up caches and the allocator once.
    let _ = place_10k_on_1k(&s);
    let baseline = baseline_10k_on_1k(&s);
    let (times, total) = place_10k_on_1k(&s);
    report("place 10,000 VMs one by one onto 1,000 nodes", times, baseline, total);

    let (nodes, dead) = restart_setup();
    let mut plan_times = Vec::new();
    let start = Instant::now();
    for _ in 0..50 {
        let t = Instant::now();
        let plan = black_box(plan_restarts(&dead, &nodes, &s));
        plan_times.push(t.elapsed());
        assert!(plan.unplaced.is_empty());
    }
    let total = start.elapsed();
    let per_vm: Vec<Duration> = plan_times.iter().map(|t| *t / 200).collect();
    let base_start = Instant::now();
    for _ in 0..50 {
        let mut copy = nodes.clone();
        for v in &dead {
            if let Some(i) = first_fit(&copy, v, &s) {
                copy[i].reserve(v);
            }
        }
    }
    let baseline = base_start.elapsed() / (50 * 200);
    plan_times.sort();
    println!(
        "plan_restarts of 200 VMs onto 999 nodes: p50 {:?}, p99 {:?} per plan; {:.0} placements/s; {:.2}x the first-fit baseline ({:?}/VM)",
        percentile(&plan_times, 0.5),
        percentile(&plan_times, 0.99),
        (50.0 * 200.0) / total.as_secs_f64(),
        (total.as_secs_f64() / (50.0 * 200.0)) / baseline.as_secs_f64(),
        baseline,
    );
    drop(per_vm);
}

fn criterion_benches(c: &mut Criterion) {
    let s = Settings::default();
    let nodes = cluster(1000);
    let vm = VmRequest::new(7, "one", 2, 2048);
    c.bench_function("place one VM onto 1,000 nodes", |b| b.iter(|| place(black_box(&nodes), black_box(&vm), &s)));
    let (nodes, dead) = restart_setup();
    c.bench_function("plan_restarts 200 VMs onto 999 nodes", |b| {
        b.iter(|| plan_restarts(black_box(&dead), &nodes, &s))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = criterion_benches
}

fn main() {
    summary();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
