use super::*;

fn node(id: u64, name: &str, cpus: u32, mem: u64, used_cpu: u32, used_mem: u64) -> NodeView {
    NodeView {
        id,
        name: name.into(),
        schedulable: true,
        state: "up".into(),
        cpus,
        memory_mib: mem,
        allocated_vcpus: used_cpu,
        allocated_memory_mib: used_mem,
    }
}

fn vm(vcpus: u32, mem: u64) -> VmRequest {
    VmRequest { name: "v".into(), vcpus, memory_mib: mem }
}

#[test]
fn most_free_memory_wins() {
    let nodes = vec![node(1, "a", 8, 8192, 0, 4096), node(2, "b", 8, 8192, 0, 1024), node(3, "c", 8, 4096, 0, 0)];
    assert_eq!(place(&nodes, &vm(1, 512)), Decision::Place { node_id: 2, node: "b".into() });
}

#[test]
fn full_tie_breaks_on_lowest_id_regardless_of_order() {
    let mut nodes = vec![node(7, "x", 4, 4096, 0, 0), node(3, "y", 4, 4096, 0, 0)];
    assert_eq!(place(&nodes, &vm(1, 1)), Decision::Place { node_id: 3, node: "y".into() });
    nodes.reverse();
    assert_eq!(place(&nodes, &vm(1, 1)), Decision::Place { node_id: 3, node: "y".into() });
}

#[test]
fn unplaceable_gives_one_reason_per_node() {
    let mut down = node(3, "c", 64, 65536, 0, 0);
    down.schedulable = false;
    down.state = "down".into();
    let nodes = vec![node(1, "a", 8, 2048, 0, 1024), node(2, "b", 2, 65536, 1, 0), down];
    let Decision::Unplaceable { rejections } = place(&nodes, &vm(2, 4096)) else { panic!("should not fit") };
    let text = explain_rejections(&rejections);
    assert_eq!(
        text,
        "a: insufficient memory (need 4096 MiB, free 1024 MiB)\n\
         b: insufficient vCPUs (need 2, free 1)\n\
         c: node is down"
    );
}

#[test]
fn never_places_over_capacity() {
    // Fill nodes one VM at a time; every placement must fit, and the total
    // placed must equal what the capacity allows.
    let mut nodes = vec![node(1, "a", 4, 4096, 0, 0), node(2, "b", 2, 3000, 0, 0)];
    let mut placed = 0;
    loop {
        match place(&nodes, &vm(1, 1000)) {
            Decision::Place { node_id, .. } => {
                let n = nodes.iter_mut().find(|n| n.id == node_id).unwrap();
                n.allocated_vcpus += 1;
                n.allocated_memory_mib += 1000;
                assert!(n.allocated_vcpus <= n.cpus && n.allocated_memory_mib <= n.memory_mib);
                placed += 1;
            }
            Decision::Unplaceable { rejections } => {
                assert_eq!(rejections.len(), 2);
                break;
            }
        }
    }
    // a: 4 (cpu 4, mem 4096 -> 4), b: 2 (cpu 2, mem 3000 -> 3) => 6
    assert_eq!(placed, 6);
}

#[test]
fn empty_cluster_says_so() {
    let Decision::Unplaceable { rejections } = place(&[], &vm(1, 1)) else { panic!() };
    assert_eq!(explain_rejections(&rejections), "the cluster has no nodes");
}

#[test]
fn validate_rejects_zero_sized_vm() {
    assert!(vm(0, 1).validate().is_err());
    assert!(vm(1, 0).validate().is_err());
    assert!(vm(1, 1).validate().is_ok());
}
