//! `--wait`: polling a VM or a node until an operation has finished (or
//! failed, or the timeout passed), with a progress line on a terminal, and
//! asking before destructive operations (`--yes`).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::vms_client::VmsClient;

use super::client::{req, status_err, Ch};
use super::output::vm_state;
use super::{Output, UsageError};

/// What a VM operation waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Start, restart, recover, create: the guest runs.
    Running,
    /// Stop: the guest is off.
    Stopped,
    /// Delete: the VM is gone from the cluster.
    Gone,
}

impl Until {
    fn goal(self) -> &'static str {
        match self {
            Until::Running => "running",
            Until::Stopped => "stopped",
            Until::Gone => "deleted",
        }
    }
}

/// Whether a progress line goes to stderr: for people at a terminal.
fn show_progress(output: Output) -> bool {
    output == Output::Table && std::io::stderr().is_terminal()
}

/// Polls VM `name` until it reaches `until`; the VM as last seen (`None`
/// once deleted). A VM that fails (or crashes, when it should run) ends the
/// wait with the host's error.
pub async fn vm(
    vms: &mut VmsClient<Ch>,
    output: Output,
    name: &str,
    until: Until,
    timeout: Duration,
) -> Result<Option<pb::Vm>> {
    let show = show_progress(output);
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        // Through the leader: the answering node may not have applied the
        // action yet, and its old state (a `failed`, a `running` before the
        // restart) must not end the wait.
        let get = pb::GetVmRequest { name: name.to_string(), consistent: true };
        let vm = match vms.get(req(get)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound && until == Until::Gone => {
                if show {
                    eprintln!("{name}: deleted ({:.0} s)", started.elapsed().as_secs_f64());
                }
                return Ok(None);
            }
            // An election: ask again, within the timeout.
            Err(s) if s.code() == tonic::Code::Unavailable && started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(status_err(s)),
        };
        let state = vm_state(vm.state);
        let node = vm.node.as_deref().unwrap_or("-");
        if show {
            let line = format!("{name}: {state} on {node}");
            if line != last {
                eprintln!("{line} ({:.0} s)", started.elapsed().as_secs_f64());
                last = line;
            }
        }
        match (until, state) {
            (Until::Running, "running") | (Until::Stopped, "stopped") => return Ok(Some(vm)),
            // Not placed anywhere: nothing runs that could stop.
            (Until::Stopped, _) if vm.node.is_none() && vm.observed.is_empty() => return Ok(Some(vm)),
            // A crash is retried by its host; a failure waits for an operator.
            (_, "failed") => {
                let error = vm.last_error.as_deref().unwrap_or("no error text");
                return Err(anyhow!("VM {name} is {state} on {node}: {error}"));
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(anyhow!(
                "VM {name} is still {state} on {node} after {} s (waiting for it to be {}); `kvmesh events --vm {name}` says what happened",
                timeout.as_secs(),
                until.goal()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls node `name` until its state is `goal` (a drain: `maintenance`).
pub async fn node(
    cluster: &mut pb::cluster_client::ClusterClient<Ch>,
    output: Output,
    name: &str,
    goal: &str,
    timeout: Duration,
) -> Result<pb::NodeInfo> {
    let show = show_progress(output);
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        let get = pb::GetNodeRequest { name: name.to_string(), consistent: true };
        let node = match cluster.get_node(req(get)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(status_err(s)),
        };
        let state = super::output::shown_node_state(&node);
        if show {
            let line = format!("{name}: {state}, {} VM(s) placed", node.vm_count);
            if line != last {
                eprintln!("{line} ({:.0} s)", started.elapsed().as_secs_f64());
                last = line;
            }
        }
        if state == goal {
            return Ok(node);
        }
        if started.elapsed() >= timeout {
            return Err(anyhow!(
                "node {name} is still {state} with {} VM(s) after {} s; `kvmesh vm list --node {name}` shows what is left, `kvmesh events --node {name}` why",
                node.vm_count,
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asks before a destructive operation: passes with `--yes`, asks on a
/// terminal, and refuses without one (a script must say `--yes`).
pub fn confirm(yes: bool, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(format!("{what}: pass --yes to confirm (there is no terminal to ask on)")).into());
    }
    eprint!("{what}. Go on? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(UsageError("not confirmed; nothing was changed".into()).into())
    }
}
