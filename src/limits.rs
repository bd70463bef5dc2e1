//! Bounds checked before work starts, so that an absurd argument (a typo such as `--threads
//! 1000000000` or `--hidden 1000000000000`) is an error naming it instead of a thread flood or
//! an allocation abort.

use crate::error::{Error, Result};

/// Most CPU threads a command accepts per core. More only slows a run down (every CPU kernel
/// is compute bound), and a mistyped count would spawn threads until the machine stalls.
pub const THREADS_PER_CORE: usize = 4;

/// An error when `--threads threads` exceeds [`THREADS_PER_CORE`] times this machine's cores.
pub fn check_threads(threads: usize) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let most = THREADS_PER_CORE * cores;
    if threads > most {
        return Err(Error::input(format!(
            "--threads {threads}: at most {most} ({THREADS_PER_CORE} per core on this machine's \
             {cores} cores)"
        )));
    }
    Ok(())
}

/// Bytes this process can still allocate: `MemAvailable` on Linux; `None` where unknown.
pub fn available_memory() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// An error when `bytes` (counted in f64, so that a product of huge sizes cannot overflow)
/// exceed the available memory, or the address space where that is unknown; `what` names the
/// arguments responsible.
pub fn check_memory(what: &str, bytes: f64) -> Result<()> {
    let limit = available_memory().unwrap_or(isize::MAX as f64);
    if bytes > limit {
        return Err(Error::input(format!(
            "{what} needs {} of memory, more than the {} available",
            human_bytes(bytes),
            human_bytes(limit)
        )));
    }
    Ok(())
}

fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_any_memory_are_refused_and_small_ones_pass() {
        assert!(check_memory("--x", 1e30).is_err());
        assert!(check_memory("--x", 1024.0).is_ok());
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
    }

    #[test]
    fn thread_counts_are_bounded_by_the_cores() {
        assert!(check_threads(1).is_ok());
        assert!(check_threads(1_000_000_000).is_err());
    }
}
