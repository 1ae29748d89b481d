//! Network namespaces for partition tests: every node of a cluster runs on a "host" of its own — a
//! network namespace with one address on a private bridge — and the test injects network faults
//! between them.
//!
//! [`Net::new`] creates one namespace per named host, each joined to a fresh bridge by a veth pair
//! (`eth0` inside, address `10.A.B.<10+i>/24`); the bridge itself holds `10.A.B.1`, the address
//! under which the test process (the root namespace, host [`CLIENTS`]) reaches the hosts and they
//! reach it. Names carry the creating process's id (`bnt<pid><letter>…`), so namespaces, bridges
//! and veths left by a killed run are recognised and removed by the next one, the processes still
//! running in them killed ([`remove_stale`]); everything a `Net` created is removed when it is
//! dropped, panics included.
//!
//! Faults, each applied inside the hosts' own namespaces (never in the root namespace):
//!
//! * [`Net::partition`] / [`Net::heal`]: traffic between two hosts is silently dropped both ways
//!   (nftables rules on `eth0`), so connections hang and time out as across a real partition;
//! * [`Net::degrade`] / [`Net::restore`]: random loss of a percentage of packets (nftables
//!   `numgen`), plus a delay with `tc netem` where the kernel has it, otherwise a slow link (`tc`
//!   HTB rate limit, which delays what queues behind it).
//!
//! Needs root, `ip` (iproute2), `tc` and `nft` (nftables); without them [`Net::new`] panics saying
//! what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::find_binary;

/// The name of the root namespace's end of the bridge (where the test's clients run) in fault
/// calls.
pub const CLIENTS: &str = "clients";

/// Prefix of every namespace and interface name created here.
const PREFIX: &str = "bnt";

/// Nets created by this process so far (a letter in the names).
static CREATED: AtomicU32 = AtomicU32::new(0);

/// One host: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The name given to [`Net::new`].
    pub name: String,
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The veth end on the bridge side, in the root namespace.
    veth: String,
}

/// What [`Net::degrade`] applied to a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// Packet loss and a `tc netem` delay.
    LossAndDelay,
    /// Packet loss and a rate limit (the kernel has no `sch_netem`).
    LossAndRateLimit,
}

#[derive(Default)]
struct Faults {
    /// Unordered pairs of hosts (sorted names) that cannot reach each other.
    cut: BTreeSet<(String, String)>,
    /// Per host: percentage of packets dropped at random.
    loss: BTreeMap<String, u32>,
}

/// A set of hosts on one bridge; removed on drop.
pub struct Net {
    tag: String,
    bridge: String,
    gateway: Ipv4Addr,
    hosts: Vec<Host>,
    netem: bool,
    faults: Mutex<Faults>,
}

/// The full path of a tool this module runs (found in the sbin directories too, which are not on
/// every PATH), or a panic naming its package.
fn tool(name: &str) -> std::path::PathBuf {
    let package = match name {
        "nft" => "nftables",
        "kill" => "procps",
        _ => "iproute2",
    };
    find_binary(
        name,
        &format!("Debian/Ubuntu: `apt-get install -y {package}`"),
    )
}

/// Runs `program args` and returns its stdout, or an error naming the command and its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    if program == "ip" && args.len() > 3 && args[0] == "netns" && args[1] == "exec" {
        // the tool run inside the namespace, by its full path too
        args[3] = tool(&args[3]).to_string_lossy().into_owned();
    }
    let mut cmd = Command::new(tool(program));
    cmd.args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args, None) {
        panic!("testkit::netns: {e}");
    }
}

/// The process id in a name made here (`bnt<pid><letter>…`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = rest[digits.len()..].chars().next()?;
    if digits.is_empty() || !after.is_ascii_lowercase() {
        return None;
    }
    digits.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces, bridges and veths left by runs whose process is gone, killing the
/// processes still running in those namespaces (the nodes of a killed test); returns how many
/// namespaces and interfaces it removed.
pub fn remove_stale() -> usize {
    let mut removed = 0;
    if let Ok(list) = run("ip", &["netns", "list"], None) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner_pid(name).is_none_or(alive) {
                continue;
            }
            let pids = run("ip", &["netns", "pids", name], None).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = run("kill", &["-9", pid], None);
            }
            if run("ip", &["netns", "del", name], None).is_ok() {
                removed += 1;
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"], None) {
        for line in links.lines() {
            // "12: bnt123ah0@if11: <BROADCAST,…"
            let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            else {
                continue;
            };
            if owner_pid(name).is_some_and(|pid| !alive(pid))
                && run("ip", &["link", "del", name], None).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

impl Net {
    /// Creates one namespace per name in `hosts` on a new bridge. Panics with the reason when this
    /// process may not (not root, no `ip`/`tc`/`nft`, namespaces unavailable).
    pub fn new(hosts: &[&str]) -> Net {
        for bin in ["ip", "tc", "nft"] {
            tool(bin);
        }
        remove_stale();
        let pid = std::process::id();
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let letter = char::from(b'a' + (n % 26) as u8);
        let tag = format!("{PREFIX}{pid}{letter}");
        assert!(
            tag.len() + 4 <= 15,
            "testkit::netns: process id {pid} too long for interface names"
        );
        let probe = format!("{tag}-probe");
        if let Err(e) = run("ip", &["netns", "add", &probe], None) {
            panic!(
                "testkit::netns: the partition tests create network namespaces and need root \
                 (the CI runs the tests as root) and a kernel with network namespaces: {e}"
            );
        }
        let _ = run("ip", &["netns", "del", &probe], None);

        // a /24 of 10.0.0.0/8 not on any interface yet
        let in_use = run("ip", &["-4", "-o", "addr", "show"], None).unwrap_or_default();
        let mut subnet = None;
        for k in 0..4096u32 {
            let x = (pid.wrapping_mul(31).wrapping_add(n * 7 + k)) % 4096;
            let (a, b) = (100 + x / 256 % 100, x % 256);
            if !in_use.contains(&format!("10.{a}.{b}.")) {
                subnet = Some((a as u8, b as u8));
                break;
            }
        }
        let (a, b) = subnet.expect("testkit::netns: no free 10.x.y.0/24");
        let gateway = Ipv4Addr::new(10, a, b, 1);
        let mut net = Net {
            bridge: format!("{tag}br"),
            tag,
            gateway,
            hosts: Vec::new(),
            netem: false,
            faults: Mutex::new(Faults::default()),
        };
        must("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("{gateway}/24"), "dev", &net.bridge],
        );
        must("ip", &["link", "set", &net.bridge, "up"]);
        for (i, name) in hosts.iter().enumerate() {
            assert!(
                *name != CLIENTS,
                "testkit::netns: `{CLIENTS}` is the root namespace's name"
            );
            let host = Host {
                name: (*name).to_string(),
                ns: format!("{}-{name}", net.tag),
                ip: Ipv4Addr::new(10, a, b, 10 + i as u8),
                veth: format!("{}h{i}", net.tag),
            };
            must("ip", &["netns", "add", &host.ns]);
            // pushed before it is complete, so that a failure below still removes it
            net.hosts.push(host.clone());
            must(
                "ip",
                &[
                    "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns",
                    &host.ns,
                ],
            );
            must(
                "ip",
                &["link", "set", &host.veth, "master", &net.bridge, "up"],
            );
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", host.ns.as_str(), "ip"];
                all.extend_from_slice(args);
                must("ip", &all);
            };
            inside(&["link", "set", "lo", "up"]);
            inside(&["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]);
            inside(&["link", "set", "eth0", "up"]);
        }
        // does this kernel have netem? (tried on the first host, removed at once)
        if let Some(h) = net.hosts.first() {
            let ns = h.ns.clone();
            let add = [
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                "delay", "1ms",
            ];
            net.netem = run("ip", &add, None).is_ok();
            if net.netem {
                must(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                    ],
                );
            }
        }
        net
    }

    /// The host named `name` (panics if there is none).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("testkit::netns: no host {name}"))
    }

    /// The address of host `name`; [`CLIENTS`] is the root namespace's address on the bridge.
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        if name == CLIENTS {
            self.gateway
        } else {
            self.host(name).ip
        }
    }

    /// Every host's name.
    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// True when delays are real `tc netem` delays (see [`Net::degrade`]).
    pub fn has_netem(&self) -> bool {
        self.netem
    }

    /// A command running `program` inside host `name`'s namespace (`ip netns exec` replaces
    /// itself with the program, so the child's pid is the program's).
    pub fn command(&self, name: &str, program: &Path) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.host(name).ns])
            .arg(program);
        cmd
    }

    /// Drops all traffic between `a` and each of `others` (either may be [`CLIENTS`]).
    pub fn partition(&self, a: &str, others: &[&str]) {
        let mut f = self.faults.lock().expect("faults lock");
        for b in others {
            assert_ne!(a, *b, "testkit::netns: a host cannot be cut from itself");
            f.cut.insert(pair(a, b));
        }
        self.apply(&f);
    }

    /// Cuts `a` from every other host and from [`CLIENTS`].
    pub fn isolate(&self, a: &str) {
        let mut others: Vec<String> = self.names().into_iter().filter(|n| n != a).collect();
        others.push(CLIENTS.into());
        let refs: Vec<&str> = others.iter().map(String::as_str).collect();
        self.partition(a, &refs);
    }

    /// Lets traffic between `a` and each of `others` through again.
    pub fn heal(&self, a: &str, others: &[&str]) {
        let mut f = self.faults.lock().expect("faults lock");
        for b in others {
            f.cut.remove(&pair(a, b));
        }
        self.apply(&f);
    }

    /// Undoes every [`Net::partition`] touching `a`.
    pub fn reconnect(&self, a: &str) {
        let mut f = self.faults.lock().expect("faults lock");
        f.cut.retain(|(x, y)| x != a && y != a);
        self.apply(&f);
    }

    /// Host `name` drops `loss_percent` of its packets at random, both ways, and delays the ones
    /// it sends by `delay_ms` (± a quarter) with `tc netem`; on a kernel without `sch_netem` the
    /// link is instead limited to 256 kbit/s, so what queues is delayed.
    pub fn degrade(&self, name: &str, loss_percent: u32, delay_ms: u32) -> Degraded {
        let mut f = self.faults.lock().expect("faults lock");
        f.loss.insert(name.to_string(), loss_percent.min(100));
        self.apply(&f);
        let ns = self.host(name).ns.clone();
        let tc = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.as_str(), "tc"];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        if self.netem {
            let (delay, jitter) = (format!("{delay_ms}ms"), format!("{}ms", delay_ms / 4));
            tc(&[
                "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, &jitter,
            ]);
            Degraded::LossAndDelay
        } else {
            tc(&[
                "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1",
            ]);
            tc(&[
                "class", "replace", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate",
                "256kbit",
            ]);
            Degraded::LossAndRateLimit
        }
    }

    /// Undoes [`Net::degrade`] on host `name`.
    pub fn restore(&self, name: &str) {
        let mut f = self.faults.lock().expect("faults lock");
        f.loss.remove(name);
        self.apply(&f);
        let ns = self.host(name).ns.clone();
        // absent when the host was not degraded: nothing to undo
        let _ = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ],
            None,
        );
    }

    /// Heals every partition and restores every degraded host.
    pub fn heal_all(&self) {
        let degraded: Vec<String> = {
            let mut f = self.faults.lock().expect("faults lock");
            f.cut.clear();
            self.apply(&f);
            f.loss.keys().cloned().collect()
        };
        for h in degraded {
            self.restore(&h);
        }
    }

    /// Writes every host's nftables rules for the current faults (one atomic `nft -f` per host).
    fn apply(&self, f: &Faults) {
        for h in &self.hosts {
            let peers: Vec<String> = f
                .cut
                .iter()
                .filter_map(|(x, y)| {
                    if *x == h.name {
                        Some(y)
                    } else if *y == h.name {
                        Some(x)
                    } else {
                        None
                    }
                })
                .map(|p| self.ip(p).to_string())
                .collect();
            let mut rules_in = String::new();
            let mut rules_out = String::new();
            if !peers.is_empty() {
                let set = peers.join(", ");
                rules_in.push_str(&format!("iifname \"eth0\" ip saddr {{ {set} }} drop\n"));
                rules_out.push_str(&format!("oifname \"eth0\" ip daddr {{ {set} }} drop\n"));
            }
            if let Some(loss) = f.loss.get(&h.name).filter(|l| **l > 0) {
                rules_in.push_str(&format!(
                    "iifname \"eth0\" numgen random mod 100 < {loss} drop\n"
                ));
                rules_out.push_str(&format!(
                    "oifname \"eth0\" numgen random mod 100 < {loss} drop\n"
                ));
            }
            let script = format!(
                "add table inet {PREFIX}fault\ndelete table inet {PREFIX}fault\n\
                 table inet {PREFIX}fault {{\n\
                 chain in {{ type filter hook input priority 0; policy accept;\n{rules_in}}}\n\
                 chain out {{ type filter hook output priority 0; policy accept;\n{rules_out}}}\n}}\n"
            );
            if let Err(e) = run(
                "ip",
                &["netns", "exec", &h.ns, "nft", "-f", "-"],
                Some(&script),
            ) {
                panic!("testkit::netns: {e}\nrules:\n{script}");
            }
        }
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = run("ip", &["link", "del", &h.veth], None);
            let _ = run("ip", &["netns", "del", &h.ns], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_made_here_carry_their_owner() {
        assert_eq!(owner_pid("bnt1234a-ims-1"), Some(1234));
        assert_eq!(owner_pid("bnt1234abr"), Some(1234));
        assert_eq!(owner_pid("bnt1234ah3"), Some(1234));
        assert_eq!(owner_pid("bnt-x"), None);
        assert_eq!(owner_pid("bnt12"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(pair("b", "a"), ("a".to_string(), "b".to_string()));
    }
}
