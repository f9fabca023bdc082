//! The `rotor` binary.

fn main() -> std::process::ExitCode {
    rotor_server::cli::main()
}
