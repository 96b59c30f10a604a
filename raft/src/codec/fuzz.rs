//! A bounded fuzz of every decoder that reads bytes from outside: RPC
//! payloads from peers (proposals and their answers, openraft's messages)
//! and values read back from disk (log entries, state records, snapshot
//! metadata). Random bytes and mutations of valid encodings must decode to
//! a value or an error, never a panic, an abort on a huge allocation, or a
//! stack overflow. It runs in the ordinary test suite, a few seconds.

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;
use crate::command::{Command, Response};
use crate::requests::RequestId;
use crate::security::SecurityCmd;
use crate::types::{Entry, NodeId, SnapshotMeta, TypeConfig};

const ROUNDS: usize = 4000;

fn sample_commands() -> Vec<Command> {
    let inner = Command::Security { cmd: SecurityCmd::RevokeApiToken { name: "ci".into() }, at_ms: 7 };
    let audited = Command::Audited { by: "alice (admin) from 10.0.0.5:4000".into(), cmd: Box::new(inner.clone()) };
    let request = Command::Request { id: RequestId { origin: 3, seq: 99 }, cmd: Box::new(audited.clone()) };
    vec![inner, audited, request.clone(), Command::Batch(vec![request])]
}

/// Flips, cuts, grows and splices `seed` at random.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        match rng.gen_range(0..5) {
            0 if !bytes.is_empty() => {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !bytes.is_empty() => bytes.truncate(rng.gen_range(0..bytes.len())),
            2 => {
                let i = rng.gen_range(0..=bytes.len());
                bytes.insert(i, rng.gen());
            }
            // A huge length prefix where a small one was.
            3 if !bytes.is_empty() => {
                let i = rng.gen_range(0..bytes.len());
                bytes.splice(i..i, [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
            }
            _ => {
                let from = rng.gen_range(0..bytes.len().max(1)).min(bytes.len());
                bytes[from..].iter_mut().for_each(|b| *b = rng.gen());
            }
        }
    }
    bytes
}

fn random(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..256);
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn rpc_payloads_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x6b766d);
    let seeds = [
        to_wire("p", &sample_commands()).unwrap(),
        to_wire("r", &Ok::<_, crate::proposer::WriteFailure>(vec![Response::Done, Response::Batch(vec![])])).unwrap(),
    ];
    for round in 0..ROUNDS {
        let bytes = if round % 3 == 0 { random(&mut rng) } else { mutate(&mut rng, &seeds[round % 2]) };
        let _ = from_wire::<Vec<Command>>("proposal", &bytes);
        let _ = from_wire::<std::result::Result<Vec<Response>, crate::proposer::WriteFailure>>("reply", &bytes);
        let _ = from_wire::<openraft::raft::AppendEntriesRequest<TypeConfig>>("append", &bytes);
        let _ = from_wire::<openraft::raft::VoteRequest<NodeId>>("vote", &bytes);
        let _ = from_wire::<openraft::raft::InstallSnapshotRequest<TypeConfig>>("snapshot", &bytes);
    }
}

#[test]
fn stored_records_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x736c6564);
    let mut meta = crate::model::ClusterState::default().meta;
    meta.security.revoked.insert("ab".repeat(32), 5);
    let seeds = [encode("meta", &meta).unwrap(), encode("cmds", &sample_commands()).unwrap()];
    for round in 0..ROUNDS {
        let mut bytes = if round % 3 == 0 { random(&mut rng) } else { mutate(&mut rng, &seeds[round % 2]) };
        if let Some(first) = bytes.first_mut() {
            *first = FORMAT;
        }
        let _ = decode::<crate::model::Meta>("meta", &bytes);
        let _ = decode::<crate::model::Event>("event", &bytes);
        let _ = decode::<crate::model::Node>("node", &bytes);
        let _ = decode::<crate::model::Vm>("vm", &bytes);
        let _ = decode::<Entry>("log entry", &bytes);
        let _ = decode::<SnapshotMeta>("snapshot meta", &bytes);
        let _ = decode::<Vec<Command>>("cmds", &bytes);
    }
}

/// A batch in a batch in a batch… a hundred thousand deep: refused, not a
/// stack overflow.
#[test]
fn deep_nesting_is_refused() {
    let empty = to_wire("b", &vec![Command::Batch(vec![])]).unwrap();
    // [vec len 1][Batch tag][vec len 0]: the tag is the second byte.
    let tag = empty[1];
    let mut bytes = vec![1];
    for _ in 0..100_000 {
        bytes.extend([tag, 1]);
    }
    bytes.extend([tag, 0]);
    let err = from_wire::<Vec<Command>>("deep", &bytes).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
    // The allowed depth still decodes.
    let mut ok = Command::Batch(vec![]);
    for _ in 1..MAX_NESTING {
        ok = Command::Batch(vec![ok]);
    }
    let back: Vec<Command> = from_wire("ok", &to_wire("ok", &vec![ok.clone()]).unwrap()).unwrap();
    assert_eq!(back, vec![ok]);
}

#[test]
fn a_claimed_length_past_the_limit_is_an_error_not_an_allocation() {
    // A Vec<Command> claiming 2^62 elements.
    let bytes = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];
    assert!(from_wire::<Vec<Command>>("huge", &bytes).is_err());
    let mut stored = vec![FORMAT, 0xfd];
    stored.extend(u64::MAX.to_le_bytes());
    assert!(decode::<Vec<String>>("huge", &stored).is_err());
}
