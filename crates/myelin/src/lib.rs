//! The binary's library half: configuration loading, TLS material, the two listeners, start-up
//! and graceful shutdown. `main.rs` is only the command line over it; tests and the testkit start
//! servers through [`server::start`].

pub mod config;
pub mod server;
pub mod tls;

/// The commented example configuration that `myelin generate-config` prints.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../config/myelin.example.toml");
