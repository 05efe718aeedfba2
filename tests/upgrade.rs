//! Upgrading in place: a bridge attached by the previous release (its map
//! layout 7, the binary built from git at [`PREVIOUS_RELEASE`]) is taken
//! over by this netbr's `attach`, and what users set up and the connections
//! they have open carry on: a TCP stream through a published port and one
//! through masquerade exchange bytes before, during and after the upgrade.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use netbr::{
    probe::{self, Server},
    sandbox::{Sandbox, LAN_IP, UPLINK_IP},
};
use support::runtimes::{text, timed};

/// The last commit whose datapath has the previous map layout (7).
const PREVIOUS_RELEASE: &str = "58c6f547a178ee35b7338a45ba984d509002949a";

/// The previous release's `netbr`, built from git once per workspace and
/// kept in `target/previous-release/`.
fn previous_netbr() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = workspace.join("target/previous-release");
    let (src, target) = (root.join("src"), root.join("target"));
    let bin = target.join("release/netbr");
    let stamp = root.join("commit");
    if bin.exists() && std::fs::read_to_string(&stamp).is_ok_and(|c| c == PREVIOUS_RELEASE) {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("source dir");
    let archive = timed(
        120,
        Command::new("sh").arg("-c").arg(format!(
            "git -C {} archive {PREVIOUS_RELEASE} | tar -x -C {}",
            workspace.display(),
            src.display()
        )),
    );
    assert!(
        archive.status.success() && src.join("Cargo.toml").exists(),
        "git archive {PREVIOUS_RELEASE} (the clone needs its history): {}",
        text(&archive)
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = timed(
        1800,
        Command::new(cargo)
            .args(["build", "--release", "--bin", "netbr"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target),
    );
    assert!(
        build.status.success(),
        "building the previous release: {}",
        text(&build)
    );
    std::fs::write(&stamp, PREVIOUS_RELEASE).expect("stamp");
    bin
}

/// A connection kept busy from a thread: a small echo round trip every
/// 20 ms until stopped, counting the round trips and the failures.
struct Stream {
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Stream {
    fn start(mut conn: TcpStream) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let trips = Arc::new(AtomicU64::new(0));
        let (st, tr) = (stop.clone(), trips.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 5];
            while !st.load(Ordering::Relaxed) {
                conn.write_all(b"bytes")
                    .map_err(|e| format!("write: {e}"))?;
                conn.read_exact(&mut buf)
                    .map_err(|e| format!("read: {e}"))?;
                if &buf != b"bytes" {
                    return Err(format!("echoed {buf:?}"));
                }
                tr.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        Self {
            stop,
            trips,
            thread: Some(thread),
        }
    }

    fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Waits until `more` round trips beyond `from` are done.
    fn wait_for(&self, from: u64, more: u64, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.trips() < from + more {
            assert!(
                std::time::Instant::now() < deadline
                    && !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "{what}: the stream stopped after {} round trips",
                self.trips()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("thread")
            .join()
            .map_err(|_| "the stream's thread panicked".to_string())?
    }
}

fn run_previous(previous: &Path, sb: &Sandbox, args: &[&str]) -> String {
    let o = timed(
        120,
        Command::new(previous)
            .arg("--netns")
            .arg(&sb.host)
            .args(args),
    );
    assert!(o.status.success(), "previous netbr {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn attach_upgrades_the_previous_release_in_place_and_streams_carry_on() {
    let previous = previous_netbr();
    // The sandbox drives this netbr; the previous one sets the bridge up.
    let sb = support::sandbox();
    let old = |args: &[&str]| run_previous(&previous, &sb, args);
    old(&sb.attach_args(&[]));
    let c1 = sb.container(1);
    old(&["endpoint", "add", &c1, "--ip", "172.30.0.2"]);
    old(&["publish", &c1, "-p", "8080:80"]);
    old(&["firewall", "add", "--deny", "--from", "198.51.100.0/24"]);
    old(&["endpoint", "limit", &c1, "--egress-rate", "500mbit"]);
    let before: serde_json::Value = serde_json::from_str(&old(&["ls", "--json"])).expect("ls json");

    let _web = Server::tcp_stream(&sb.container_path(1), 80).expect("web");
    let _peer = Server::tcp_stream(&sb.lan_path(), 9000).expect("peer");
    let dnat = Stream::start(
        probe::tcp_connect(&sb.lan_path(), 0, SocketAddr::from((UPLINK_IP, 8080)))
            .expect("lan -> published port"),
    );
    let masq = Stream::start(
        probe::tcp_connect(&sb.container_path(1), 0, SocketAddr::from((LAN_IP, 9000)))
            .expect("container -> lan"),
    );
    dnat.wait_for(0, 5, "through DNAT before the upgrade");
    masq.wait_for(0, 5, "through masquerade before the upgrade");

    let out = sb
        .netbr_ok(&sb.attach_args(&[]))
        .expect("attach over the previous layout");
    assert!(
        out.contains("upgraded bridge netbr0 from map layout 7: 2 flow(s) carried over"),
        "{out}"
    );
    let (d, m) = (dnat.trips(), masq.trips());
    dnat.wait_for(d, 10, "through DNAT after the upgrade");
    masq.wait_for(m, 10, "through masquerade after the upgrade");
    dnat.finish().expect("the DNAT stream");
    masq.finish().expect("the masquerade stream");

    // What the user set up is all there, and the new tables hold the flows.
    let after: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json");
    // Fields this release added (an endpoint's `ip6`, a mapping's
    // `families`) aside, each endpoint and mapping is as it was.
    let old = support::settings(before["endpoints"].clone());
    let new = support::settings(after["endpoints"].clone());
    assert_eq!(fields_of(new, &old), old);
    assert_eq!(
        fields_of(after["mappings"].clone(), &before["mappings"]),
        before["mappings"]
    );
    let rules = sb
        .netbr_ok(&["firewall", "ls", "--json"])
        .expect("firewall");
    assert!(rules.contains("198.51.100.0/24"), "{rules}");
    let flows: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["conntrack", "list", "--json"]).expect("ct"))
            .expect("json");
    let nats: Vec<&str> = flows
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["nat"].as_str())
        .collect();
    assert!(
        nats.contains(&"dnat") && nats.contains(&"snat"),
        "{flows:#}"
    );
    // New connections work through the upgraded datapath.
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080)), b"new")
            .expect("a new connection"),
        b"new"
    );
}

/// The objects of list `new` with only the fields their counterparts in
/// `old` have: what a newer release's listing says of what an older one's
/// did.
fn fields_of(mut new: serde_json::Value, old: &serde_json::Value) -> serde_json::Value {
    if let (Some(new), Some(old)) = (new.as_array_mut(), old.as_array()) {
        for (n, o) in new.iter_mut().zip(old) {
            if let Some(n) = n.as_object_mut() {
                n.retain(|k, _| o.get(k).is_some());
            }
        }
    }
    new
}
