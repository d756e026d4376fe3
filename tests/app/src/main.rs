//! The `testapp` binary: see the library docs for what it answers.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(switchctl_testapp::main_with_args(&args));
}
