//! Per-function counters and histograms, rendered in the Prometheus text
//! exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 14],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Default)]
pub struct FunctionMetrics {
    /// Responses by status code.
    pub responses: Mutex<BTreeMap<u16, u64>>,
    /// Failures by kind (timeout, crash, overload, too_large, envelope).
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
    pub latency: Histogram,
    pub cold_starts: AtomicU64,
    pub cold_start_latency: Histogram,
    pub in_flight: AtomicUsize,
    pub envelopes: AtomicUsize,
    /// Envelopes ready in a strict function's pool.
    pub pooled: AtomicUsize,
}

impl FunctionMetrics {
    pub fn response(&self, status: u16, took: Duration) {
        *self
            .responses
            .lock()
            .expect("metrics")
            .entry(status)
            .or_default() += 1;
        self.latency.observe(took);
    }

    pub fn error(&self, kind: &'static str) {
        *self
            .errors
            .lock()
            .expect("metrics")
            .entry(kind)
            .or_default() += 1;
    }

    pub fn cold_start(&self, took: Duration) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        self.cold_start_latency.observe(took);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render<'a>(functions: impl Iterator<Item = (&'a str, &'a FunctionMetrics)>) -> String {
    let functions: Vec<_> = functions.collect();
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "amphi_requests_total",
        "counter",
        "Requests answered, by function and status code.",
    );
    for (f, m) in &functions {
        for (code, n) in m.responses.lock().expect("metrics").iter() {
            let _ = writeln!(
                out,
                "amphi_requests_total{{function=\"{}\",code=\"{code}\"}} {n}",
                escape(f)
            );
        }
    }
    family(
        &mut out,
        "amphi_errors_total",
        "counter",
        "Failed requests, by function and kind (timeout, crash, overload, too_large, envelope).",
    );
    for (f, m) in &functions {
        for (kind, n) in m.errors.lock().expect("metrics").iter() {
            let _ = writeln!(
                out,
                "amphi_errors_total{{function=\"{}\",kind=\"{kind}\"}} {n}",
                escape(f)
            );
        }
    }
    family(
        &mut out,
        "amphi_request_duration_seconds",
        "histogram",
        "Time from request to response, by function.",
    );
    for (f, m) in &functions {
        m.latency.render(
            &mut out,
            "amphi_request_duration_seconds",
            &format!("function=\"{}\"", escape(f)),
        );
    }
    family(
        &mut out,
        "amphi_cold_starts_total",
        "counter",
        "Requests that had to wait for a new envelope, by function.",
    );
    for (f, m) in &functions {
        let _ = writeln!(
            out,
            "amphi_cold_starts_total{{function=\"{}\"}} {}",
            escape(f),
            m.cold_starts.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "amphi_cold_start_duration_seconds",
        "histogram",
        "Time to make and start an envelope on demand, by function.",
    );
    for (f, m) in &functions {
        m.cold_start_latency.render(
            &mut out,
            "amphi_cold_start_duration_seconds",
            &format!("function=\"{}\"", escape(f)),
        );
    }
    family(
        &mut out,
        "amphi_in_flight",
        "gauge",
        "Invocations running now, by function.",
    );
    for (f, m) in &functions {
        let _ = writeln!(
            out,
            "amphi_in_flight{{function=\"{}\"}} {}",
            escape(f),
            m.in_flight.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "amphi_envelopes",
        "gauge",
        "Envelopes alive now (warm or pooled), by function.",
    );
    for (f, m) in &functions {
        let _ = writeln!(
            out,
            "amphi_envelopes{{function=\"{}\"}} {}",
            escape(f),
            m.envelopes.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "amphi_pool",
        "gauge",
        "Envelopes ready in a strict function's warm pool, by function.",
    );
    for (f, m) in &functions {
        let _ = writeln!(
            out,
            "amphi_pool{{function=\"{}\"}} {}",
            escape(f),
            m.pooled.load(Ordering::Relaxed)
        );
    }
    out
}
