//! Dev-only: start in-process servers with temporary databases and a private CA.
