//! `netbr docker-plugin`: Docker's remote network-driver API over HTTP on a
//! unix socket, so `docker network create -d NAME` and `docker run -p` use
//! netbr's datapath. Docker finds the driver by its socket,
//! `/run/docker/plugins/NAME.sock`: the driver's name is the file's stem.
//!
//! Each request runs on a blocking thread with its own small runtime: the
//! store's lock is a blocking `flock`, and dockerd starts many containers
//! at once.

pub mod api;
mod driver;
pub use driver::bridge_opt;
pub mod records;

use std::{convert::Infallible, path::PathBuf};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub use driver::DriverConfig;

use crate::addr::PortRange;

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

#[derive(Args, Debug)]
pub struct DockerPlugin {
    /// The socket to serve on; Docker looks for /run/docker/plugins/NAME.sock
    /// and uses NAME as the driver's name.
    #[arg(long)]
    pub socket: PathBuf,
    /// Host ports picked for `-p CPORT` and `-P` (Docker's HostPort 0):
    /// below Linux's default ephemeral range (32768-60999), where host
    /// sockets get their ports, and netbr's SNAT range (61000-65535).
    #[arg(long, default_value = "20000-29999")]
    pub host_ports: PortRange,
    /// Where the driver keeps a record of each network it made, to attach
    /// it again after a reboot (dockerd never recreates a remote driver's
    /// networks). Not on tmpfs.
    #[arg(long, default_value = records::DEFAULT_DIR)]
    pub state_dir: PathBuf,
}

/// Answers one call: the status and the JSON body.
pub fn handle(path: &str, body: &[u8], cfg: &DriverConfig) -> (StatusCode, Value) {
    let result = match path {
        "/Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver"]})),
        "/NetworkDriver.GetCapabilities" => {
            Ok(json!({"Scope": "local", "ConnectivityScope": "local"}))
        }
        "/NetworkDriver.CreateNetwork" => driver::create_network(body, cfg),
        "/NetworkDriver.DeleteNetwork" => driver::delete_network(body, cfg),
        "/NetworkDriver.CreateEndpoint" => driver::create_endpoint(body, cfg),
        "/NetworkDriver.DeleteEndpoint" => driver::delete_endpoint(body),
        "/NetworkDriver.EndpointOperInfo" => driver::endpoint_oper_info(body, cfg),
        "/NetworkDriver.Join" => driver::join(body, cfg),
        "/NetworkDriver.Leave" => driver::leave(body),
        "/NetworkDriver.ProgramExternalConnectivity" => {
            driver::program_external_connectivity(body, cfg)
        }
        "/NetworkDriver.RevokeExternalConnectivity" => driver::revoke_external_connectivity(body),
        other => {
            return (
                StatusCode::NOT_FOUND,
                json!({"Err": format!("{other} is not implemented by netbr")}),
            )
        }
    };
    match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => {
            let msg = format!("netbr: {e:#}");
            log::warn!("{path}: {msg}");
            (StatusCode::INTERNAL_SERVER_ERROR, json!({ "Err": msg }))
        }
    }
}

async fn serve_one(
    req: Request<Incoming>,
    cfg: DriverConfig,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (status, value) = tokio::task::spawn_blocking(move || handle(&path, &body, &cfg))
        .await
        .unwrap_or_else(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"Err": format!("netbr: the request failed: {e}")}),
            )
        });
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(resp)
}

impl DockerPlugin {
    pub async fn exec(self) -> Result<()> {
        let cfg = DriverConfig {
            host_ports: self.host_ports,
            records: records::Records::new(&self.state_dir),
        };
        let (eph_min, eph_max) = crate::sysctl::local_port_range()?;
        if self.host_ports.0 <= eph_max && eph_min <= self.host_ports.1 {
            anyhow::bail!(
                "--host-ports {} overlaps this host's ephemeral range {eph_min}-{eph_max}: replies to host sockets would be taken for published ports; pick a range outside it",
                self.host_ports
            );
        }
        if let Some(dir) = self.socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A socket left by a killed driver is stale; a live one answers.
        if self.socket.exists() {
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                anyhow::bail!(
                    "{} is served by a running driver: stop it first",
                    self.socket.display()
                );
            }
            std::fs::remove_file(&self.socket)
                .with_context(|| format!("removing stale {}", self.socket.display()))?;
        }
        let listener = tokio::net::UnixListener::bind(&self.socket)
            .with_context(|| format!("listening on {}", self.socket.display()))?;
        let name = self
            .socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        eprintln!(
            "netbr docker-plugin: serving driver {name} on {}",
            self.socket.display()
        );
        let socket = self.socket.clone();
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            anyhow::Ok(())
        };
        let accept = async {
            loop {
                let (stream, _) = listener.accept().await?;
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve_one(req, cfg.clone()));
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        log::debug!("connection: {e}");
                    }
                });
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = stop => r,
            r = accept => r,
        };
        let _ = std::fs::remove_file(&socket);
        result
    }
}
