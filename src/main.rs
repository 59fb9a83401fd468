//! The `certgate` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    let code = certgate::cli::run();
    // Access lines still buffered go out before the process ends.
    certgate::logging::flush();
    code
}
