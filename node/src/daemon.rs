//! `kvmesh serve`: opens the data dir, starts Raft and the gRPC server, joins
//! a cluster when asked, and watches for this node's removal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_raft::network::{plain_dial, Dial, MembershipRefusals, Network, RaftService};
use kvmesh_raft::types::Raft;
use tokio::net::TcpListener;
use tonic::Code;
use tracing::{error, info, instrument, warn};

use crate::api::cluster::ClusterService;
use crate::api::host::HostService;
use crate::api::vms::VmsService;
use crate::auth::tokens::JoinToken;
use crate::config::ServeConfig;
use crate::ctx::NodeCtx;
use crate::data_dir::DataDir;
use crate::error::{Error, Result};
use crate::ha::{LeaderView, Lease};
use crate::hypervisor::{self, libvirt::Libvirt, Hypervisor};
use crate::tls::dial::Dialer;
use crate::tls::NodeTls;

/// How long `serve --join` keeps trying before it gives up.
const JOIN_DEADLINE: Duration = Duration::from_secs(180);

pub async fn run(config: ServeConfig) -> Result<()> {
    config.validate()?;
    // Before the Raft store opens: its WAL reports fsyncs from the start.
    crate::telemetry::get();
    // Files the daemon makes (the Raft store holds the CA key) are its own.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let raft_config = Arc::new(config.openraft()?);
    let data_dir = DataDir::open(&config.data_dir, &config.name)?;
    let id = data_dir.identity.node_id;
    let (log_store, state_machine) = kvmesh_raft::store::open(&data_dir.raft_dir())?;
    let log_size = log_store.clone();
    let state = state_machine.shared();

    let stored_cluster = state.read().map(|d| d.state.cluster_id().map(str::to_string)).unwrap_or(None);
    match (&data_dir.identity.cluster_id, &stored_cluster) {
        (Some(mine), Some(stored)) if mine != stored => {
            return Err(Error::DataDir {
                path: config.data_dir.clone(),
                reason: format!("its identity says cluster {mine} but its raft store holds cluster {stored}; it was mixed up with another node's files"),
            });
        }
        // sled recovers a damaged file by dropping what it cannot read, which
        // can leave an empty store. Starting from that would forget the
        // cluster silently, so refuse.
        (Some(mine), None) => {
            return Err(Error::DataDir {
                path: config.data_dir.clone(),
                reason: format!("this node belongs to cluster {mine}, but its raft store is empty: the store under raft/ was lost or is corrupt. Restore it from a backup, or remove this node with `kvmesh cluster remove` and rejoin it with an empty --data-dir"),
            });
        }
        _ => {}
    }

    // Connect to the hypervisor before anything listens, so a missing
    // libvirtd is reported at once.
    let uri = config.libvirt_uri.clone();
    let hv_dir = config.data_dir.clone();
    let hypervisor: Arc<dyn Hypervisor> = Arc::new(
        tokio::task::spawn_blocking(move || Libvirt::connect(&uri, id, &hv_dir))
            .await
            .map_err(|e| Error::Hypervisor(format!("hypervisor connect task failed: {e}")))??,
    );
    let host = hypervisor::blocking(&hypervisor, |hv| hv.capacity()).await?;

    crate::tls::listen::raise_nofile_limit();
    let (tls, unrecorded) = prepare_tls(&config, &state).await?;
    let dial: Dial = match &tls {
        Some(tls) => {
            let dialer = Dialer::Tls(tls.client_config()?);
            Arc::new(move |address: &str, timeout| dialer.channel(address, timeout).map_err(|e| e.to_string()))
        }
        None => plain_dial(),
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| Error::Listen { address: config.listen.clone(), source })?;
    let refusals = Arc::new(MembershipRefusals::default());
    let network = Network::new(refusals.clone(), state.clone(), dial.clone());
    let raft = Raft::new(id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| Error::Raft(format!("cannot start raft: {e}")))?;

    let cpus = config.cpus.unwrap_or(host.cpus);
    let memory_mib = config.memory_mib.unwrap_or(host.memory_mib);
    // The member to join: --join, or the first one the join token names.
    let token_member =
        config.join_token.as_ref().and_then(|t| t.parse::<JoinToken>().ok()).and_then(|t| t.members.first().cloned());
    let join = config.join.clone().or(token_member);
    let ctx = Arc::new(NodeCtx::new(
        id,
        config,
        cpus,
        memory_mib,
        raft.clone(),
        state,
        data_dir,
        hypervisor,
        refusals,
        dial,
        tls.clone(),
    ));
    info!(node = %ctx.name, id, address = %ctx.address, cpus, memory_mib, libvirt = %ctx.config.libvirt_uri, "kvmesh node starting");
    if ctx.config.libvirt_uri == "qemu:///system" {
        // The local libvirtd's settings: say whether disk leases have
        // libvirt's lock manager behind them (README, "Disk leases").
        let conf = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
        match hypervisor::lock_manager(&conf) {
            Some(manager) => info!(%manager, "disk leases: QEMU's image locks and libvirt's lock manager"),
            None => warn!(
                "disk leases: QEMU's image locks only; libvirt's lock manager is off in /etc/libvirt/qemu.conf \
                 (set lock_manager = \"lockd\" on every host: README, \"Disk leases\")"
            ),
        }
    }

    let leader = Arc::new(LeaderView::new(ctx.clone()));
    let lease_file = ctx.config.data_dir.join("lease");
    let lease = Arc::new(Lease::new(Duration::from_millis(ctx.config.fence_after_ms), Some(lease_file)));
    let acceptor = match &tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(tls.server_config()?)),
        None => None,
    };
    let server = tokio::spawn(serve_grpc(ctx.clone(), leader.clone(), listener, acceptor));
    let initialized = raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))?;
    let joined = ctx.data_dir.lock().unwrap_or_else(|p| p.into_inner()).identity.cluster_id.is_some();
    let member = ctx.metrics().membership_config.membership().get_node(&ctx.id).is_some();
    let cluster = ctx.read(|d| d.state.nodes.contains_key(&ctx.id).then(|| d.state.cluster_id().map(str::to_string)));
    if let (true, false, true, Some(Some(cluster))) = (initialized, joined, member, &cluster) {
        // A join or init that stopped after it took effect, before the
        // identity file recorded it: record it now.
        info!(%cluster, "recording the cluster this node joined before it stopped");
        ctx.data_dir.lock().unwrap_or_else(|p| p.into_inner()).set_cluster_id(cluster)?;
        guard_address_change(&ctx);
    } else if let (true, false, Some(target)) = (initialized, joined, &join) {
        // A join that stopped half way (added to the membership, not yet
        // registered): finish it.
        info!("finishing a join that was interrupted");
        join_cluster(&ctx, target).await?;
    } else if initialized {
        if join.is_some() {
            info!("this node already belongs to a cluster; ignoring --join");
        }
        info!("resuming from the data dir");
        guard_address_change(&ctx);
    } else if let Some(target) = join {
        ctx.joining.store(true, std::sync::atomic::Ordering::SeqCst);
        join_cluster(&ctx, &target).await?;
        ctx.joining.store(false, std::sync::atomic::Ordering::SeqCst);
    } else {
        info!(
            "waiting to be bootstrapped: run `kvmesh --endpoint {} cluster init` on this node, or restart it with --join <member>",
            ctx.address
        );
    }
    tokio::spawn(health_loop(ctx.clone()));
    tokio::spawn(crate::telemetry::watch_leader(ctx.clone()));
    tokio::spawn(crate::agent::run(ctx.clone(), lease.clone()));
    tokio::spawn(crate::storage::probe::run(ctx.clone()));
    tokio::spawn(crate::netconf::run(ctx.clone()));
    tokio::spawn(crate::ha::fence_loop(ctx.clone(), lease.clone()));
    tokio::spawn(crate::ha::heartbeat_loop(ctx.clone(), lease, leader.clone()));
    tokio::spawn(crate::ha::controller::run(ctx.clone(), leader));
    tokio::spawn(snapshot_by_size(ctx.clone(), log_size));
    tokio::spawn(crate::tls::renew::run(ctx.clone(), unrecorded));
    if initialized {
        // A first start's join carries the flags already.
        tokio::spawn(propose_own_flags(ctx.clone()));
    }
    #[cfg(feature = "bench-seed")]
    crate::bench_seed::start(&ctx);

    tokio::select! {
        r = server => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "gRPC server failed"),
                Err(e) => error!(error = %e, "gRPC server task failed"),
            }
        }
        ended = watch_membership(ctx.clone()) => {
            // Guests first: once this daemon is gone nothing fences them,
            // and the leader restarts HA VMs elsewhere after down_after.
            let error = match ended {
                Ended::Removed(reason) => {
                    error!("{reason}");
                    crate::ha::host::leave(&ctx).await;
                    Error::Removed(reason)
                }
                Ended::Fatal(reason) => {
                    error!("{reason}; destroying this host's HA guests before stopping");
                    crate::ha::host::fence(&ctx).await;
                    Error::Raft(reason)
                }
            };
            // Let answers in flight get out (a write whose outcome is now
            // unknown says so, rather than dying with the connection).
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await;
            // Non-zero either way, so a service manager notices: a removed
            // node must not be restarted as it is, a failed store needs a look.
            return Err(error);
        }
        _ = shutdown_signal() => info!("shutting down on signal"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await;
    info!("stopped");
    Ok(())
}

/// Why the daemon stops on its own.
enum Ended {
    /// This node is no longer a member of its cluster.
    Removed(String),
    /// Raft stopped: a storage error (a full or failing disk) or a bug.
    Fatal(String),
}

/// A member restarted with another `--listen/--advertise` than its
/// membership record holds must not campaign: it could win an election on
/// an address the others cannot reach, and lead nobody. It stops electing
/// and asks the cluster (any member that answers forwards it to the leader)
/// to record the new address; the leader then reaches it there, and once
/// the membership it holds has the new address it campaigns again. A sole
/// voter has nobody to mislead and records its own address once it leads.
fn guard_address_change(ctx: &Arc<NodeCtx>) {
    let m = ctx.metrics();
    let membership = m.membership_config.membership().clone();
    let Some(recorded) = membership.get_node(&ctx.id).map(|n| n.address.clone()) else { return };
    if recorded == ctx.address {
        return;
    }
    let others: Vec<String> =
        membership.nodes().filter(|(id, _)| **id != ctx.id).map(|(_, n)| n.address.clone()).collect();
    // Learners never vote, so their view of the leader can be a dead one.
    let voters: Vec<String> = membership
        .voter_ids()
        .filter(|v| *v != ctx.id)
        .filter_map(|v| membership.get_node(&v).map(|n| n.address.clone()))
        .collect();
    let other_voters = !voters.is_empty();
    warn!(recorded = %recorded, now = %ctx.address, "this node's address changed; asking the cluster to record it");
    if other_voters {
        ctx.raft.runtime_config().elect(false);
    }
    tokio::spawn(record_new_address(ctx.clone(), recorded, others, voters));
}

async fn record_new_address(ctx: Arc<NodeCtx>, recorded: String, others: Vec<String>, voters: Vec<String>) {
    let cluster_id = ctx.read(|d| d.state.cluster_id().unwrap_or_default().to_string());
    let request = pb::UpdateAddressRequest { node_id: ctx.id, cluster_id, address: ctx.address.clone() };
    let started = Instant::now();
    let mut last_hint = Instant::now();
    let mut leaderless_rounds = 0;
    loop {
        let here = ctx.metrics().membership_config.membership().get_node(&ctx.id).map(|n| n.address.clone());
        if here.as_deref() == Some(ctx.address.as_str()) {
            info!(address = %ctx.address, "the cluster records this node's new address; campaigning allowed again");
            ctx.raft.runtime_config().elect(true);
            return;
        }
        // Any member forwards it to the leader; this node itself when it
        // leads (a sole voter, or one that won because nobody else could).
        let myself = ctx.is_leader().then(|| ctx.address.clone());
        let targets = others.iter().cloned().chain(myself);
        for target in targets {
            let Ok(channel) = ctx.channel(&target) else { continue };
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(Duration::from_secs(20));
            match pb::cluster_client::ClusterClient::new(channel).update_address(req).await {
                Ok(_) => break,
                // Only the leader's answer to a heartbeat is final: ask it.
                Err(s)
                    if s.code() == Code::FailedPrecondition && s.message().starts_with(kvmesh_proto::NOT_A_MEMBER) =>
                {
                    ctx.recheck.notify_one();
                }
                Err(s) => tracing::debug!(via = %target, error = %s.message(), "address update not accepted yet"),
            }
        }
        // While no member that answers knows a leader (another voter is
        // down too, say), this node may be the only one that can win: its
        // own requests still reach the others. Once it leads it records its
        // own address, so it never leads for long on one nobody can use.
        // Its own view of the leader is no guide: nobody can reach it.
        let someone_leads = peers_know_a_leader(&ctx, &voters).await;
        leaderless_rounds = if someone_leads { 0 } else { leaderless_rounds + 1 };
        ctx.raft.runtime_config().elect(leaderless_rounds >= 3);
        if last_hint.elapsed() > Duration::from_secs(10) {
            last_hint = Instant::now();
            warn!(
                recorded = %recorded,
                now = %ctx.address,
                waited_s = started.elapsed().as_secs(),
                "this node does not campaign until the cluster records its new address, and no member has done so yet; check that the others run and can reach {}, or restart this node with --advertise {recorded}",
                ctx.address
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether any of `peers` (voters) answering a status call knows a leader
/// other than this node.
async fn peers_know_a_leader(ctx: &NodeCtx, peers: &[String]) -> bool {
    for peer in peers {
        let Ok(channel) = ctx.channel(peer) else { continue };
        // Marked forwarded so the peer answers from its own view.
        let request = crate::ctx::forward(pb::StatusRequest {}, Duration::from_millis(800));
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            pb::cluster_client::ClusterClient::new(channel).status(request),
        )
        .await;
        if let Ok(Ok(status)) = reply {
            if status.into_inner().leader.is_some_and(|l| l.id != ctx.id) {
                return true;
            }
        }
    }
    false
}

/// A node restarted with other `--cpus`, `--memory-mib` or `--label` flags
/// than its record holds proposes them, through the same command as `node
/// set`. Only flags given explicitly count: a detected capacity never
/// overrides what an operator set with `node set`, and labels given here
/// are added, never removing others. A refusal (VMs would no longer fit)
/// is logged with its reasons and the record stays as it was.
async fn propose_own_flags(ctx: Arc<NodeCtx>) {
    let (cpus, memory_mib, labels) = (ctx.config.cpus, ctx.config.memory_mib, ctx.config.labels.clone());
    if cpus.is_none() && memory_mib.is_none() && labels.is_empty() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(record) = ctx.read(|d| d.state.nodes.get(&ctx.id).cloned()) else { continue };
        if ctx.leader().is_none() {
            continue;
        }
        let differs = cpus.is_some_and(|c| c != record.cpus)
            || memory_mib.is_some_and(|m| m != record.memory_mib)
            || labels.iter().any(|(k, v)| record.labels.get(k) != Some(v));
        if !differs {
            return;
        }
        let cmd = kvmesh_raft::command::Command::UpdateNode {
            id: ctx.id,
            address: None,
            cpus,
            memory_mib,
            set_labels: labels.clone(),
            unset_labels: Default::default(),
            at_ms: crate::ctx::now_ms(),
        };
        match ctx.propose(cmd).await {
            Ok(kvmesh_raft::command::Response::Refused(r)) => {
                error!("the --cpus/--memory-mib/--label flags were not applied: {r}");
                return;
            }
            Ok(_) => {
                info!(?cpus, ?memory_mib, ?labels, "this node's record now has the capacity and labels of its flags");
                return;
            }
            Err(e) => warn!(error = %e, "could not propose this node's new flags yet; retrying"),
        }
    }
}

/// Builds a snapshot when the log since the last one outgrows
/// `raft.snapshot_log_mib`: openraft's policy counts entries, and an entry
/// can hold hundreds of batched writes.
async fn snapshot_by_size(ctx: Arc<NodeCtx>, log: kvmesh_raft::store::LogStore) {
    let limit = ctx.config.raft.snapshot_log_mib << 20;
    let mut asked: Option<(Option<u64>, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snapshot = ctx.metrics().snapshot.map(|l| l.index);
        let bytes = log.bytes_after(snapshot);
        if bytes < limit {
            continue;
        }
        // One request per snapshot: wait for it to land (or 30 s).
        if asked.is_some_and(|(at_snapshot, when)| at_snapshot == snapshot && when.elapsed() < Duration::from_secs(30))
        {
            continue;
        }
        info!(log_mib = bytes >> 20, "the log outgrew raft.snapshot_log_mib: building a snapshot");
        if let Err(e) = ctx.raft.trigger().snapshot().await {
            warn!(error = %e, "could not start a snapshot");
        }
        asked = Some((snapshot, Instant::now()));
    }
}

/// This node's certificate, ready before anything listens or dials: loaded
/// from the data dir (renewed first if it is due or expired), obtained with
/// the join token, or made with a CA of its own for a node that will found
/// a cluster. `None` under `--insecure`. Also returns a renewal the cluster
/// has yet to record.
async fn prepare_tls(
    config: &ServeConfig,
    state: &kvmesh_raft::store::SharedState,
) -> Result<(Option<Arc<NodeTls>>, Option<(String, kvmesh_raft::security::IssuedCert)>)> {
    if config.insecure {
        warn!("--insecure: plaintext and no authentication; for development on this machine only");
        return Ok((None, None));
    }
    let tls = NodeTls::open(&config.data_dir)?;
    let lifetime = Duration::from_secs(config.cert_lifetime_s);
    let member = state.read().map(|d| d.state.cluster_id().is_some()).unwrap_or(false);
    if !tls.has_identity() && member {
        // Its tls/ was lost (restored without it, say): the replica holds
        // the cluster CA, so it issues itself a certificate, recorded once
        // the cluster answers.
        warn!("this member has no certificate (tls/ is missing); issuing one from the cluster CA in its replica");
        let issued = crate::tls::renew::issue(&tls, state, &config.name, lifetime)?;
        return Ok((Some(tls), Some(issued)));
    }
    // A node that is not a member yet enrolls again with a token when it
    // holds only its own CA (it was started first without one) or a
    // certificate for another name (a refused join retried under a new one).
    let named = tls.certified_key().and_then(|k| crate::tls::ca::info(&k.cert[0]).ok()).and_then(|i| i.subject);
    let other_name = named != Some(crate::tls::ca::Subject::Node(config.name.clone()));
    let re_enroll = !member && config.join_token.is_some() && (tls.own_ca_key().is_some() || other_name);
    if !tls.has_identity() || re_enroll {
        match &config.join_token {
            Some(token) => {
                let token: JoinToken = token.parse().map_err(Error::Config)?;
                info!(members = ?token.members, "enrolling with the join token");
                crate::tls::enroll::enroll(&tls, &token, &config.name, config.join.as_deref()).await?;
                // Its own CA, if it had one, is no longer of use.
                let _ = std::fs::remove_file(config.data_dir.join("tls").join("ca.key"));
            }
            None if config.join.is_some() => {
                return Err(Error::Config(format!(
                    "joining a cluster needs a join token: on a member run `kvmesh cluster token create --name {}`, then start this node with --join-token TOKEN",
                    config.name
                )))
            }
            None => {
                tls.bootstrap(&config.name, lifetime)?;
                info!("made this node's certificate and a CA for the cluster it will found (`kvmesh cluster init`)");
            }
        }
        return Ok((Some(tls), None));
    }
    // A certificate past half its life is renewed before anything dials;
    // failing that, the renewal loop tries again once the replica can sign.
    let unrecorded = crate::tls::renew::renew_if_due(&tls, state, &config.name, lifetime).unwrap_or_else(|e| {
        warn!(error = %e, "cannot renew this node's certificate at start");
        None
    });
    Ok((Some(tls), unrecorded))
}

async fn serve_grpc(
    ctx: Arc<NodeCtx>,
    leader: Arc<LeaderView>,
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> std::result::Result<(), tonic::transport::Error> {
    // Both reflection versions: grpcurl speaks v1, many grpcio tools v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().expect("descriptor sets are compiled in");
    let reflection_alpha = reflection_builder().build_v1alpha().expect("descriptor sets are compiled in");
    let (reporter, health) = tonic_health::server::health_reporter();
    *HEALTH.lock().unwrap_or_else(|p| p.into_inner()) = Some(reporter);
    let incoming = crate::tls::listen::incoming(listener, acceptor);
    // The REST API beside the gRPC services, calling the same ones.
    let rest = crate::api::rest::Rest {
        ctx: ctx.clone(),
        vms: Arc::new(VmsService::new(ctx.clone(), leader.clone())),
        cluster: Arc::new(ClusterService::new(ctx.clone(), leader.clone())),
        storage: Arc::new(crate::api::storage::StorageService::new(ctx.clone(), leader.clone())),
        images: Arc::new(crate::api::storage::ImagesService::new(ctx.clone())),
        networks: Arc::new(crate::api::networks::NetworksService::new(ctx.clone(), leader.clone())),
        security: Arc::new(crate::api::security::SecurityService::new(ctx.clone())),
    };
    // The web UI's pages and session endpoints beside it.
    let ui = crate::ui::router(ctx.clone());
    let routes = tonic::service::Routes::from(crate::api::rest::router(rest).merge(ui))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            pb::raft_server::RaftServer::new(RaftService::new(
                ctx.raft.clone(),
                ctx.state.clone(),
                ctx.recheck.clone(),
            ))
            .max_decoding_message_size(256 << 20),
        )
        .add_service(pb::cluster_server::ClusterServer::new(ClusterService::new(ctx.clone(), leader.clone())))
        .add_service(pb::vms_server::VmsServer::new(VmsService::new(ctx.clone(), leader.clone())))
        .add_service(pb::storage_server::StorageServer::new(crate::api::storage::StorageService::new(
            ctx.clone(),
            leader.clone(),
        )))
        .add_service(pb::networks_server::NetworksServer::new(crate::api::networks::NetworksService::new(
            ctx.clone(),
            leader.clone(),
        )))
        .add_service(pb::images_server::ImagesServer::new(crate::api::storage::ImagesService::new(ctx.clone())))
        .add_service(pb::security_server::SecurityServer::new(crate::api::security::SecurityService::new(ctx.clone())))
        .add_service(pb::host_server::HostServer::new(HostService::new(ctx.clone(), leader)));
    let gate = crate::auth::gate::GateLayer::new(ctx.state.clone(), ctx.raft.metrics(), ctx.config.insecure);
    // HTTP/1.1 (with WebSocket upgrades) beside tonic's HTTP/2: the same
    // gate in front of the same routes.
    tokio::spawn(crate::api::http1::serve(incoming.http1, tower::Layer::layer(&gate, routes.clone().prepare())));
    tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(gate)
        .add_routes(routes)
        .serve_with_incoming(incoming.h2)
        .await
}

static HEALTH: std::sync::Mutex<Option<tonic_health::server::HealthReporter>> = std::sync::Mutex::new(None);

/// Reports SERVING while this node knows a leader (so writes can succeed),
/// NOT_SERVING otherwise. The overall ("") status is always SERVING once up.
async fn health_loop(ctx: Arc<NodeCtx>) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let reporter = HEALTH.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reporter) = reporter {
            let status = if ctx.leader().is_some() { ServingStatus::Serving } else { ServingStatus::NotServing };
            if last != Some(status) {
                for svc in ["kvmesh.v1.Cluster", "kvmesh.v1.Vms"] {
                    reporter.set_service_status(svc, status).await;
                }
                last = Some(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asks a member to add this node, retrying while the cluster is unreachable
/// or electing. Refusals (taken name, wrong version) end the process.
#[instrument(skip_all, fields(node = %ctx.name))]
async fn join_cluster(ctx: &NodeCtx, target: &str) -> Result<()> {
    let request = pb::JoinRequest {
        node_id: ctx.id,
        name: ctx.name.clone(),
        address: ctx.address.clone(),
        cpus: ctx.cpus,
        memory_mib: ctx.memory_mib,
        protocol_version: kvmesh_proto::PROTOCOL_VERSION,
        labels: ctx.config.labels.clone().into_iter().collect(),
    };
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    let mut backoff = Duration::from_millis(200);
    loop {
        let channel = ctx.channel(target)?;
        let mut client = pb::cluster_client::ClusterClient::new(channel);
        let mut req = tonic::Request::new(request.clone());
        req.set_timeout(Duration::from_secs(90));
        match client.join(req).await {
            Ok(r) => {
                let r = r.into_inner();
                info!(cluster = %r.cluster_id, role = %r.role, via = target, "joined the cluster");
                ctx.data_dir.lock().unwrap_or_else(|p| p.into_inner()).set_cluster_id(&r.cluster_id)?;
                return Ok(());
            }
            Err(s)
                if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal) =>
            {
                if tokio::time::Instant::now() + backoff > deadline {
                    return Err(Error::Unavailable(format!(
                        "could not join via {target} within {}s: {}",
                        JOIN_DEADLINE.as_secs(),
                        s.message()
                    )));
                }
                warn!(via = target, error = %s.message(), "join attempt failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
            Err(s) => return Err(Error::FailedPrecondition(format!("join refused by {target}: {}", s.message()))),
        }
    }
}

/// Resolves when this node must stop: it was removed from the cluster (a
/// committed membership without it, after it had been a member, or the
/// leader's word; see [`crate::ha::host`]), or its Raft stopped.
async fn watch_membership(ctx: Arc<NodeCtx>) -> Ended {
    let notified = ctx.removed.clone();
    tokio::select! {
        ended = watch_raft(ctx.clone()) => ended,
        _ = notified.notified() => Ended::Removed(removed_message(&ctx)),
        _ = refused_by_newer_membership(&ctx) => Ended::Removed(removed_message(&ctx)),
    }
}

/// Resolves once a peer refused this node's vote on the strength of a
/// committed membership newer than this node's own: one that left it out.
/// A refusal from a peer with an older membership only means the peer lags.
async fn refused_by_newer_membership(ctx: &NodeCtx) {
    loop {
        ctx.refusals.changed.notified().await;
        let mine = ctx.metrics().membership_config.log_id().map_or(0, |l| l.index);
        if ctx.refusals.highest().is_some_and(|theirs| theirs > mine) {
            return;
        }
    }
}

fn removed_message(ctx: &NodeCtx) -> String {
    format!(
        "node {} is not a member of its cluster any more (it was removed); stopping. To rejoin, move its data dir aside, make a join token on a member (`kvmesh cluster token create --name {}`) and start it with an empty --data-dir and --join-token",
        ctx.name, ctx.name
    )
}

async fn watch_raft(ctx: Arc<NodeCtx>) -> Ended {
    let mut rx = ctx.raft.metrics();
    let mut was_member = false;
    loop {
        {
            let m = rx.borrow_and_update();
            if let Err(fatal) = &m.running_state {
                return Ended::Fatal(format!(
                    "raft stopped: {fatal}. This node serves nothing until restarted; if the disk is full or failing, fix it first"
                ));
            }
            let membership = &m.membership_config;
            let is_member = membership.membership().get_node(&ctx.id).is_some();
            let committed = match (membership.log_id(), m.last_applied) {
                (Some(c), Some(a)) => c.index <= a.index,
                _ => false,
            };
            if is_member {
                was_member = true;
            } else if was_member && committed {
                return Ended::Removed(removed_message(&ctx));
            }
        }
        if rx.changed().await.is_err() {
            return Ended::Fatal("raft stopped".into());
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
