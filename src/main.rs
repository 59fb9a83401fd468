//! The `certgate` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    certgate::cli::run()
}
