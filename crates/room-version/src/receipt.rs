//! The spec's checks on receipt of a PDU from another server, as one pure sequence with one
//! named function per step (Server-Server API, "Checks performed on receipt of a PDU"):
//!
//! 1. [`check_format`]: a valid PDU for the room version, else dropped.
//! 2. [`check_signatures`]: signed by the servers (or account keys) it must be, else dropped.
//! 3. [`check_content_hash`]: a content hash that does not match keeps only the redacted form.
//! 4. [`check_against_own_auth_events`]: authorised by the events it cites as `auth_events`,
//!    else rejected.
//! 5. [`check_against_state_before`]: authorised by the room state before it (the state at its
//!    `prev_events`), else rejected.
//! 6. [`check_against_current_state`]: authorised by the room's current state, else soft-failed.
//!
//! An event that cannot be evaluated because events it cites are not known is neither dropped
//! nor rejected: [`Outcome::Missing`] lists them, and the same event is checked again once they
//! arrive. Fetching them is the caller's (the network's) business; nothing here does I/O.

use crate::auth::{check_against_auth_events, check_against_state};
use crate::pdu::{Pdu, PduError};
use crate::signing::SignatureError;
use crate::verify::{ServerKeys, Verified, verify_pdu};
use crate::version::RoomVersion;

/// What the checks need to look up. The caller answers from the store (events it holds,
/// rejected ones flagged with [`Pdu::set_rejected`]) and from the states it computed.
pub trait ReceiptLookups {
    /// A stored event by id (accepted, rejected or outlier), `None` if this server lacks it.
    fn event(&self, event_id: &str) -> Option<&Pdu>;
    /// The state before the event being checked: the state at its `prev_events`. Only asked
    /// once every prev event is known (`event` answers for each).
    fn state_before(&self, event_type: &str, state_key: &str) -> Option<&Pdu>;
    /// The room's current state.
    fn current_state(&self, event_type: &str, state_key: &str) -> Option<&Pdu>;
}

/// Why an event was dropped (steps 1 and 2): it is not stored at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("not a valid PDU: {0}")]
    Format(String),
    #[error("bad signature: {0}")]
    Signature(String),
}

/// The step whose authorisation an event failed (a rejection is permanent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedAt {
    /// Step 4: its own `auth_events`.
    AuthEvents,
    /// Step 5: the state before it.
    StateBefore,
}

/// An event that passed steps 1 to 3, as it is to be stored.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The event; its redacted form when the content hash did not match.
    pub pdu: Pdu,
    /// The content hash did not match, so `pdu` is the redacted form.
    pub redacted: bool,
}

/// Where the checks on receipt leave an event.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Steps 1 or 2 failed: forget the event.
    Dropped(Dropped),
    /// Events it cites (auth events, or prev events for the state before it) are not known:
    /// check it again once they are. Not a verdict on the event.
    Missing {
        event: Checked,
        missing: Vec<String>,
    },
    /// Steps 4 or 5 failed: store it as rejected, with the reason; it never enters the state
    /// (the state after it is the state before it).
    Rejected {
        event: Checked,
        at: RejectedAt,
        reason: String,
    },
    /// Step 6 failed: store it, keep it out of timelines and forward extremities.
    SoftFailed(Checked),
    /// Every check passed.
    Accepted(Checked),
}

/// Runs the checks on receipt in the spec's order and stops at the first that decides.
pub fn check_on_receipt(
    version: &RoomVersion,
    bytes: &[u8],
    server_keys: &ServerKeys,
    lookups: &impl ReceiptLookups,
) -> Outcome {
    let pdu = match check_format(version, bytes) {
        Ok(pdu) => pdu,
        Err(dropped) => return Outcome::Dropped(dropped),
    };
    let verified = match check_signatures(version, &pdu, server_keys) {
        Ok(verified) => verified,
        Err(dropped) => return Outcome::Dropped(dropped),
    };
    let event = match check_content_hash(version, pdu, verified) {
        Ok(event) => event,
        Err(dropped) => return Outcome::Dropped(dropped),
    };
    match check_against_own_auth_events(version, &event.pdu, lookups) {
        Ok(()) => {}
        Err(Failure::Missing(missing)) => return Outcome::Missing { event, missing },
        Err(Failure::Denied(reason)) => {
            return Outcome::Rejected {
                event,
                at: RejectedAt::AuthEvents,
                reason,
            };
        }
    }
    match check_against_state_before(version, &event.pdu, lookups) {
        Ok(()) => {}
        Err(Failure::Missing(missing)) => return Outcome::Missing { event, missing },
        Err(Failure::Denied(reason)) => {
            return Outcome::Rejected {
                event,
                at: RejectedAt::StateBefore,
                reason,
            };
        }
    }
    if check_against_current_state(version, &event.pdu, lookups).is_err() {
        return Outcome::SoftFailed(event);
    }
    Outcome::Accepted(event)
}

/// Why an authorisation step did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// These cited events are not known: no verdict yet.
    Missing(Vec<String>),
    /// Not authorised, for this reason.
    Denied(String),
}

/// Step 1: the bytes are a PDU of this room version (size, JSON, fields, event id).
pub fn check_format(version: &RoomVersion, bytes: &[u8]) -> Result<Pdu, Dropped> {
    Pdu::from_federation(bytes, version).map_err(|e: PduError| Dropped::Format(e.to_string()))
}

/// Step 2: the signatures the room version requires are present and valid. Returns whether the
/// content hash matched too (checked with the signatures, over the same JSON).
pub fn check_signatures(
    version: &RoomVersion,
    pdu: &Pdu,
    server_keys: &ServerKeys,
) -> Result<Verified, Dropped> {
    verify_pdu(pdu, version, server_keys)
        .map_err(|e: SignatureError| Dropped::Signature(e.to_string()))
}

/// Step 3: an event whose content hash does not match is kept only in its redacted form.
pub fn check_content_hash(
    version: &RoomVersion,
    pdu: Pdu,
    verified: Verified,
) -> Result<Checked, Dropped> {
    match verified {
        Verified::All => Ok(Checked {
            pdu,
            redacted: false,
        }),
        Verified::SignaturesOnly => Ok(Checked {
            pdu: pdu
                .redacted(version)
                .map_err(|e| Dropped::Format(e.to_string()))?,
            redacted: true,
        }),
    }
}

/// Step 4: authorised by its own `auth_events` (all of which must be known).
pub fn check_against_own_auth_events(
    version: &RoomVersion,
    pdu: &Pdu,
    lookups: &impl ReceiptLookups,
) -> Result<(), Failure> {
    let missing = unknown(pdu.auth_events(), lookups);
    if !missing.is_empty() {
        return Err(Failure::Missing(missing));
    }
    check_against_auth_events(version, pdu, |id| lookups.event(id))
        .map_err(|e| Failure::Denied(e.reason))
}

/// Step 5: authorised by the state before it, which is known once its prev events are.
pub fn check_against_state_before(
    version: &RoomVersion,
    pdu: &Pdu,
    lookups: &impl ReceiptLookups,
) -> Result<(), Failure> {
    let missing = unknown(pdu.prev_events(), lookups);
    if !missing.is_empty() {
        return Err(Failure::Missing(missing));
    }
    check_against_established_state_before(version, pdu, lookups)
}

/// Step 5 where the caller has established the state before the event itself: from its prev
/// events' states, or from the state another server gave for prev events this server lacks
/// (the prev events of a join through another server, a gap out of reach). Only the auth
/// rules against that state; [`check_against_state_before`] also wants every prev event known.
pub fn check_against_established_state_before(
    version: &RoomVersion,
    pdu: &Pdu,
    lookups: &impl ReceiptLookups,
) -> Result<(), Failure> {
    check_against_state(version, pdu, |kind, key| lookups.state_before(kind, key))
        .map_err(|e| Failure::Denied(e.reason))
}

/// Step 6: authorised by the room's current state.
pub fn check_against_current_state(
    version: &RoomVersion,
    pdu: &Pdu,
    lookups: &impl ReceiptLookups,
) -> Result<(), Failure> {
    check_against_state(version, pdu, |kind, key| lookups.current_state(kind, key))
        .map_err(|e| Failure::Denied(e.reason))
}

/// The cited ids this server does not know, each once, in citation order.
fn unknown<'a>(cited: impl Iterator<Item = &'a str>, lookups: &impl ReceiptLookups) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    for id in cited {
        if lookups.event(id).is_none() && !missing.iter().any(|m| m == id) {
            missing.push(id.to_owned());
        }
    }
    missing
}
