#![no_std]
// Empty library target: netbr-user lists this crate as a build-dependency
// so cargo rebuilds the loader when the programs change; the programs
// themselves are the `netbr-bpf` binary built by aya-build.
