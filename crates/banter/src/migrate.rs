//! `banter store import-gobelieve` and `banter store gen-gobelieve`: command-line glue around
//! `store::gobelieve` (messages and sync keys) and `backend::import` (MySQL groups, Redis tokens
//! and user state). The procedure is `docs/migration.md`.

use std::io::Write;
use std::path::{Path, PathBuf};

use store::gobelieve::gen::{generate, groups_sql, GenOptions};
use store::gobelieve::{import, ImportOptions, ImportReport};

/// What `import-gobelieve` was asked to do.
pub struct ImportArgs {
    pub from: PathBuf,
    pub data: PathBuf,
    pub mysql: Option<String>,
    pub redis: Option<String>,
    pub redis_db: i64,
    pub batch: usize,
    pub quiet: bool,
}

/// Runs the import; prints progress to stderr and the report to stdout.
pub fn import_gobelieve(a: ImportArgs) -> anyhow::Result<ImportReport> {
    let store_dir = a.data.join("store");
    std::fs::create_dir_all(&store_dir)?;
    let quiet = a.quiet;
    let mut shown = 0usize;
    let opts = ImportOptions {
        batch_messages: a.batch.max(1),
        progress: Some(Box::new(move |p| {
            if !quiet {
                let pct = 100.0 * p.source_bytes_done as f64 / p.source_bytes.max(1) as f64;
                eprintln!(
                    "imported {} messages, {pct:.1}% of the source read, {:.0} msgs/s",
                    p.messages,
                    p.messages as f64 / p.elapsed_secs.max(1e-9)
                );
            }
        })),
        on_problem: Some(Box::new(move |p| {
            shown += 1;
            if shown <= 20 && !quiet {
                eprintln!("skipped at {}: {} ({})", p.at, p.kind.name(), p.detail);
            } else if shown == 21 && !quiet {
                eprintln!("further skipped records are only counted (see the report)");
            }
        })),
        stop_after: None,
    };
    let report = import(&a.from, &store_dir, opts)?;
    println!("{report}");
    if a.mysql.is_some() || a.redis.is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            if let Some(url) = &a.mysql {
                let r = backend::import::groups_from_mysql(url, &a.data.join("groups.db")).await?;
                println!("{r}");
            }
            if let Some(url) = &a.redis {
                let r =
                    backend::import::users_from_redis(url, a.redis_db, &a.data.join("banter.db"))
                        .await?;
                println!("{r}");
            }
            anyhow::Ok(())
        })?;
    }
    Ok(report)
}

/// `gen-gobelieve`: writes a GoBelieve data directory and, next to it, `groups.sql`.
pub fn gen_gobelieve(out: &Path, o: &GenOptions) -> anyhow::Result<()> {
    let g = generate(out, o)?;
    let sql_path = out.join("groups.sql");
    let mut sql = std::io::BufWriter::new(std::fs::File::create(&sql_path)?);
    groups_sql(o.appid, &g.groups, &mut sql)?;
    sql.flush()?;
    println!(
        "wrote {} messages ({} queue entries, {} groups) to {}; MySQL rows of the groups in {}",
        g.messages,
        g.entries,
        g.groups.len(),
        out.display(),
        sql_path.display()
    );
    Ok(())
}
