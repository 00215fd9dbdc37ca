//! The wire format of MSC4243's federation endpoint `POST /query/accounts` (unstable path
//! `/_matrix/federation/unstable/org.matrix.msc4243/query/accounts`, MSC4243.md §2.3, §2.9),
//! as a ruma endpoint so that the server answers it and asks it like every other federation
//! request (X-Matrix on both sides). The per-key answers stay raw JSON: judging them is the
//! room version's classifier's business, not the transport's.

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
