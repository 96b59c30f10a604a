//! The load generator both systems get: C clients in closed loops for a
//! fixed time, each waiting for its write to be acknowledged before sending
//! the next; latencies kept per write, throughput over the measured window.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub writes: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Sorted.
    pub latencies: Vec<Duration>,
}

impl RunResult {
    pub fn per_sec(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }

    pub fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// One durable write by client `client`, its `seq`th. Cloned per client.
pub trait Writer: Clone + Send + Sync + 'static {
    fn write(&self, client: usize, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs `clients` closed-loop clients: a warm-up (not counted), then
/// `duration` measured.
pub async fn run<W: Writer>(writer: W, clients: usize, warmup: Duration, duration: Duration) -> RunResult {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let writer = writer.clone();
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = writer.write(client, seq).await;
                seq += 1;
                // Only writes sent inside the window count.
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client task");
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    let first_error = first_error.lock().unwrap().take();
    RunResult { writes: latencies.len(), errors, first_error, elapsed: duration, latencies }
}

/// A 256-byte payload that differs per write, so no layer can elide it.
pub fn payload(client: usize, seq: u64) -> String {
    let head = format!("client {client} write {seq} ");
    let mut s = String::with_capacity(256);
    s.push_str(&head);
    while s.len() < 256 {
        s.push((b'a' + (s.len() % 26) as u8) as char);
    }
    s
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
