//! Which servers a room accepts: its `m.room.server_acl`, and in account-key rooms created with
//! `m.federate: false` only the creator's domain (MSC4243.md Q9). One rule, asked by every
//! federation door that involves a room (the endpoints peers call, each PDU of `/send`, EDUs
//! about a room, and an invite into a room this server is not in, judged by the create event
//! it carries).

use ruma::{ServerName, events::room::server_acl::RoomServerAclEventContent};
use serde_json::Value;

use myelin_room_version::RoomVersion;

use super::{Rooms, version_of};
use crate::{Error, Result};

impl Rooms {
    /// Whether the room lets `server` take part: its current `m.room.server_acl` (true when
    /// the room has none, or when this server does not know the room: the caller answers
    /// that), and for a non-federating account-key room, whether `server` is the creator's.
    pub async fn server_allowed(&self, room_id: &str, server: &ServerName) -> Result<bool> {
        let Some(room) = self.store.room(room_id).await? else {
            return Ok(true);
        };
        let keys = [
            ("m.room.server_acl".to_owned(), String::new()),
            ("m.room.create".to_owned(), String::new()),
        ];
        let rows = self.store.current_state(room.room_nid, Some(&keys)).await?;
        for row in &rows {
            let event: Value = serde_json::from_str(&row.json)
                .map_err(|e| Error::Internal(format!("stored {} event: {e}", row.event_type)))?;
            let allowed = match row.event_type.as_str() {
                "m.room.server_acl" => acl_allows(&event["content"], server),
                _ => version_of(&room).is_ok_and(|v| create_admits(v, &event, server)),
            };
            if !allowed {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether a room whose create event is `create` takes anything from `server`: in account-key
/// rooms (MSC4243.md Q9) a domain in a user id proves nothing, so auth rule 4
/// (`m.federate: false`) cannot keep other servers out by their users' ids; the transport does,
/// by the authenticated origin: only the creator's domain may talk to such a room. Other rooms
/// leave `m.federate` to the auth rules.
pub fn create_admits(version: &RoomVersion, create: &Value, server: &ServerName) -> bool {
    if !version.uses_account_keys() || create["content"]["m.federate"] != Value::Bool(false) {
        return true;
    }
    create["sender"]
        .as_str()
        .and_then(|sender| sender.split_once(':'))
        .is_some_and(|(_, domain)| domain == server.as_str())
}

/// The spec's rule over an ACL event's content, read leniently: entries that are not strings
/// are ignored, and a missing or non-boolean `allow_ip_literals` means true (its default), as
/// the spec asks servers to treat malformed ACLs; the matching itself is ruma's.
pub fn acl_allows(content: &Value, server: &ServerName) -> bool {
    let strings = |field: &str| super::strings_of(&content[field]);
    let allow_ip_literals = content["allow_ip_literals"].as_bool().unwrap_or(true);
    RoomServerAclEventContent::new(allow_ip_literals, strings("allow"), strings("deny"))
        .is_allowed(server)
}

#[cfg(test)]
mod tests {
    use ruma::server_name;
    use serde_json::json;

    use super::acl_allows;

    #[test]
    fn deny_wins_over_allow_and_wildcards_match() {
        let content = json!({"allow": ["*"], "deny": ["*.evil.example", "bad.example"]});
        assert!(acl_allows(&content, server_name!("good.example")));
        assert!(acl_allows(&content, server_name!("good.example:8448")));
        assert!(!acl_allows(&content, server_name!("bad.example")));
        assert!(!acl_allows(&content, server_name!("a.evil.example")));
    }

    #[test]
    fn no_allow_list_allows_nobody() {
        assert!(!acl_allows(&json!({}), server_name!("good.example")));
    }

    #[test]
    fn ip_literals_follow_the_flag_and_default_to_allowed() {
        let content = json!({"allow": ["*"]});
        assert!(acl_allows(&content, server_name!("127.0.0.1:8448")));
        let content = json!({"allow": ["*"], "allow_ip_literals": false});
        assert!(!acl_allows(&content, server_name!("127.0.0.1:8448")));
        assert!(!acl_allows(&content, server_name!("[::1]")));
    }

    #[test]
    fn malformed_entries_are_ignored_not_fatal() {
        let content =
            json!({"allow": [1, "ok.example", null], "deny": "bad", "allow_ip_literals": "no"});
        assert!(acl_allows(&content, server_name!("ok.example")));
        assert!(!acl_allows(&content, server_name!("other.example")));
        assert!(acl_allows(
            &json!({"allow": ["*"]}),
            server_name!("1.2.3.4")
        ));
    }
}
