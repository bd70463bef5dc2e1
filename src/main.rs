fn main() -> std::process::ExitCode {
    mscope::cli::main()
}
