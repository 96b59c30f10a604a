//! The daemon's log: to stderr through a lossy queue, with repeated warnings
//! and errors folded. A peer that is down makes Raft and the agents retry
//! several times a second; each retry's warning is the same line (only a
//! request counter or a backoff differs). The first of a kind is written,
//! the repeats of the next ten seconds are counted, and the next one written
//! after that, or a report line if none comes, says how many were left out:
//! a down peer is one line per kind every ten seconds. Fencing lines are
//! never folded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// Repeats of one warning within this window are counted, not written.
const WINDOW: Duration = Duration::from_secs(10);

/// Starts the daemon's log; the guard flushes what is queued at exit.
///
/// The queue is lossy, with a writer thread: a log file on a frozen or full
/// disk then drops lines instead of stopping every thread that logs (the
/// heartbeat, fencing).
pub fn init() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KVMESH_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,openraft=error,sled=warn,h2=warn,tower=warn,hyper=warn,netlink_packet_route=error")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(10_000)
        .finish(std::io::stderr());
    let format = Folding::new(format::Format::default().with_target(false).with_ansi(ansi));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer).event_format(format).init();
    flush
}

/// A formatter that folds repeated warnings and errors (see the module).
pub struct Folding<F> {
    inner: F,
    seen: &'static Mutex<HashMap<u64, Seen>>,
}

struct Seen {
    written_at: Instant,
    left_out: u64,
    /// The start of the line, for the report of what was left out.
    summary: String,
}

impl<F> Folding<F> {
    /// With the thread that reports what the repeats left out.
    pub fn new(inner: F) -> Self {
        let seen: &'static Mutex<HashMap<u64, Seen>> = Box::leak(Box::new(Mutex::new(HashMap::new())));
        let _ = std::thread::Builder::new().name("log-folding".into()).spawn(move || report_folded(seen));
        Folding { inner, seen }
    }
}

/// Fields whose numbers change from one retry to the next (a request
/// counter, a backoff, a duration); every other field must match exactly,
/// so two peers (their addresses and ids differ) never fold together.
const VARYING: &[&str] = &["request_id", "interval", "took_ms", "elapsed", "term", "index", "vote", "log_id"];

/// What makes two events "the same line": where they were logged and their
/// fields, numbers left out only where they vary between retries. `None`
/// for events that are never folded: fencing, whose every line matters.
fn kind_of(event: &Event<'_>) -> Option<u64> {
    struct Text(String);
    impl tracing::field::Visit for Text {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            let value = format!("{value:?}");
            let value: String = if VARYING.contains(&field.name()) {
                value.chars().filter(|c| !c.is_ascii_digit()).collect()
            } else {
                value
            };
            let _ = write!(self.0, "{}={value};", field.name());
        }
    }
    let mut text = Text(String::new());
    event.record(&mut text);
    if text.0.contains("fenc") || event.metadata().target() == FOLDED {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.metadata().callsite().hash(&mut hasher);
    text.0.hash(&mut hasher);
    Some(hasher.finish())
}

/// The target of the lines that report what was folded.
const FOLDED: &str = "kvmesh::folded";

/// Every ten seconds, says how many lines of each kind were left out and
/// not reported yet (the repeats stopped, so no later line carries them).
fn report_folded(seen: &'static Mutex<HashMap<u64, Seen>>) {
    loop {
        std::thread::sleep(WINDOW);
        let now = Instant::now();
        let due: Vec<(u64, String)> = {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.values_mut()
                .filter(|s| s.left_out > 0 && now.duration_since(s.written_at) >= WINDOW)
                .map(|s| (std::mem::take(&mut s.left_out), s.summary.clone()))
                .collect()
        };
        for (count, summary) in due {
            tracing::warn!(target: FOLDED, "{count} more like \"{summary}\" were not logged in the last {} s", WINDOW.as_secs());
        }
    }
}

/// Whether to write an event of this kind now, and how many were left out
/// since the last one written.
fn admit(seen: &mut HashMap<u64, Seen>, kind: u64, now: Instant, summary: impl FnOnce() -> String) -> Option<u64> {
    match seen.get_mut(&kind) {
        Some(s) if now.duration_since(s.written_at) < WINDOW => {
            s.left_out += 1;
            None
        }
        Some(s) => {
            let left_out = std::mem::take(&mut s.left_out);
            s.written_at = now;
            Some(left_out)
        }
        None => {
            // Bounded: kinds are call sites, but fields could vary without end.
            if seen.len() >= 4096 {
                seen.retain(|_, s| now.duration_since(s.written_at) < WINDOW);
            }
            seen.insert(kind, Seen { written_at: now, left_out: 0, summary: summary() });
            Some(0)
        }
    }
}

/// The event's message, cut short: what a folded kind is called.
fn summary(event: &Event<'_>) -> String {
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    let mut m = Message(String::new());
    event.record(&mut m);
    m.0.chars().take(80).collect()
}

impl<S, N, F> FormatEvent<S, N> for Folding<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if *event.metadata().level() > Level::WARN {
            return self.inner.format_event(ctx, writer, event);
        }
        let Some(kind) = kind_of(event) else { return self.inner.format_event(ctx, writer, event) };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let admitted = admit(&mut seen, kind, Instant::now(), || summary(event));
        drop(seen);
        match admitted {
            None => Ok(()),
            Some(0) => self.inner.format_event(ctx, writer, event),
            Some(left_out) => {
                self.inner.format_event(ctx, writer.by_ref(), event)?;
                writeln!(
                    writer,
                    "    ({left_out} more like the line above in the last {} s were not logged)",
                    WINDOW.as_secs()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_counted_then_reported() {
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let s = String::new;
        assert_eq!(admit(&mut seen, 1, t0, s), Some(0));
        assert_eq!(admit(&mut seen, 1, t0 + Duration::from_secs(1), s), None);
        assert_eq!(admit(&mut seen, 1, t0 + Duration::from_secs(2), s), None);
        // Another kind is not held back by the first.
        assert_eq!(admit(&mut seen, 2, t0 + Duration::from_secs(2), s), Some(0));
        assert_eq!(admit(&mut seen, 1, t0 + WINDOW, s), Some(2));
        assert_eq!(admit(&mut seen, 1, t0 + WINDOW + Duration::from_secs(1), s), None);
    }
}
