//! Wire to model: client requests checked and turned into model values.
//! Each error is a sentence for the client (an invalid argument).

use std::collections::{BTreeMap, HashMap};

use kvmesh_proto as pb;
use kvmesh_scheduler::Policy;

use crate::error::{Error, Result};
use crate::model::{PlacementSettings, VmSpec};
use crate::view;

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidRequest(message.into())
}

fn labels(m: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    for (k, v) in m {
        if k.is_empty() || k.contains('=') || v.contains('=') {
            return Err(invalid(format!("bad label {k}={v}: use key=value")));
        }
    }
    Ok(m.clone().into_iter().collect())
}

/// The replicated spec of a create request (the name is checked by the
/// caller, which knows the naming rules).
pub fn vm_spec(req: &pb::CreateVmRequest) -> Result<VmSpec> {
    // Paths name files on the host that will run the VM, so they must not
    // depend on the client's working directory.
    for (flag, path) in [("--image", &req.image), ("--kernel", &req.kernel), ("--initrd", &req.initrd)] {
        if let Some(p) = path {
            if !p.starts_with('/') {
                return Err(invalid(format!("{flag} must be an absolute path on the hosts (got {p:?})")));
            }
        }
    }
    if req.initrd.is_some() && req.kernel.is_none() {
        return Err(invalid("--initrd needs --kernel"));
    }
    if req.cmdline.is_some() && req.kernel.is_none() {
        return Err(invalid("--cmdline needs --kernel"));
    }
    if req.network.is_some() && req.bridge.is_some() {
        return Err(invalid("use --network or --bridge, not both"));
    }
    if req.affinity.is_some() && req.affinity == req.anti_affinity {
        return Err(invalid("a group cannot be both --affinity and --anti-affinity"));
    }
    let spec = VmSpec {
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        ha: req.ha,
        disk_bytes: (req.disk_bytes > 0).then_some(req.disk_bytes),
        image: req.image.clone(),
        kernel: req.kernel.clone(),
        initrd: req.initrd.clone(),
        cmdline: req.cmdline.clone(),
        network: req.network.clone(),
        bridge: req.bridge.clone(),
        priority: req.priority,
        pin: req.pin.clone(),
        required_labels: labels(&req.required_labels)?,
        preferred_labels: labels(&req.preferred_labels)?,
        anti_affinity: req.anti_affinity.clone(),
        soft_anti_affinity: req.soft_anti_affinity.clone(),
        affinity: req.affinity.clone(),
    };
    view::request(0, &req.name, &spec).validate().map_err(|e| invalid(e.to_string()))?;
    Ok(spec)
}

/// New placement settings: the request's policy, and its ratios where
/// given (else the current ones).
pub fn placement(req: &pb::SetPolicyRequest, current: &PlacementSettings) -> Result<PlacementSettings> {
    let policy: Policy = req.policy.parse().map_err(|e: kvmesh_scheduler::Error| invalid(e.to_string()))?;
    PlacementSettings::with_ratios(
        policy,
        req.cpu_overcommit.unwrap_or(current.cpu_overcommit()),
        req.memory_overcommit.unwrap_or(current.memory_overcommit()),
    )
    .map_err(|e| invalid(e.to_string()))
}
