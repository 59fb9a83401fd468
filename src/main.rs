fn main() {
    std::process::exit(certgate::cli::run());
}
