//! `netbr demo`: builds the sandbox, attaches, publishes, and shows each
//! packet path working, narrating the commands a person would type.

use std::net::SocketAddr;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{
    probe::{self, Responder, Server},
    sandbox::{Sandbox, LAN_IP, UPLINK_IP},
};

#[derive(Args, Debug)]
pub struct Demo {
    /// Leave the sandbox in place afterwards.
    #[arg(long)]
    pub keep: bool,
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// Runs a netbr command in the sandbox, echoing it first.
fn run(sb: &Sandbox, args: &[&str]) -> Result<()> {
    println!("$ netbr --netns {} {}", sb.host, args.join(" "));
    print!("{}", sb.netbr_ok(args)?);
    Ok(())
}

fn http_responder(name: String) -> Responder {
    std::sync::Arc::new(move |req: &[u8], peer| {
        let line = String::from_utf8_lossy(req)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from {name}: you asked {line:?}, you are {peer}\n"
        )
        .into_bytes()
    })
}

impl Demo {
    pub async fn exec(self) -> Result<()> {
        let exe = std::env::current_exe().context("finding the netbr binary")?;
        let sb = Sandbox::create(exe)?;
        let result = narrate(&sb);
        if self.keep {
            println!(
                "\nkept: namespaces {} and {}; clean up with: netbr --netns {} detach && ip netns del {} && ip netns del {}",
                sb.lan, sb.host, sb.host, sb.lan, sb.host
            );
            std::mem::forget(sb);
        } else {
            drop(sb);
            println!("\nsandbox removed");
        }
        result
    }
}

fn narrate(sb: &Sandbox) -> Result<()> {
    step(&format!(
        "sandbox: {} (lan, {LAN_IP}) <-> {} (host, uplink up0 {UPLINK_IP})",
        sb.lan, sb.host
    ));
    run(
        sb,
        &[
            "attach",
            "--subnet",
            crate::sandbox::SUBNET,
            "--uplink",
            "up0",
        ],
    )?;
    let web = sb.container(1);
    run(sb, &["endpoint", "add", &web])?;
    run(sb, &["publish", &web, "-p", "8080:80", "-p", "5353:53/udp"])?;
    run(sb, &["ls"])?;

    step("published port: lan -> http://192.0.2.1:8080/ reaches the web container");
    let _http = Server::tcp(&sb.container_path(1), 80, http_responder(web.clone()))?;
    let to = SocketAddr::from((UPLINK_IP, 8080));
    let resp = probe::tcp_request(&sb.lan_path(), to, b"GET / HTTP/1.0\r\n\r\n")?;
    let text = String::from_utf8_lossy(&resp);
    println!("lan$ GET http://{to}/\n{}", text.trim_end());
    if !text.starts_with("HTTP/1.0 200") {
        bail!("the HTTP request through the published port failed");
    }
    let _dns = Server::udp(&sb.container_path(1), 53, probe::echo())?;
    let answer = probe::udp_request(
        &sb.lan_path(),
        SocketAddr::from((UPLINK_IP, 5353)),
        0,
        b"udp hello",
    )?;
    println!(
        "lan$ udp to {UPLINK_IP}:5353 -> answered {:?}",
        String::from_utf8_lossy(&answer)
    );

    step("masquerade: the web container reaches lan, which sees the host's address");
    let tcp = Server::tcp(&sb.lan_path(), 9000, probe::echo())?;
    let udp = Server::udp(&sb.lan_path(), 9001, probe::echo())?;
    probe::tcp_request(
        &sb.container_path(1),
        SocketAddr::from((LAN_IP, 9000)),
        b"tcp out",
    )?;
    probe::udp_request(
        &sb.container_path(1),
        SocketAddr::from((LAN_IP, 9001)),
        0,
        b"udp out",
    )?;
    println!("lan's TCP server saw {:?}", tcp.peers());
    println!("lan's UDP server saw {:?}", udp.peers());
    if tcp
        .peers()
        .iter()
        .chain(udp.peers().iter())
        .any(|p| p.ip() != UPLINK_IP)
    {
        bail!("lan saw a source other than the uplink address");
    }
    let pong = probe::ping(&sb.container_path(1), LAN_IP)?;
    println!(
        "{web}$ ping {LAN_IP}: {}",
        if pong { "reply received" } else { "no reply" }
    );
    if !pong {
        bail!("ping from the container got no reply");
    }

    step("hairpin: the web container reaches its own published port through the host's address");
    let hairpin = probe::tcp_request(&sb.container_path(1), to, b"GET / HTTP/1.0\r\n\r\n")?;
    println!(
        "{web}$ GET http://{to}/\n{}",
        String::from_utf8_lossy(&hairpin)
            .lines()
            .last()
            .unwrap_or("")
    );

    step("host-local: a process on the host reaches 127.0.0.1:8080, with no proxy process");
    let local = SocketAddr::from(([127, 0, 0, 1], 8080));
    let (resp, peer) = probe::tcp_request_peer(&sb.host_path(), local, b"GET / HTTP/1.0\r\n\r\n")?;
    println!(
        "host$ GET http://{local}/ (getpeername says {peer})\n{}",
        String::from_utf8_lossy(&resp).lines().last().unwrap_or("")
    );

    step("connection tracking and counters");
    run(sb, &["conntrack", "list"])?;
    run(sb, &["stats"])?;

    step("no netfilter rule was installed");
    let rules = sb
        .in_host("iptables-save", &[])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match rules {
        Ok(r) => println!(
            "iptables-save in {}: {} rule line(s)",
            sb.host,
            r.lines().filter(|l| l.starts_with('-')).count()
        ),
        Err(_) => println!("(iptables-save not installed)"),
    }
    Ok(())
}
