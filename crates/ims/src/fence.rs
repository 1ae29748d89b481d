//! The fence of a store node elected through etcd: appends are acknowledged only while this
//! node's leadership lease is certainly alive (`coord::LeaseValidity`), so a deposed leader stops
//! acknowledging at once, before etcd can let another node win (docs/cluster.md, *Automatic
//! fail-over with etcd*). Always open with static configuration.

use coord::LeaseValidity;
use parking_lot::Mutex;

/// Whether appends may be acknowledged (see the module docs).
pub struct Fence {
    /// `false` in static configuration: always leading (the store's role decides).
    elected: bool,
    lease: Mutex<Option<LeaseValidity>>,
}

impl Fence {
    /// `elected`: leadership comes from an etcd election.
    pub fn new(elected: bool) -> Fence {
        Fence {
            elected,
            lease: Mutex::new(None),
        }
    }

    /// True while this node may acknowledge appends.
    pub fn leading(&self) -> bool {
        if !self.elected {
            return true;
        }
        self.lease.lock().as_ref().is_some_and(LeaseValidity::valid)
    }

    /// Leading while `lease` is valid (`None`: not leading).
    pub fn set(&self, lease: Option<LeaseValidity>) {
        *self.lease.lock() = lease;
    }
}
