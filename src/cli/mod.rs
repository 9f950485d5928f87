//! The `wxpush` command line (being written).

/// Entry point used by `main`.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
