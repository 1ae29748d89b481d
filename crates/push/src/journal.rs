//! The push journal: queued jobs survive a crash or restart, and no device gets the same job twice.
//!
//! One append-only file, `push.journal` in the data directory, of JSON lines:
//!
//! * `{"j": id, "job": {…}}` — a job was accepted (written, with one `fdatasync` per batch, before
//!   its devices are looked up);
//! * `{"c": id, "u": uid, "p": "apns", "t": token}` — a notification of job `id` to this device
//!   was *claimed*: written and synced before the request is sent;
//! * `{"d": id}` — every notification of the job is claimed (or was skipped); not synced (losing it
//!   only means the job is looked at again after a crash, and every device is found claimed).
//!
//! At start-up the file is read (a torn last line is ignored), the jobs without `d` are handed back
//! with their claims, and the file is rewritten with just those. While running, the file is
//! truncated when no job is live, or rewritten from memory when it grew far beyond the live set.
//!
//! The guarantee: a job accepted into the journal is sent after a restart to every device it has
//! not claimed; a claimed device is never sent the job again (*at most once per device*): a
//! notification in flight (or waiting for a retry) when the process dies is lost, not repeated.
//! A job still in the in-memory intake queue (milliseconds) when the process dies is lost.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use backend::{PushJob, PushProvider};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Rewrite from memory when the file exceeds this and four times the live records.
const COMPACT_BYTES: u64 = 16 << 20;

/// A device claim: (uid, provider, token).
pub type Claim = (i64, PushProvider, String);

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    j: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    job: Option<PushJob>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    c: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    u: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    p: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    t: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    d: Option<u64>,
}

impl Line {
    fn empty() -> Line {
        Line {
            j: None,
            job: None,
            c: None,
            u: None,
            p: None,
            t: None,
            d: None,
        }
    }
}

fn job_line(id: u64, job: &PushJob) -> String {
    let mut l = Line::empty();
    l.j = Some(id);
    l.job = Some(job.clone());
    serde_json::to_string(&l).unwrap_or_default()
}

fn claim_line(id: u64, c: &Claim) -> String {
    let mut l = Line::empty();
    l.c = Some(id);
    l.u = Some(c.0);
    l.p = Some(c.1.name().to_string());
    l.t = Some(c.2.clone());
    serde_json::to_string(&l).unwrap_or_default()
}

/// A live job found at start-up.
pub struct Recovered {
    pub id: u64,
    pub job: PushJob,
    pub claims: HashSet<Claim>,
}

struct Live {
    job: PushJob,
    claims: Vec<Claim>,
}

struct Inner {
    file: File,
    bytes: u64,
    live: BTreeMap<u64, Live>,
    live_bytes: u64,
    next_id: u64,
}

/// The journal file. Its methods do blocking I/O: call them from `spawn_blocking`.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating) `dir/push.journal`, returning the jobs that are still live.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Vec<Recovered>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("push.journal");
        let mut live: BTreeMap<u64, Live> = BTreeMap::new();
        let mut next_id = 1;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    // A torn last line (or garbage after it): everything before counts.
                    break;
                };
                if let (Some(id), Some(job)) = (l.j, l.job) {
                    next_id = next_id.max(id + 1);
                    live.insert(
                        id,
                        Live {
                            job,
                            claims: Vec::new(),
                        },
                    );
                } else if let (Some(id), Some(u), Some(p), Some(t)) = (l.c, l.u, l.p, l.t) {
                    if let (Some(entry), Some(p)) = (live.get_mut(&id), PushProvider::from_name(&p))
                    {
                        entry.claims.push((u, p, t));
                    }
                } else if let Some(id) = l.d {
                    live.remove(&id);
                }
            }
        }
        // Rewrite with just the live jobs.
        let tmp = dir.join("push.journal.tmp");
        let mut out = String::new();
        for (id, l) in &live {
            out.push_str(&job_line(*id, &l.job));
            out.push('\n');
            for c in &l.claims {
                out.push_str(&claim_line(*id, c));
                out.push('\n');
            }
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let recovered = live
            .iter()
            .map(|(id, l)| Recovered {
                id: *id,
                job: l.job.clone(),
                claims: l.claims.iter().cloned().collect(),
            })
            .collect();
        let bytes = out.len() as u64;
        Ok((
            Journal {
                path,
                inner: Mutex::new(Inner {
                    file,
                    bytes,
                    live,
                    live_bytes: bytes,
                    next_id,
                }),
            },
            recovered,
        ))
    }

    /// Records accepted jobs (one sync); returns their ids, in order.
    pub fn add_jobs(&self, jobs: &[PushJob]) -> std::io::Result<Vec<u64>> {
        let mut g = self.inner.lock();
        let mut out = String::new();
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            let id = g.next_id;
            g.next_id += 1;
            out.push_str(&job_line(id, job));
            out.push('\n');
            ids.push(id);
        }
        g.file.write_all(out.as_bytes())?;
        g.file.sync_data()?;
        g.bytes += out.len() as u64;
        g.live_bytes += out.len() as u64;
        for (id, job) in ids.iter().zip(jobs) {
            g.live.insert(
                *id,
                Live {
                    job: job.clone(),
                    claims: Vec::new(),
                },
            );
        }
        Ok(ids)
    }

    /// Records claims (one sync), before their requests are sent.
    pub fn claim(&self, claims: &[(u64, Claim)]) -> std::io::Result<()> {
        let mut g = self.inner.lock();
        let mut out = String::new();
        for (id, c) in claims {
            out.push_str(&claim_line(*id, c));
            out.push('\n');
        }
        g.file.write_all(out.as_bytes())?;
        g.file.sync_data()?;
        g.bytes += out.len() as u64;
        g.live_bytes += out.len() as u64;
        for (id, c) in claims {
            if let Some(l) = g.live.get_mut(id) {
                l.claims.push(c.clone());
            }
        }
        Ok(())
    }

    /// Records finished jobs (no sync), truncating or compacting the file when worthwhile.
    pub fn done(&self, ids: &[u64]) -> std::io::Result<()> {
        let mut g = self.inner.lock();
        for id in ids {
            g.live.remove(id);
        }
        if g.live.is_empty() {
            g.file.set_len(0)?;
            g.bytes = 0;
            g.live_bytes = 0;
            return Ok(());
        }
        let mut out = String::new();
        for id in ids {
            out.push_str(&format!("{{\"d\":{id}}}\n"));
        }
        g.file.write_all(out.as_bytes())?;
        g.bytes += out.len() as u64;
        if g.bytes > COMPACT_BYTES && g.bytes > 4 * g.live_bytes {
            self.compact(&mut g)?;
        }
        Ok(())
    }

    fn compact(&self, g: &mut Inner) -> std::io::Result<()> {
        let mut out = String::new();
        for (id, l) in &g.live {
            out.push_str(&job_line(*id, &l.job));
            out.push('\n');
            for c in &l.claims {
                out.push_str(&claim_line(*id, c));
                out.push('\n');
            }
        }
        let tmp = self.path.with_extension("journal.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        g.file = OpenOptions::new().append(true).open(&self.path)?;
        g.bytes = out.len() as u64;
        g.live_bytes = g.bytes;
        Ok(())
    }

    /// Live jobs (for metrics and tests).
    pub fn live(&self) -> usize {
        self.inner.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_jobs_and_claims_survive_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let job = |r| PushJob::Peer {
            appid: 7,
            sender: 1,
            receiver: r,
            content: "x".into(),
        };
        {
            let (j, rec) = Journal::open(dir.path()).unwrap();
            assert!(rec.is_empty());
            let ids = j.add_jobs(&[job(2), job(3)]).unwrap();
            j.claim(&[(ids[0], (2, PushProvider::Apns, "aa".into()))])
                .unwrap();
            j.done(&[ids[1]]).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("push.journal"))
            .unwrap();
        f.write_all(b"{\"c\":1,\"u\":").unwrap();
        drop(f);
        let (j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].job, job(2));
        assert!(rec[0]
            .claims
            .contains(&(2, PushProvider::Apns, "aa".into())));
        let ids = j.add_jobs(&[job(4)]).unwrap();
        assert!(ids[0] > rec[0].id, "ids are not reused");
        j.done(&[rec[0].id, ids[0]]).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("push.journal"))
                .unwrap()
                .len(),
            0
        );
    }
}
