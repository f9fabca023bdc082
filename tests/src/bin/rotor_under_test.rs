//! The `rotor` command line, exactly as the `rotor` binary runs it, built inside the tests
//! package so end-to-end tests can start it as a process (Cargo only exposes binaries of the
//! package under test).

fn main() -> std::process::ExitCode {
    rotor_server::cli::main()
}
