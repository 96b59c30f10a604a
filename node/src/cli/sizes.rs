//! The one size syntax of every size flag (`--memory`, `--disk`, `disk add
//! --size`, `disk resize`, `--memory-mib`): a number with an optional binary
//! unit, `K`, `M`, `G` or `T` (`KiB`, `MiB`, … and `B` for bytes also read).
//! A bare number is MiB, as memory is counted everywhere in kvmesh, so
//! `--memory 512` and `--memory 512M` are the same, and `--disk 8G` and
//! `--memory 8G` read alike.

/// Bytes for `s`; a bare number is MiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("bad size {s:?}: write a number with a unit, such as 512M, 8G or 1.5T (a bare number is MiB)");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "M" | "MB" | "MIB" => 1 << 20,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * multiplier as f64;
    // Up to 1 EiB: beyond any real disk, and far from u64's end.
    if !(1.0..=(1u64 << 60) as f64).contains(&bytes) {
        return Err(format!("bad size {s:?}: it must be more than nothing and at most 1 EiB"));
    }
    Ok(bytes.round() as u64)
}

/// MiB for `s` (memory); a bare number is MiB, and the size must be whole MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("bad size {s:?}: memory is given in whole MiB (e.g. 512M, 1.5G, 2048)"));
    }
    Ok(bytes >> 20)
}

/// `SIZE[@STORAGE]` for `--disk`.
pub fn parse_disk(s: &str) -> Result<(u64, String), String> {
    let (size, storage) = s.split_once('@').unwrap_or((s, ""));
    if s.contains('@') && storage.is_empty() {
        return Err(format!("{s:?}: name the storage after '@', e.g. 10G@shared"));
    }
    Ok((parse_bytes(size)?, storage.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax_with_mib_as_the_bare_unit() {
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert_eq!(parse_bytes("1.5t"), Ok(3 << 39));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert!(parse_bytes("2X").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("2048P").is_err());
        assert!(parse_bytes("99999999T").is_err());
    }

    #[test]
    fn memory_is_whole_mib() {
        assert_eq!(parse_mib("8G"), Ok(8192));
        assert_eq!(parse_mib("1.5G"), Ok(1536));
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert!(parse_mib("100K").unwrap_err().contains("whole MiB"));
        assert!(parse_mib("eight").is_err());
    }

    #[test]
    fn disks_name_their_storage_after_an_at() {
        assert_eq!(parse_disk("10G@shared"), Ok((10 << 30, "shared".into())));
        assert_eq!(parse_disk("1G"), Ok((1 << 30, String::new())));
        assert!(parse_disk("1G@").is_err());
        assert!(parse_disk("big@shared").is_err());
    }
}
