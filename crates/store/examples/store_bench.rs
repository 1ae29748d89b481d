//! Runs the store benchmark (`store::bench::run`) and prints the figures.
//!
//! `cargo run --release -p store --example store_bench -- [--messages N] [--appenders N]
//!  [--size BYTES] [--durability always|none|interval-MS] [--dir DIR] [--keyed] [--json]`

use std::io::Write;
use std::time::Duration;

use store::bench::{run, StoreBenchOptions};
use store::Durability;

fn main() {
    let mut opts = StoreBenchOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--messages" => opts.messages = val().parse().expect("--messages N"),
            "--appenders" => opts.appenders = val().parse().expect("--appenders N"),
            "--size" => opts.message_size = val().parse().expect("--size BYTES"),
            "--users" => opts.users = val().parse().expect("--users N"),
            "--queues" => opts.queues_per_message = val().parse().expect("--queues N"),
            "--sync-entries" => opts.sync_entries = val().parse().expect("--sync-entries N"),
            "--dir" => opts.dir = Some(val().into()),
            "--keep" => opts.keep = true,
            "--keyed" => opts.keyed = true,
            "--no-prealloc" => opts.store.preallocate = false,
            "--drivers" => opts.driver_threads = val().parse().expect("--drivers N"),
            "--durability" => {
                let v = val();
                opts.durability = match v.as_str() {
                    "always" => Durability::Always,
                    "none" => Durability::None,
                    other => {
                        let ms = other
                            .strip_prefix("interval-")
                            .and_then(|m| m.parse().ok())
                            .expect("--durability always|none|interval-MS");
                        Durability::Interval(Duration::from_millis(ms))
                    }
                }
            }
            "--json" => json = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let progress = |done: u64, total: u64| {
        let pct = done * 100 / total.max(1);
        let bar = "#".repeat((pct / 2) as usize);
        eprint!("\r[{bar:<50}] {pct:3}% {done}/{total}");
        let _ = std::io::stderr().flush();
    };
    let r = match run(&opts, &progress) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("\nbenchmark failed: {e}");
            std::process::exit(1);
        }
    };
    eprintln!();
    if json {
        println!("{}", r.to_json());
    } else {
        println!("{r:#?}");
    }
}
