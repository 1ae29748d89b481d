//! `sync` replication's commit index on a leader store node.
//!
//! An append in `sync` mode is answered only once a follower has acknowledged a durable position
//! at or after the end of its records. This module decides, in one task, what is confirmed and
//! what is not:
//!
//! * **Commit index.** As followers acknowledge, the task raises the store's visible limit
//!   (`Store::raise_visible_limit`) and only then answers the appends it covers. Readers (SYNC,
//!   latest, last key, …) see nothing above it, so no client is ever shown — or pushed, or told
//!   of — an entry that a fail-over could lose.
//! * **Withdrawal.** When the oldest waiting append has waited `timeout`, every record above the
//!   commit index is withdrawn (`Store::withdraw_unconfirmed`: WITHDRAW records take them back
//!   off their queues, on the leader and on every follower that replicates them) and every
//!   append they belong to fails with `replication_timeout`. The commit index does not move
//!   while a withdrawal is being written, so a refused append is never visible, not even if a
//!   follower acknowledges it a moment later. An append whose ticket completes after its
//!   records were withdrawn fails the same way.
//!
//! Failures are logged once per episode (`node::episode`), not once per refused append.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use store::Store;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::replication::ReplicationHub;
use node::episode::{Episode, FailureLog};

/// Why a `sync` append was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// No follower acknowledged it in time; its records were withdrawn.
    #[error(
        "append is durable on the leader up to position {end} but no follower acknowledged it \
         within {} ms (sync replication); it was withdrawn and will not be delivered",
        timeout.as_millis()
    )]
    Withdrawn { end: u64, timeout: Duration },
    /// Withdrawing unconfirmed records failed: nothing more is confirmed until a restart.
    #[error("sync replication stopped confirming appends: {0}")]
    Stuck(String),
    /// The store node is shutting down.
    #[error("the store node is shutting down")]
    Closed,
}

struct Waiter {
    end: u64,
    since: Instant,
    tx: oneshot::Sender<Result<(), CommitError>>,
}

#[derive(Default)]
struct State {
    /// Appends waiting for a follower, in registration order (so the first is the oldest).
    waiters: VecDeque<Waiter>,
    /// A withdrawal is being written: nothing is confirmed meanwhile.
    withdrawing: bool,
    /// Recent withdrawn ranges `(from, to)`: an append whose records end in `from + 1 ..= to`
    /// was withdrawn.
    withdrawn: VecDeque<(u64, u64)>,
    /// A withdrawal failed: the unconfirmed records are still on their queues, so the commit
    /// index must not pass them.
    stuck: Option<String>,
}

/// Removes and returns the waiters matching `pred`, keeping the others in order.
fn take_waiters(waiters: &mut VecDeque<Waiter>, pred: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
    let mut hit = Vec::new();
    for w in std::mem::take(waiters) {
        if pred(&w) {
            hit.push(w);
        } else {
            waiters.push_back(w);
        }
    }
    hit
}

/// Withdrawn ranges remembered for appends whose tickets complete late.
const WITHDRAWN_KEPT: usize = 256;

/// The commit index of one leader store (see the module docs).
pub struct CommitTracker {
    store: Arc<Store>,
    hub: Arc<ReplicationHub>,
    timeout: Duration,
    state: Mutex<State>,
    changed: Notify,
    episode: Episode,
}

impl CommitTracker {
    /// Enables commit visibility on `store` and starts the task; it runs until `shutdown`, then
    /// fails whatever still waits with [`CommitError::Closed`].
    pub fn start(
        store: Arc<Store>,
        hub: Arc<ReplicationHub>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> (Arc<CommitTracker>, tokio::task::JoinHandle<()>) {
        store.enable_commit_visibility();
        let t = Arc::new(CommitTracker {
            store,
            hub,
            timeout,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            episode: Episode::new(Duration::from_secs(60)),
        });
        let task = tokio::spawn(t.clone().run(shutdown));
        (t, task)
    }

    /// Waits until a follower confirmed the records of an append ending at `end` (which is
    /// durable on the leader), or fails after the timeout with its records withdrawn.
    pub async fn confirm(&self, end: u64) -> Result<(), CommitError> {
        let rx = {
            let mut st = self.state.lock();
            if let Some(why) = &st.stuck {
                return Err(CommitError::Stuck(why.clone()));
            }
            if st.withdrawn.iter().any(|&(f, t)| end > f && end <= t) {
                return Err(CommitError::Withdrawn {
                    end,
                    timeout: self.timeout,
                });
            }
            if !st.withdrawing && end <= self.store.visible_limit() {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter {
                end,
                since: Instant::now(),
                tx,
            });
            rx
        };
        self.changed.notify_one();
        rx.await.unwrap_or(Err(CommitError::Closed))
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut acked = self.hub.acked_watch();
        loop {
            let deadline = {
                let st = self.state.lock();
                st.waiters.front().map(|w| w.since + self.timeout)
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = acked.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                _ = self.changed.notified() => {}
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            self.advance();
            let expired = {
                let st = self.state.lock();
                st.stuck.is_none()
                    && st
                        .waiters
                        .front()
                        .is_some_and(|w| w.since + self.timeout <= Instant::now())
            };
            if expired {
                self.withdraw().await;
            }
        }
        let mut st = self.state.lock();
        for w in st.waiters.drain(..) {
            let _ = w.tx.send(Err(CommitError::Closed));
        }
    }

    /// Raises the commit index to what followers acknowledged and answers what it covers.
    fn advance(&self) {
        let mut st = self.state.lock();
        if st.withdrawing || st.stuck.is_some() {
            return;
        }
        self.store.raise_visible_limit(self.hub.acked());
        let committed = self.store.visible_limit();
        let done = take_waiters(&mut st.waiters, |w| w.end <= committed);
        drop(st);
        let confirmed = !done.is_empty();
        for w in done {
            let _ = w.tx.send(Ok(()));
        }
        if confirmed {
            if let Some(r) = self.episode.success() {
                tracing::info!(
                    withdrawn_appends = r.failures,
                    after_secs = r.after_secs,
                    "sync replication confirms appends again"
                );
            }
        }
    }

    /// Withdraws every record above the commit index and fails the appends they belong to.
    async fn withdraw(&self) {
        let from = {
            let mut st = self.state.lock();
            st.withdrawing = true;
            self.store.visible_limit()
        };
        let r = self.store.withdraw_unconfirmed(from).await;
        let mut st = self.state.lock();
        st.withdrawing = false;
        match r {
            Ok(to) => {
                if to > from {
                    st.withdrawn.push_back((from, to));
                    if st.withdrawn.len() > WITHDRAWN_KEPT {
                        st.withdrawn.pop_front();
                    }
                }
                let timeout = self.timeout;
                let refused = take_waiters(&mut st.waiters, |w| w.end <= to);
                drop(st);
                let failed = refused.len();
                for w in refused {
                    let _ = w.tx.send(Err(CommitError::Withdrawn {
                        end: w.end,
                        timeout,
                    }));
                }
                match self.episode.failure() {
                    FailureLog::Started => tracing::warn!(
                        from,
                        to,
                        appends = failed,
                        followers = self.hub.followers().len(),
                        timeout_ms = timeout.as_millis() as u64,
                        "no follower confirmed appends in time (sync replication): they were \
                         withdrawn and refused; further withdrawals are counted"
                    ),
                    FailureLog::Ongoing { failures, for_secs } => tracing::warn!(
                        withdrawals = failures,
                        for_secs,
                        followers = self.hub.followers().len(),
                        "sync replication still withdraws unconfirmed appends"
                    ),
                    FailureLog::Quiet => {
                        tracing::debug!(from, to, appends = failed, "withdrew unconfirmed appends")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, from, "withdrawing unconfirmed appends failed; this store confirms nothing more until it is restarted");
                let why = e.to_string();
                for w in st.waiters.drain(..) {
                    let _ = w.tx.send(Err(CommitError::Stuck(why.clone())));
                }
                st.stuck = Some(why);
            }
        }
    }
}
