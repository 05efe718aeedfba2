use clap::Parser as _;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,netlink_packet_route=error"),
    )
    .init();
    let cli = netbr::cli::Cli::parse();
    match netbr::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbr: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
