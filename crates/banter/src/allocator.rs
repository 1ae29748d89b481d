//! Gives the system back the memory glibc's allocator keeps after a burst.
//!
//! glibc returns freed memory to the system only from the top of each arena. A burst of logins
//! leaves freed read, write and sync buffers between the long-lived objects of the sessions that
//! stayed (session tasks, registrations, table entries), and those whole free pages stay resident
//! for as long as the process runs: measured at about 200 bytes per idle connection at 19,000
//! connections, 8 % of what one costs (`docs/benchmarks.md`, "Giving freed memory back").
//!
//! A thread of its own, started by every server role, reads the allocator's totals once a second.
//! When the heap has settled (the bytes in use moved by less than 1/64 since the last reading) and
//! at least [`MIN_FREE`] bytes lie free in it, it asks glibc to release every free page
//! (`malloc_trim(0)`, which `madvise`s them away; the chunks stay glibc's, their pages are no
//! longer resident). It does not trim again until the heap has changed by [`MIN_FREE`] bytes since.
//! Under steady load the bytes in use move from one second to the next, so no trim runs on the
//! message path; a trim runs once the burst or the load is over. Trims are counted by
//! `banter_allocator_trims_total` and logged at debug level.
//!
//! This module holds the binary's only `unsafe` (the store crate's `flock` aside): two calls into
//! glibc that take no pointers and that glibc serializes with every allocator call. Builds on
//! other C libraries have no such calls and start nothing.

/// Trim only when at least this much lies free in the heap: below it, what a trim could give back
/// does not matter.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MIN_FREE: u64 = 4 << 20;

/// How often the allocator's totals are read.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The allocator's totals: bytes handed out and bytes free inside its heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[derive(Debug, Clone, Copy, PartialEq)]
struct Heap {
    in_use: u64,
    free: u64,
}

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
        let now = heap();
        if trimmer.should_trim(now) {
            let released = trim();
            metrics::counter!("banter_allocator_trims_total").increment(1);
            tracing::debug!(
                in_use = now.in_use,
                free = now.free,
                released,
                "gave free heap pages back to the system"
            );
        }
    }
}

/// When to trim, from successive readings (kept apart from the FFI so it can be tested).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[derive(Debug, Default)]
struct Trimmer {
    previous: Option<Heap>,
    last_trim: Option<Heap>,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl Trimmer {
    fn should_trim(&mut self, now: Heap) -> bool {
        let settled = self
            .previous
            .replace(now)
            .is_some_and(|p| p.in_use.abs_diff(now.in_use) <= now.in_use / 64);
        let changed = self
            .last_trim
            .is_none_or(|t| t.in_use.abs_diff(now.in_use) + t.free.abs_diff(now.free) >= MIN_FREE);
        let trim = settled && changed && now.free >= MIN_FREE;
        if trim {
            self.last_trim = Some(now);
        }
        trim
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Heap {
    // SAFETY: `mallinfo2` takes no arguments and returns a struct by value; glibc locks each arena
    // while it reads it.
    #[allow(unsafe_code)]
    let m = unsafe { libc::mallinfo2() };
    Heap {
        in_use: (m.uordblks + m.hblkhd) as u64,
        free: m.fordblks as u64,
    }
}

/// Returns whether glibc released anything.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointers; glibc serializes it with every other allocator call.
    #[allow(unsafe_code)]
    let released = unsafe { libc::malloc_trim(0) };
    released == 1
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn heap(in_use_mib: u64, free_mib: u64) -> Heap {
        Heap {
            in_use: in_use_mib * MIB,
            free: free_mib * MIB,
        }
    }

    #[test]
    fn trims_once_the_heap_has_settled_with_enough_free() {
        let mut t = Trimmer::default();
        // A burst: the heap grows every second.
        assert!(!t.should_trim(heap(10, 1)));
        assert!(!t.should_trim(heap(30, 6)));
        assert!(!t.should_trim(heap(50, 12)));
        // Settled, 12 MiB free: trim once.
        assert!(t.should_trim(heap(50, 12)));
        // Nothing changed since: no second trim.
        assert!(!t.should_trim(heap(50, 12)));
        assert!(!t.should_trim(heap(50, 13)));
        // Connections left, then the heap settled again: trim again.
        assert!(!t.should_trim(heap(40, 22)));
        assert!(t.should_trim(heap(40, 22)));
    }

    #[test]
    fn does_not_trim_a_heap_with_little_free_or_one_that_keeps_moving() {
        let mut t = Trimmer::default();
        assert!(!t.should_trim(heap(50, 2)));
        assert!(!t.should_trim(heap(50, 3)));
        // Steady load: in-use swings by more than 1/64 between readings.
        let mut t = Trimmer::default();
        for i in 0..10 {
            assert!(!t.should_trim(heap(if i % 2 == 0 { 64 } else { 60 }, 20)));
        }
    }

    #[test]
    fn the_allocator_totals_are_read_and_a_trim_runs() {
        // Leave free memory behind live allocations, then trim: the call works in this process.
        let keep: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 512]).collect();
        let freed: Vec<Vec<u8>> = (0..256).map(|_| vec![2u8; 64 << 10]).collect();
        let before = super::heap();
        assert!(before.in_use >= 256 * (64 << 10), "{before:?}");
        drop(freed);
        let after = super::heap();
        assert!(after.in_use < before.in_use, "{before:?} -> {after:?}");
        trim();
        assert_eq!(keep.len(), 256);
    }
}
