//! `testkit::netns` on real namespaces (needs root, as the CI runs): a host is reachable from the
//! root namespace, a partition makes connections hang, healing lets them through again, a degraded
//! host still answers, and dropping the net removes its namespaces and bridge.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::netns::{Net, CLIENTS};

const PORT: u16 = 7411;

/// A child process killed when dropped (a failing assertion included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
}

#[test]
fn partitions_cut_and_heal_the_link_to_a_host() {
    let net = Net::new(&["a", "b"]);
    let tag = net.host("a").ns.clone();
    let addr = SocketAddr::from((net.ip("a"), PORT));
    let python = testkit::find_binary("python3", "Debian/Ubuntu: `apt-get install -y python3`");
    let script = format!(
        "import socket\ns=socket.socket()\ns.bind(('{}',{PORT}))\ns.listen(64)\n\
         while True:\n  c,_=s.accept()\n  c.close()\n",
        net.ip("a")
    );
    let listener = Killed(
        net.command("a", &python)
            .args(["-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connects(addr) {
        assert!(
            Instant::now() < deadline,
            "the host's listener never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    net.partition("a", &[CLIENTS]);
    assert!(!connects(addr), "connected across a partition");
    net.heal("a", &[CLIENTS]);
    assert!(connects(addr), "no connection after healing");

    net.isolate("a");
    assert!(!connects(addr), "connected to an isolated host");
    net.reconnect("a");
    assert!(connects(addr), "no connection after reconnecting");

    // 20 % loss: connections still get through (TCP retransmits)
    net.degrade("a", 20, 20);
    let ok = (0..10).filter(|_| connects(addr)).count();
    assert!(ok >= 1, "no connection through a degraded link");
    net.heal_all();
    assert!(connects(addr));

    drop(listener);
    drop(net);
    let ip = testkit::find_binary("ip", "iproute2");
    let list = Command::new(ip).args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&tag),
        "the namespace outlived its Net"
    );
    assert!(!Path::new(&format!("/run/netns/{tag}")).exists());
}
