use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the BPF programs (`netbr-ebpf`, nightly + bpf-linker) into OUT_DIR,
/// where `src/bpf/object.rs` embeds them.
fn main() -> anyhow::Result<()> {
    let here = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&here)
        .parent()
        .ok_or_else(|| anyhow!("netbr-user has no parent directory"))?
        .join("netbr-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {root:?}"))?;
    aya_build::build_ebpf(
        [Package {
            name: "netbr-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
