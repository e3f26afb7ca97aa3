//! What Linux says about a process we started: CPU time and memory from `/proc/<pid>`.

use std::io;

/// USER_HZ, the unit of utime/stime in `/proc/<pid>/stat`. It is 100 on every Linux this runs
/// on (`getconf CLK_TCK`); reading it would need libc's sysconf, which the crate avoids.
const TICKS_PER_S: f64 = 100.0;

/// CPU time (user + system, all threads) the process has used so far, in ms.
pub fn cpu_ms(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its `)` do not.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| bad(&stat))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| bad(&stat))
    };
    Ok((ticks(11)? + ticks(12)?) * 1000.0 / TICKS_PER_S)
}

/// Resident memory now and its peak (VmRSS, VmHWM), in KB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kb: u64,
    pub peak_kb: u64,
}

pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| bad(&status))
    };
    Ok(Memory {
        rss_kb: field("VmRSS:")?,
        peak_kb: field("VmHWM:")?,
    })
}

/// Resets the peak (VmHWM) to the current RSS, so a scenario's peak is its own.
pub fn reset_peak(pid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

fn bad(text: &str) -> io::Error {
    let head: String = text.chars().take(80).collect();
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected /proc text: {head}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(cpu_ms(pid).unwrap() >= 0.0);
        let m = memory(pid).unwrap();
        assert!(m.rss_kb > 0 && m.peak_kb >= m.rss_kb);
    }
}
