//! The space hierarchy (`GET /rooms/{roomId}/hierarchy`): a depth-first walk of the
//! `m.space.child` links of local spaces, showing each room the user may learn about (joined or
//! invited, world-readable history, a public or knockable join rule, or a restricted one the
//! user satisfies) with its summary and, for spaces, its links; and the same summary for one
//! room (`GET /room_summary/{roomIdOrAlias}`, spec v1.15). Rooms on other servers need
//! federation and are left out.

use std::collections::HashSet;

use myelin_store::RoomRow;
use ruma::UserId;
use serde_json::{Value, json};

use super::{Rooms, read::parse_position};
use crate::{Error, Result};

/// The state a room's summary shows (empty state keys).
const SUMMARY_STATE: &[&str] = &[
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
];
/// How deep the walk goes at most, whatever `max_depth` asks.
const MAX_DEPTH: usize = 50;
/// How many rooms one request looks at at most (accessible or not).
const MAX_ROOMS_VISITED: usize = 1000;
/// The default and the largest page.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

/// A `/hierarchy` request.
#[derive(Debug, Clone, Copy, Default)]
pub struct HierarchyRequest<'a> {
    pub from: Option<&'a str>,
    pub limit: Option<usize>,
    pub max_depth: Option<usize>,
    pub suggested_only: bool,
}

/// A page of the hierarchy: each room's summary with its `children_state`, in the client
/// format.
#[derive(Debug, Clone)]
pub struct HierarchyPage {
    pub rooms: Vec<Value>,
    pub next_batch: Option<String>,
}

/// A room as the walk sees it.
struct SpaceRoom {
    summary: Value,
    is_space: bool,
    /// The valid `m.space.child` links in the spec's order, as stripped events.
    children: Vec<(String, Value)>,
    accessible: bool,
}

/// The page token: how many rooms earlier pages returned, and the parameters it belongs to
/// (the spec makes a token with other parameters `M_INVALID_PARAM`).
pub(crate) fn token(skip: usize, max_depth: usize, suggested_only: bool) -> String {
    format!("h{skip}_{max_depth}_{}", u8::from(suggested_only))
}

pub(crate) fn parse_token(token: &str, max_depth: usize, suggested_only: bool) -> Result<usize> {
    let bad = || Error::InvalidParam(format!("Invalid pagination token {token:?}"));
    let mut parts = token.strip_prefix('h').ok_or_else(bad)?.split('_');
    // Digits within the bound of every position: `skip + limit` cannot overflow, and what
    // parses is what `token` prints.
    let mut number = || {
        parts
            .next()
            .and_then(parse_position)
            .and_then(|n| usize::try_from(n).ok())
    };
    let skip = number().ok_or_else(bad)?;
    let depth = number().ok_or_else(bad)?;
    let suggested = parts.next().ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    if depth != max_depth || suggested != u8::from(suggested_only).to_string() {
        return Err(Error::InvalidParam(
            "The pagination token was issued for other max_depth or suggested_only".to_owned(),
        ));
    }
    Ok(skip)
}

/// The spec's ordering of children: a valid `order` first (lexicographically), then the link's
/// `origin_server_ts`, then the room id.
fn child_order(child: &Value) -> (bool, String, i64, String) {
    let order = child["content"]["order"]
        .as_str()
        .filter(|o| o.len() <= 50 && o.chars().all(|c| ('\x20'..='\x7e').contains(&c)));
    (
        order.is_none(),
        order.unwrap_or_default().to_owned(),
        child["origin_server_ts"].as_i64().unwrap_or(0),
        child["state_key"].as_str().unwrap_or_default().to_owned(),
    )
}

impl Rooms {
    /// `GET /rooms/{roomId}/hierarchy`. The root must be accessible to the user
    /// (`M_FORBIDDEN` otherwise, also for an unknown room).
    pub async fn hierarchy(
        &self,
        user: &UserId,
        room_id: &str,
        request: &HierarchyRequest<'_>,
    ) -> Result<HierarchyPage> {
        let forbidden = || Error::Forbidden("You may not see this room's hierarchy".to_owned());
        let max_depth = request.max_depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);
        let limit = request.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let skip = request
            .from
            .map(|t| parse_token(t, max_depth, request.suggested_only))
            .transpose()?
            .unwrap_or(0);
        let root = self.store.room(room_id).await?.ok_or_else(forbidden)?;
        let root_room = self
            .space_room(&root, Some(user), request.suggested_only)
            .await?;
        if !root_room.accessible {
            return Err(forbidden());
        }

        let mut rooms = Vec::new();
        let mut found = 0;
        let mut more = false;
        let mut visited = HashSet::new();
        let mut stack: Vec<(String, usize, Option<SpaceRoom>)> =
            vec![(root.room_id.clone(), 0, Some(root_room))];
        while let Some((id, depth, known)) = stack.pop() {
            if !visited.insert(id.clone()) || visited.len() > MAX_ROOMS_VISITED {
                continue;
            }
            let room = match known {
                Some(room) => room,
                None => {
                    let Some(row) = self.store.room(&id).await? else {
                        continue;
                    };
                    self.space_room(&row, Some(user), request.suggested_only)
                        .await?
                }
            };
            if !room.accessible {
                continue;
            }
            found += 1;
            if found > skip + limit {
                more = true;
                break;
            }
            if room.is_space && depth < max_depth {
                // Pushed last first, so the first child is walked next (depth first).
                for (child, _) in room.children.iter().rev() {
                    if !visited.contains(child) {
                        stack.push((child.clone(), depth + 1, None));
                    }
                }
            }
            if found > skip {
                let mut chunk = room.summary;
                chunk["children_state"] =
                    Value::Array(room.children.into_iter().map(|(_, e)| e).collect());
                rooms.push(chunk);
            }
        }
        Ok(HierarchyPage {
            rooms,
            next_batch: more.then(|| token(skip + limit, max_depth, request.suggested_only)),
        })
    }

    /// `GET /room_summary/{roomIdOrAlias}`: the summary `/hierarchy` shows, for a room the
    /// reader may learn about, with the reader's `membership` (`leave` when none) when they
    /// are logged in. Anonymous readers see public, knockable and world-readable rooms only.
    /// An unknown room and one the reader may not learn about are the same 404 `M_NOT_FOUND`.
    pub async fn room_summary(
        &self,
        user: Option<&UserId>,
        room_id_or_alias: &str,
    ) -> Result<Value> {
        let not_found = || Error::NotFound("Room not found".to_owned());
        let room_id = if room_id_or_alias.starts_with('#') {
            self.store
                .alias(room_id_or_alias)
                .await?
                .ok_or_else(not_found)?
                .room_id
        } else {
            room_id_or_alias.to_owned()
        };
        let room = self.store.room(&room_id).await?.ok_or_else(not_found)?;
        let summary = self.space_room(&room, user, false).await?;
        if !summary.accessible {
            return Err(not_found());
        }
        let mut out = summary.summary;
        if let Some(user) = user {
            let membership = self
                .store
                .membership(room.room_nid, user.as_str())
                .await?
                .map_or_else(|| "leave".to_owned(), |m| m.0);
            out["membership"] = json!(membership);
        }
        Ok(out)
    }

    /// A room's summary, links and accessibility for `user` (`None`: an anonymous reader).
    async fn space_room(
        &self,
        room: &RoomRow,
        user: Option<&UserId>,
        suggested_only: bool,
    ) -> Result<SpaceRoom> {
        let state = self
            .store
            .space_room_state(room.room_nid, SUMMARY_STATE, "m.space.child")
            .await?;
        let event_of = |kind: &str| -> Value {
            state
                .state
                .iter()
                .find(|(t, k, _)| t == kind && k.is_empty())
                .and_then(|(_, _, json)| serde_json::from_str::<Value>(json).ok())
                .unwrap_or(Value::Null)
        };
        let content = |kind: &str| event_of(kind)["content"].clone();
        let join_rules = content("m.room.join_rules");
        let join_rule = join_rules["join_rule"]
            .as_str()
            .unwrap_or("invite")
            .to_owned();
        let history = content("m.room.history_visibility")["history_visibility"]
            .as_str()
            .unwrap_or("shared")
            .to_owned();
        let create = content("m.room.create");
        let is_space = create["type"] == "m.space";

        let mut summary = json!({
            "room_id": room.room_id,
            "num_joined_members": state.joined_members,
            "world_readable": history == "world_readable",
            "guest_can_join": content("m.room.guest_access")["guest_access"] == "can_join",
            "join_rule": join_rule,
            "room_version": room.room_version,
        });
        for (field, kind, key) in [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
            ("encryption", "m.room.encryption", "algorithm"),
            ("room_type", "m.room.create", "type"),
        ] {
            if let Some(value) = content(kind)[key].as_str().filter(|v| !v.is_empty()) {
                summary[field] = json!(value);
            }
        }
        let allowed_rooms: Vec<String> = join_rules["allow"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == "m.room_membership")
            .filter_map(|a| a["room_id"].as_str().map(str::to_owned))
            .collect();
        if matches!(join_rule.as_str(), "restricted" | "knock_restricted") {
            summary["allowed_room_ids"] = json!(allowed_rooms);
        }

        // Links with a non-empty `via` only (an emptied link is a removed one).
        let mut children: Vec<Value> = state
            .state
            .iter()
            .filter(|(t, k, _)| t == "m.space.child" && !k.is_empty())
            .filter_map(|(_, _, json)| self.stripped_event(room, json, user, true))
            .filter(|e| {
                e["content"]["via"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty())
            })
            .filter(|e| !suggested_only || e["content"]["suggested"] == true)
            .collect();
        children.sort_by_key(child_order);
        let children = if is_space {
            children
                .into_iter()
                .filter_map(|c| Some((c["state_key"].as_str()?.to_owned(), c)))
                .collect()
        } else {
            Vec::new()
        };

        let membership = match user {
            Some(user) => self
                .store
                .membership(room.room_nid, user.as_str())
                .await?
                .map(|m| m.0),
            None => None,
        };
        let restricted_allowed = match user {
            Some(user) => {
                join_rule == "restricted" && self.joined_any(user, &allowed_rooms).await?
            }
            None => false,
        };
        let accessible = matches!(membership.as_deref(), Some("join" | "invite"))
            || history == "world_readable"
            || matches!(join_rule.as_str(), "public" | "knock" | "knock_restricted")
            || restricted_allowed;
        Ok(SpaceRoom {
            summary,
            is_space,
            children,
            accessible,
        })
    }

    /// Whether `user` is joined to any of `room_ids` (the `allow` rule of restricted rooms).
    pub(crate) async fn joined_any(&self, user: &UserId, room_ids: &[String]) -> Result<bool> {
        for room_id in room_ids {
            if let Some(room) = self.store.room(room_id).await?
                && self
                    .store
                    .membership(room.room_nid, user.as_str())
                    .await?
                    .is_some_and(|m| m.0 == "join")
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_parameters_or_garbage() {
        let t = token(4, 3, true);
        assert_eq!(parse_token(&t, 3, true).unwrap(), 4);
        assert!(matches!(
            parse_token(&t, 2, true),
            Err(Error::InvalidParam(_))
        ));
        assert!(matches!(
            parse_token(&t, 3, false),
            Err(Error::InvalidParam(_))
        ));
        for bad in [
            "",
            "h",
            "h1",
            "h-1_3_1",
            "x4_3_1",
            "h4_3_1_9",
            "h99999999999999999999999_3_1",
        ] {
            assert!(
                matches!(parse_token(bad, 3, true), Err(Error::InvalidParam(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn children_order_by_order_then_timestamp_then_room_id() {
        let child = |order: Option<&str>, ts: i64, id: &str| {
            let mut content = json!({"via": ["hs"]});
            if let Some(order) = order {
                content["order"] = json!(order);
            }
            json!({"state_key": id, "origin_server_ts": ts, "content": content})
        };
        let mut children = [
            child(None, 1, "!c"),
            child(Some("b"), 9, "!b"),
            child(Some("a"), 9, "!a"),
            child(None, 1, "!a2"),
            child(Some("\u{1}bad"), 0, "!bad"),
        ];
        children.sort_by_key(child_order);
        let ids: Vec<&str> = children
            .iter()
            .map(|c| c["state_key"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["!a", "!b", "!bad", "!a2", "!c"]);
    }
}
