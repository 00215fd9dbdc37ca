//! Talking to other servers: discovery, TLS, X-Matrix, keys, sending. Also outbound HTTP to push
//! gateways ([`push_gateway`]), which is not federation but shares the floor: no room logic here.

pub mod public_addresses;
pub mod push_gateway;
