//! Federation as this server's behaviour (the network itself is `myelin_federation`): the one
//! door for outbound requests with the per-destination backoff every request consults
//! ([`outbound`], [`backoff`]), and the transaction sender that delivers local events and EDUs
//! to the servers in their rooms ([`sender`]).

pub mod backoff;
pub mod outbound;
pub mod sender;

pub use backoff::{Backoff, BackoffPolicy};
/// The endpoint types of MSC4243's `/query/accounts`, for the HTTP floor that serves it.
pub use myelin_federation::msc4243;
pub use outbound::Outbound;
pub use sender::{DestinationStatus, EduFeed, EduNotice, Sender};
