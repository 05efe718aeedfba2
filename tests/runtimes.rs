//! Real runtimes drive netbr through netbr-cni: Podman 4.3 with its CNI
//! backend, and containerd's `ctr run --cni`, each inside the sandbox's host
//! namespace with private roots. Clients on lan and on the host check what
//! a user would: pages served, the address a peer sees, ports refused.

mod support;

use std::net::SocketAddr;

use netbr::{
    probe::{self, Server},
    sandbox::{Sandbox, LAN_IP, UPLINK_IP},
};
use support::runtimes::{http_get, served, text, Containerd, Podman};

const PLUGIN: &str = env!("CARGO_BIN_EXE_netbr-cni");

fn ls(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json")
}

#[test]
fn podman_publishes_tcp_udp_and_host_ip_ports_masquerades_and_cleans_up() {
    let sb = support::sandbox();
    let podman = Podman::new(&sb, PLUGIN);
    support::assert_no_netfilter_rules(&sb.host_path());
    let o = podman.web("web", &["8080:80", "127.0.0.1:8443:80", "5353:53/udp"]);
    assert!(o.status.success(), "podman run: {}", text(&o));
    support::assert_no_netfilter_rules(&sb.host_path());
    let ns = podman.netns("web");

    // From lan through the host's address; the loopback binding only from
    // the host itself.
    support::runtimes::assert_8080_public_and_8443_host_only(&sb);
    // UDP to the container's port 53.
    let _udp = Server::udp(&ns, 53, probe::echo()).expect("udp server in the container");
    let back = probe::udp_request(
        &sb.lan_path(),
        SocketAddr::from((UPLINK_IP, 5353)),
        0,
        b"dns?",
    )
    .expect("udp through the published port");
    assert_eq!(back, b"dns?");

    // The container reaches lan and is seen as the host's uplink address.
    let lan_srv = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    let o = podman.run(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo out | nc -w 3 192.0.2.2 9000",
    ]);
    assert!(o.status.success(), "podman exec nc: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("out"),
        "{}",
        text(&o)
    );
    assert_eq!(
        lan_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        [UPLINK_IP],
        "lan saw the container as something else than the uplink address"
    );
    let doc = ls(&sb);
    let ep = &doc["endpoints"][0];
    assert_eq!(ep["netns"], ns.display().to_string());
    assert_eq!(
        doc["mappings"].as_array().expect("maps").len(),
        3,
        "{doc:#}"
    );
    let ip = ep["ip"].as_str().expect("ip").to_string();

    // podman rm ends the endpoint, its ports and its flows.
    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    let doc = ls(&sb);
    support::assert_no_endpoints_or_mappings(&doc);
    let flows = sb.netbr_ok(&["conntrack", "list"]).expect("conntrack");
    assert!(
        !flows.contains(&ip),
        "flows of the removed container: {flows}"
    );
    assert!(http_get(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))).is_err());
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn podman_refuses_a_taken_host_port_with_netbrs_message_and_the_first_keeps_serving() {
    let sb = support::sandbox();
    let podman = Podman::new(&sb, PLUGIN);
    let o = podman.web("first", &["8080:80"]);
    assert!(o.status.success(), "podman run: {}", text(&o));
    support::runtimes::assert_refused_taken_8080(&podman.web("second", &["8080:80"]));
    assert!(served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));
    assert_eq!(ls(&sb)["endpoints"].as_array().expect("eps").len(), 1);
}

#[test]
fn twenty_podman_containers_started_in_parallel_get_distinct_addresses_and_all_serve() {
    const N: u16 = 20;
    let sb = support::sandbox();
    let podman = Podman::new(&sb, PLUGIN);
    std::thread::scope(|s| {
        let jobs: Vec<_> = (0..N)
            .map(|i| {
                let podman = &podman;
                s.spawn(move || {
                    let o = podman.web(&format!("w{i}"), &[&format!("{}:80", 9100 + i)]);
                    assert!(o.status.success(), "podman run w{i}: {}", text(&o));
                })
            })
            .collect();
        for j in jobs {
            j.join().expect("podman run");
        }
    });
    let doc = ls(&sb);
    let mut ips: Vec<&str> = doc["endpoints"]
        .as_array()
        .expect("eps")
        .iter()
        .map(|e| e["ip"].as_str().expect("ip"))
        .collect();
    assert_eq!(ips.len(), N as usize, "{doc:#}");
    ips.sort_unstable();
    ips.dedup();
    assert_eq!(ips.len(), N as usize, "duplicate addresses: {doc:#}");
    for i in 0..N {
        assert!(
            served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 9100 + i))),
            "container w{i} does not serve on {}",
            9100 + i
        );
    }
}

#[test]
fn ctr_run_cni_gets_an_address_reaches_lan_and_its_del_cleans_up() {
    let sb = support::sandbox();
    // containerd imports the docker-archive tarball podman saves.
    let podman = Podman::new(&sb, PLUGIN);
    let image = podman.dir.join("busybox-docker.tar");
    podman.ok(&[
        "save",
        "-o",
        &image.display().to_string(),
        "localhost/busybox:latest",
    ]);
    let ctd = Containerd::start(&sb, PLUGIN, &image);
    let lan_srv = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    let o = ctd.run_cni(&[
        "run",
        "--rm",
        "--cni",
        "localhost/busybox:latest",
        &format!("ctr-{}", sb.suffix),
        "sh",
        "-c",
        "ip -4 addr show eth0; echo from-ctr | nc -w 3 192.0.2.2 9000",
    ]);
    let out = text(&o);
    assert!(o.status.success(), "ctr run --cni: {out}");
    assert!(out.contains("inet 172.30."), "no address from netbr: {out}");
    assert!(
        out.contains("from-ctr"),
        "lan's echo did not come back: {out}"
    );
    assert_eq!(
        lan_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        [UPLINK_IP]
    );
    assert_ne!(LAN_IP, UPLINK_IP);
    // ctr run --rm called DEL: nothing is left on the bridge.
    let doc = ls(&sb);
    assert!(
        doc["endpoints"].as_array().expect("eps").is_empty(),
        "{doc:#}"
    );
}

/// Podman 4.3 fills only the `portMappings` capability (and `ips`,
/// `aliases`), never `bandwidth`: a conflist declaring it gets no
/// `runtimeConfig.bandwidth`. The network's own rates, as the reference
/// `bandwidth` plugin takes them, limit every container on it.
#[test]
fn podman_containers_are_limited_by_the_networks_rates() {
    let sb = support::sandbox();
    let mut conf: serde_json::Value =
        serde_json::from_str(&support::runtimes::conflist("1.0.0")).expect("conflist");
    let plugin = &mut conf["plugins"][0];
    plugin["capabilities"]["bandwidth"] = true.into();
    plugin["egressRate"] = 20_000_000.into();
    plugin["ingressRate"] = 40_000_000.into();
    let podman = Podman::with_conflist(&sb, PLUGIN, &conf.to_string());
    let o = podman.web("web", &["8080:80"]);
    assert!(o.status.success(), "podman run: {}", text(&o));
    let doc = ls(&sb);
    let ep = &doc["endpoints"][0];
    assert_eq!(ep["egress_limit"]["rate"], "20mbit", "{doc:#}");
    assert_eq!(ep["ingress_limit"]["rate"], "40mbit", "{doc:#}");
    // Held to the limit: UDP offered at twice it, from the container.
    let got = support::lan_iperf3(&sb, &podman.netns("web"), false, Some(40));
    support::assert_limited_to_20(got);
    assert!(served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));
}
