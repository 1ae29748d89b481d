//! `packaging/`: the example configurations (static addresses and etcd) load without a problem through the same loader as the
//! binary, and the systemd units pass `systemd-analyze verify` (when systemd-analyze is installed).
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

use banter::config::Config;
use banter::load;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn load_file<T>(path: &Path, validate: impl FnOnce(&T) -> Vec<String>) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    load::load(Some(path), Vec::new(), &[], validate)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .value
}

#[test]
fn example_configs_load() {
    let ex = root().join("examples");
    let single: Config = load_file(&ex.join("single-node.toml"), Config::validate);
    assert!(single.cluster.storage_addrs.is_empty());
    assert_eq!(single.data.dir, PathBuf::from("/var/lib/banter"));

    let mut access = Vec::new();
    for n in ["access-1", "access-2"] {
        let c: Config = load_file(&ex.join(format!("cluster/{n}.toml")), Config::validate);
        assert_eq!(c.cluster.node_id, n);
        access.push(c);
    }
    let router: route::RouterConfig = load_file(&ex.join("cluster/router.toml"), |_| Vec::new());
    let mut stores = Vec::new();
    for n in ["store-1", "store-2"] {
        let c: ims::service::StoreNodeConfig = load_file(
            &ex.join(format!("cluster/{n}.toml")),
            |c: &ims::service::StoreNodeConfig| c.validate().err().into_iter().collect(),
        );
        assert_eq!(c.node_id, n);
        stores.push(c);
    }
    // The access nodes point at the router and both store nodes, in the same order.
    for c in &access {
        let port = |a: &str| a.rsplit(':').next().unwrap().to_string();
        assert_eq!(c.cluster.route_addrs.len(), 1);
        assert_eq!(port(&c.cluster.route_addrs[0]), port(&router.listen));
        assert_eq!(c.cluster.storage_addrs.len(), stores.len());
        for (a, s) in c.cluster.storage_addrs.iter().zip(&stores) {
            assert_eq!(port(a), port(&s.listen));
        }
        assert_eq!(c.cluster.storage_addrs, access[0].cluster.storage_addrs);
    }
}

#[test]
fn etcd_example_configs_load() {
    let ex = root().join("examples/cluster-etcd");
    let mut stores = Vec::new();
    for n in ["store-0a", "store-0b", "store-0c"] {
        let c: ims::service::StoreNodeConfig = load_file(
            &ex.join(format!("{n}.toml")),
            |c: &ims::service::StoreNodeConfig| c.validate().err().into_iter().collect(),
        );
        assert_eq!(c.node_id, n);
        assert_eq!(c.shard, "0", "{n}: one shard of three members");
        assert!(c.follow.is_empty(), "{n}: etcd elects the leader");
        assert!(!c.etcd.is_empty() && !c.advertise_host.is_empty());
        stores.push(c);
    }
    let mut advertised: Vec<&str> = stores.iter().map(|c| c.advertise_host.as_str()).collect();
    advertised.dedup();
    assert_eq!(
        advertised.len(),
        3,
        "every store member advertises its own host"
    );
    for n in ["router-1", "router-2"] {
        let r: route::RouterConfig = load_file(&ex.join(format!("{n}.toml")), |_| Vec::new());
        assert_eq!(r.node_id, n);
        assert_eq!(r.cluster.etcd, stores[0].etcd);
    }
    for n in ["access-1", "access-2"] {
        let c: Config = load_file(&ex.join(format!("{n}.toml")), Config::validate);
        assert_eq!(c.cluster.node_id, n);
        assert_eq!(c.cluster.etcd, stores[0].etcd);
        assert_eq!(c.cluster.storage_shards, vec![stores[0].shard.clone()]);
        assert!(c.cluster.storage_addrs.is_empty() && c.cluster.route_addrs.is_empty());
    }
}

#[test]
fn systemd_units_verify() {
    let units: Vec<PathBuf> = std::fs::read_dir(root().join("systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    assert_eq!(units.len(), 4, "one unit per role");
    for u in &units {
        let text = std::fs::read_to_string(u).unwrap();
        assert!(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"));
        let reloads = text.contains("ExecReload=/bin/kill -HUP $MAINPID");
        let name = u.file_name().unwrap().to_string_lossy().into_owned();
        // Only the access roles re-read their configuration on SIGHUP.
        assert_eq!(
            reloads,
            name == "banter-serve.service" || name == "banter-im.service",
            "{name}"
        );
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: unit verification skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for u in &units {
        // The unit as installed, with ExecStart pointing at the binary under test.
        let text = std::fs::read_to_string(u)
            .unwrap()
            .replace("/usr/bin/banter", env!("CARGO_BIN_EXE_banter"));
        let copy = dir.path().join(u.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", u.display());
    }
}
