//! The reads behind the space hierarchy (`/hierarchy`): a room's summary state and its
//! `m.space.child` links, with its joined member count, in two statements.

use sqlx::Row;

use crate::{Store, StoreError, with_pool};

/// What `/hierarchy` shows of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceRoomState {
    pub joined_members: i64,
    /// `(event type, state key, event JSON)` of the current state events asked for.
    pub state: Vec<(String, String, String)>,
}

impl Store {
    /// The joined member count of a room and its current state events of `summary_types`
    /// (empty state key) and of `link_type` (every state key).
    pub async fn space_room_state(
        &self,
        room_nid: i64,
        summary_types: &[&str],
        link_type: &str,
    ) -> Result<SpaceRoomState, StoreError> {
        let placeholders: Vec<String> = (0..summary_types.len())
            .map(|i| format!("${}", i + 3))
            .collect();
        let sql = format!(
            "SELECT c.event_type, c.state_key, e.json FROM current_state c \
             JOIN events e ON e.event_nid = c.event_nid \
             WHERE c.room_nid = $1 AND (c.event_type = $2 OR (c.state_key = '' AND c.event_type IN ({})))",
            placeholders.join(", ")
        );
        let out = with_pool!(self, pool => {
            // Members that name no account (keys of account-key rooms held unverified or
            // erased) are nobody a client is shown, so they are not counted either.
            let joined_members: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM room_memberships m WHERE m.room_nid = $1 AND m.membership = 'join' AND ",
                crate::account_keys::member_names_an_account!("m.user_id"),
            ))
            .bind(room_nid)
            .fetch_one(pool)
            .await?;
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_nid).bind(link_type);
            for event_type in summary_types {
                query = query.bind(*event_type);
            }
            let mut state = Vec::new();
            for row in query.fetch_all(pool).await? {
                state.push((row.try_get("event_type")?, row.try_get("state_key")?, row.try_get("json")?));
            }
            SpaceRoomState { joined_members, state }
        });
        Ok(out)
    }
}
