//! A lease kept alive in the background, with a local deadline its holder can trust.
//!
//! [`KeptLease::start`] grants a lease of `ttl` and renews it every `ttl / 3`. Its
//! [`KeptLease::valid`] says whether the lease is certainly still alive in etcd: true until
//! `ttl` minus a safety margin after the *sending* of the last successful renewal, so a holder that
//! stops hearing from etcd (partitioned, etcd down) considers itself deposed before etcd can
//! expire the lease and let another node take over. Once lost (expired in etcd, or no renewal
//! in time) a lease stays lost: [`KeptLease::lost`] is cancelled and the holder grants a new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::etcd::{Etcd, EtcdError};

/// A lease renewed in the background until dropped (then revoked) or lost.
pub struct KeptLease {
    id: i64,
    ttl: Duration,
    valid_until: Arc<Mutex<Instant>>,
    lost: CancellationToken,
    stop: CancellationToken,
    etcd: Etcd,
}

/// What the holder must not count on: a renewal that left at `t` extends the lease to `t + ttl`
/// in etcd; the holder counts until `t + ttl - margin`.
fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(300))
}

impl KeptLease {
    /// Grants a lease of `ttl` (whole seconds, at least 1) and keeps it alive.
    pub async fn start(etcd: &Etcd, ttl: Duration) -> Result<KeptLease, EtcdError> {
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let sent = Instant::now();
        let id = etcd.grant(ttl).await?;
        let valid_until = Arc::new(Mutex::new(
            (sent + ttl).checked_sub(margin(ttl)).unwrap_or(sent),
        ));
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(keep(
            etcd.clone(),
            id,
            ttl,
            valid_until.clone(),
            lost.clone(),
            stop.clone(),
        ));
        Ok(KeptLease {
            id,
            ttl,
            valid_until,
            lost,
            stop,
            etcd: etcd.clone(),
        })
    }

    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True while the lease is certainly alive in etcd (see the module docs).
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < *self.valid_until.lock()
    }

    /// Cancelled once the lease is lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// A cheap handle answering [`KeptLease::valid`] from another task.
    pub fn validity(&self) -> LeaseValidity {
        LeaseValidity {
            valid_until: self.valid_until.clone(),
            lost: self.lost.clone(),
        }
    }

    /// Stops renewing and revokes the lease (its keys disappear at once).
    pub async fn revoke(self) {
        self.stop.cancel();
        self.lost.cancel();
        if let Err(e) = self.etcd.revoke(self.id).await {
            tracing::debug!(lease = self.id, error = %e, "revoking the lease failed; it expires by itself");
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// See [`KeptLease::validity`].
#[derive(Clone)]
pub struct LeaseValidity {
    valid_until: Arc<Mutex<Instant>>,
    lost: CancellationToken,
}

impl LeaseValidity {
    /// True while the lease is certainly alive in etcd.
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < *self.valid_until.lock()
    }
}

async fn keep(
    etcd: Etcd,
    id: i64,
    ttl: Duration,
    valid_until: Arc<Mutex<Instant>>,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    loop {
        let deadline = *valid_until.lock();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        if Instant::now() >= *valid_until.lock() {
            tracing::warn!(lease = id, "etcd lease not renewed in time; it is lost");
            lost.cancel();
            return;
        }
        let sent = Instant::now();
        match etcd.keep_alive(id).await {
            Ok(Some(_)) => {
                let until = (sent + ttl).checked_sub(margin(ttl)).unwrap_or(sent);
                let mut v = valid_until.lock();
                *v = (*v).max(until);
            }
            Ok(None) => {
                tracing::warn!(lease = id, "etcd lease expired");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(lease = id, error = %e, "renewing the etcd lease failed; retrying")
            }
        }
    }
}
