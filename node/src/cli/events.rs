//! `kvmesh events`: the cluster's event log, filtered by VM, node, time and
//! count, as an aligned table or one JSON object per line; `--follow` keeps
//! printing new events, from now on unless asked for history, and moves to
//! the next endpoint when its node goes away.
//!
//! Every event message starts with its subject (`vm web1: …`, `node n2 …`),
//! so the subject is read from there; a node filter also matches the events
//! that mention the node (`placed on n2`, `recovering from host n2`).

use std::time::Duration;

use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::cluster_client::ClusterClient;

use super::client::{connect, req, status_err};
use super::config::Settings;
use super::output::format_ms;
use super::Output;

/// What `kvmesh events` was asked to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub vm: Option<String>,
    pub node: Option<String>,
    /// Only events at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// At most this many, the newest.
    pub limit: Option<usize>,
}

#[cfg(test)]
use crate::view::node_of;
/// The subject an event is about: `("vm", "web1")`, `("node", "n2")`, …
pub use crate::view::subject;

/// Whether `e` passes the filter (the limit is applied to the whole list).
pub fn matches(filter: &Filter, e: &pb::Event) -> bool {
    let about = subject(e);
    if let Some(vm) = &filter.vm {
        if about != Some(("vm", vm.as_str())) {
            return false;
        }
    }
    if let Some(node) = &filter.node {
        let named = e.message.split(|c: char| c.is_whitespace() || ",:()".contains(c)).any(|w| w == node);
        if about != Some(("node", node.as_str())) && !named {
            return false;
        }
    }
    filter.since_ms.is_none_or(|since| e.at_ms >= since)
}

/// The events to print from `all`: the ones that match, the newest `limit`.
pub fn select<'a>(filter: &Filter, all: &'a [pb::Event]) -> Vec<&'a pb::Event> {
    let mut kept: Vec<&pb::Event> = all.iter().filter(|e| matches(filter, e)).collect();
    if let Some(limit) = filter.limit {
        let skip = kept.len().saturating_sub(limit);
        kept.drain(..skip);
    }
    kept
}

/// The host an event is about: its subject for a node event, else the
/// first known node its message names ("vm web1 is running on n2").

pub fn event_json(e: &pb::Event, known: &[String]) -> serde_json::Value {
    crate::view::json(crate::view::Event::new(e, known))
}

/// The cluster's node names, for [`node_of`] (none if the list fails).
async fn node_names(cluster: &mut ClusterClient<super::client::Ch>) -> Vec<String> {
    match cluster.list_nodes(req(pb::ListNodesRequest { consistent: false })).await {
        Ok(r) => r.into_inner().nodes.into_iter().map(|n| n.name).collect(),
        Err(_) => Vec::new(),
    }
}

fn print(output: Output, header: &mut bool, known: &[String], events: &[&pb::Event]) {
    for e in events {
        match output {
            Output::Json => outln!("{}", event_json(e, known)),
            Output::Table => {
                if !*header {
                    outln!("{:>6}  {:<25}  {:<9}  MESSAGE", "SEQ", "TIME", "KIND");
                    *header = true;
                }
                let by = if e.by.is_empty() { String::new() } else { format!(" [by {}]", e.by) };
                outln!("{:>6}  {:<25}  {:<9}  {}{by}", e.seq, format_ms(e.at_ms), e.kind, e.message);
            }
        }
    }
}

/// Prints the matching events; with `follow`, keeps printing new ones every
/// 500 ms, reconnecting (to the next endpoint that answers) when its node
/// goes away, until interrupted.
pub async fn run(settings: &Settings, output: Output, filter: Filter, follow: bool) -> Result<()> {
    let mut cluster = ClusterClient::new(connect(settings, None).await?);
    let all = cluster.list_events(req(pb::ListEventsRequest { after: 0 })).await.map_err(status_err)?.into_inner();
    let mut after = all.events.last().map_or(0, |e| e.seq);
    let mut header = false;
    let mut known = node_names(&mut cluster).await;
    // Following starts at now, unless history was asked for.
    let history = !follow || filter.since_ms.is_some() || filter.limit.is_some();
    if history {
        print(output, &mut header, &known, &select(&filter, &all.events));
    }
    if !follow {
        return Ok(());
    }
    if output == Output::Table && !history {
        eprintln!("following new events (Ctrl-C ends; --limit N or --since 1h shows earlier ones)");
    }
    let live = Filter { limit: None, ..filter };
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match cluster.list_events(req(pb::ListEventsRequest { after })).await {
            Ok(r) => {
                let events = r.into_inner().events;
                if let Some(last) = events.last() {
                    after = last.seq;
                }
                // A node that joined since is named too.
                if events.iter().any(|e| subject(e).is_some_and(|(k, n)| k == "node" && !known.iter().any(|x| x == n)))
                {
                    known = node_names(&mut cluster).await;
                }
                print(output, &mut header, &known, &select(&live, &events));
            }
            Err(e) if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) => {
                eprintln!("{}; reconnecting", status_err(e));
                cluster = reconnect(settings).await?;
            }
            Err(e) => return Err(status_err(e)),
        }
    }
}

/// Connects again, to the first endpoint that answers, for up to a minute.
async fn reconnect(settings: &Settings) -> Result<ClusterClient<super::client::Ch>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match connect(settings, None).await {
            Ok(channel) => return Ok(ClusterClient::new(channel)),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow!("lost the event stream and no endpoint answered for 60 s: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Parses `--since`: a duration back from now (`90s`, `10m`, `2h`, `1d`) or
/// a time as [`super::time::parse_time`] reads it.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if let Ok(ago_s) = super::security::parse_ttl(s) {
        return Ok(now_ms.saturating_sub(ago_s.saturating_mul(1000)));
    }
    super::time::parse_time(s).ok_or_else(|| {
        format!(
            "bad --since {s:?}: give a duration back from now (90s, 10m, 2h, 1d) or a time as the tables show it \
             (\"2026-12-07 14:00\" is local time; add Z, UTC or +0100 for another zone)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, at_ms: u64, message: &str) -> pb::Event {
        pb::Event { seq, at_ms, kind: "vm".into(), message: message.into(), by: String::new() }
    }

    #[test]
    fn filters_by_subject_mention_time_and_count() {
        let all = vec![
            ev(1, 1000, "vm web1 created on n1"),
            ev(2, 2000, "vm web10: start requested"),
            ev(3, 3000, "node n2 is down"),
            ev(4, 4000, "vm db: restarting on n2 after n1 was fenced"),
            ev(5, 5000, "vm web1: stop requested"),
        ];
        let seqs = |f: &Filter| select(f, &all).iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&Filter { vm: Some("web1".into()), ..Default::default() }), vec![1, 5]);
        assert_eq!(seqs(&Filter { node: Some("n2".into()), ..Default::default() }), vec![3, 4]);
        assert_eq!(seqs(&Filter { node: Some("n1".into()), ..Default::default() }), vec![1, 4]);
        assert_eq!(seqs(&Filter { since_ms: Some(3000), ..Default::default() }), vec![3, 4, 5]);
        assert_eq!(seqs(&Filter { limit: Some(2), ..Default::default() }), vec![4, 5]);
        let both = Filter { vm: Some("web1".into()), limit: Some(1), ..Default::default() };
        assert_eq!(seqs(&both), vec![5]);
    }

    #[test]
    fn the_node_is_the_subject_or_the_first_known_host_named() {
        let known = vec!["n1".to_string(), "n2".to_string()];
        assert_eq!(node_of(&ev(1, 0, "vm web1 is running on n2"), &known), Some("n2"));
        assert_eq!(node_of(&ev(1, 0, "node n3 removed"), &known), Some("n3"));
        assert_eq!(node_of(&ev(1, 0, "vm web1: stop requested"), &known), None);
    }

    #[test]
    fn the_subject_is_the_messages_first_words() {
        assert_eq!(subject(&ev(1, 0, "vm web1: stop requested")), Some(("vm", "web1")));
        assert_eq!(subject(&ev(1, 0, "node n3 removed")), Some(("node", "n3")));
        assert_eq!(subject(&ev(1, 0, "API token ci revoked")), None);
    }

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(parse_since("2026-11-26 00:00Z"), Ok(1_795_651_200_000));
        assert!(parse_since("10m").is_ok());
        assert!(parse_since("yesterday").is_err());
    }
}
