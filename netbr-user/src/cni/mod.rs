//! `netbr-cni`: the CNI plugin. It reads the spec's environment and the
//! network configuration on stdin, and changes the datapath only through
//! the store, so it serialises with the CLI and other plugin calls.
//!
//! Commands: VERSION, ADD, DEL, CHECK (spec 0.4.0 and later), GC and STATUS
//! (1.1.0). Errors are the spec's error objects on stdout, with a non-zero
//! exit status.

mod commands;
pub mod ipam;
pub mod types;

use std::{io::Read as _, process::ExitCode};

use serde_json::{json, Value};
use types::{code, version_at_least, CniError, NetConf, SUPPORTED_VERSIONS};

/// The spec's per-call environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl Env {
    fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        }
    }

    /// Fails with the spec's code 4 unless every named variable is set.
    fn require(&self, vars: &[&str]) -> Result<(), CniError> {
        for v in vars {
            let value = match *v {
                "CNI_CONTAINERID" => &self.container_id,
                "CNI_NETNS" => &self.netns,
                "CNI_IFNAME" => &self.ifname,
                _ => continue,
            };
            if value.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("{v} is not set: {} needs it", self.command),
                ));
            }
        }
        Ok(())
    }
}

/// Runs one plugin call: what the binary's `main` does.
pub fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (version, outcome) = run(&env, &stdin);
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(mut e) => {
            e.cni_version = version;
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
            eprintln!("netbr-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One call: the version to answer in, and the result or error.
pub fn run(env: &Env, stdin: &[u8]) -> (String, Result<Option<Value>, CniError>) {
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1.0.0".to_string());
    let outcome = dispatch(env, stdin, &requested);
    (requested, outcome)
}

fn dispatch(env: &Env, stdin: &[u8], version: &str) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("the network configuration is not valid JSON for netbr-cni: {e}"),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not supported: use one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let needs_1_1 = |cmd: &str| -> Result<(), CniError> {
        if version_at_least(&conf.cni_version, 1, 1) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{cmd} needs cniVersion 1.1.0, the configuration says {}",
                    conf.cni_version
                ),
            ))
        }
    };
    match env.command.as_str() {
        "ADD" => {
            env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
            commands::add(&conf, env, stdin).map(Some)
        }
        "DEL" => {
            env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
            commands::del(&conf, env, stdin).map(|()| None)
        }
        "CHECK" => {
            env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
            commands::check(&conf, env).map(|()| None)
        }
        "GC" => {
            needs_1_1("GC")?;
            commands::gc(&conf, stdin).map(|()| None)
        }
        "STATUS" => {
            needs_1_1("STATUS")?;
            commands::status(&conf).map(|()| None)
        }
        "" => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime",
        )),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}
