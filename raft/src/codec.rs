//! Versioned binary encoding for everything kvmesh stores or sends.
//!
//! Every stored value starts with one format byte, so a newer release can
//! migrate old values and an older release refuses newer ones with a clear
//! error instead of misreading them.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Current format of stored values. 6: a live migration may copy local
/// disks, its finish carries the downtime. 5: live migrations, cold drains.
/// 4: storage domains, images, VM disks
/// with recorded volumes, snapshots. 3: nodes remember the state to return
/// to after an outage, `UpdateNode`, and snapshot metadata under the
/// checksum. 2: the state gained the answers to recent writes and the count
/// of VMs created. Older formats are not migrated (pre-release): they are
/// refused with what to do.
/// 7: the cluster's CA, tokens and certificates; events record who asked.
/// 8: VMs have labels of their own.
/// 9: logical networks; NICs with the MACs the cluster gave them.
/// 10: VM hardware (firmware, machine, CPU model, boot order, CD-ROM) and
/// pending changes.
/// 11: VMs count their spec's generations, and reports say which one runs.
pub const FORMAT: u8 = 11;

/// No value kvmesh decodes is larger: a length prefix claiming more (a
/// corrupt file, a hostile peer) is an error before anything is allocated.
const LIMIT: usize = 1 << 30;

/// How deep commands may nest (a request id around an audited write in a
/// batch is 3): a payload nesting deeper is refused before decoding it
/// could exhaust the stack.
pub const MAX_NESTING: u32 = 8;

fn config(
) -> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint, bincode::config::Limit<LIMIT>>
{
    bincode::config::standard().with_limit::<LIMIT>()
}

thread_local! {
    static NESTING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Deserializes a value that may hold commands (or responses) again,
/// counting how deep the decoder is; refuses to go past [`MAX_NESTING`].
/// Used with `#[serde(deserialize_with)]` on every recursive field.
pub fn nested<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            NESTING.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
    let depth = NESTING.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let _leave = Leave;
    if depth > MAX_NESTING {
        return Err(serde::de::Error::custom(format!("commands nested deeper than {MAX_NESTING}")));
    }
    T::deserialize(deserializer)
}

/// Encodes `value` prefixed with the format byte.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT];
    let body =
        bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode { what, detail: e.to_string() })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let (&format, body) = bytes.split_first().ok_or(Error::Decode { what, detail: "empty value".into() })?;
    if format > FORMAT {
        return Err(Error::FormatTooNew { what, found: format, supported: FORMAT });
    }
    if format == 0 {
        return Err(Error::Decode { what, detail: "format byte 0 is not a kvmesh value".into() });
    }
    if format < FORMAT {
        return Err(Error::FormatTooOld { what, found: format, supported: FORMAT });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| Error::Decode { what, detail: e.to_string() })?;
    if used != body.len() {
        return Err(Error::Decode { what, detail: format!("{} trailing bytes", body.len() - used) });
    }
    Ok(value)
}

/// Decodes the first value in bytes written by [`encode`] of a larger
/// value that starts with it (a struct's leading fields), ignoring the rest.
pub fn decode_prefix<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let (&format, body) = bytes.split_first().ok_or(Error::Decode { what, detail: "empty value".into() })?;
    if format > FORMAT {
        return Err(Error::FormatTooNew { what, found: format, supported: FORMAT });
    }
    if format == 0 {
        return Err(Error::Decode { what, detail: "format byte 0 is not a kvmesh value".into() });
    }
    if format < FORMAT {
        return Err(Error::FormatTooOld { what, found: format, supported: FORMAT });
    }
    bincode::serde::decode_from_slice(body, config())
        .map(|(v, _)| v)
        .map_err(|e| Error::Decode { what, detail: e.to_string() })
}

/// Unversioned encoding for RPC payloads (the protocol version travels in a header).
pub fn to_wire<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode { what, detail: e.to_string() })
}

/// Decodes an RPC payload written by [`to_wire`]; trailing bytes are an error.
pub fn from_wire<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| Error::Decode { what, detail: e.to_string() })?;
    if used != bytes.len() {
        return Err(Error::Decode { what, detail: format!("{} trailing bytes", bytes.len() - used) });
    }
    Ok(value)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_version_checks() {
        let bytes = encode("x", &(7u64, "hi".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT);
        let back: (u64, String) = decode("x", &bytes).unwrap();
        assert_eq!(back, (7, "hi".to_string()));

        let mut newer = bytes.clone();
        newer[0] = FORMAT + 1;
        assert!(matches!(decode::<(u64, String)>("x", &newer), Err(Error::FormatTooNew { .. })));
        let mut older = bytes.clone();
        older[0] = FORMAT - 1;
        assert!(matches!(decode::<(u64, String)>("x", &older), Err(Error::FormatTooOld { .. })));
        assert!(decode::<(u64, String)>("x", &[]).is_err());
        assert!(decode::<(u64, String)>("x", &[FORMAT, 0xff, 0xff]).is_err());
    }
}
