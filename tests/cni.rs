//! netbr-cni driven directly, as a runtime would: the spec's environment and
//! a configuration on stdin, inside the sandbox's host namespace. Every call
//! has a timeout; every namespace is removed however a test ends.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use netbr::{
    netns,
    probe::{self, Server},
    sandbox::{Sandbox, UPLINK_IP},
};
use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_netbr-cni");

/// A container namespace, deleted on drop.
struct Container {
    name: String,
}

impl Container {
    fn new(sb: &Sandbox, tag: &str) -> Self {
        let name = format!("cc{tag}-{}", sb.suffix);
        netns::create_named(&name).expect("container namespace");
        Self { name }
    }

    fn path(&self) -> PathBuf {
        netns::resolve(&self.name)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if netns::exists(&self.name) {
            let _ = netns::delete_named(&self.name);
        }
    }
}

/// The plugin's answer: exit success, and stdout as JSON (Null if empty).
struct Reply {
    ok: bool,
    out: Value,
    stderr: String,
}

impl Reply {
    fn code(&self) -> u64 {
        self.out["code"].as_u64().unwrap_or(0)
    }
}

/// The network configuration of the sandbox's bridge.
fn conf(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "nbnet",
        "type": "netbr-cni",
        "bridge": "netbr0",
        "subnet": "172.30.0.0/16",
        "uplink": "up0",
    })
}

fn with_ports(mut c: Value, ports: Value) -> Value {
    c["runtimeConfig"] = json!({ "portMappings": ports });
    c
}

/// Runs the plugin in the sandbox's host namespace.
fn plugin(sb: &Sandbox, cmd: &str, conf: &Value, id: &str, ns: &Path, ifname: &str) -> Reply {
    plugin_env(
        sb,
        conf,
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", &ns.display().to_string()),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1"),
        ],
    )
}

fn plugin_env(sb: &Sandbox, conf: &Value, env: &[(&str, &str)]) -> Reply {
    let out = netbr::sandbox::run_with_input(
        Command::new("timeout")
            .arg("60")
            .arg("nsenter")
            .arg(format!("--net={}", sb.host_path().display()))
            .arg(PLUGIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied()),
        conf.to_string().as_bytes(),
    )
    .expect("run netbr-cni");
    let text = String::from_utf8_lossy(&out.stdout);
    Reply {
        ok: out.status.success(),
        out: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn add(sb: &Sandbox, conf: &Value, id: &str, c: &Container) -> Value {
    let r = plugin(sb, "ADD", conf, id, &c.path(), "eth0");
    assert!(r.ok, "ADD failed: {} {}", r.out, r.stderr);
    r.out
}

fn ls(sb: &Sandbox) -> Value {
    serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("ls json")
}

fn result_ip(result: &Value) -> Ipv4Addr {
    let a = result["ips"][0]["address"].as_str().expect("address");
    a.split_once('/').expect("cidr").0.parse().expect("ipv4")
}

#[test]
fn add_publishes_and_del_cleans_up_in_every_spec_version() {
    let sb = support::sandbox();
    for (n, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let c = Container::new(&sb, &format!("v{n}"));
        let id = format!("{n:02}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        let port = 8080 + n as u16;
        let conf = with_ports(
            conf(version),
            json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]),
        );
        let result = add(&sb, &conf, &id, &c);
        assert_eq!(result["cniVersion"], version);
        let ip = result_ip(&result);
        assert_eq!(
            result["interfaces"][2]["sandbox"],
            c.path().display().to_string()
        );
        assert_eq!(result["ips"][0]["interface"], 2);
        assert_eq!(result["ips"][0]["gateway"], "172.30.0.1");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version == "0.4.0",
            "{result}"
        );
        // The published port serves from lan, and ls names the container.
        let _srv = Server::tcp(&c.path(), 80, probe::echo()).expect("server");
        let back = probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, port)), b"hi")
            .expect("request through the published port");
        assert_eq!(back, b"hi");
        let eps = ls(&sb)["endpoints"].clone();
        let ep = eps
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["container_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{eps:#}"))
            .clone();
        assert_eq!(ep["ip"], ip.to_string());
        // DEL removes endpoint, port and flows; a second DEL succeeds too.
        for _ in 0..2 {
            let r = plugin(&sb, "DEL", &conf, &id, &c.path(), "eth0");
            assert!(r.ok, "DEL: {} {}", r.out, r.stderr);
        }
        let after = ls(&sb);
        support::assert_no_endpoints_or_mappings(&after);
        let flows = sb.netbr_ok(&["conntrack", "list", "--json"]).expect("ct");
        assert!(!flows.contains(&ip.to_string()), "flows left: {flows}");
        assert!(
            probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, port)), b"x").is_err(),
            "the port still answers after DEL"
        );
    }
}

#[test]
fn del_succeeds_after_the_namespace_is_gone() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "gone");
    let conf = with_ports(
        conf("1.0.0"),
        json!([{"hostPort": 8090, "containerPort": 80}]),
    );
    add(&sb, &conf, "gone0001", &c);
    let path = c.path();
    drop(c);
    let r = plugin(&sb, "DEL", &conf, "gone0001", &path, "eth0");
    assert!(r.ok, "DEL: {} {}", r.out, r.stderr);
    let r = plugin(&sb, "DEL", &conf, "gone0001", Path::new(""), "eth0");
    assert!(r.ok, "DEL without CNI_NETNS: {} {}", r.out, r.stderr);
    assert!(ls(&sb)["endpoints"].as_array().expect("eps").is_empty());
}

#[test]
fn a_taken_host_port_fails_add_with_a_plugin_code_naming_the_owner_and_leaves_nothing() {
    let sb = support::sandbox();
    let (a, b) = (Container::new(&sb, "a"), Container::new(&sb, "b"));
    let conf = with_ports(
        conf("1.0.0"),
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    add(&sb, &conf, "first0001", &a);
    let _srv = Server::tcp(&a.path(), 80, probe::echo()).expect("server");
    let before = ls(&sb);
    let r = plugin(&sb, "ADD", &conf, "second0002", &b.path(), "eth0");
    assert!(!r.ok);
    assert!(r.code() >= 100, "{}", r.out);
    let msg = r.out["msg"].as_str().unwrap_or("");
    assert!(msg.contains("8080") && msg.contains("first0001"), "{msg}");
    assert_eq!(r.out["cniVersion"], "1.0.0");
    // Nothing of the second container is left, and the first still serves.
    assert_eq!(
        support::settings(ls(&sb)["endpoints"].clone()),
        support::settings(before["endpoints"].clone())
    );
    let links = support::links(&b.path());
    assert_eq!(links, ["lo"], "the refused container kept {links:?}");
    let back = probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080)), b"a")
        .expect("first still serves");
    assert_eq!(back, b"a");
}

#[test]
fn check_passes_for_what_add_made_and_catches_a_removed_mapping() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "chk");
    let ports = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
    ]);
    let mut conf = with_ports(conf("1.0.0"), ports);
    let result = add(&sb, &conf, "check0001", &c);
    conf["prevResult"] = result;
    let r = plugin(&sb, "CHECK", &conf, "check0001", &c.path(), "eth0");
    assert!(
        r.ok,
        "CHECK of a healthy attachment: {} {}",
        r.out, r.stderr
    );
    let name = ls(&sb)["endpoints"][0]["name"]
        .as_str()
        .expect("name")
        .to_string();
    sb.netbr_ok(&["unpublish", &name, "-p", "5353:53/udp"])
        .expect("unpublish");
    let r = plugin(&sb, "CHECK", &conf, "check0001", &c.path(), "eth0");
    assert!(!r.ok);
    assert!(r.code() >= 100, "{}", r.out);
    assert!(
        r.out["msg"].as_str().unwrap_or("").contains("5353"),
        "{}",
        r.out
    );
    // An unknown container is the spec's code 3.
    let r = plugin(&sb, "CHECK", &conf, "nobody", &c.path(), "eth0");
    assert_eq!(r.code(), 3, "{}", r.out);
}

#[test]
fn gc_removes_exactly_the_attachments_not_listed_as_valid() {
    let sb = support::sandbox();
    let cs: Vec<_> = (0..3)
        .map(|i| Container::new(&sb, &format!("gc{i}")))
        .collect();
    for (i, c) in cs.iter().enumerate() {
        let conf = with_ports(
            conf("1.1.0"),
            json!([{"hostPort": 9000 + i, "containerPort": 80}]),
        );
        add(&sb, &conf, &format!("gc{i}00000"), c);
    }
    // A CLI endpoint is never the plugin's to collect.
    sb.add_container(9).expect("cli endpoint");
    let mut gc = conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "gc000000", "ifname": "eth0"},
        {"containerID": "gc200000", "ifname": "eth0"},
    ]);
    let r = plugin_env(
        &sb,
        &gc,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
    );
    assert!(r.ok, "GC: {} {}", r.out, r.stderr);
    let doc = ls(&sb);
    let mut ids: Vec<String> = doc["endpoints"]
        .as_array()
        .expect("eps")
        .iter()
        .map(|e| e["container_id"].as_str().unwrap_or("cli").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["cli", "gc000000", "gc200000"]);
    let ports: Vec<u64> = doc["mappings"]
        .as_array()
        .expect("maps")
        .iter()
        .map(|m| m["host_port"].as_u64().expect("port"))
        .collect();
    assert!(!ports.contains(&9001), "{ports:?}");
    assert!(ports.contains(&9000) && ports.contains(&9002), "{ports:?}");
}

#[test]
fn bad_configs_versions_and_environments_get_the_spec_codes() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "bad");
    let cases: Vec<(Value, &str, u64)> = vec![
        (json!("not an object"), "ADD", 6),
        (conf("9.9.9"), "ADD", 1),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "netbr-cni", "uplink": "up0"}),
            "ADD",
            7,
        ),
        (
            with_ports(
                conf("1.0.0"),
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]),
            ),
            "ADD",
            7,
        ),
        (conf("1.0.0"), "GC", 1),
        (conf("1.0.0"), "STATUS", 1),
        (conf("1.0.0"), "FROB", 4),
    ];
    for (conf, cmd, code) in cases {
        let r = plugin(&sb, cmd, &conf, "bad00001", &c.path(), "eth0");
        assert!(!r.ok, "{cmd} {conf} should fail");
        assert_eq!(r.code(), code, "{cmd} {conf}: {}", r.out);
        assert!(!r.out["msg"].as_str().unwrap_or("").is_empty());
    }
    // Missing CNI_NETNS for ADD is an environment error.
    let r = plugin_env(
        &sb,
        &conf("1.0.0"),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
        ],
    );
    assert_eq!(r.code(), 4, "{}", r.out);
    // VERSION lists what the plugin speaks.
    let r = plugin_env(
        &sb,
        &json!({"cniVersion": "1.0.0"}),
        &[("CNI_COMMAND", "VERSION")],
    );
    assert!(r.ok);
    assert_eq!(
        r.out["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
    // STATUS: ready before the first ADD (the uplink is there), not
    // available when the uplink is missing.
    let r = plugin_env(&sb, &conf("1.1.0"), &[("CNI_COMMAND", "STATUS")]);
    assert!(r.ok, "STATUS: {}", r.out);
    let mut missing = conf("1.1.0");
    missing["uplink"] = json!("nosuch0");
    missing["bridge"] = json!("nbother0");
    let r = plugin_env(&sb, &missing, &[("CNI_COMMAND", "STATUS")]);
    assert_eq!(r.code(), 50, "{}", r.out);
    // None of the refusals attached anything.
    assert!(sb.netbr(&["ls"]).expect("ls").status.code() != Some(0));
}

#[test]
fn host_local_ipam_is_delegated_and_its_address_released() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "ipam");
    let data = std::env::temp_dir().join(format!("netbr-ipam-{}", sb.suffix));
    let _cleanup = support::RemoveOnDrop(data.clone());
    let mut conf = conf("1.0.0");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "172.30.0.0/16", "rangeStart": "172.30.7.10", "rangeEnd": "172.30.7.20"}]],
        "dataDir": data,
    });
    let result = add(&sb, &conf, "ipam0001", &c);
    let ip = result_ip(&result);
    assert!(
        ip.octets()[2] == 7 && (10..=20).contains(&ip.octets()[3]),
        "{ip}"
    );
    assert!(
        data.join("nbnet").join(ip.to_string()).exists(),
        "host-local recorded no lease for {ip}"
    );
    let r = plugin(&sb, "DEL", &conf, "ipam0001", &c.path(), "eth0");
    assert!(r.ok, "DEL: {}", r.out);
    assert!(
        !data.join("nbnet").join(ip.to_string()).exists(),
        "lease not released"
    );
}

#[test]
fn concurrent_plugin_adds_and_cli_calls_never_collide() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    const ADDS: usize = 12;
    const CLI: u32 = 6;
    let cs: Vec<_> = (0..ADDS)
        .map(|i| Container::new(&sb, &format!("p{i}")))
        .collect();
    std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            let sb = &sb;
            jobs.push(s.spawn(move || {
                let conf = with_ports(
                    conf("1.0.0"),
                    json!([{"hostPort": 10000 + i, "containerPort": 80}]),
                );
                let r = plugin(sb, "ADD", &conf, &format!("par{i:05}"), &c.path(), "eth0");
                assert!(r.ok, "ADD {i}: {} {}", r.out, r.stderr);
            }));
        }
        for n in 0..CLI {
            let sb = &sb;
            jobs.push(s.spawn(move || {
                let name = sb.container(100 + n);
                sb.netbr_ok(&["endpoint", "add", &name])
                    .expect("cli endpoint add");
                sb.netbr_ok(&["publish", &name, "-p", &format!("{}:80", 11000 + n)])
                    .expect("cli publish");
            }));
        }
        for j in jobs {
            j.join().expect("job");
        }
    });
    let doc = ls(&sb);
    let eps = doc["endpoints"].as_array().expect("eps");
    assert_eq!(eps.len(), ADDS + CLI as usize, "{doc:#}");
    let mut ips: Vec<&str> = eps.iter().map(|e| e["ip"].as_str().expect("ip")).collect();
    ips.sort_unstable();
    ips.dedup();
    assert_eq!(ips.len(), eps.len(), "duplicate addresses: {doc:#}");
    // Every mapping made it into the datapath, to the right endpoint.
    let maps = doc["mappings"].as_array().expect("maps");
    assert_eq!(maps.len(), ADDS + CLI as usize, "{doc:#}");
    for m in maps {
        assert!(
            !m["endpoint"].as_str().unwrap_or("").is_empty(),
            "orphan mapping {m}"
        );
    }
    // And every one serves.
    for (i, c) in cs.iter().enumerate().take(3) {
        let _srv = Server::tcp(&c.path(), 80, probe::echo()).expect("server");
        let port = 10000 + i as u16;
        let back = probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, port)), b"p")
            .expect("parallel-made port serves");
        assert_eq!(back, b"p");
    }
}

#[test]
fn the_bandwidth_capability_limits_the_container_and_del_lifts_it() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "bw");
    let mut conf = conf("1.0.0");
    conf["capabilities"] = json!({"bandwidth": true});
    conf["runtimeConfig"] = json!({"bandwidth": {
        "egressRate": 20_000_000, "egressBurst": 160_000, "ingressRate": 40_000_000
    }});
    add(&sb, &conf, "bw000001", &c);
    let eps = ls(&sb)["endpoints"].clone();
    let ep = &eps[0];
    assert_eq!(ep["egress_limit"]["rate"], "20mbit", "{ep}");
    assert_eq!(ep["egress_limit"]["burst_bytes"], 20_000, "{ep}");
    assert_eq!(ep["ingress_limit"]["rate"], "40mbit", "{ep}");
    // What the container sends is held to the limit (UDP offered at twice
    // it measures the limiter alone).
    let got = support::lan_iperf3(&sb, &c.path(), false, Some(40));
    support::assert_limited_to_20(got);
    let r = plugin(&sb, "DEL", &conf, "bw000001", &c.path(), "eth0");
    assert!(r.ok, "DEL: {} {}", r.out, r.stderr);
    let pins: Vec<_> = std::fs::read_dir(sb.pin_dir().expect("pins"))
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pace_"))
        .collect();
    assert!(pins.is_empty(), "pacing links left: {pins:?}");
    // A rate below the slowest limit is refused with the spec's code.
    conf["runtimeConfig"] = json!({"bandwidth": {"egressRate": 100}});
    let r = plugin(&sb, "ADD", &conf, "bw000002", &c.path(), "eth0");
    assert!(!r.ok && r.code() == 7, "{} {}", r.out, r.stderr);
    assert!(ls(&sb)["endpoints"].as_array().expect("eps").is_empty());
}

#[test]
fn containerd_cri_spellings_publish_limit_and_delete_twice() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "cri");
    // What containerd 1.6's CRI sends for a pod with a hostPort and the
    // kubernetes.io/egress-bandwidth annotation: go-cni's untagged struct
    // fields, capitalised; an empty HostIP; no burst given; an unset
    // direction as rate 0.
    let mut conf = conf("1.0.0");
    conf["capabilities"] = json!({"portMappings": true, "bandwidth": true});
    conf["runtimeConfig"] = json!({
        "portMappings": [
            {"HostPort": 8095, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
            {"HostPort": 8095, "ContainerPort": 80, "Protocol": "udp", "HostIP": ""}
        ],
        "bandwidth": {"IngressRate": 0, "IngressBurst": 4_294_967_295_u64,
                      "EgressRate": 20_000_000, "EgressBurst": 4_294_967_295_u64}
    });
    let id = "k8s0000000000000000000000000000000000000000000000000000000000001";
    let result = add(&sb, &conf, id, &c);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][2]["name"], "eth0", "{result}");
    let eps = ls(&sb)["endpoints"].clone();
    assert_eq!(eps[0]["egress_limit"]["rate"], "20mbit", "{eps}");
    assert!(
        eps[0]["ingress_limit"].is_null(),
        "rate 0 is no limit: {eps}"
    );
    let mappings = ls(&sb)["mappings"].clone();
    assert_eq!(mappings.as_array().map(Vec::len), Some(2), "{mappings}");
    let _srv = Server::tcp(&c.path(), 80, probe::echo()).expect("server");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8095)), b"pod")
            .expect("the hostPort serves"),
        b"pod"
    );
    // StopPodSandbox's DEL, then RemovePodSandbox's with CNI_NETNS empty.
    let r = plugin(&sb, "DEL", &conf, id, &c.path(), "eth0");
    assert!(r.ok, "DEL: {} {}", r.out, r.stderr);
    let r = plugin(&sb, "DEL", &conf, id, Path::new(""), "eth0");
    assert!(r.ok, "second DEL: {} {}", r.out, r.stderr);
    support::assert_no_endpoints_or_mappings(&ls(&sb));
}

#[test]
fn kubernetes_keys_leave_pod_traffic_untranslated_both_ways() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "k8s");
    // The other node's side of the cluster: lan routes the pod subnet via
    // this node, and is itself "another node's pod CIDR".
    sb.route_lan_to_subnet().expect("route");
    let mut conf = conf("1.0.0");
    conf["nonMasqueradeCIDRs"] = json!(["192.0.2.0/24"]);
    conf["allowDirectRouting"] = json!(true);
    conf["mtu"] = json!(1450);
    let id = "k8s0000000000000000000000000000000000000000000000000000000000002";
    let pod = result_ip(&add(&sb, &conf, id, &c));
    let doc = ls(&sb);
    assert_eq!(
        doc["no_masquerade"],
        json!(["169.254.0.0/16", "192.0.2.0/24"]),
        "{doc:#}"
    );
    assert_eq!(doc["mtu"], 1450);
    // Pod to the other node: the peer sees the pod's own address.
    let lan = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    let to_lan = SocketAddr::from((netbr::sandbox::LAN_IP, 9000));
    assert_eq!(
        probe::tcp_request(&c.path(), to_lan, b"pod").expect("pod -> lan"),
        b"pod"
    );
    assert_eq!(lan.peers()[0].ip(), std::net::IpAddr::V4(pod));
    // The other node to the pod, directly, seen as itself.
    let srv = Server::tcp(&c.path(), 80, probe::echo()).expect("pod server");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((pod, 80)), b"node")
            .expect("lan -> pod"),
        b"node"
    );
    assert_eq!(
        srv.peers()[0].ip(),
        std::net::IpAddr::V4(netbr::sandbox::LAN_IP)
    );
    let r = plugin(&sb, "DEL", &conf, id, &c.path(), "eth0");
    assert!(r.ok, "DEL: {} {}", r.out, r.stderr);
}

#[test]
fn host_ports_bind_where_kubernetes_host_ip_says() {
    let sb = support::sandbox();
    let c = Container::new(&sb, "hip");
    let mut conf = conf("1.0.0");
    conf["capabilities"] = json!({"portMappings": true});
    // hostIP empty (every address), the node's address, and 127.0.0.1,
    // in containerd's spelling.
    conf["runtimeConfig"] = json!({"portMappings": [
        {"HostPort": 8101, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
        {"HostPort": 8102, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "192.0.2.1"},
        {"HostPort": 8103, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "127.0.0.1"}
    ]});
    let id = "k8s0000000000000000000000000000000000000000000000000000000000003";
    add(&sb, &conf, id, &c);
    let _srv = Server::tcp(&c.path(), 80, probe::echo()).expect("server");
    let lan = sb.lan_path();
    let host = sb.host_path();
    for (ns, to, serves) in [
        (&lan, SocketAddr::from((UPLINK_IP, 8101)), true),
        (&lan, SocketAddr::from((UPLINK_IP, 8102)), true),
        (&lan, SocketAddr::from((UPLINK_IP, 8103)), false),
        (&host, SocketAddr::from(([127, 0, 0, 1], 8103)), true),
        (&host, SocketAddr::from(([127, 0, 0, 1], 8102)), false),
    ] {
        assert_eq!(
            probe::tcp_request(ns, to, b"hp").is_ok(),
            serves,
            "{to} from {}",
            ns.display()
        );
    }
    let r = plugin(&sb, "DEL", &conf, id, &c.path(), "eth0");
    assert!(r.ok, "DEL: {} {}", r.out, r.stderr);
    support::assert_no_endpoints_or_mappings(&ls(&sb));
}
