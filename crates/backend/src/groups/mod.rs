//! The group directory: groups, their members (join time, mute bit) and the admin operations that
//! change them, behind one seam type with two variants:
//!
//! * [`GroupDirectory::open_embedded`]: its own SQLite file ([`embedded`]);
//! * [`GroupDirectory::open_mysql`]: GoBelieve's MySQL tables, followed live through the Redis
//!   stream `group_manager_stream` (docs/compatibility.md, *GoBelieve's shared state*) so changes
//!   made by GoBelieve's API server or another node reach this one ([`mysql`], [`stream`]).
//!
//! Reads go through a bounded cache of immutable snapshots ([`Group`] in an `Arc`); a miss loads
//! from the database (never "silently nothing"; docs/compatibility.md, *Groups, rooms and
//! customer service*: SYNC_GROUP). Every change is announced on
//! [`GroupDirectory::changes`].
//!
//! Group ids are unique across apps (they are the `group.id` primary key), and every lookup and
//! admin operation is scoped by appid: a group of another app is "not found"
//! (docs/compatibility.md, *Groups, rooms and customer service*: `group_member_add`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{BackendError, EmbeddedGroupOptions, MysqlGroupOptions};

mod cache;
pub mod embedded;
pub mod mysql;
mod stream;

/// Longest group name, in bytes (the `VARCHAR(255)` of the GoBelieve schema).
pub const MAX_NAME_LEN: usize = 255;

/// The largest group id a group may be created with explicitly: 2^53 − 1, the largest integer a
/// JavaScript client (the JS SDK, JSON in browsers) represents exactly. Automatic ids continue above
/// the largest id ever used (SQLite `AUTOINCREMENT`, MySQL `AUTO_INCREMENT`), so bounding explicit ids
/// far below `i64::MAX` keeps automatic ids from ever running out: an explicit id of `i64::MAX` would
/// leave the database unable to allocate any further id, in every app, even after that group is
/// disbanded.
pub const MAX_EXPLICIT_GROUP_ID: i64 = (1 << 53) - 1;

/// Events buffered per [`GroupDirectory::changes`] receiver before it lags.
const CHANGES_CAPACITY: usize = 4096;

/// One member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Muted members may not send to the group (their messages are dropped).
    pub mute: bool,
    /// When the member joined, in unix seconds (the stored join time, never the load time).
    pub joined_at: i64,
}

/// An immutable snapshot of a group. A change publishes a new `Arc<Group>`; holders of an old one
/// keep a consistent (if outdated) view.
#[derive(Debug, Clone)]
pub struct Group {
    /// The app the group belongs to.
    pub appid: i64,
    /// The group id (unique across apps).
    pub gid: i64,
    /// Display name (at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// The owner's uid (0 when unknown; not necessarily a member).
    pub master: i64,
    /// A super group: messages go to one group queue instead of each member's queue
    /// (docs/protocol.md §9.3).
    pub super_group: bool,
    /// Members by uid.
    pub members: HashMap<i64, Member>,
}

impl Group {
    /// The member `uid`, if it is one.
    pub fn member(&self, uid: i64) -> Option<Member> {
        self.members.get(&uid).copied()
    }

    /// Whether `uid` is a member.
    pub fn is_member(&self, uid: i64) -> bool {
        self.members.contains_key(&uid)
    }
}

/// One group in a listing ([`GroupDirectory::list`], [`GroupDirectory::groups_of`]): the group
/// without its member list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupSummary {
    /// The group id.
    pub group_id: i64,
    /// Display name.
    pub name: String,
    /// The owner's uid (0 when unknown).
    pub master: i64,
    /// Whether it is a super group.
    #[serde(rename = "super")]
    pub super_group: bool,
    /// How many members it has.
    pub members: i64,
}

/// The most groups one listing call returns.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// `after` ≥ 0 and `limit` within 1 ..= [`MAX_LIST_LIMIT`], the paging of every listing.
pub(crate) fn check_page(after: i64, limit: i64) -> Result<(), BackendError> {
    if after < 0 {
        return Err(BackendError::InvalidArgument(format!(
            "`after` must be ≥ 0 (got {after})"
        )));
    }
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(BackendError::InvalidArgument(format!(
            "`limit` must be between 1 and {MAX_LIST_LIMIT} (got {limit})"
        )));
    }
    Ok(())
}

/// "Group `gid` of app `appid` changed (or was created or disbanded)": re-read it with
/// [`GroupDirectory::get`]. A receiver that lags (`RecvError::Lagged`) missed events and should
/// treat every group it caches as changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupChange {
    /// The group's app (0 when a foreign stream event did not say).
    pub appid: i64,
    /// The group id.
    pub gid: i64,
}

/// The group directory seam: embedded SQLite or GoBelieve MySQL + Redis stream. Cheap to clone.
#[derive(Clone)]
pub enum GroupDirectory {
    /// Own SQLite file.
    Embedded(Arc<embedded::EmbeddedGroups>),
    /// GoBelieve MySQL tables, followed through `group_manager_stream`.
    Mysql(Arc<mysql::MysqlGroups>),
}

impl GroupDirectory {
    /// Open (creating when missing) the SQLite file `opts.path`; its parent directory is created.
    pub async fn open_embedded(opts: EmbeddedGroupOptions) -> Result<GroupDirectory, BackendError> {
        Ok(GroupDirectory::Embedded(Arc::new(
            embedded::EmbeddedGroups::open(opts).await?,
        )))
    }

    /// Connect to MySQL (creating the GoBelieve tables when missing) and to Redis, and start
    /// following `group_manager_stream` from its current end. Fails when either does not answer
    /// within a few seconds.
    pub async fn open_mysql(opts: MysqlGroupOptions) -> Result<GroupDirectory, BackendError> {
        Ok(GroupDirectory::Mysql(Arc::new(
            mysql::MysqlGroups::open(opts).await?,
        )))
    }

    /// The group `gid` of app `appid`: from the cache, else loaded from the database.
    /// `Ok(None)` = no such group in this app (unknown, disbanded, another app's, or an id ≤ 0).
    pub async fn get(&self, appid: i64, gid: i64) -> Result<Option<Arc<Group>>, BackendError> {
        if appid <= 0 || gid <= 0 {
            return Ok(None);
        }
        let group = match self {
            GroupDirectory::Embedded(d) => d.get(gid).await?,
            GroupDirectory::Mysql(d) => d.get(gid).await?,
        };
        Ok(group.filter(|g| g.appid == appid))
    }

    /// The group as [`GroupDirectory::get`] would return it, if that needs no database access:
    /// `Some(answer)` when cached (or trivially absent), `None` when it would have to be loaded.
    pub fn cached(&self, appid: i64, gid: i64) -> Option<Option<Arc<Group>>> {
        if appid <= 0 || gid <= 0 {
            return Some(None);
        }
        let group = match self {
            GroupDirectory::Embedded(d) => d.cached(gid)?,
            GroupDirectory::Mysql(d) => d.cached(gid)?,
        };
        Some(group.filter(|g| g.appid == appid))
    }

    /// Create a group with `members` (duplicates ignored; the master is not added implicitly) and
    /// return its id: `gid` when given (refused when a group with that id exists, in any app;
    /// the id of a disbanded group may be reused), else a newly allocated one.
    ///
    /// In MySQL mode every admin operation writes MySQL, then appends its event(s) to
    /// `group_manager_stream`; an `Err(Redis)` then means the change is stored but other nodes were
    /// not told: retrying the (idempotent) operation announces it again.
    pub async fn create(
        &self,
        appid: i64,
        gid: Option<i64>,
        name: &str,
        master: i64,
        super_group: bool,
        members: &[i64],
    ) -> Result<i64, BackendError> {
        check_positive("appid", appid)?;
        if let Some(gid) = gid {
            if !(1..=MAX_EXPLICIT_GROUP_ID).contains(&gid) {
                return Err(BackendError::InvalidArgument(format!(
                    "an explicit group id must be between 1 and {MAX_EXPLICIT_GROUP_ID} (got {gid}); \
                     leave it out to have one allocated"
                )));
            }
        }
        if master < 0 {
            return Err(BackendError::InvalidArgument(format!(
                "master must be ≥ 0 (got {master})"
            )));
        }
        check_name(name)?;
        let spec = NewGroup {
            appid,
            gid,
            name,
            master,
            super_group,
            members: check_uids(members, self.max_members())?,
        };
        match self {
            GroupDirectory::Embedded(d) => d.create(spec).await,
            GroupDirectory::Mysql(d) => d.create(spec).await,
        }
    }

    /// The groups of app `appid` with ids above `after`, in id order, at most `limit`
    /// (1 ..= [`MAX_LIST_LIMIT`]). Page on by passing the last id returned as `after`.
    pub async fn list(
        &self,
        appid: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GroupSummary>, BackendError> {
        check_positive("appid", appid)?;
        check_page(after, limit)?;
        match self {
            GroupDirectory::Embedded(d) => d.list(appid, None, after, limit).await,
            GroupDirectory::Mysql(d) => d.list(appid, None, after, limit).await,
        }
    }

    /// The groups of app `appid` that `uid` is a member of, paged like [`GroupDirectory::list`].
    pub async fn groups_of(
        &self,
        appid: i64,
        uid: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GroupSummary>, BackendError> {
        check_positive("appid", appid)?;
        check_positive("uid", uid)?;
        check_page(after, limit)?;
        match self {
            GroupDirectory::Embedded(d) => d.list(appid, Some(uid), after, limit).await,
            GroupDirectory::Mysql(d) => d.list(appid, Some(uid), after, limit).await,
        }
    }

    /// Disband the group; `Ok(false)` when there was no such group in this app.
    pub async fn disband(&self, appid: i64, gid: i64) -> Result<bool, BackendError> {
        check_ids(appid, gid)?;
        match self {
            GroupDirectory::Embedded(d) => d.disband(appid, gid).await,
            GroupDirectory::Mysql(d) => d.disband(appid, gid).await,
        }
    }

    /// Add members (joined now, not muted); existing members keep their join time and mute bit.
    /// `NotFound` for an unknown group; `InvalidArgument` when the group would exceed
    /// `max_members`.
    pub async fn add_members(
        &self,
        appid: i64,
        gid: i64,
        uids: &[i64],
    ) -> Result<(), BackendError> {
        check_ids(appid, gid)?;
        let uids = check_uids(uids, self.max_members())?;
        match self {
            GroupDirectory::Embedded(d) => d.add_members(appid, gid, uids).await,
            GroupDirectory::Mysql(d) => d.add_members(appid, gid, uids).await,
        }
    }

    /// Remove members; uids that are not members are ignored. `NotFound` for an unknown group.
    pub async fn remove_members(
        &self,
        appid: i64,
        gid: i64,
        uids: &[i64],
    ) -> Result<(), BackendError> {
        check_ids(appid, gid)?;
        let uids = check_uids(uids, self.max_members())?;
        match self {
            GroupDirectory::Embedded(d) => d.remove_members(appid, gid, uids).await,
            GroupDirectory::Mysql(d) => d.remove_members(appid, gid, uids).await,
        }
    }

    /// Set or clear a member's mute bit. `NotFound` for an unknown group or a non-member.
    pub async fn set_mute(
        &self,
        appid: i64,
        gid: i64,
        uid: i64,
        mute: bool,
    ) -> Result<(), BackendError> {
        check_ids(appid, gid)?;
        check_positive("uid", uid)?;
        match self {
            GroupDirectory::Embedded(d) => d.set_mute(appid, gid, uid, mute).await,
            GroupDirectory::Mysql(d) => d.set_mute(appid, gid, uid, mute).await,
        }
    }

    /// Rename the group. `NotFound` for an unknown group.
    pub async fn rename(&self, appid: i64, gid: i64, name: &str) -> Result<(), BackendError> {
        check_ids(appid, gid)?;
        check_name(name)?;
        match self {
            GroupDirectory::Embedded(d) => d.rename(appid, gid, name).await,
            GroupDirectory::Mysql(d) => d.rename(appid, gid, name).await,
        }
    }

    /// Make the group a super group (no-op when it is one; there is no downgrade).
    /// `NotFound` for an unknown group.
    pub async fn upgrade(&self, appid: i64, gid: i64) -> Result<(), BackendError> {
        check_ids(appid, gid)?;
        match self {
            GroupDirectory::Embedded(d) => d.upgrade(appid, gid).await,
            GroupDirectory::Mysql(d) => d.upgrade(appid, gid).await,
        }
    }

    /// Every group change, from this directory's admin calls and, in MySQL mode, from the stream
    /// (other nodes, GoBelieve's API server), in the order they were applied.
    pub fn changes(&self) -> broadcast::Receiver<GroupChange> {
        match self {
            GroupDirectory::Embedded(d) => d.changes(),
            GroupDirectory::Mysql(d) => d.changes(),
        }
    }

    /// `"embedded"` or `"mysql"`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GroupDirectory::Embedded(_) => "embedded",
            GroupDirectory::Mysql(_) => "mysql",
        }
    }

    fn max_members(&self) -> usize {
        match self {
            GroupDirectory::Embedded(d) => d.max_members(),
            GroupDirectory::Mysql(d) => d.max_members(),
        }
    }
}

/// A validated `create` request.
pub(crate) struct NewGroup<'a> {
    pub appid: i64,
    pub gid: Option<i64>,
    pub name: &'a str,
    pub master: i64,
    pub super_group: bool,
    /// Sorted, deduplicated, all > 0.
    pub members: Vec<i64>,
}

impl NewGroup<'_> {
    /// The snapshot of the new group, everyone joined at `now`.
    pub(crate) fn snapshot(&self, gid: i64, now: i64) -> Group {
        Group {
            appid: self.appid,
            gid,
            name: self.name.to_owned(),
            master: self.master,
            super_group: self.super_group,
            members: self
                .members
                .iter()
                .map(|&uid| {
                    (
                        uid,
                        Member {
                            mute: false,
                            joined_at: now,
                        },
                    )
                })
                .collect(),
        }
    }
}

pub(crate) fn changes_channel() -> broadcast::Sender<GroupChange> {
    broadcast::channel(CHANGES_CAPACITY).0
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn check_positive(what: &str, v: i64) -> Result<(), BackendError> {
    if v <= 0 {
        return Err(BackendError::InvalidArgument(format!(
            "{what} must be > 0 (got {v})"
        )));
    }
    Ok(())
}

fn check_ids(appid: i64, gid: i64) -> Result<(), BackendError> {
    check_positive("appid", appid)?;
    check_positive("gid", gid)
}

fn check_name(name: &str) -> Result<(), BackendError> {
    if name.len() > MAX_NAME_LEN {
        return Err(BackendError::InvalidArgument(format!(
            "group name of {} bytes (limit {MAX_NAME_LEN})",
            name.len()
        )));
    }
    Ok(())
}

/// Sorted, deduplicated uids, all > 0, at most `max`.
fn check_uids(uids: &[i64], max: usize) -> Result<Vec<i64>, BackendError> {
    if let Some(bad) = uids.iter().find(|&&u| u <= 0) {
        return Err(BackendError::InvalidArgument(format!(
            "member uids must be > 0 (got {bad})"
        )));
    }
    let mut out: Vec<i64> = uids.to_vec();
    out.sort_unstable();
    out.dedup();
    if out.len() > max {
        return Err(BackendError::InvalidArgument(format!(
            "{} members (limit {max})",
            out.len()
        )));
    }
    Ok(out)
}

/// The error when automatic group ids are used up: the database holds (or held) a group whose id is
/// the largest possible, created before explicit ids were bounded.
pub(crate) fn ids_exhausted(largest: i64) -> BackendError {
    BackendError::InvalidArgument(format!(
        "no group id can be allocated: the largest id ever used is {largest} (a group created with an \
         explicit id beyond {MAX_EXPLICIT_GROUP_ID}); pass an explicit group_id"
    ))
}

pub(crate) fn not_found(appid: i64, gid: i64) -> BackendError {
    BackendError::NotFound(format!("group {gid} of app {appid}"))
}

pub(crate) fn too_many(count: usize, max: usize) -> BackendError {
    BackendError::InvalidArgument(format!(
        "the group would have {count} members (limit {max})"
    ))
}

/// `old` with `uids` added (joined at `now`, not muted) unless already members.
pub(crate) fn with_added(old: &Group, uids: &[i64], now: i64) -> Group {
    let mut g = old.clone();
    for &uid in uids {
        g.members.entry(uid).or_insert(Member {
            mute: false,
            joined_at: now,
        });
    }
    g
}

/// `old` without `uids`.
pub(crate) fn with_removed(old: &Group, uids: &[i64]) -> Group {
    let gone: HashSet<i64> = uids.iter().copied().collect();
    let mut g = old.clone();
    g.members.retain(|uid, _| !gone.contains(uid));
    g
}
