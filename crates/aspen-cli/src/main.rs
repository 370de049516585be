//! `aspen`: the command line of an Aspen cluster (see the `aspen_cli` library).

fn main() -> std::process::ExitCode {
    aspen_cli::main()
}
