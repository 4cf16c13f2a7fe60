fn main() -> std::process::ExitCode {
    tollgate_operator::cli::main()
}
