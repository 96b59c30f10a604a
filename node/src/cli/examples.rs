//! The examples at the end of each command's `--help`: what an operator
//! types, for the commands they reach for first.

pub const TOP: &str = "\
Examples:
  kvmesh serve --name n1 --listen 10.0.0.1:7100 --data-dir /var/lib/kvmesh   # on each host
  kvmesh cluster init                      # once, on the first node
  kvmesh vm create web1 --memory 2G --disk 20G --ha --wait
  kvmesh vm list -o wide
  kvmesh events --follow

Exit codes: 0 done, 1 error, 2 wrong usage (or a confirmation a script must give with --yes),
3 a check that did not pass (cluster capacity --check, an unplaceable --dry-run, --strict),
141 stdout closed (e.g. piped to head).
Several endpoints: --endpoint a:7100,b:7100 (or KVMESH_ENDPOINT) are tried in order.";

pub const SERVE: &str = "\
Examples:
  kvmesh serve --name n1 --listen 10.0.0.1:7100 --data-dir /var/lib/kvmesh
  kvmesh serve --name n2 --listen 10.0.0.2:7100 --join 10.0.0.1:7100 --join-token kvmj1....
  kvmesh serve --config /etc/kvmesh/kvmesh.toml
  kvmesh serve --insecure --libvirt-uri test:///default   # one machine, no TLS, for trying it out";

pub const CLUSTER: &str = "\
Examples:
  kvmesh cluster init
  kvmesh cluster status
  kvmesh cluster token create --name n4 --ttl 30m
  kvmesh cluster capacity --check || echo 'HA reserve broken'
  kvmesh cluster policy set spread --cpu-overcommit 2
  kvmesh cluster remove n4";

pub const NODE: &str = "\
Examples:
  kvmesh node list -o wide
  kvmesh node get n2
  kvmesh node drain n2 --wait
  kvmesh node activate n2
  kvmesh node set n2 --memory-mib 64G --label rack=b";

pub const VM: &str = "\
Examples:
  kvmesh vm create web1 --memory 2G --vcpus 2 --image debian12 --ha --wait
  kvmesh vm list --node n2 --state running --sort memory
  kvmesh vm get web1
  kvmesh vm stop web1 --wait
  kvmesh vm migrate web1 --to n3 --wait
  kvmesh vm delete web1 --yes --wait";

pub const VM_CREATE: &str = "\
Examples:
  kvmesh vm create web1 --memory 2G --vcpus 2 --disk 20G
  kvmesh vm create db1 --memory 8G --image debian12 --disk 100G@shared --ha --priority 10 --wait
  kvmesh vm create cache1 --memory 1G --anti-affinity cache --node-label ssd=true
  kvmesh vm create big --memory 64G --dry-run      # where it would go, per node (exit 3: nowhere)

Sizes: a number with K, M, G or T (binary units); a bare number is MiB.";

pub const VM_LIST: &str = "\
Examples:
  kvmesh vm list
  kvmesh vm list -o wide --sort created
  kvmesh vm list --node n2 --state running
  kvmesh vm list --ha -o json | jq -r '.[].name'";

pub const VM_DELETE: &str = "\
Examples:
  kvmesh vm delete web1               # asks first if it runs
  kvmesh vm delete web1 --yes --wait  # scripts: no question; return once it is gone
  kvmesh vm delete web1 --keep-disks --yes";

pub const EVENTS: &str = "\
Examples:
  kvmesh events --limit 20
  kvmesh events --vm web1 --since 1h
  kvmesh events --node n2 --follow
  kvmesh events --since '2026-12-07 14:00' -o json";

pub const STORAGE: &str = "\
Examples:
  kvmesh storage add shared --kind shared-dir --path /srv/kvmesh
  kvmesh storage add nfs1 --kind nfs --server 10.0.0.9 --export /export/vms
  kvmesh storage list
  kvmesh storage remove nfs1";

pub const IMAGE: &str = "\
Examples:
  kvmesh image import debian12 debian-12.qcow2 --storage shared
  kvmesh image import vmlinuz ./vmlinuz --storage shared --kind kernel
  kvmesh image list";

pub const TOKEN: &str = "\
Examples:
  kvmesh token create ci --role operator
  kvmesh token list
  kvmesh token revoke ci";

pub const CERT: &str = "\
Examples:
  kvmesh cert create alice --role admin --out alice.toml
  kvmesh cert list
  kvmesh cert revoke alice";

pub const NETWORK: &str = "\
Examples:
  kvmesh network add backend --kind vxlan --vni 100
  kvmesh network add lan --kind bridge --bridge br0 --required
  kvmesh network list
  kvmesh vm create web1 --nic backend --nic lan,model=e1000";
