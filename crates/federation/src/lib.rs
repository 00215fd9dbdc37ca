//! Talking to other servers: discovery ([`discovery`]), the signed HTTP client ([`client`]),
//! X-Matrix signing and checking ([`xmatrix`]) and reading server key objects ([`keys`]). Also
//! outbound HTTP to push gateways ([`push_gateway`]) and to the web pages URL previews read
//! ([`web_fetch`]), which are not federation but share the floor: no room logic here.

pub mod client;
pub mod discovery;
pub mod keys;
pub mod media;
pub mod msc4243;
pub mod public_addresses;
pub mod push_gateway;
pub mod web_fetch;
pub mod xmatrix;

pub use client::{FederationClient, FederationClientConfig, FederationError};
