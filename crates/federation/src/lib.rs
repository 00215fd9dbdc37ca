//! Talking to other servers: discovery, TLS, X-Matrix, keys, sending. Also outbound HTTP to push
//! gateways ([`push_gateway`]) and to the web pages URL previews read ([`web_fetch`]), which are
//! not federation but share the floor: no room logic here.

pub mod public_addresses;
pub mod push_gateway;
pub mod web_fetch;
