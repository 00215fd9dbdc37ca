//! Talking to other servers: discovery, TLS, X-Matrix, keys, sending.
