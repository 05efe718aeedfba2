//! Real container runtimes in a test's own host namespace: Podman with its
//! CNI backend and containerd's `ctr run --cni`, each with private roots,
//! a busybox image made locally, and every command under a timeout.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use netbr::sandbox::Sandbox;

/// An HTTP GET from inside namespace `ns`; the body, or the error.
pub fn http_get(ns: &Path, to: SocketAddr) -> anyhow::Result<String> {
    netbr::netns::run_in(ns, move || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })?
}

/// Whether the busybox httpd of the runtime tests serves its page at `to`.
pub fn served(ns: &Path, to: SocketAddr) -> bool {
    http_get(ns, to).is_ok_and(|b| b.contains("hello from netbr"))
}

/// `run -d` arguments (Podman's and Docker's alike) of busybox httpd
/// serving /www on port 80, on network `net`, publishing `publish`.
fn web_args<'a>(name: &'a str, net: &'a str, publish: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "-d", "--name", name, "--network", net];
    for p in publish {
        args.extend(["-p", p]);
    }
    args.extend([
        "localhost/busybox:latest",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    args
}

/// The runtime tests' web container, published with `-p 8080:80 -p
/// 127.0.0.1:8443:80`: 8080 is served to lan, 8443 to the host only.
pub fn assert_8080_public_and_8443_host_only(sb: &Sandbox) {
    let uplink = |port| SocketAddr::from((netbr::sandbox::UPLINK_IP, port));
    assert!(
        served(&sb.lan_path(), uplink(8080)),
        "lan got no page on 8080"
    );
    assert!(
        served(&sb.host_path(), SocketAddr::from(([127, 0, 0, 1], 8443))),
        "the host got no page on 127.0.0.1:8443"
    );
    assert!(
        http_get(&sb.lan_path(), uplink(8443)).is_err(),
        "the 127.0.0.1 binding answered lan"
    );
}

/// Asserts a runtime's `run -p 8080:80` failed because 8080 is taken, with
/// netbr's message passed on to the user.
pub fn assert_refused_taken_8080(run: &Output) {
    assert!(
        !run.status.success(),
        "a second container took host port 8080"
    );
    let msg = text(run);
    assert!(
        msg.contains("8080") && msg.contains("already published"),
        "the runtime did not pass netbr's message on: {msg}"
    );
}

/// The CNI network every runtime test uses: the sandbox's bridge.
pub const NETWORK: &str = "nbnet";

pub fn conflist(version: &str) -> String {
    serde_json::json!({
        "cniVersion": version,
        "name": NETWORK,
        "plugins": [{
            "type": "netbr-cni",
            "bridge": "netbr0",
            "subnet": "172.30.0.0/16",
            "uplink": "up0",
            "capabilities": {"portMappings": true},
        }],
    })
    .to_string()
}

/// Runs `cmd`, killed after `secs`.
pub fn timed(secs: u32, cmd: &mut Command) -> Output {
    let mut full = Command::new("timeout");
    full.arg("--kill-after=5")
        .arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => full.env(k, v),
            None => full.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        full.current_dir(dir);
    }
    full.output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A busybox root filesystem as a tarball, with an index page for httpd.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "www", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dirs");
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let list = Command::new("/usr/bin/busybox")
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let path = root.join(applet);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("applet dir");
        }
        if !path.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &path).expect("applet link");
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    std::fs::write(root.join("www/index.html"), "hello from netbr\n").expect("index");
    tar_of(&root, &["."], &dir.join("busybox.tar"))
}

/// Packs `entries` of directory `from` into the tar file `to`.
pub fn tar_of(from: &Path, entries: &[&str], to: &Path) -> PathBuf {
    let o = timed(
        60,
        Command::new("tar")
            .arg("-C")
            .arg(from)
            .arg("-cf")
            .arg(to)
            .args(entries),
    );
    assert!(o.status.success(), "tar: {}", text(&o));
    to.to_path_buf()
}

/// Podman 4.3 with private storage and configuration, run inside the
/// sandbox's host namespace with netbr-cni as the network's plugin.
pub struct Podman {
    pub dir: PathBuf,
    host: PathBuf,
}

impl Podman {
    pub fn new(sb: &Sandbox, plugin: &str) -> Self {
        Self::with_conflist(sb, plugin, &conflist("1.0.0"))
    }

    /// Podman whose one CNI network is `conflist`.
    pub fn with_conflist(sb: &Sandbox, plugin: &str, conflist: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("netbr-podman-{}", sb.suffix));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["plugins", "net", "root", "run", "tmp", "vol"] {
            std::fs::create_dir_all(dir.join(d)).expect("podman dirs");
        }
        std::os::unix::fs::symlink(plugin, dir.join("plugins/netbr-cni")).expect("plugin link");
        std::fs::write(dir.join("net/nbnet.conflist"), conflist).expect("conflist");
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
netns = "bridge"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{d}/plugins", "/usr/lib/cni"]
network_config_dir = "{d}/net"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
volume_path = "{d}/vol"
static_dir = "{d}/root/libpod"
"#
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.join("storage.conf"),
            format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n"),
        )
        .expect("storage.conf");
        let podman = Self {
            dir,
            host: sb.host_path(),
        };
        let tar = busybox_tar(&podman.dir);
        podman.ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            &tar.display().to_string(),
            "localhost/busybox:latest",
        ]);
        podman
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.host.display()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        timed(120, &mut self.command(args))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `podman run -d` of busybox httpd serving /www on port 80.
    pub fn web(&self, name: &str, publish: &[&str]) -> Output {
        self.run(&web_args(name, NETWORK, publish))
    }

    /// The network namespace podman made for container `name`.
    pub fn netns(&self, name: &str) -> PathBuf {
        PathBuf::from(
            self.ok(&[
                "inspect",
                "--format",
                "{{.NetworkSettings.SandboxKey}}",
                name,
            ])
            .trim(),
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // httpd as PID 1 ignores SIGTERM: -t 0 kills at once. Removing the
        // containers has podman call DEL for each.
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        tidy_runtime_dirs();
    }
}

/// Unmounts whatever a runtime left mounted under `dir`.
pub fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = timed(20, Command::new("umount").arg("-l").arg(p));
    }
}

/// Removes the empty state directories runtimes create on the machine.
pub fn tidy_runtime_dirs() {
    for d in [
        "/run/containerd/runc/default",
        "/run/containerd/runc",
        "/run/containerd/s",
        "/run/containerd/fifo",
        "/run/containerd",
        "/run/runc",
    ] {
        let _ = std::fs::remove_dir(d);
    }
}

/// containerd with private roots, started in the sandbox's host namespace
/// and stopped by its PID.
pub struct Containerd {
    pub dir: PathBuf,
    host: PathBuf,
    daemon: Child,
    created_netd: bool,
}

impl Containerd {
    pub fn start(sb: &Sandbox, plugin: &str, image: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("netbr-containerd-{}", sb.suffix));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["root", "state", "netd", "bin"] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd dirs");
        }
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n[debug]\n  address = \"{d}/debug.sock\"\n"
            ),
        )
        .expect("config.toml");
        // ctr reads only the first file of /etc/cni/net.d.
        std::fs::write(dir.join("netd/10-nbnet.conflist"), conflist("1.0.0")).expect("conflist");
        std::os::unix::fs::symlink(plugin, dir.join("bin/netbr-cni")).expect("plugin link");
        let daemon = spawn_containerd(&sb.host_path(), &dir);
        let created_netd = !Path::new("/etc/cni/net.d").exists();
        let ctd = Self {
            dir,
            host: sb.host_path(),
            daemon,
            created_netd,
        };
        let o = ctd.ctr(&["images", "import", &image.display().to_string()]);
        assert!(o.status.success(), "ctr images import: {}", text(&o));
        ctd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        timed(
            120,
            Command::new("ctr")
                .arg("-a")
                .arg(self.dir.join("containerd.sock"))
                .args(args),
        )
    }

    /// `ctr run --cni` in the host namespace, with this test's network
    /// configuration and plugin bind-mounted over the paths ctr reads, in a
    /// private mount namespace.
    pub fn run_cni(&self, args: &[&str]) -> Output {
        if self.created_netd {
            std::fs::create_dir_all("/etc/cni/net.d").expect("/etc/cni/net.d");
        }
        let script = format!(
            "mount --bind {d}/netd /etc/cni/net.d && mount --bind {d}/bin /usr/lib/cni && exec ctr -a {d}/containerd.sock \"$@\"",
            d = self.dir.display()
        );
        timed(
            120,
            Command::new("nsenter")
                .arg(format!("--net={}", self.host.display()))
                .args([
                    "unshare",
                    "-m",
                    "--propagation",
                    "slave",
                    "sh",
                    "-c",
                    &script,
                    "ctr",
                ])
                .args(args),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop_containerd(&mut self.daemon, &self.dir);
        if self.created_netd {
            let _ = std::fs::remove_dir("/etc/cni/net.d");
        }
    }
}

/// The init processes of the containers runc keeps state for under `root`
/// (`root/<namespace>/<container>/state.json`).
fn runc_init_pids(root: &Path) -> Vec<i32> {
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    dirs(root)
        .iter()
        .flat_map(|ns| dirs(ns))
        .filter_map(|c| std::fs::read_to_string(c.join("state.json")).ok())
        .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter_map(|state| state["init_process_pid"].as_i64())
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Starts containerd in the namespace at `ns` with `dir/config.toml`,
/// logging to `dir/containerd.log`, and waits for its socket
/// `dir/containerd.sock`.
pub fn spawn_containerd(ns: &Path, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
    let daemon = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["setsid", "containerd", "--config"])
        .arg(dir.join("config.toml"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start containerd");
    let sock = dir.join("containerd.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

/// Stops containerd by its PID, then what it left under `dir`: shims (and
/// the processes under them) of containers a failing test left, which name
/// `dir` on their command lines, mounts, and the directory itself.
pub fn stop_containerd(daemon: &mut Child, dir: &Path) {
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = daemon.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    // The containers' own processes outlive a killed shim: runc's state
    // under `dir` (the CRI runtime's private `Root`) names each one.
    for pid in runc_init_pids(&dir.join("runc")) {
        // SAFETY: processes this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let found = timed(
        20,
        Command::new("pgrep")
            .arg("-f")
            .arg(dir.display().to_string()),
    );
    for pid in String::from_utf8_lossy(&found.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: processes this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    unmount_below(dir);
    let _ = std::fs::remove_dir_all(dir);
    tidy_runtime_dirs();
}

/// `/usr/bin/docker`: a newer client may shadow it on PATH.
pub const DOCKER: &str = "/usr/bin/docker";

/// dockerd 20.10 in the sandbox's host namespace with private roots and no
/// firewall or default bridge, beside `netbr docker-plugin` serving a
/// driver named after the sandbox. Both are stopped by PID.
pub struct Dockerd {
    pub dir: PathBuf,
    /// The driver's name (`docker network create -d NAME`).
    pub driver: String,
    pub socket: PathBuf,
    host: PathBuf,
    netbr: PathBuf,
    daemon: Child,
    plugin: Option<Child>,
}

const PLUGIN_DIR: &str = "/run/docker/plugins";

impl Dockerd {
    pub fn start(sb: &Sandbox, netbr: &str) -> Self {
        Self::start_with(sb, netbr, true)
    }

    /// With `live_restore`, containers outlive a dockerd restart; without,
    /// dockerd stops them as it stops and starts restart-policy ones again.
    pub fn start_with(sb: &Sandbox, netbr: &str, live_restore: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("netbr-dockerd-{}", sb.suffix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dockerd dir");
        std::fs::write(
            dir.join("daemon.json"),
            format!(
                "{{\"deprecated-key-path\": \"{}/key.json\", \"live-restore\": {live_restore}}}",
                dir.display()
            ),
        )
        .expect("daemon.json");
        let driver = format!("netbr-{}", sb.suffix);
        let mut dockerd = Self {
            socket: Path::new(PLUGIN_DIR).join(format!("{driver}.sock")),
            driver,
            daemon: Self::spawn_daemon(&dir, &sb.host_path()),
            dir,
            host: sb.host_path(),
            netbr: PathBuf::from(netbr),
            plugin: None,
        };
        dockerd.start_plugin();
        dockerd.wait_ready();
        let tar = busybox_tar(&dockerd.dir);
        dockerd.ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            &tar.display().to_string(),
            "localhost/busybox:latest",
        ]);
        dockerd
    }

    fn spawn_daemon(dir: &Path, host: &Path) -> Child {
        let d = dir.display();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .expect("log");
        Command::new("nsenter")
            .arg(format!("--net={}", host.display()))
            .args(["setsid", "dockerd", "--config-file"])
            .arg(dir.join("daemon.json"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--data-root",
                &format!("{d}/data"),
                "--exec-root",
                &format!("{d}/exec"),
                "--pidfile",
                &format!("{d}/pid"),
                "-H",
                &format!("unix://{d}/docker.sock"),
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start dockerd")
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.run(&["info"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd by its PID and waits for it to exit.
    fn stop_daemon(&mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }

    /// Stops dockerd and starts it again on the same roots; with
    /// live-restore its containers keep running meanwhile.
    pub fn restart_daemon(&mut self) {
        self.stop_daemon();
        self.daemon = Self::spawn_daemon(&self.dir, &self.host);
        self.wait_ready();
    }

    /// Starts `netbr docker-plugin` and waits for its socket.
    pub fn start_plugin(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("plugin.log"))
            .expect("plugin log");
        let child = Command::new(&self.netbr)
            .arg("--netns")
            .arg(&self.host)
            .args(["docker-plugin", "--socket"])
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.join("netbr-records"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start netbr docker-plugin");
        self.plugin = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the driver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A reboot, as far as one namespace can have one: the driver, dockerd,
    /// its containerd, the shims and every container process killed
    /// outright; `/run` and bpffs emptied of what they held (netbr's pins,
    /// state and bridge, through `detach`; dockerd's exec-root); dockerd's
    /// data-root and the driver's records kept. Then the driver and dockerd
    /// start again, as their units would at boot (the driver first).
    pub fn reboot(&mut self, sb: &Sandbox, bridges: &[&str]) {
        let pids: Vec<i32> = self
            .run(&["ps", "-q"])
            .stdout
            .split(|b| b.is_ascii_whitespace())
            .filter(|id| !id.is_empty())
            .filter_map(|id| {
                let id = String::from_utf8_lossy(id).into_owned();
                self.ok(&["inspect", "-f", "{{.State.Pid}}", &id])
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        self.kill_plugin();
        // SAFETY: signalling processes this test started, by PID.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGKILL) };
        let _ = self.daemon.wait();
        let exec = self.dir.join("exec");
        // containerd and the shims name the exec-root on their command lines.
        let found = timed(
            20,
            Command::new("pgrep")
                .arg("-f")
                .arg(exec.display().to_string()),
        );
        let helpers = String::from_utf8_lossy(&found.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .collect::<Vec<_>>();
        for pid in pids.into_iter().chain(helpers) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(300));
        for bridge in bridges {
            let _ = sb.netbr(&["detach", "--bridge", bridge]);
        }
        unmount_below(&exec);
        let _ = std::fs::remove_dir_all(&exec);
        let _ = std::fs::remove_file(&self.socket);
        self.start_plugin();
        self.daemon = Self::spawn_daemon(&self.dir, &self.host);
        self.wait_ready();
    }

    /// Kills the driver with SIGKILL, as a crash would; its socket stays.
    pub fn kill_plugin(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        timed(
            120,
            Command::new(DOCKER)
                .arg("-H")
                .arg(format!("unix://{}/docker.sock", self.dir.display()))
                .args(args),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "docker {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `docker run -d` of busybox httpd on network `net`.
    pub fn web(&self, name: &str, net: &str, publish: &[&str]) -> Output {
        self.run(&web_args(name, net, publish))
    }

    /// Like [`Self::web`], with `--restart always`.
    pub fn web_restart_always(&self, name: &str, net: &str, publish: &[&str]) -> Output {
        let mut args = web_args(name, net, publish);
        args.splice(2..2, ["--restart", "always"]);
        self.run(&args)
    }

    /// Asserts container `name` reaches a server on lan as the uplink
    /// address: masquerade.
    pub fn assert_masquerades(&self, sb: &Sandbox, name: &str) {
        self.assert_seen_on_lan_as(sb, name, netbr::sandbox::UPLINK_IP);
    }

    /// Asserts container `name` reaches a server on lan, which sees it
    /// connect from `source`.
    pub fn assert_seen_on_lan_as(&self, sb: &Sandbox, name: &str, source: std::net::Ipv4Addr) {
        let lan = netbr::probe::Server::tcp(&sb.lan_path(), 9000, netbr::probe::echo())
            .expect("lan server");
        let o = self.run(&[
            "exec",
            name,
            "sh",
            "-c",
            "echo out | nc -w 3 192.0.2.2 9000",
        ]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("out"),
            "{}",
            text(&o)
        );
        assert_eq!(
            lan.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
            [source]
        );
    }

    /// The network namespace dockerd made for container `name`.
    pub fn netns(&self, name: &str) -> PathBuf {
        PathBuf::from(
            self.ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name])
                .trim(),
        )
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
        let nets = self.run(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("driver={}", self.driver),
        ]);
        for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
            let _ = self.run(&["network", "rm", id]);
        }
        self.stop_daemon();
        if let Some(mut p) = self.plugin.take() {
            // SAFETY: as above; SIGTERM lets it remove its socket.
            unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(200));
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(PLUGIN_DIR);
        let _ = std::fs::remove_dir("/run/docker");
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        tidy_runtime_dirs();
    }
}
