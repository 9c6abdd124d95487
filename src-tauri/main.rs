fn main() -> std::process::ExitCode {
    tokenwarden::cli::main()
}
