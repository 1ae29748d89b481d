//! Writing GoBelieve `ims` data directories, from the format description alone: the block files
//! with content and index records appended exactly as GoBelieve's store appends them (content,
//! then the queue's index record with its three back-links; a block rolls over when a record
//! would not fit), and the index snapshots `peer_index.v3` / `group_index.v2`. Used by
//! `banter store gen-gobelieve`, the migration tests and the import benchmark.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::format::{
    block_file_name, encode_block_header, encode_record, msgid, IndexRecord, BLOCK_HEADER_LEN,
    BLOCK_SPAN, CMD_GROUP_OFFLINE, CMD_OFFLINE_V4, INDEX_FLAG_GROUP, RECORD_OVERHEAD,
};

/// In-memory index of one queue (GoBelieve's names: last_msgid, last_id, last_peer_id, last_batch_id,
/// last_seq_id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueIndex {
    pub last_msgid: i64,
    pub last_id: i64,
    pub last_peer_id: i64,
    pub last_batch_id: i64,
    pub last_seq_id: i64,
}

/// Where a save landed: the content id and the previous entry's content id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    pub msgid: i64,
    pub prev_msgid: i64,
}

/// Appends to a GoBelieve data directory.
pub struct GbWriter {
    dir: PathBuf,
    block: u32,
    offset: u64,
    /// A block rolls over when a record would end beyond this (GoBelieve: 128 MiB).
    block_limit: u64,
    out: BufWriter<File>,
    users: HashMap<(i64, i64), QueueIndex>,
    groups: HashMap<(i64, i64), QueueIndex>,
    scratch: Vec<u8>,
}

impl GbWriter {
    /// Starts a new data directory in `dir` (created if missing; must hold no block files).
    pub fn create(dir: &Path) -> std::io::Result<GbWriter> {
        Self::with_block_limit(dir, BLOCK_SPAN as u64)
    }

    /// As [`GbWriter::create`], rolling blocks over at `limit` bytes instead of 128 MiB (message
    /// ids keep the 128 MiB stride), so that small test directories have several blocks.
    pub fn with_block_limit(dir: &Path, limit: u64) -> std::io::Result<GbWriter> {
        std::fs::create_dir_all(dir)?;
        if dir.join(block_file_name(0)).exists() {
            return Err(std::io::Error::other(format!(
                "{} already holds GoBelieve block files",
                dir.display()
            )));
        }
        let limit = limit.clamp(4096, BLOCK_SPAN as u64);
        let out = Self::new_block(dir, 0)?;
        Ok(GbWriter {
            dir: dir.to_path_buf(),
            block: 0,
            offset: BLOCK_HEADER_LEN,
            block_limit: limit,
            out,
            users: HashMap::new(),
            groups: HashMap::new(),
            scratch: Vec::new(),
        })
    }

    fn new_block(dir: &Path, n: u32) -> std::io::Result<BufWriter<File>> {
        let mut out =
            BufWriter::with_capacity(1 << 20, File::create(dir.join(block_file_name(n)))?);
        out.write_all(&encode_block_header())?;
        Ok(out)
    }

    /// Appends one record, rolling over first when it would not fit; returns its id.
    pub fn append_record(
        &mut self,
        cmd: u8,
        version: u8,
        flag: u8,
        body: &[u8],
    ) -> std::io::Result<i64> {
        let len = (RECORD_OVERHEAD + body.len()) as u64;
        if self.offset + len > self.block_limit && self.offset > BLOCK_HEADER_LEN {
            self.out.flush()?;
            self.block += 1;
            self.out = Self::new_block(&self.dir, self.block)?;
            self.offset = BLOCK_HEADER_LEN;
        }
        let id = msgid(self.block, self.offset);
        self.scratch.clear();
        encode_record(&mut self.scratch, cmd, version, flag, body);
        self.out.write_all(&self.scratch)?;
        self.offset += len;
        Ok(id)
    }

    /// `SavePeerMessage`: content plus an OFFLINE_V4 record in queue `(appid, uid)`.
    pub fn save_peer(
        &mut self,
        appid: i64,
        uid: i64,
        device_id: i64,
        cmd: u8,
        body: &[u8],
    ) -> std::io::Result<Saved> {
        let group = cmd == 8;
        self.save_peer_flagged(appid, uid, device_id, cmd, group, body)
    }

    /// `SavePeerMessage` for content that is a group message (flag 0x04 on the index record):
    /// GROUP_IM, or a group notification in a member's queue.
    pub fn save_peer_flagged(
        &mut self,
        appid: i64,
        uid: i64,
        device_id: i64,
        cmd: u8,
        group: bool,
        body: &[u8],
    ) -> std::io::Result<Saved> {
        let c = self.append_record(cmd, 2, 0, body)?;
        let i = self.users.get(&(appid, uid)).copied().unwrap_or_default();
        let rec = IndexRecord {
            appid,
            receiver: uid,
            msgid: c,
            device_id,
            seq_id: i.last_seq_id + 1,
            prev_msgid: i.last_id,
            prev_peer_msgid: i.last_peer_id,
            prev_batch_msgid: i.last_batch_id,
        };
        let flag = if group { INDEX_FLAG_GROUP } else { 0 };
        let x = self.append_record(CMD_OFFLINE_V4, 0, flag, &rec.encode())?;
        let seq = i.last_seq_id + 1;
        let n = QueueIndex {
            last_msgid: c,
            last_id: x,
            last_peer_id: if group { i.last_peer_id } else { x },
            last_batch_id: if seq % 1000 == 0 { x } else { i.last_batch_id },
            last_seq_id: seq,
        };
        self.users.insert((appid, uid), n);
        Ok(Saved {
            msgid: c,
            prev_msgid: i.last_msgid,
        })
    }

    /// `SaveGroupMessage`: content plus a GROUP_OFFLINE record in super-group queue `(appid, gid)`.
    pub fn save_group(
        &mut self,
        appid: i64,
        gid: i64,
        device_id: i64,
        cmd: u8,
        body: &[u8],
    ) -> std::io::Result<Saved> {
        let c = self.append_record(cmd, 2, 0, body)?;
        let i = self.groups.get(&(appid, gid)).copied().unwrap_or_default();
        let rec = IndexRecord {
            appid,
            receiver: gid,
            msgid: c,
            device_id,
            seq_id: i.last_seq_id + 1,
            prev_msgid: i.last_id,
            prev_peer_msgid: 0,
            prev_batch_msgid: i.last_batch_id,
        };
        let x = self.append_record(CMD_GROUP_OFFLINE, 0, 0, &rec.encode())?;
        let seq = i.last_seq_id + 1;
        self.groups.insert(
            (appid, gid),
            QueueIndex {
                last_msgid: c,
                last_id: x,
                last_peer_id: 0,
                last_batch_id: if seq % 1000 == 0 { x } else { i.last_batch_id },
                last_seq_id: seq,
            },
        );
        Ok(Saved {
            msgid: c,
            prev_msgid: i.last_msgid,
        })
    }

    /// The index of a user queue (all zero if it has no entries).
    pub fn user_index(&self, appid: i64, uid: i64) -> QueueIndex {
        self.users.get(&(appid, uid)).copied().unwrap_or_default()
    }

    /// The index of a super-group queue.
    pub fn group_index(&self, appid: i64, gid: i64) -> QueueIndex {
        self.groups.get(&(appid, gid)).copied().unwrap_or_default()
    }

    /// Flushes the block and writes both index snapshots (via `_t` files and a rename, as
    /// GoBelieve does at shutdown).
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let mut users: Vec<_> = self.users.iter().collect();
        users.sort_unstable_by_key(|e| *e.0);
        let mut b = Vec::with_capacity(users.len() * 56);
        for ((appid, uid), i) in users {
            for v in [
                *appid,
                *uid,
                i.last_msgid,
                i.last_id,
                i.last_peer_id,
                i.last_batch_id,
                i.last_seq_id,
            ] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        write_snapshot(&self.dir, "peer_index_t", "peer_index.v3", &b)?;
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_unstable_by_key(|e| *e.0);
        let mut b = Vec::with_capacity(groups.len() * 48);
        for ((appid, gid), i) in groups {
            for v in [
                *appid,
                *gid,
                i.last_msgid,
                i.last_id,
                i.last_batch_id,
                i.last_seq_id,
            ] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        write_snapshot(&self.dir, "group_index_t", "group_index.v2", &b)
    }
}

fn write_snapshot(dir: &Path, tmp: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(dir.join(tmp))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(dir.join(tmp), dir.join(name))
}

/// IM / GROUP_IM body in the v2 layout: sender, receiver, timestamp, client msgid, content.
pub fn im_body(
    sender: i64,
    receiver: i64,
    timestamp: i32,
    local_id: i32,
    content: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + content.len());
    b.extend_from_slice(&sender.to_be_bytes());
    b.extend_from_slice(&receiver.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&local_id.to_be_bytes());
    b.extend_from_slice(content);
    b
}
