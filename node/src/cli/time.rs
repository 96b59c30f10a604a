//! Times as the CLI shows and reads them: shown in the machine's local time
//! with its UTC offset (`2026-12-07 14:03:09 +0100`), so no reader has to
//! guess the zone; read (`events --since`) as UTC.

/// Unix milliseconds as local `YYYY-MM-DD hh:mm:ss +hhmm`.
pub fn format_ms(ms: u64) -> String {
    format_with_offset(ms, local_offset_s((ms / 1000) as i64))
}

/// Unix milliseconds at a fixed offset from UTC, in seconds.
pub fn format_with_offset(ms: u64, offset_s: i64) -> String {
    let secs = (ms / 1000) as i64 + offset_s;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days);
    let sign = if offset_s < 0 { '-' } else { '+' };
    let off = offset_s.abs();
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02} {sign}{:02}{:02}", off / 3600, (off % 3600) / 60)
}

/// The local zone's offset from UTC at `unix_s`, from the C library (which
/// reads TZ and /etc/localtime); 0 if it cannot say.
fn local_offset_s(unix_s: i64) -> i64 {
    let t: libc::time_t = unix_s as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

/// `YYYY-MM-DD[ hh:mm[:ss]]` (or with a `T`), in Unix ms: in the zone it
/// names (`Z`, `UTC`, `+0100`, `-05:30`), else in local time, as the CLI
/// prints times. Anything else is `None`, never a guess.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, rest) = s.split_once([' ', 'T']).unwrap_or((s, "00:00"));
    let (clock, zone) = split_zone(rest.trim())?;
    let mut d = date.split('-');
    let (y, mo, day) = (number(d.next()?)?, number(d.next()?)?, number(d.next()?)?);
    let mut c = clock.split(':');
    let (h, mi) = (number(c.next()?)?, number(c.next()?)?);
    let sec = match c.next() {
        Some(text) => number(text)?,
        None => 0,
    };
    if d.next().is_some() || c.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let wall = days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + sec;
    // Local time: the offset in force then (asked at the wall time read
    // as UTC, which is off by at most the offset itself).
    let offset = zone.unwrap_or_else(|| local_offset_s(wall));
    u64::try_from(wall - offset).ok()?.checked_mul(1000)
}

/// Digits only, as a number.
fn number(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 6 {
        return None;
    }
    text.parse().ok()
}

/// The clock and the zone's offset in seconds (`None`: local time).
fn split_zone(rest: &str) -> Option<(&str, Option<i64>)> {
    if let Some(clock) =
        rest.strip_suffix('Z').or_else(|| rest.strip_suffix(" UTC")).or_else(|| rest.strip_suffix("UTC"))
    {
        return Some((clock.trim(), Some(0)));
    }
    let Some(at) = rest.rfind(['+', '-']) else { return Some((rest, None)) };
    let (clock, zone) = (rest[..at].trim(), &rest[at..]);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 {
        return None;
    }
    let (h, m) = (number(&digits[..2])?, number(&digits[2..])?);
    if h > 14 || m > 59 {
        return None;
    }
    Some((clock, Some(sign * (h * 3600 + m * 60))))
}

/// Howard Hinnant's civil-from-days: days since 1970-01-01 to (y, m, d).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse: (y, m, d) to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_the_zone() {
        assert_eq!(format_with_offset(0, 0), "1970-01-01 00:00:00 +0000");
        assert_eq!(format_with_offset(1_795_651_200_000, 0), "2026-11-26 00:00:00 +0000");
        assert_eq!(format_with_offset(1_795_651_200_000, 3600), "2026-11-26 01:00:00 +0100");
        assert_eq!(format_with_offset(1_795_651_200_000, -5 * 3600 - 1800), "2026-11-25 18:30:00 -0530");
    }

    #[test]
    fn reads_times_in_their_zone_and_refuses_the_rest() {
        assert_eq!(parse_time("2026-11-26 00:00 UTC"), Some(1_795_651_200_000));
        assert_eq!(parse_time("2026-11-26T00:00:30Z"), Some(1_795_651_230_000));
        assert_eq!(parse_time("2026-11-26 01:00:00 +0100"), Some(1_795_651_200_000));
        assert_eq!(parse_time("2026-11-25T18:30-05:30"), Some(1_795_651_200_000));
        assert_eq!(parse_time("1970-01-01Z"), None, "a zone needs a clock");
        assert_eq!(parse_time("2024-02-29 12:00Z"), Some(1_709_208_000_000));
        // What the table prints reads back as the same instant.
        let shown = format_ms(1_795_651_200_000);
        assert_eq!(parse_time(&shown), Some(1_795_651_200_000), "{shown}");
        for bad in ["2026-13-01", "soon", "2026-11-26 14:03:xx", "2026-11-26 14:03 +01", "2026-11-26 14:03:09 junk"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
