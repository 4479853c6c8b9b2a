//! The standard `process_*` metrics, read from `/proc/self` at each scrape.
//!
//! prometheus-client has no process collector, so this is the small one every
//! Prometheus client library ships: resident and virtual memory, open and maximum file
//! descriptors, CPU seconds and start time, with the names dashboards expect. On a
//! system without `/proc` it reports nothing. The values are the process's: a process
//! that runs several nodes (the tests) shows the same figures in each node's scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registered in every node's registry; reads `/proc` when encoded.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(stats.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(stats.virtual_bytes),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                stats.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                stats.open_fds.map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds.map(|n| n as f64),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        Ok(())
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
struct ProcessStats {
    resident_bytes: f64,
    virtual_bytes: f64,
    cpu_seconds: f64,
    start_time_seconds: Option<f64>,
    open_fds: Option<usize>,
    max_fds: Option<u64>,
}

impl ProcessStats {
    #[cfg(target_os = "linux")]
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let mut stats = parse_stat(&stat, ticks as f64, page as f64, boot_time)?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count());
        stats.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| max_open_files(&text));
        Some(stats)
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Self> {
        None
    }
}

/// Parses `/proc/self/stat` (proc(5)): the fields after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn parse_stat(
    stat: &str,
    ticks_per_second: f64,
    page_bytes: f64,
    boot_time: Option<u64>,
) -> Option<ProcessStats> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    if ticks_per_second <= 0.0 {
        return None;
    }
    let cpu_ticks = field(14)? + field(15)?;
    let start_time_seconds = boot_time.and_then(|boot| {
        let since_boot = field(22)? / ticks_per_second;
        Some(boot as f64 + since_boot)
    });
    Some(ProcessStats {
        resident_bytes: field(24)? * page_bytes,
        virtual_bytes: field(23)?,
        cpu_seconds: cpu_ticks / ticks_per_second,
        start_time_seconds,
        open_fds: None,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: when the system booted, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (hub bub) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 150 0 0 20 0 8 0 5000 104857600 2560 18446744073709551615";
        let stats = parse_stat(stat, 100.0, 4096.0, Some(1_700_000_000)).unwrap();
        assert_eq!(stats.cpu_seconds, 4.0);
        assert_eq!(stats.virtual_bytes, 104_857_600.0);
        assert_eq!(stats.resident_bytes, 2560.0 * 4096.0);
        assert_eq!(stats.start_time_seconds, Some(1_700_000_050.0));
        assert_eq!(parse_stat("garbage", 100.0, 4096.0, None), None);
    }

    #[test]
    fn boot_time_and_fd_limit_are_found() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_can_be_read() {
        let stats = ProcessStats::read().unwrap();
        assert!(stats.resident_bytes > 0.0);
        assert!(stats.open_fds.unwrap_or(0) > 0);
        assert!(stats.start_time_seconds.unwrap_or(0.0) > 1_600_000_000.0);
    }
}
