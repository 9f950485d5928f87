//! `wxpush-mock-wechat`: the WeChat API emulator as its own process (the same as
//! `wxpush mock-wechat` in a developer build of wxpush).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "wxpush-mock-wechat",
    version,
    about = "WeChat API emulator for wxpush's tests, demo and benchmarks"
)]
struct Cli {
    #[command(flatten)]
    args: wxpush_mock_wechat::cli::MockWechatArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wxpush_mock_wechat::cli::run(cli.args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
