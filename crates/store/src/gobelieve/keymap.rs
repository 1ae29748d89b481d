//! The persisted translation of GoBelieve sync keys (`docs/migration.md`, "Sync keys").
//!
//! An import writes the store's log from a position `base` (a multiple of 2^40, above every
//! GoBelieve message id), so every banter key is ≥ `base` and every key a GoBelieve client holds
//! is below it: the two never mix. For each imported entry the import appends the pair
//! (GoBelieve content id, banter key) to `gobelieve/keys` in the store directory. Both sides
//! increase together (the import appends in the source's log order), so the file is sorted by
//! either and a lookup is a binary search by `pread` (16-byte pairs, little-endian i64s): nothing
//! is held in memory.
//!
//! A GoBelieve key `K` of queue `Q` translates to the newest entry of `Q` whose pair has a
//! GoBelieve id ≤ `K` (exactly the entries the client had), found as "the newest entry of `Q` at
//! or below the banter key paired with the largest GoBelieve id ≤ `K`"; with none, to `base`
//! (the client had nothing: everything is new to it). The store (`Store`) applies this to every
//! `sync`, `sync_since` and `new_count` whose key is in `1..base`, so the access node, a store
//! node and the HTTP API all translate the same way.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::state::{State, STATE_FILE};

/// Directory inside the store directory that holds the import's files.
pub const IMPORT_DIR: &str = "gobelieve";
/// The key pairs.
pub const KEYS_FILE: &str = "keys";

const PAIR: u64 = 16;

/// Read side of the key map, opened by the store.
#[derive(Debug)]
pub struct KeyMap {
    base: i64,
    file: File,
    count: u64,
}

impl KeyMap {
    /// Opens the key map of the store in `store_dir`; `None` when nothing was imported.
    pub fn open(store_dir: &Path) -> Result<Option<KeyMap>, String> {
        let dir = store_dir.join(IMPORT_DIR);
        let state_path = dir.join(STATE_FILE);
        if !state_path.exists() {
            return Ok(None);
        }
        let state = State::load(&state_path)?
            .ok_or_else(|| format!("{} is empty", state_path.display()))?;
        let path = dir.join(KEYS_FILE);
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len < state.pairs * PAIR {
            return Err(format!(
                "{} holds {} pairs, the import state says {}",
                path.display(),
                len / PAIR,
                state.pairs
            ));
        }
        Ok(Some(KeyMap {
            base: state.base,
            file,
            count: state.pairs,
        }))
    }

    /// The first position of the imported log: keys below it are GoBelieve keys.
    pub fn base(&self) -> i64 {
        self.base
    }

    /// Number of pairs.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn pair(&self, i: u64) -> std::io::Result<(i64, i64)> {
        let mut b = [0u8; PAIR as usize];
        self.file.read_exact_at(&mut b, i * PAIR)?;
        Ok((
            i64::from_le_bytes(b[0..8].try_into().expect("a slice of the exact length")),
            i64::from_le_bytes(b[8..16].try_into().expect("a slice of the exact length")),
        ))
    }

    /// The banter key paired with the largest GoBelieve id ≤ `k`; `None` if `k` is below all.
    pub fn lookup(&self, k: i64) -> std::io::Result<Option<i64>> {
        let (mut lo, mut hi) = (0u64, self.count);
        // invariant: pairs before lo have id ≤ k, pairs from hi on have id > k
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.pair(mid)?.0 <= k {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(None);
        }
        Ok(Some(self.pair(lo - 1)?.1))
    }
}

/// Write side, used by the import.
pub(crate) struct KeyWriter {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

impl KeyWriter {
    /// Opens the keys file, cutting it to `pairs` pairs (what the state file vouches for).
    pub(crate) fn open(dir: &Path, pairs: u64) -> std::io::Result<KeyWriter> {
        let path = dir.join(KEYS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        if file.metadata()?.len() < pairs * PAIR {
            return Err(std::io::Error::other(format!(
                "{} is shorter than the import state says ({pairs} pairs)",
                path.display()
            )));
        }
        file.set_len(pairs * PAIR)?;
        Ok(KeyWriter {
            path,
            file,
            buf: Vec::new(),
        })
    }

    pub(crate) fn push(&mut self, gb: i64, banter: i64) {
        self.buf.extend_from_slice(&gb.to_le_bytes());
        self.buf.extend_from_slice(&banter.to_le_bytes());
    }

    /// Appends the pushed pairs and fsyncs them.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::End(0))?;
        self.file.write_all(&self.buf)?;
        self.file
            .sync_data()
            .map_err(|e| std::io::Error::other(format!("{}: {e}", self.path.display())))?;
        self.buf.clear();
        Ok(())
    }
}
