//! The import's checkpoint (`gobelieve/state` in the store directory): where the scan stands,
//! how many key pairs are valid, the store's log end and the running totals. Written by the import
//! (`import`) after each batch, read by it to resume and by the key map
//! (`keymap`) for the base and the number of pairs.

use std::collections::BTreeMap;
use std::path::Path;

use super::reader::Pos;

/// The state file, in the import's directory (`keymap::IMPORT_DIR`).
pub const STATE_FILE: &str = "state";

/// The import's checkpoint (`gobelieve/state` in the store directory): one `name value` per
/// line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The source directory (canonical path).
    pub source: String,
    /// First position of the imported log.
    pub base: i64,
    /// Where the scan continues.
    pub scanned: Pos,
    /// Problems before this position are counted already.
    pub problems_through: Pos,
    /// Valid pairs in the keys file.
    pub pairs: u64,
    /// The store's log end after the last imported batch.
    pub banter_end: u64,
    pub user_entries: u64,
    pub group_entries: u64,
    /// Timestamp of the newest message with one (for contents without a timestamp).
    pub last_ts: i64,
    pub problems: BTreeMap<String, u64>,
}

impl State {
    /// Reads a state file; `None` if it is empty.
    pub fn load(path: &Path) -> Result<Option<State>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let mut s = State::default();
        let bad = |l: &str| format!("{}: bad line {l:?}", path.display());
        for line in text.lines() {
            // problem names contain spaces, other values (the source path) may
            let split = if line.starts_with("problem.") {
                line.rsplit_once(' ')
            } else {
                line.split_once(' ')
            };
            let Some((k, v)) = split else {
                return Err(bad(line));
            };
            let num = || v.parse::<i64>().map_err(|_| bad(line));
            let pos = || -> Result<Pos, String> {
                let (b, o) = v.split_once(':').ok_or_else(|| bad(line))?;
                Ok(Pos {
                    block: b.parse().map_err(|_| bad(line))?,
                    offset: o.parse().map_err(|_| bad(line))?,
                })
            };
            match k {
                "version" if v == "1" => {}
                "version" => return Err(format!("{}: unknown version {v}", path.display())),
                "source" => s.source = v.to_string(),
                "base" => s.base = num()?,
                "scanned" => s.scanned = pos()?,
                "problems_through" => s.problems_through = pos()?,
                "pairs" => s.pairs = num()? as u64,
                "banter_end" => s.banter_end = num()? as u64,
                "user_entries" => s.user_entries = num()? as u64,
                "group_entries" => s.group_entries = num()? as u64,
                "last_ts" => s.last_ts = num()?,
                p if p.starts_with("problem.") => {
                    s.problems
                        .insert(p["problem.".len()..].to_string(), num()? as u64);
                }
                _ => return Err(bad(line)),
            }
        }
        if s.base <= 0 {
            return Err(format!("{}: no base position", path.display()));
        }
        Ok(Some(s))
    }

    fn encode(&self) -> String {
        let mut t = format!(
            "version 1\nsource {}\nbase {}\nscanned {}:{}\nproblems_through {}:{}\npairs {}\nbanter_end {}\nuser_entries {}\ngroup_entries {}\nlast_ts {}\n",
            self.source,
            self.base,
            self.scanned.block,
            self.scanned.offset,
            self.problems_through.block,
            self.problems_through.offset,
            self.pairs,
            self.banter_end,
            self.user_entries,
            self.group_entries,
            self.last_ts
        );
        for (k, v) in &self.problems {
            t.push_str(&format!("problem.{k} {v}\n"));
        }
        t
    }

    /// Replaces the state file: write a temporary file, fsync, rename, fsync the directory.
    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = dir.join("state.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(STATE_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }
}
