//! The `[runtime]` section of every role's configuration: the async runtime the role runs on.
//!
//! By default a role runs one worker thread per CPU core (tokio's default, which the
//! `TOKIO_WORKER_THREADS` environment variable overrides). Fewer workers cost fewer cross-thread
//! wake-ups per message, which pays where traffic is light or several roles share a small machine;
//! more of them carry more traffic (`docs/operations.md`, *Threads*).

use serde::{Deserialize, Serialize};

/// Most worker threads a role accepts.
pub const MAX_WORKER_THREADS: usize = 1024;

/// `[runtime]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Threads that run the role's network and protocol work; 0 = one per CPU core.
    pub worker_threads: usize,
}

impl RuntimeSettings {
    /// What is wrong with these settings (empty when nothing is).
    pub fn problems(&self) -> Vec<String> {
        if self.worker_threads > MAX_WORKER_THREADS {
            vec![format!(
                "runtime.worker_threads = {} is more than {MAX_WORKER_THREADS} (0 = one per CPU core)",
                self.worker_threads
            )]
        } else {
            Vec::new()
        }
    }

    /// The multi-threaded runtime these settings describe, with every driver (I/O, time) on.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if self.worker_threads > 0 {
            b.worker_threads(self.worker_threads);
        }
        b.enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_one_per_core_and_the_bound_is_checked() {
        let default = RuntimeSettings::default();
        assert_eq!(default.worker_threads, 0);
        assert!(default.problems().is_empty());
        let rt = RuntimeSettings { worker_threads: 1 }.build().unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        let rt = default.build().unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            assert_eq!(rt.metrics().num_workers(), cores);
        }
        let too_many = RuntimeSettings {
            worker_threads: MAX_WORKER_THREADS + 1,
        };
        assert!(too_many.problems()[0].contains("runtime.worker_threads = 1025"));
    }
}
