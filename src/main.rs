fn main() -> std::process::ExitCode {
    wxpush::cli::main()
}
