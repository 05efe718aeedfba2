//! `netbr bench --cni`: how long a runtime waits for its network plugins.
//! netbr-cni against the reference chain a CNI runtime would otherwise use
//! (`bridge` with `host-local` IPAM, then `portmap`, from
//! containernetworking-plugins), both driven the way libcni drives a
//! conflist: ADD through the chain with each result as the next
//! `prevResult`, DEL in reverse. Each arm starts from a fresh sandbox and
//! adds `containers` containers in a row, then deletes them.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{netns, sandbox::Sandbox};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniArm {
    Netbr,
    Reference,
}

impl CniArm {
    pub fn name(self) -> &'static str {
        match self {
            CniArm::Netbr => "netbr-cni",
            CniArm::Reference => "bridge+portmap",
        }
    }
}

pub(crate) const REFERENCE_DIR: &str = "/usr/lib/cni";

/// ADD and DEL times of each container, in order.
pub struct Timings {
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
}

/// The plugins of one arm's conflist, as libcni would hand each its config.
fn chain(arm: CniArm, data_dir: &Path) -> Vec<Value> {
    let base = |v: Value| {
        let mut v = v;
        v["cniVersion"] = json!("1.0.0");
        v["name"] = json!("benchnet");
        v
    };
    match arm {
        CniArm::Netbr => vec![base(json!({
            "type": "netbr-cni",
            "bridge": "netbr0",
            "subnet": "172.30.0.0/16",
            "uplink": crate::sandbox::UPLINK,
        }))],
        CniArm::Reference => vec![
            base(json!({
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "172.30.0.0/16"}]],
                    "dataDir": data_dir,
                },
            })),
            base(json!({"type": "portmap", "snat": true})),
        ],
    }
}

/// Runs one plugin; fails with its error object.
pub(crate) fn exec(plugin: &Path, cmd: &str, conf: &Value, id: &str, ns: &Path) -> Result<Value> {
    let dir = plugin.parent().unwrap_or(Path::new("/"));
    let cni_path = format!("{}:{REFERENCE_DIR}", dir.display());
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} {cmd} failed: {text}", plugin.display());
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// ADD through the chain as libcni does: each plugin gets the previous
/// result; the port mappings go to whichever plugin asked for them.
fn add(plugins: &[(PathBuf, Value)], ports: &Value, id: &str, ns: &Path) -> Result<Value> {
    let mut prev = Value::Null;
    for (bin, conf) in plugins {
        let mut conf = conf.clone();
        conf["runtimeConfig"] = json!({"portMappings": ports});
        if !prev.is_null() {
            conf["prevResult"] = prev;
        }
        prev = exec(bin, "ADD", &conf, id, ns)?;
    }
    Ok(prev)
}

fn del(
    plugins: &[(PathBuf, Value)],
    ports: &Value,
    result: &Value,
    id: &str,
    ns: &Path,
) -> Result<()> {
    for (bin, conf) in plugins.iter().rev() {
        let mut conf = conf.clone();
        conf["runtimeConfig"] = json!({"portMappings": ports});
        conf["prevResult"] = result.clone();
        exec(bin, "DEL", &conf, id, ns)?;
    }
    Ok(())
}

/// One arm: a fresh sandbox, `containers` namespaces, each ADDed with
/// `ports` published ports, then all DELeted.
pub fn run_arm(arm: CniArm, netbr: &Path, ports: u16, containers: u16) -> Result<Timings> {
    let sb = Sandbox::create(netbr)?;
    let data_dir = std::env::temp_dir().join(format!("netbr-bench-ipam-{}", sb.suffix));
    let plugin_dir = netbr.parent().context("the netbr binary's directory")?;
    let plugins: Vec<(PathBuf, Value)> = chain(arm, &data_dir)
        .into_iter()
        .map(|c| {
            let name = c["type"].as_str().unwrap_or_default().to_string();
            let dir = if arm == CniArm::Netbr {
                plugin_dir
            } else {
                Path::new(REFERENCE_DIR)
            };
            (dir.join(name), c)
        })
        .collect();
    for (bin, _) in &plugins {
        if !bin.exists() {
            bail!(
                "{} is missing: build netbr-cni (cargo build --release) and install containernetworking-plugins",
                bin.display()
            );
        }
    }
    let names: Vec<String> = (0..containers)
        .map(|i| format!("nbb{i}-{}", sb.suffix))
        .collect();
    let cleanup = |names: &[String]| {
        for n in names {
            if netns::exists(n) {
                let _ = netns::delete_named(n);
            }
        }
        let _ = std::fs::remove_dir_all(&data_dir);
    };
    let result = (|| -> Result<Timings> {
        for n in &names {
            netns::create_named(n)?;
        }
        let host = sb.host_path();
        let plugins = plugins.clone();
        let names2 = names.clone();
        // Plugins run in the host namespace: a child inherits the netns of
        // the thread that forks it.
        netns::run_in(&host, move || -> Result<Timings> {
            let mut t = Timings {
                add: Vec::new(),
                del: Vec::new(),
            };
            let mut results = Vec::new();
            for (i, n) in names2.iter().enumerate() {
                let mapping: Vec<Value> = (0..ports)
                    .map(|j| {
                        json!({"hostPort": 20000 + i as u16 * ports + j, "containerPort": 80 + j, "protocol": "tcp"})
                    })
                    .collect();
                let mapping = Value::Array(mapping);
                let id = format!("bench{i:04}");
                let ns = netns::resolve(n);
                let start = Instant::now();
                let r = add(&plugins, &mapping, &id, &ns)?;
                t.add.push(start.elapsed());
                results.push((id, ns, mapping, r));
            }
            for (id, ns, mapping, r) in &results {
                let start = Instant::now();
                del(&plugins, mapping, r, id, ns)?;
                t.del.push(start.elapsed());
            }
            Ok(t)
        })?
    })();
    cleanup(&names);
    drop(sb);
    result
}

pub fn percentile(v: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return 0.0;
    }
    ms[((ms.len() - 1) as f64 * p).round() as usize]
}

/// The whole comparison: both arms at each port count; prints a table and
/// returns it as JSON.
pub fn run(netbr: &Path, ports: &[u16], containers: u16) -> Result<Value> {
    let mut rows = Vec::new();
    println!(
        "{:<16} {:>5} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "arm",
        "ports",
        "ADD p50",
        "ADD p90",
        "DEL p50",
        "DEL p90",
        "ADD p50 1-10",
        "ADD p50 last10"
    );
    for &p in ports {
        for arm in [CniArm::Netbr, CniArm::Reference] {
            let t = run_arm(arm, netbr, p, containers)
                .with_context(|| format!("{} with {p} port(s)", arm.name()))?;
            let n = t.add.len();
            let (first, last) = (&t.add[..n.min(10)], &t.add[n.saturating_sub(10)..]);
            let row = json!({
                "arm": arm.name(),
                "ports": p,
                "containers": containers,
                "add_p50_ms": percentile(&t.add, 0.5),
                "add_p90_ms": percentile(&t.add, 0.9),
                "del_p50_ms": percentile(&t.del, 0.5),
                "del_p90_ms": percentile(&t.del, 0.9),
                "add_p50_first10_ms": percentile(first, 0.5),
                "add_p50_last10_ms": percentile(last, 0.5),
            });
            println!(
                "{:<16} {:>5} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>12.1}ms {:>12.1}ms",
                arm.name(),
                p,
                row["add_p50_ms"].as_f64().unwrap_or(0.0),
                row["add_p90_ms"].as_f64().unwrap_or(0.0),
                row["del_p50_ms"].as_f64().unwrap_or(0.0),
                row["del_p90_ms"].as_f64().unwrap_or(0.0),
                row["add_p50_first10_ms"].as_f64().unwrap_or(0.0),
                row["add_p50_last10_ms"].as_f64().unwrap_or(0.0),
            );
            rows.push(row);
        }
    }
    Ok(Value::Array(rows))
}
