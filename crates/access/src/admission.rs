//! Connection admission: the permits a listener hands out (`server.max_connections` for client sockets,
//! `api.max_connections` for the HTTP API's), each counted in one of the node's gauges while held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::stats::Stats;

/// The connections one kind of listener may hold (a semaphore), and the node's gauge that counts them.
pub(crate) struct Admission {
    slots: Semaphore,
    stats: Arc<Stats>,
    gauge: fn(&Stats) -> &AtomicU64,
}

impl Admission {
    pub(crate) fn new(
        max: usize,
        stats: Arc<Stats>,
        gauge: fn(&Stats) -> &AtomicU64,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            slots: Semaphore::new(max.max(1)),
            stats,
            gauge,
        })
    }
}

/// A connection permit, counted in its admission's gauge while it is held. One pointer: every
/// connection's task holds its permit.
pub(crate) struct Permit {
    admission: Arc<Admission>,
}

impl Permit {
    pub(crate) fn try_new(admission: &Arc<Admission>) -> Option<Permit> {
        // Forgotten here and given back when the permit drops: a semaphore permit of tokio's own would
        // take two more words of every connection.
        admission.slots.try_acquire().ok()?.forget();
        Stats::inc((admission.gauge)(&admission.stats));
        Some(Permit {
            admission: admission.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        (a.gauge)(&a.stats).fetch_sub(1, Ordering::Relaxed);
        a.slots.add_permits(1);
    }
}
