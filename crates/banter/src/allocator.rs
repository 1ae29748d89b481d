//! Gives the system back the memory glibc's allocator keeps after a burst.
//!
//! glibc returns freed memory to the system only from the top of each arena. A burst of logins
//! leaves freed read, write and sync buffers between the long-lived objects of the sessions that
//! stayed (session tasks, registrations, table entries), and those whole free pages stay resident
//! for as long as the process runs: measured at about 160 bytes per idle TCP connection at 19,000
//! connections, 6 % of what one costs (`docs/benchmarks.md`, "Giving freed memory back").
//!
//! A thread of its own, started by every server role, reads the process's anonymous resident memory
//! (`RssAnon` in `/proc/self/status`: no allocator lock is taken) once a second. Once it has settled
//! (moved by less than 1/64 since the last reading), glibc is asked to release every whole free page
//! of its heap (`malloc_trim(0)`, which `madvise`s them away; the chunks stay glibc's, their pages
//! are no longer resident) when the resident memory grew by [`GROWTH`] since the last trim — a burst of
//! logins is over — or [`PERIOD`] has passed since the last trim — memory freed by sessions that left
//! is given back too. So a trim (a walk over the heap's free chunks, arena by arena) runs at most once
//! a minute under steady load, and never while the heap is growing. Each trim is logged at debug level
//! (`banter::allocator`) with the resident memory before and after.
//!
//! This module holds the binary's only `unsafe` (the store crate's `flock` aside): one call into
//! glibc that takes no pointers and that glibc serializes with every allocator call. Builds on other
//! C libraries have no such call and start nothing.

use std::time::{Duration, Instant};

/// Trim after the resident memory grew by this much since the last trim (and settled).
const GROWTH: u64 = 8 << 20;

/// Trim at least this often while the resident memory is settled.
const PERIOD: Duration = Duration::from_secs(60);

/// How often the resident memory is read.
const INTERVAL: Duration = Duration::from_secs(1);

/// Starts the trimming thread. A failure to start it is logged: the server runs without it.
pub fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Err(e) = std::thread::Builder::new()
        .name("allocator-trim".into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "could not start the allocator trimming thread; freed memory stays resident");
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn run() {
    let mut trimmer = Trimmer::default();
    loop {
        std::thread::sleep(INTERVAL);
        let Some(before) = resident_anon() else {
            tracing::debug!("no RssAnon in /proc/self/status: the allocator trimming thread stops");
            return;
        };
        if trimmer.should_trim(before, Instant::now()) {
            trim();
            let after = resident_anon().unwrap_or(before);
            trimmer.trimmed(after, Instant::now());
            tracing::debug!(before, after, "gave free heap pages back to the system");
        }
    }
}

/// When to trim, from successive readings of the resident memory (kept apart from the system calls
/// so it can be tested).
#[derive(Debug, Default)]
struct Trimmer {
    previous: Option<u64>,
    /// The resident memory right after the last trim, and when it ran.
    last: Option<(u64, Instant)>,
}

impl Trimmer {
    fn should_trim(&mut self, resident: u64, now: Instant) -> bool {
        let settled = self
            .previous
            .replace(resident)
            .is_some_and(|p| p.abs_diff(resident) <= resident / 64);
        settled
            && self.last.is_none_or(|(after, at)| {
                resident >= after.saturating_add(GROWTH) || now.duration_since(at) >= PERIOD
            })
    }

    fn trimmed(&mut self, resident: u64, now: Instant) {
        self.previous = Some(resident);
        self.last = Some((resident, now));
    }
}

/// The process's anonymous resident memory in bytes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_anon() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` takes no pointers; glibc serializes it with every other allocator call.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn trims_once_a_burst_has_settled() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Trimmer::default();
        // A burst: resident memory grows every second.
        assert!(!t.should_trim(30 * MIB, at(1)));
        assert!(!t.should_trim(50 * MIB, at(2)));
        assert!(!t.should_trim(70 * MIB, at(3)));
        // Settled: trim, which gave back 4 MiB.
        assert!(t.should_trim(70 * MIB, at(4)));
        t.trimmed(66 * MIB, at(4));
        // Settled and not grown since: no second trim before the period is over.
        for s in 5..63 {
            assert!(!t.should_trim(66 * MIB + s * 1024, at(s)), "second {s}");
        }
        // Grown by more than GROWTH, still growing: wait; then settled: trim.
        assert!(!t.should_trim(80 * MIB, at(63)));
        assert!(t.should_trim(80 * MIB, at(64)));
        t.trimmed(79 * MIB, at(64));
        // A minute later without growth (sessions left, their memory is free): trim again.
        assert!(!t.should_trim(79 * MIB, at(100)));
        assert!(t.should_trim(79 * MIB, at(124)));
    }

    #[test]
    fn does_not_trim_while_resident_memory_keeps_moving() {
        let t0 = Instant::now();
        let mut t = Trimmer::default();
        for s in 0..200 {
            let resident = if s % 2 == 0 { 64 * MIB } else { 60 * MIB };
            assert!(!t.should_trim(resident, t0 + Duration::from_secs(s)));
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn reads_the_resident_memory_and_trims() {
        let resident = resident_anon().expect("RssAnon in /proc/self/status");
        assert!(resident > 0);
        // Leave free memory behind live allocations, then trim: the call works in this process.
        let keep: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 512]).collect();
        drop((0..256).map(|_| vec![2u8; 64 << 10]).collect::<Vec<_>>());
        trim();
        assert_eq!(keep.iter().map(|v| v.len()).sum::<usize>(), 256 * 512);
    }
}
