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
    /// Outgoing requests by outcome (sent, denied, failed).
    pub outbound: Mutex<BTreeMap<&'static str, u64>>,
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

    pub fn outbound(&self, outcome: &'static str) {
        *self
            .outbound
            .lock()
            .expect("metrics")
            .entry(outcome)
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

/// One metric family: its HELP and TYPE lines, then a sample line (or a
/// histogram's lines) per function.
struct Family<'a> {
    out: String,
    functions: Vec<(String, &'a FunctionMetrics)>,
}

impl<'a> Family<'a> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter or gauge with one value per function.
    fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&FunctionMetrics) -> usize,
    ) {
        self.header(name, kind, help);
        for (f, m) in &self.functions {
            let _ = writeln!(self.out, "{name}{{function=\"{f}\"}} {}", value(m));
        }
    }

    /// A counter with a value per function and label value.
    fn labelled<K: std::fmt::Display>(
        &mut self,
        name: &str,
        label: &str,
        help: &str,
        values: impl Fn(&FunctionMetrics) -> Vec<(K, u64)>,
    ) {
        self.header(name, "counter", help);
        for (f, m) in &self.functions {
            for (k, n) in values(m) {
                let _ = writeln!(self.out, "{name}{{function=\"{f}\",{label}=\"{k}\"}} {n}");
            }
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: impl Fn(&FunctionMetrics) -> &Histogram) {
        self.header(name, "histogram", help);
        for (f, m) in &self.functions {
            h(m).render(&mut self.out, name, &format!("function=\"{f}\""));
        }
    }
}

pub fn render<'a>(functions: impl Iterator<Item = (&'a str, &'a FunctionMetrics)>) -> String {
    let mut fam = Family {
        out: String::new(),
        functions: functions.map(|(f, m)| (escape(f), m)).collect(),
    };
    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    fam.labelled(
        "amphi_requests_total",
        "code",
        "Requests answered, by function and status code.",
        |m| {
            m.responses
                .lock()
                .expect("metrics")
                .iter()
                .map(|(k, n)| (*k, *n))
                .collect()
        },
    );
    fam.labelled(
        "amphi_errors_total",
        "kind",
        "Failed requests, by function and kind (timeout, crash, overload, too_large, envelope).",
        |m| {
            m.errors
                .lock()
                .expect("metrics")
                .iter()
                .map(|(k, n)| (*k, *n))
                .collect()
        },
    );
    fam.labelled(
        "amphi_outbound_requests_total",
        "outcome",
        "Outgoing requests of functions, by outcome (sent, denied by allowed_outbound_hosts, failed).",
        |m| {
            m.outbound
                .lock()
                .expect("metrics")
                .iter()
                .map(|(k, n)| (*k, *n))
                .collect()
        },
    );
    fam.histogram(
        "amphi_request_duration_seconds",
        "Time from request to response, by function.",
        |m| &m.latency,
    );
    fam.single(
        "amphi_cold_starts_total",
        "counter",
        "Requests that had to wait for a new envelope, by function.",
        |m| m.cold_starts.load(Ordering::Relaxed) as usize,
    );
    fam.histogram(
        "amphi_cold_start_duration_seconds",
        "Time to make and start an envelope on demand, by function.",
        |m| &m.cold_start_latency,
    );
    fam.single(
        "amphi_in_flight",
        "gauge",
        "Invocations running now, by function.",
        |m| load(&m.in_flight),
    );
    fam.single(
        "amphi_envelopes",
        "gauge",
        "Envelopes alive now (warm or pooled), by function.",
        |m| load(&m.envelopes),
    );
    fam.single(
        "amphi_pool",
        "gauge",
        "Envelopes ready in a strict function's warm pool, by function.",
        |m| load(&m.pooled),
    );
    fam.out
}
