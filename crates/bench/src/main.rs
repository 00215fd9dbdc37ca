//! myelin-bench: load generator that can target any homeserver URL (Myelin or Synapse).

fn main() {
    eprintln!("myelin-bench: no scenarios yet");
    std::process::exit(2);
}
