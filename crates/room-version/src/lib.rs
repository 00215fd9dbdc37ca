//! placeholder
pub mod account_key;
pub mod auth;
pub mod canonical;
pub mod pdu;
pub mod projection;
pub mod signing;
pub mod state_res;
pub mod verify;
pub mod version;
