//! Process metrics, the names every Prometheus client library uses (`process_*`), read from
//! `/proc/self` on each scrape. Elsewhere than Linux, or if a file cannot be read or parsed,
//! the samples it would give are left out: a scrape never fails for them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// What `/proc/self/stat` says (the fields used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// Start time, in clock ticks after boot.
    pub start_ticks: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Resident set size, in pages.
    pub resident_pages: u64,
}

/// Parses the text of `/proc/<pid>/stat` (proc(5)); `ticks` is the clock tick rate.
pub fn parse_stat(text: &str, ticks: u64) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
    // other fields follow the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let ticks = ticks.max(1) as f64;
    Some(Stat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
        threads: num(20)?,
        start_ticks: num(22)?,
        virtual_bytes: num(23)?,
        resident_pages: num(24)?,
    })
}

/// The boot time (seconds since the epoch) from the text of `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Registered in the metrics registry: encodes `process_*` on each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second();
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, ticks));
        if let Some(s) = stat {
            ConstCounter::new(s.cpu_seconds).encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?)?;
            let page = rustix::param::page_size() as u64;
            gauge(s.resident_pages.saturating_mul(page)).encode(enc.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                MetricType::Gauge,
            )?)?;
            gauge(s.virtual_bytes).encode(enc.encode_descriptor(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                None,
                MetricType::Gauge,
            )?)?;
            gauge(s.threads).encode(enc.encode_descriptor(
                "process_threads",
                "Number of OS threads in the process",
                None,
                MetricType::Gauge,
            )?)?;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| parse_boot_time(&t));
            if let Some(boot) = boot {
                let start = boot as f64 + s.start_ticks as f64 / ticks.max(1) as f64;
                ConstGauge::new(start).encode(enc.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge(dir.count() as u64).encode(enc.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            if let Some(max) = limit.current {
                gauge(max).encode(enc.encode_descriptor(
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        // A command name with a space and a parenthesis; utime 250, stime 50 at 100 Hz,
        // 7 threads, started 12345 ticks after boot, 1 MiB virtual, 300 pages resident.
        let line = "4242 (wall (d) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 \
                    12345 1048576 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        let s = parse_stat(line, 100).expect("parses");
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.0,
                threads: 7,
                start_ticks: 12345,
                virtual_bytes: 1_048_576,
                resident_pages: 300,
            }
        );
        assert_eq!(parse_stat("4242 (x) S 1 2", 100), None);
        assert_eq!(parse_stat("no parenthesis", 100), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764460000\nprocesses 9\n"),
            Some(1_764_460_000)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_memory_fds_and_start_time() {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(ProcessCollector));
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &reg).expect("encodes");
        let value = |name: &str| -> f64 {
            s.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{s}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6, "{s}");
        assert!(value("process_open_fds") >= 3.0, "{s}");
        assert!(value("process_max_fds") >= value("process_open_fds"), "{s}");
        assert!(value("process_threads") >= 1.0, "{s}");
        assert!(value("process_cpu_seconds_total") >= 0.0, "{s}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
