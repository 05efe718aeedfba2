//! A Kubernetes node without kubelet: containerd's CRI plugin in a node
//! namespace of a [`netbr::cluster::Cluster`], with private root and state, `netbr-cni`
//! beside `loopback` in its CNI bin dir, and a locally built sandbox image,
//! driven over the CRI gRPC API as kubelet drives it.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, DnsConfig, ListPodSandboxRequest,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, Protocol,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use netbr::cluster::Node;
use tonic::transport::{Channel, Endpoint, Uri};

use super::runtimes::{busybox_tar, spawn_containerd, stop_containerd, tar_of, text, timed};

/// The sandbox ("pause") image every node imports.
pub const PAUSE_IMAGE: &str = "localhost/netbr-pause:1";

/// What a CRI call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// A pod as kubelet describes its sandbox: name, hostPorts
/// (protocol, containerPort, hostPort, hostIP) and annotations.
#[derive(Default, Clone)]
pub struct Pod {
    pub name: String,
    pub ports: Vec<(Protocol, u16, u16, String)>,
    pub annotations: HashMap<String, String>,
}

impl Pod {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }

    pub fn host_port(mut self, protocol: Protocol, container: u16, host: u16, ip: &str) -> Self {
        self.ports.push((protocol, container, host, ip.to_string()));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    fn config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: format!("uid-{}", self.name),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            // As kubelet passes a ClusterFirst pod's DNS.
            dns_config: Some(DnsConfig {
                servers: vec!["198.51.100.53".to_string()],
                searches: vec!["default.svc.cluster.local".to_string()],
                options: vec!["ndots:5".to_string()],
            }),
            port_mappings: self
                .ports
                .iter()
                .map(|(protocol, container, host, ip)| PortMapping {
                    protocol: *protocol as i32,
                    container_port: i32::from(*container),
                    host_port: i32::from(*host),
                    host_ip: ip.clone(),
                })
                .collect(),
            annotations: self.annotations.clone(),
            labels: HashMap::from([("app".to_string(), self.name.clone())]),
            ..PodSandboxConfig::default()
        }
    }
}

/// A running pod sandbox: its id, IP and network namespace.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
}

/// containerd with its CRI plugin in one node's namespace, stopped by its
/// PID with its shims when dropped.
pub struct CriNode {
    pub dir: PathBuf,
    daemon: Child,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl CriNode {
    /// Starts containerd on `node` with `netbr-cni` (at `plugin`) as the
    /// pod network, configured by `plugin_conf`, and imports `image`.
    pub fn start(node: &Node, plugin: &str, plugin_conf: serde_json::Value, image: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("netbr-cri-{}", node.ns));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["root", "state", "netd", "bin", "opt", "runc"] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd dirs");
        }
        std::os::unix::fs::symlink(plugin, dir.join("bin/netbr-cni")).expect("plugin link");
        // containerd always adds a loopback network of its own.
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", dir.join("bin/loopback"))
            .expect("loopback link");
        // containerd 1.6's libcni parses results up to spec 1.0.0.
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": plugin_conf["name"],
            "plugins": [plugin_conf],
        });
        std::fs::write(dir.join("netd/10-netbr.conflist"), conflist.to_string()).expect("conflist");
        std::fs::write(dir.join("config.toml"), config_toml(&dir)).expect("config.toml");
        let daemon = spawn_containerd(&node.path(), &dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let sock = dir.join("containerd.sock");
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:0")
                    .expect("endpoint")
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let sock = sock.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(sock).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to containerd's CRI");
        let node = Self {
            client: RuntimeServiceClient::new(channel),
            dir,
            daemon,
            rt,
        };
        let o = timed(
            120,
            Command::new("ctr")
                .arg("-a")
                .arg(node.dir.join("containerd.sock"))
                // The k8s.io namespace, or CRI would try to pull it.
                .args(["-n", "k8s.io", "images", "import"])
                .arg(image),
        );
        assert!(o.status.success(), "ctr images import: {}", text(&o));
        node
    }

    /// Waits for `fut` on the node's runtime, at most [`CALL_TIMEOUT`].
    fn block<T>(&self, what: &str, fut: impl std::future::Future<Output = T>) -> T {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
            .unwrap_or_else(|_| panic!("{what} took over {CALL_TIMEOUT:?}\n{}", self.log()))
    }

    /// Runs `f` on the node's CRI client; panics with containerd's error.
    fn call<T, F>(&self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.block(what, f(self.client.clone())) {
            Ok(r) => r.into_inner(),
            Err(status) => panic!("{what}: {}\n{}", status.message(), self.log()),
        }
    }

    /// The tail of containerd's log, for failure messages.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `RunPodSandbox`, or the error containerd returned.
    pub fn try_run(&self, pod: &Pod) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest {
            config: Some(pod.config()),
            runtime_handler: String::new(),
        };
        let mut client = self.client.clone();
        self.block("RunPodSandbox", client.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// `RunPodSandbox` then `PodSandboxStatus`, as kubelet starts a pod.
    pub fn run(&self, pod: &Pod) -> Sandbox {
        let id = self.try_run(pod).unwrap_or_else(|s| {
            panic!(
                "RunPodSandbox {}: {}\n{}",
                pod.name,
                s.message(),
                self.log()
            )
        });
        self.status(&id)
    }

    /// `RunPodSandbox` of every pod at once, as kubelet's pod workers do.
    pub fn run_together(&self, pods: &[Pod]) -> Vec<Sandbox> {
        let calls = pods.iter().map(|pod| {
            let mut client = self.client.clone();
            let req = RunPodSandboxRequest {
                config: Some(pod.config()),
                runtime_handler: String::new(),
            };
            async move { client.run_pod_sandbox(req).await }
        });
        let ids: Vec<String> = self
            .block("RunPodSandbox", futures::future::join_all(calls))
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|s| panic!("RunPodSandbox: {}\n{}", s.message(), self.log()))
                    .into_inner()
                    .pod_sandbox_id
            })
            .collect();
        ids.iter().map(|id| self.status(id)).collect()
    }

    /// `PodSandboxStatus` (verbose, as crictl inspectp asks): the pod's IP
    /// and the path of its network namespace.
    pub fn status(&self, id: &str) -> Sandbox {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        let resp = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(req).await
        });
        let ip = resp
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let info: serde_json::Value =
            serde_json::from_str(resp.info.get("info").map_or("{}", String::as_str))
                .expect("status info JSON");
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no network namespace in {info:#}"));
        Sandbox {
            id: id.to_string(),
            ip: ip.parse().unwrap_or_else(|_| panic!("pod IP {ip:?}")),
            netns,
        }
    }

    /// `StopPodSandbox` twice (kubelet repeats it), then `RemovePodSandbox`:
    /// containerd calls the plugin's DEL each time, the later ones without
    /// a namespace.
    pub fn remove(&self, id: &str) {
        for _ in 0..2 {
            let req = StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            };
            self.call("StopPodSandbox", |mut c| async move {
                c.stop_pod_sandbox(req).await
            });
        }
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(req).await
        });
    }

    /// How many pod sandboxes containerd knows.
    pub fn pod_count(&self) -> usize {
        self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })
        .items
        .len()
    }
}

impl CriNode {
    /// Stops and removes every sandbox containerd still has, as kubelet
    /// would, ignoring errors: what a failing test left, so its DELs run
    /// and containerd's shims, shim sockets and CNI result cache go too.
    fn remove_all_quietly(&self) {
        let mut client = self.client.clone();
        let ids: Vec<String> = self
            .rt
            .block_on(async {
                let list = client.list_pod_sandbox(ListPodSandboxRequest { filter: None });
                tokio::time::timeout(CALL_TIMEOUT, list).await
            })
            .ok()
            .and_then(Result::ok)
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default();
        for id in ids {
            let _ = self.rt.block_on(async {
                let stop = client.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                });
                let _ = tokio::time::timeout(CALL_TIMEOUT, stop).await;
                let remove = client.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                });
                tokio::time::timeout(CALL_TIMEOUT, remove).await
            });
        }
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        self.remove_all_quietly();
        stop_containerd(&mut self.daemon, &self.dir);
    }
}

/// containerd's configuration: everything private to `dir`, the CRI plugin
/// as RUNTIMES.md found it works here.
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/bin"
    conf_dir = "{d}/netd"
    max_conf_num = 1
"#
    )
}

/// The sandbox image as a docker-archive tarball (manifest, config, one
/// layer): busybox sleeping, as a pause container does.
pub fn pause_image(dir: &Path) -> PathBuf {
    let layer = busybox_tar(dir);
    let image = dir.join("image");
    std::fs::create_dir_all(&image).expect("image dir");
    std::fs::rename(&layer, image.join("layer.tar")).expect("layer");
    let sum = timed(60, Command::new("sha256sum").arg(image.join("layer.tar")));
    let diff_id = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum")
        .to_string();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "100000000"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    std::fs::write(image.join("config.json"), config.to_string()).expect("config");
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [PAUSE_IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(image.join("manifest.json"), manifest.to_string()).expect("manifest");
    tar_of(
        &image,
        &["manifest.json", "config.json", "layer.tar"],
        &dir.join("pause.tar"),
    )
}
