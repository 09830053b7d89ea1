//! Reads server-process figures from `/proc`: proportional set size (PSS, from
//! `/proc/PID/smaps_rollup`) and CPU time (utime + stime from `/proc/PID/stat`, converted to
//! milliseconds with `sysconf(_SC_CLK_TCK)`), plus the open-file limit of this process.

use std::fs;

/// Summed figures of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Total PSS in KiB.
    pub pss_kib: u64,
    /// Total user + system CPU time in milliseconds.
    pub cpu_ms: f64,
}

/// PSS of one process in KiB.
pub fn pss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_pss(&text).ok_or_else(|| format!("{path}: no Pss line"))
}

fn parse_pss(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("Pss:")?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// CPU time (user + system) of one process in milliseconds.
pub fn cpu_ms(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| format!("{path}: unparsable"))?;
    Ok(ticks as f64 * 1000.0 / clk_tck())
}

/// utime + stime in clock ticks from the text of `/proc/PID/stat`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state(3) ppid(4) ... utime is field 14, stime 15 (1-based over the whole line).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Sums PSS and CPU time over `pids`.
pub fn sample(pids: &[u32]) -> Result<Sample, String> {
    let mut s = Sample::default();
    for &pid in pids {
        s.pss_kib += pss_kib(pid)?;
        s.cpu_ms += cpu_ms(pid)?;
    }
    Ok(s)
}

/// Direct children of `pid` (for example nginx workers of a master), from
/// `/proc/PID/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Raises the soft open-file limit to the hard limit and returns the resulting soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "1234 (ng inx) (w)) S 1 1234 1234 0 -1 4194624 100 0 0 0 250 75 0 0 20 0 1 0 5 1000 10 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_pss() {
        let text = "00400000-7ffd [rollup]\nRss:                2048 kB\nPss:                1234 kB\nPss_Dirty: 5 kB\n";
        assert_eq!(parse_pss(text), Some(1234));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let s = sample(&[me]).unwrap();
        assert!(s.pss_kib > 0);
        assert!(s.cpu_ms >= 0.0);
        assert!(sample(&[u32::MAX]).is_err());
    }
}
