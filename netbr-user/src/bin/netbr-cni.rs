//! The CNI plugin binary; see `netbr::cni`.

fn main() -> std::process::ExitCode {
    netbr::cni::main()
}
