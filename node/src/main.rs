//! The `halley-node` binary: everything lives in the library; see `halley_node::cli`.

fn main() -> std::process::ExitCode {
    halley_node::cli::main()
}
