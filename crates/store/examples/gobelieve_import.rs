//! The import of a GoBelieve ims data directory on its own, as `banter store import-gobelieve`
//! runs it (same function, same options), for a release-build measurement without building the
//! whole server:
//!
//! ```sh
//! banter store gen-gobelieve --out /tmp/gb1m --messages 1000000 --users 10000 --groups 100
//! cargo run --release -p store --example gobelieve_import -- /tmp/gb1m /tmp/banter-data/store
//! ```

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: gobelieve_import <GoBelieve storage_root> <banter store directory>");
        std::process::exit(2);
    }
    let opts = store::gobelieve::ImportOptions {
        progress: Some(Box::new(|p| {
            eprintln!(
                "imported {} messages, {:.1}% of the source read, {:.0} msgs/s",
                p.messages,
                100.0 * p.source_bytes_done as f64 / p.source_bytes.max(1) as f64,
                p.messages as f64 / p.elapsed_secs.max(1e-9)
            )
        })),
        ..store::gobelieve::ImportOptions::default()
    };
    match store::gobelieve::import(Path::new(&args[1]), Path::new(&args[2]), opts) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("import failed: {e}");
            std::process::exit(1);
        }
    }
}
