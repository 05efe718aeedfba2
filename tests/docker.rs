//! Docker drives netbr through `netbr docker-plugin`, its remote network
//! driver: dockerd 20.10 in the sandbox's host namespace with private roots,
//! `--iptables=false` and no default bridge, and clients on lan and on the
//! host checking what a user sees.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use netbr::{
    probe::{self, Server},
    sandbox::{Sandbox, UPLINK_IP},
};
use support::runtimes::{http_get, served, text, Dockerd};

const NETBR: &str = env!("CARGO_BIN_EXE_netbr");

/// The bridge the driver names after Docker network `net`.
fn bridge_of(docker: &Dockerd, net: &str) -> String {
    let id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", net]);
    format!("nb-{}", &id.trim()[..12])
}

/// Asserts a docker command failed with `needle` in what it printed.
fn refused(o: &std::process::Output, needle: &str) {
    assert!(
        !o.status.success() && text(o).contains(needle),
        "expected a refusal naming {needle:?}: {}",
        text(o)
    );
}

/// `netbr ls --json` of the bridge serving Docker network `net`.
fn ls(sb: &Sandbox, docker: &Dockerd, net: &str) -> serde_json::Value {
    let bridge = bridge_of(docker, net);
    serde_json::from_str(
        &sb.netbr_ok(&["ls", "--bridge", &bridge, "--json"])
            .expect("ls"),
    )
    .expect("json")
}

fn network(docker: &Dockerd, name: &str) {
    network_on(docker, name, "172.30.0.0/16");
}

fn network_on(docker: &Dockerd, name: &str, subnet: &str) {
    network_with(docker, name, subnet, &[]);
}

#[test]
fn docker_run_publishes_masquerades_binds_host_ips_and_cleans_up() {
    let sb = support::sandbox();
    let docker = Dockerd::start(&sb, NETBR);
    network(&docker, "n1");
    support::assert_no_netfilter_rules(&sb.host_path());
    let o = docker.web(
        "web",
        "n1",
        &["8080:80", "127.0.0.1:8443:80", "5353:53/udp", "80"],
    );
    assert!(o.status.success(), "docker run: {}", text(&o));
    let ns = docker.netns("web");

    support::runtimes::assert_8080_public_and_8443_host_only(&sb);
    let _udp = Server::udp(&ns, 53, probe::echo()).expect("udp server in the container");
    let back = probe::udp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 5353)), 0, b"q")
        .expect("udp through the published port");
    assert_eq!(back, b"q");
    // `-p 80`: netbr picked a host port, shows it, and it serves.
    let doc = ls(&sb, &docker, "n1");
    let picked: Vec<u64> = doc["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .filter(|m| m["proto"] == "tcp" && m["host_ip"] == "0.0.0.0" && m["host_port"] != 8080)
        .map(|m| m["host_port"].as_u64().expect("port"))
        .collect();
    assert_eq!(picked.len(), 1, "{doc:#}");
    assert!((20000..=29999).contains(&picked[0]), "{picked:?}");
    assert!(served(
        &sb.lan_path(),
        SocketAddr::from((UPLINK_IP, picked[0] as u16))
    ));

    // The container reaches lan as the uplink address.
    docker.assert_masquerades(&sb, "web");
    support::assert_no_netfilter_rules(&sb.host_path());

    // docker rm ends ports and flows; docker network rm leaves no pin.
    let ip = doc["endpoints"][0]["ip"].as_str().expect("ip").to_string();
    let bridge = doc["bridge"].as_str().expect("bridge").to_string();
    docker.ok(&["rm", "-f", "web"]);
    let after = ls(&sb, &docker, "n1");
    support::assert_no_endpoints_or_mappings(&after);
    let flows = sb
        .netbr_ok(&["conntrack", "list", "--bridge", &bridge])
        .expect("conntrack");
    assert!(!flows.contains(&ip), "{flows}");
    docker.ok(&["network", "rm", "n1"]);
    let pins = netbr::netns::run_in(&sb.host_path(), move || netbr::bpf::pins::pin_dir(&bridge))
        .expect("netns")
        .expect("pin dir");
    assert!(!pins.exists(), "{} left behind", pins.display());
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn a_taken_port_fails_docker_run_with_netbrs_message_and_ten_parallel_containers_serve() {
    let sb = support::sandbox();
    let docker = Dockerd::start(&sb, NETBR);
    network(&docker, "n1");
    let o = docker.web("first", "n1", &["8080:80"]);
    assert!(o.status.success(), "docker run: {}", text(&o));
    support::runtimes::assert_refused_taken_8080(&docker.web("second", "n1", &["8080:80"]));
    assert_eq!(
        ls(&sb, &docker, "n1")["endpoints"]
            .as_array()
            .expect("eps")
            .len(),
        1
    );
    assert!(served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));

    std::thread::scope(|s| {
        for i in 0..10u16 {
            let docker = &docker;
            s.spawn(move || {
                let o = docker.web(&format!("w{i}"), "n1", &[&format!("{}:80", 9100 + i)]);
                assert!(o.status.success(), "docker run w{i}: {}", text(&o));
            });
        }
    });
    for i in 0..10u16 {
        assert!(
            served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 9100 + i))),
            "w{i} does not serve"
        );
    }
}

#[test]
fn a_killed_driver_leaves_containers_serving_and_its_restart_carries_on() {
    let sb = support::sandbox();
    let mut docker = Dockerd::start(&sb, NETBR);
    network(&docker, "n1");
    let o = docker.web("web", "n1", &["8080:80"]);
    assert!(o.status.success(), "docker run: {}", text(&o));
    docker.kill_plugin();
    // The datapath needs no process: requests keep being served throughout.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));
    }
    docker.start_plugin();
    carries_on_after_restart(&sb, &docker);
}

/// After a restart (of the driver or of dockerd) with container `web`
/// serving 8080 on `n1`: a new container is served, the old one still is,
/// and removing it ends its port and its endpoint.
fn carries_on_after_restart(sb: &Sandbox, docker: &Dockerd) {
    let o = docker.web("web2", "n1", &["8081:80"]);
    assert!(
        o.status.success(),
        "docker run after the restart: {}",
        text(&o)
    );
    served_within(sb, docker, 8081, "docker run after the restart");
    assert!(served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));
    docker.ok(&["rm", "-f", "web"]);
    assert!(http_get(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))).is_err());
    assert_eq!(
        ls(sb, docker, "n1")["endpoints"]
            .as_array()
            .expect("eps")
            .len(),
        1
    );
}

#[test]
fn a_dockerd_restart_with_live_restore_keeps_containers_serving() {
    let sb = support::sandbox();
    let mut docker = Dockerd::start(&sb, NETBR);
    network(&docker, "n1");
    let o = docker.web("web", "n1", &["8080:80"]);
    assert!(o.status.success(), "docker run: {}", text(&o));
    docker.restart_daemon();
    assert!(served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));
    assert!(docker.ok(&["ps", "--format", "{{.Names}}"]).contains("web"));
    // The restored daemon still drives netbr.
    carries_on_after_restart(&sb, &docker);
}

#[test]
fn driver_opts_limit_an_endpoint_and_a_bad_rate_is_refused() {
    let sb = support::sandbox();
    let docker = Dockerd::start(&sb, NETBR);
    network(&docker, "n1");
    network_on(&docker, "n2", "172.31.0.0/16");
    for name in ["web", "web2"] {
        let o = docker.web(name, "n1", &[]);
        assert!(o.status.success(), "docker run: {}", text(&o));
    }
    // Docker 20.10 passes endpoint options only through `network connect`.
    docker.ok(&[
        "network",
        "connect",
        "--driver-opt",
        "netbr.egress-rate=10mbit",
        "--driver-opt",
        "netbr.ingress-rate=20mbit",
        "n2",
        "web",
    ]);
    let doc = ls(&sb, &docker, "n2");
    let ep = &doc["endpoints"][0];
    assert_eq!(ep["egress_limit"]["rate"], "10mbit", "{doc:#}");
    assert_eq!(ep["ingress_limit"]["rate"], "20mbit", "{doc:#}");
    let mode = ep["egress_limit"]["mode"].as_str().unwrap_or("");
    assert!(mode == "edt" || mode == "police", "{doc:#}");
    let o = docker.run(&[
        "network",
        "connect",
        "--driver-opt",
        "netbr.egress-rate=fast",
        "n2",
        "web2",
    ]);
    refused(&o, "tc's units");
    assert_eq!(
        ls(&sb, &docker, "n2")["endpoints"]
            .as_array()
            .expect("endpoints")
            .len(),
        1
    );
}

#[test]
fn dockers_bridge_options_mean_what_they_mean_for_bridge_or_fail_by_name() {
    use netbr::docker::bridge_opt::*;
    let sb = support::sandbox();
    let docker = Dockerd::start(&sb, NETBR);
    let bridge = format!("br{}", sb.suffix);
    let bridge = &bridge[..bridge.len().min(15)];
    docker.ok(&[
        "network",
        "create",
        "-d",
        &docker.driver,
        "--subnet",
        "172.30.0.0/24",
        "-o",
        "netbr.uplink=up0",
        "-o",
        &format!("com.docker.network.bridge.name={bridge}"),
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "-o",
        "com.docker.network.bridge.host_binding_ipv4=127.0.0.1",
        "n1",
    ]);
    for (name, publish) in [("web", &["8080:80"][..]), ("web2", &[][..])] {
        let o = docker.web(name, "n1", publish);
        assert!(o.status.success(), "docker run: {}", text(&o));
    }
    // The bridge has the name asked for, and ICC is off on it.
    let doc: serde_json::Value = serde_json::from_str(
        &sb.netbr_ok(&["ls", "--bridge", bridge, "--json"])
            .expect("ls of the named bridge"),
    )
    .expect("json");
    assert_eq!(doc["icc"], false, "{doc:#}");
    let web_ip = doc["endpoints"][0]["ip"].as_str().expect("ip").to_string();
    let o = docker.run(&[
        "exec",
        "web2",
        "sh",
        "-c",
        &format!("wget -q -T 2 -O - http://{web_ip}/"),
    ]);
    assert!(
        !o.status.success(),
        "containers reached each other with enable_icc=false"
    );
    // `-p 8080:80` took the network's default host IP: host only.
    assert!(served(
        &sb.host_path(),
        SocketAddr::from(([127, 0, 0, 1], 8080))
    ));
    assert!(!served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));

    // Masquerade off, and the MTU: containers leave with their own
    // address, which lan routes back through the host.
    sb.route_lan_to_subnet().expect("route");
    network_with(
        &docker,
        "n2",
        "172.30.1.0/24",
        &[&format!("{MASQUERADE}=false"), &format!("{MTU}=1400")],
    );
    assert!(docker.web("out", "n2", &[]).status.success());
    docker.assert_seen_on_lan_as(&sb, "out", ip_of(&docker, "out"));
    assert_eq!(
        docker
            .ok(&["exec", "out", "cat", "/sys/class/net/eth0/mtu"])
            .trim(),
        "1400"
    );

    // Routed: no translation; a published port is opened at the
    // container's own address, and its host port means nothing.
    network_with(
        &docker,
        "n3",
        "172.30.2.0/24",
        &[&format!("{GATEWAY_MODE}=routed")],
    );
    assert!(docker.web("routed", "n3", &["8082:80"]).status.success());
    let routed = ip_of(&docker, "routed");
    assert!(served(&sb.lan_path(), SocketAddr::from((routed, 80))));
    assert!(!served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8082))));
    docker.assert_seen_on_lan_as(&sb, "routed", routed);

    // Internal: no default route, no way out, nothing in.
    docker.ok(&[
        "network",
        "create",
        "-d",
        &docker.driver,
        "--internal",
        "--subnet",
        "172.30.3.0/24",
        "-o",
        "netbr.uplink=up0",
        "n4",
    ]);
    assert!(docker.web("inside", "n4", &[]).status.success());
    let routes = docker.ok(&["exec", "inside", "cat", "/proc/net/route"]);
    assert!(
        !routes
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "a container of an internal network has a default route: {routes}"
    );
    let _lan = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    let o = docker.run(&[
        "exec",
        "inside",
        "sh",
        "-c",
        "echo x | nc -w 2 192.0.2.2 9000",
    ]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains('x'),
        "an internal container reached lan"
    );
    assert!(!served(
        &sb.lan_path(),
        SocketAddr::from((ip_of(&docker, "inside"), 80))
    ));

    // What netbr does not know fails `network create`, naming the option.
    for (opt, says) in [
        (
            "com.docker.network.bridge.gateway_mode_ipv4=bogus",
            "nat, nat-unprotected or routed",
        ),
        (
            "com.docker.network.bridge.inhibit_ipv4=true",
            "inhibit_ipv4: netbr cannot honour",
        ),
    ] {
        let o = docker.run(&[
            "network",
            "create",
            "-d",
            &docker.driver,
            "--subnet",
            "172.30.9.0/24",
            "-o",
            "netbr.uplink=up0",
            "-o",
            opt,
            "n9",
        ]);
        refused(&o, says);
    }
}

/// A network on `subnet` with Docker's bridge options `opts` (`KEY=VALUE`).
fn network_with(docker: &Dockerd, name: &str, subnet: &str, opts: &[&str]) {
    let mut args = vec![
        "network",
        "create",
        "-d",
        &docker.driver,
        "--subnet",
        subnet,
        "-o",
        "netbr.uplink=up0",
    ];
    for o in opts {
        args.extend(["-o", o]);
    }
    args.push(name);
    docker.ok(&args);
}

/// Container `name`'s address on its one network.
fn ip_of(docker: &Dockerd, name: &str) -> std::net::Ipv4Addr {
    docker
        .ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ])
        .trim()
        .parse()
        .expect("container address")
}

#[test]
fn a_netbr_network_and_its_restart_always_containers_survive_a_reboot() {
    let sb = support::sandbox();
    let mut docker = Dockerd::start(&sb, NETBR);
    network(&docker, "n1");
    let bridge = bridge_of(&docker, "n1");
    run_restart_always(&docker);
    // `run -d` returns once the container started, maybe before its httpd
    // listens.
    served_again(&sb, &docker, "docker run");
    docker.reboot(&sb, &[&bridge]);
    // dockerd restarts the container during its own start, before its
    // API serves; the driver attaches the network again from its record.
    served_again(&sb, &docker, "the reboot");
    // It masquerades again, new containers run, and the network goes.
    docker.assert_masquerades(&sb, "web");
    carries_on_after_restart(&sb, &docker);
    docker.ok(&["rm", "-f", "web2"]);
    docker.ok(&["network", "rm", "n1"]);
    assert!(
        std::fs::read_dir(docker.dir.join("netbr-records"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the network's record outlived docker network rm"
    );
}

/// `docker run -d --restart always` of busybox httpd on `n1`, 8080:80.
fn run_restart_always(docker: &Dockerd) {
    let o = docker.web_restart_always("web", "n1", &["8080:80"]);
    assert!(o.status.success(), "docker run: {}", text(&o));
}

/// Waits for `web` to serve 8080 again.
fn served_again(sb: &Sandbox, docker: &Dockerd, after: &str) {
    served_within(sb, docker, 8080, after);
}

/// Waits up to a minute for host port `port` to serve: `run -d` returns
/// once the container started, maybe before its httpd listens.
fn served_within(sb: &Sandbox, docker: &Dockerd, port: u16, after: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while !served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, port))) {
        assert!(
            Instant::now() < until,
            "port {port} not served after {after}: {}",
            std::fs::read_to_string(docker.dir.join("plugin.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_dockerd_restart_without_live_restore_brings_restart_policy_containers_back() {
    let sb = support::sandbox();
    let mut docker = Dockerd::start_with(&sb, NETBR, false);
    network(&docker, "n1");
    run_restart_always(&docker);
    // `run -d` returns once the container started, maybe before its httpd
    // listens.
    served_again(&sb, &docker, "docker run");
    // Without live-restore dockerd stops its containers as it stops.
    docker.restart_daemon();
    served_again(&sb, &docker, "a dockerd restart");
    carries_on_after_restart(&sb, &docker);
}

#[test]
fn docker_compose_brings_a_netbr_network_up_serving_and_down_leaving_nothing() {
    let sb = support::sandbox();
    let docker = Dockerd::start(&sb, NETBR);
    let project = docker.dir.join("compose");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(
        project.join("docker-compose.yml"),
        format!(
            "version: '2.4'
services:
  web:
    image: localhost/busybox:latest
    command: httpd -f -p 80 -h /www
    ports: ['8080:80', '5353:53/udp']
    networks: [front]
  cache:
    image: localhost/busybox:latest
    command: httpd -f -p 80 -h /www
    ports: ['8081:80']
    networks: [front]
networks:
  front:
    driver: {driver}
    driver_opts:
      netbr.uplink: up0
      com.docker.network.bridge.enable_icc: 'true'
    ipam:
      config:
        - subnet: 172.30.0.0/16
",
            driver = docker.driver
        ),
    )
    .expect("compose file");
    let compose = |args: &[&str]| {
        support::runtimes::timed(
            180,
            std::process::Command::new("docker-compose")
                .current_dir(&project)
                .env(
                    "DOCKER_HOST",
                    format!("unix://{}/docker.sock", docker.dir.display()),
                )
                .args(["-p", "nbc"])
                .args(args),
        )
    };
    let o = compose(&["up", "-d"]);
    assert!(o.status.success(), "docker-compose up: {}", text(&o));
    for port in [8080, 8081] {
        assert!(
            served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, port))),
            "port {port}"
        );
    }
    let o = compose(&["down"]);
    assert!(o.status.success(), "docker-compose down: {}", text(&o));
    // Nothing of the network is left attached in the host namespace.
    let left = netbr::netns::run_in(&sb.host_path(), netbr::store::bridges)
        .expect("netns")
        .expect("bridges");
    assert!(left.is_empty(), "bridges left: {left:?}");
    assert!(!served(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080))));
}
