//! Following a key prefix: the current set of keys under it, kept up to date by a watch.
//!
//! [`follow_prefix`] reads the prefix, publishes the snapshot, watches from the next revision
//! and publishes a new snapshot after every change. When the watch breaks (etcd restarted,
//! connection lost, compaction) it reads the prefix again and resumes, with back-off while etcd
//! is unreachable; the snapshot it last published stays valid meanwhile. Every watch is
//! re-opened after a few minutes, so a silently dead connection cannot hide changes for long.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::etcd::{Etcd, EtcdError, Event, KeyValue};

/// The keys under a prefix (full key → key).
pub type Snapshot = Arc<BTreeMap<String, KeyValue>>;

const WATCH_ENDED: &str = "watch ended";

/// How long one watch request stays open before it is re-opened.
const WATCH_SPAN: Duration = Duration::from_secs(120);

/// Follows `prefix` until `stop` is cancelled. The receiver starts with an empty snapshot and
/// `ready` false; it gets the first real snapshot as soon as etcd answers.
pub fn follow_prefix(
    etcd: Etcd,
    prefix: String,
    stop: CancellationToken,
) -> watch::Receiver<(bool, Snapshot)> {
    let (tx, rx) = watch::channel((false, Snapshot::default()));
    tokio::spawn(async move {
        let mut backoff =
            node::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut failing = false;
        loop {
            let run = follow_once(&etcd, &prefix, &tx, &mut failing, &mut backoff);
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                r = run => r,
            };
            let Err(e) = r;
            if !failing && e != EtcdError::Unavailable(WATCH_ENDED.into()) {
                tracing::warn!(prefix = %prefix, error = %e, "following etcd interrupted; retrying");
                failing = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    });
    rx
}

/// One read and watch, until the watch breaks (it never ends otherwise).
async fn follow_once(
    etcd: &Etcd,
    prefix: &str,
    tx: &watch::Sender<(bool, Snapshot)>,
    failing: &mut bool,
    backoff: &mut node::backoff::Backoff,
) -> Result<std::convert::Infallible, EtcdError> {
    let (rev, kvs) = etcd.get_prefix(prefix).await?;
    let mut map: BTreeMap<String, KeyValue> =
        kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    tx.send_replace((true, Arc::new(map.clone())));
    let mut w = etcd.watch_prefix(prefix, rev + 1, WATCH_SPAN).await?;
    if *failing {
        tracing::info!(prefix = %prefix, "following etcd again");
        *failing = false;
    }
    backoff.reset();
    loop {
        let events = match w.next().await {
            Ok((_, events)) => events,
            Err(e) => {
                tracing::debug!(prefix = %prefix, error = %e, "etcd watch ended; reading again");
                return Err(EtcdError::Unavailable(WATCH_ENDED.into()));
            }
        };
        if events.is_empty() {
            continue;
        }
        for e in events {
            match e {
                Event::Put(kv) => {
                    map.insert(kv.key.clone(), kv);
                }
                Event::Delete { key, .. } => {
                    map.remove(&key);
                }
            }
        }
        tx.send_replace((true, Arc::new(map.clone())));
    }
}
