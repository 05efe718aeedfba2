//! `cargo xtask setup|install|test|demo|bench|lint|fuzz|soak|cost`: everything a fresh machine needs, in
//! one place. Every step checks before it acts, so re-running is cheap.

mod fwd_profile;
mod install;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "netbr's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Build in release mode and install the binaries (netbr-cni into
    /// /opt/cni/bin), the systemd units and an example configuration,
    /// enabling nothing.
    Install {
        /// Install under this root instead of / (packaging, tests).
        #[arg(long)]
        destdir: Option<std::path::PathBuf>,
    },
    /// Set up, then run every test (unit, BPF_PROG_TEST_RUN, end-to-end). Needs root.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build in release mode, and run `netbr bench` (e.g. `--quick`). Needs root.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run `netbr demo`. Needs root.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The soak test, longer and larger than in `test`.
    Soak {
        #[arg(long, default_value_t = 300)]
        secs: u64,
        #[arg(long, default_value_t = 8000)]
        flows: u64,
    },
    /// rustfmt check and clippy (-D warnings) for the host crates and the BPF crate.
    Lint,
    /// Fuzz the TC programs against the reference models (IPv4's, IPv6's) for longer than the test run does.
    Fuzz {
        /// How many packets.
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
        /// Seed for the packet generator (the test run's own seed by default).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Print each program's per-packet cost under BPF_PROG_TEST_RUN (ns per
    /// run: tracked, new and unmatched packets), release build. Needs root.
    Cost {
        /// Also split a tracked packet's run into segments (parse, clock,
        /// conntrack lookup, rewrite, ...), timed by marks built into the
        /// programs for this run only.
        #[arg(long)]
        profile: bool,
    },
    /// Where a forwarded frame's kernel time goes: each arm's `netbr bench
    /// --fwd` recorded with perf's software clock, the samples of its DNAT
    /// and masquerade runs grouped by the kernel functions on their stacks.
    /// Needs root and perf.
    FwdProfile {
        /// Arms, comma-separated, as `netbr bench --arms` takes them.
        #[arg(long, default_value = "netbr-fast,routed")]
        arms: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::all(),
        Task::Install { destdir } => {
            setup::all()?;
            install::run_install(destdir)
        }
        Task::Test { args } => {
            setup::all()?;
            require_root("the tests create network namespaces and load BPF programs")?;
            cargo(&["test"], &args)?;
            if args.is_empty() {
                // The same end-to-end suites again, with the TC fast path on,
                // then with XDP as well.
                for (what, env) in [
                    ("--fast-path", &[("NETBR_E2E_FAST_PATH", "1")][..]),
                    (
                        "--fast-path --xdp",
                        &[("NETBR_E2E_FAST_PATH", "1"), ("NETBR_E2E_XDP", "1")][..],
                    ),
                ] {
                    eprintln!(
                        "xtask: end-to-end, reliability, soak, limits, observability, kube-proxy and IPv6 tests again with {what}"
                    );
                    run(
                        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                            .args([
                                "test",
                                "-p",
                                "netbr-user",
                                "--test",
                                "e2e",
                                "--test",
                                "reliability",
                                "--test",
                                "soak",
                                "--test",
                                "limits",
                                "--test",
                                "observability",
                                "--test",
                                "kube_proxy",
                                "--test",
                                "ipv6",
                            ])
                            .envs(env.iter().copied()),
                    )?;
                }
            }
            Ok(())
        }
        Task::Bench { args } => {
            setup::all()?;
            require_root("the bench creates network namespaces and loads BPF programs")?;
            cargo(
                &["run", "--release", "--bin", "netbr", "--", "bench"],
                &args,
            )
        }
        Task::Demo { args } => {
            setup::all()?;
            require_root("the demo creates network namespaces and loads BPF programs")?;
            cargo(&["run", "--release", "--bin", "netbr", "--", "demo"], &args)
        }
        Task::Fuzz { packets, seed } => {
            setup::all()?;
            require_root("fuzzing runs the BPF programs with BPF_PROG_TEST_RUN")?;
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args([
                "test",
                "--release",
                "-p",
                "netbr-user",
                "--test",
                "fuzz",
                "--test",
                "fuzz6",
                "--",
                "--nocapture",
            ])
            .env("NETBR_FUZZ_PACKETS", packets.to_string());
            if let Some(seed) = seed {
                cmd.env("NETBR_FUZZ_SEED", seed.to_string());
            }
            run(&mut cmd)
        }
        Task::Soak { secs, flows } => {
            setup::all()?;
            require_root("the soak test creates network namespaces and loads BPF programs")?;
            run(
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .args([
                        "test",
                        "--release",
                        "-p",
                        "netbr-user",
                        "--test",
                        "soak",
                        "--",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env("NETBR_SOAK_SECS", secs.to_string())
                    .env("NETBR_SOAK_FLOWS", flows.to_string()),
            )
        }
        Task::Cost { profile } => {
            setup::all()?;
            require_root("BPF_PROG_TEST_RUN loads BPF programs")?;
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            // Read by netbr-user's build script; unset, the marks are not
            // built (and a build that had them is redone without).
            if profile {
                cargo.env("NETBR_EBPF_PROFILE", "1");
            } else {
                cargo.env_remove("NETBR_EBPF_PROFILE");
            }
            run(cargo.args([
                "test",
                "--release",
                "-p",
                "netbr-user",
                "--test",
                "prog_test_run",
                "per_packet_cost",
                "--",
                "--ignored",
                "--nocapture",
            ]))
        }
        Task::FwdProfile { arms } => {
            setup::all()?;
            require_root("perf records every CPU; the bench creates network namespaces")?;
            fwd_profile::run(&arms)
        }
        Task::Lint => {
            setup::all()?;
            cargo(&["fmt", "--all", "--check"], &[])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"], &[])?;
            // The BPF crate as shipped, and with `cost --profile`'s marks.
            for features in [&[][..], &["--features", "profile"]] {
                run(Command::new("cargo")
                    .current_dir("netbr-ebpf")
                    .args([
                        "+nightly",
                        "clippy",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                    ])
                    .args(features)
                    .args(["--", "-D", "warnings"]))?;
            }
            Ok(())
        }
    }
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .args(extra),
    )
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
