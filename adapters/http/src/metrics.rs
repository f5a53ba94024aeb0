//! Prometheus text exposition, written by hand: a handful of counters and gauges do not justify
//! a metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request counters by status class.
#[derive(Debug, Default)]
pub struct HttpCounters {
    classes: [AtomicU64; 5],
}

impl HttpCounters {
    /// Counts one response.
    pub fn observe(&self, status: u16) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Renders `caracal_http_responses_total` for a service.
    pub fn render(&self, service: &str, out: &mut String) {
        out.push_str("# HELP caracal_http_responses_total HTTP responses by status class.\n");
        out.push_str("# TYPE caracal_http_responses_total counter\n");
        for (i, counter) in self.classes.iter().enumerate() {
            let _ = writeln!(
                out,
                "caracal_http_responses_total{{service=\"{service}\",class=\"{}xx\"}} {}",
                i + 1,
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// Renders one gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}
