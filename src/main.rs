//! The `saeshare` command line. Each subcommand is a thin layer over the library.

fn main() -> std::process::ExitCode {
    saeshare::cli::main()
}
