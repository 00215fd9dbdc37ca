//! The wire format of MSC4243's federation endpoints, as ruma endpoints so that the server
//! answers them and asks them like every other federation request (X-Matrix on both sides):
//! `POST /query/accounts` (unstable path
//! `/_matrix/federation/unstable/org.matrix.msc4243/query/accounts`, MSC4243.md §2.3, §2.9) and
//! the pre-emptive ban `PUT /ban/{roomId}/{eventId}` (§2.5 item 34). The per-key answers and the
//! events stay raw JSON: judging them is the room version's business, not the transport's.

pub mod query_accounts {
    use ruma::{
        api::{federation::authentication::ServerSignatures, request, response},
        metadata,
    };
    use serde::{Deserialize, Serialize};
    use serde_json::{Map, Value};

    metadata! {
        method: POST,
        rate_limited: false,
        authentication: ServerSignatures,
        path: "/_matrix/federation/unstable/org.matrix.msc4243/query/accounts",
    }

    /// The erasure cursor of a request: the erasures after `id`, at most `limit` of them.
    #[derive(Clone, Copy, Debug, Serialize, Deserialize)]
    pub struct ErasureCursor {
        pub id: i64,
        pub limit: i64,
    }

    /// `{account_keys: [bare key, ...], erasure?: {id, limit}}`.
    #[request]
    pub struct Request {
        #[serde(default)]
        pub account_keys: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub erasure: Option<ErasureCursor>,
    }

    impl Request {
        pub fn new(account_keys: Vec<String>) -> Self {
            Request {
                account_keys,
                erasure: None,
            }
        }
    }

    /// `{account_keys: {key: answer}, erasure?: {id, has_more}}`, kept as the JSON object it is.
    #[response]
    pub struct Response {
        #[ruma_api(body)]
        pub body: Map<String, Value>,
    }

    impl Response {
        pub fn new(body: Map<String, Value>) -> Self {
            Response { body }
        }
    }
}

/// `PUT /_matrix/federation/unstable/org.matrix.msc4243/ban/{roomId}/{eventId}` (MSC4243.md
/// §2.5 item 34, in the shape its recommendation gives: `{room_version, event}` answered with
/// `{event}`): a ban of one of the receiving server's users named by account name, which that
/// server answers with the user's key-form id put in and, if it likes, the user's signature.
pub mod ban {
    use ruma::{
        OwnedEventId, OwnedRoomId, RoomVersionId,
        api::{federation::authentication::ServerSignatures, request, response},
        metadata,
    };
    use serde_json::value::RawValue;

    metadata! {
        method: PUT,
        rate_limited: false,
        authentication: ServerSignatures,
        path: "/_matrix/federation/unstable/org.matrix.msc4243/ban/{room_id}/{event_id}",
    }

    #[request]
    pub struct Request {
        /// The room the ban is for.
        #[ruma_api(path)]
        pub room_id: OwnedRoomId,
        /// The id of the ban event as sent (advisory: the answer's id differs, its state key
        /// and hash having changed).
        #[ruma_api(path)]
        pub event_id: OwnedEventId,
        pub room_version: RoomVersionId,
        /// The ban, its `state_key` the target's account-name id.
        pub event: Box<RawValue>,
    }

    impl Request {
        pub fn new(
            room_id: OwnedRoomId,
            event_id: OwnedEventId,
            room_version: RoomVersionId,
            event: Box<RawValue>,
        ) -> Self {
            Request {
                room_id,
                event_id,
                room_version,
                event,
            }
        }
    }

    /// The ban with the target's key-form id as its `state_key`.
    #[response]
    pub struct Response {
        pub event: Box<RawValue>,
    }

    impl Response {
        pub fn new(event: Box<RawValue>) -> Self {
            Response { event }
        }
    }
}
