//! The binary: CLI, config loading, listeners, TLS, start-up and shutdown.
