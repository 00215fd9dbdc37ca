//! The space hierarchy: a room's summary and `m.space.child` links, and who may learn about a
//! room (one rule, [`Rooms::may_see`], for local users, anonymous readers and other servers):
//! anyone when its history is world-readable or its join rule public or knockable; a user
//! joined or invited to it, or joined to one of a restricted room's allowed rooms; a server
//! with a user joined to it or to one of those allowed rooms. Served three ways: the client's
//! depth-first walk (`GET /rooms/{roomId}/hierarchy`), which asks other servers about rooms
//! this server is not in (`remote_hierarchy`); other servers' `GET /_matrix/federation/v1/
//! hierarchy/{roomId}` (a room and its children, never relayed); and one room's summary
//! (`GET /room_summary/{roomIdOrAlias}`, spec v1.15).

use std::collections::HashSet;

use myelin_store::RoomRow;
use ruma::{ServerName, UserId};
use serde_json::{Value, json};

use super::{Rooms, read::parse_position, remote_hierarchy::RemoteWalk};
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
pub(super) struct SpaceRoom {
    /// The summary in the client format (without `children_state`).
    pub(super) summary: Value,
    pub(super) is_space: bool,
    /// The valid `m.space.child` links in the spec's order, as stripped events (none unless
    /// the room is a space).
    pub(super) children: Vec<(String, Value)>,
    pub(super) accessible: bool,
}

impl SpaceRoom {
    /// The summary with its `children_state`: a chunk of the client's and the federation's
    /// answers.
    fn chunk(self) -> Value {
        let mut chunk = self.summary;
        chunk["children_state"] = Value::Array(self.children.into_iter().map(|(_, e)| e).collect());
        chunk
    }
}

/// Who asks about a room.
#[derive(Debug, Clone, Copy)]
pub(super) enum Viewer<'a> {
    /// A user of this server, or an anonymous reader (`None`).
    User(Option<&'a UserId>),
    /// Another server (the federation `/hierarchy`): what it could peek or join.
    Server(&'a ServerName),
}

/// The links of a space worth walking, from its stripped `m.space.child` events: a room id as
/// state key and a non-empty `via` (an emptied link is a removed one), suggested ones only if
/// asked, in the spec's order.
pub(super) fn valid_links(links: Vec<Value>, suggested_only: bool) -> Vec<(String, Value)> {
    let mut links: Vec<Value> = links
        .into_iter()
        .filter(|e| e["type"] == "m.space.child")
        .filter(|e| e["state_key"].as_str().is_some_and(|k| k.starts_with('!')))
        .filter(|e| {
            e["content"]["via"]
                .as_array()
                .is_some_and(|v| !v.is_empty())
        })
        .filter(|e| !suggested_only || e["content"]["suggested"] == true)
        .collect();
    links.sort_by_key(child_order);
    links
        .into_iter()
        .filter_map(|c| Some((c["state_key"].as_str()?.to_owned(), c)))
        .collect()
}

/// The servers a link names to ask about its room (`via`).
fn via_of(link: &Value) -> Vec<String> {
    super::strings_of(&link["content"]["via"])
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
    /// `user`'s membership of `room` when this server knows the room.
    async fn membership_in(&self, room: Option<&RoomRow>, user: &UserId) -> Result<Option<String>> {
        Ok(match room {
            Some(room) => self
                .store
                .membership(room.room_nid, user.as_str())
                .await?
                .map(|m| m.0),
            None => None,
        })
    }

    /// `GET /rooms/{roomId}/hierarchy`. The root must be a room this server holds the state
    /// of and accessible to the user (`M_FORBIDDEN` otherwise, also for an unknown room).
    /// Rooms this server is not in are asked of the servers their link names (see
    /// `remote_hierarchy`); one that none answers, or that is not accessible, is left out.
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
        if !self.holds_state(&root).await? {
            return Err(forbidden());
        }
        let root_room = self
            .space_room(&root, Viewer::User(Some(user)), request.suggested_only)
            .await?;
        if !root_room.accessible {
            return Err(forbidden());
        }

        let mut remote = RemoteWalk::new();
        let mut rooms = Vec::new();
        let mut found = 0;
        let mut more = false;
        let mut visited = HashSet::new();
        let mut stack: Vec<(String, usize, Vec<String>, Option<SpaceRoom>)> =
            vec![(root.room_id.clone(), 0, Vec::new(), Some(root_room))];
        while let Some((id, depth, via, known)) = stack.pop() {
            if !visited.insert(id.clone()) || visited.len() > MAX_ROOMS_VISITED {
                continue;
            }
            let room = match known {
                Some(room) => room,
                None => {
                    let found = self
                        .walk_room(
                            &mut remote,
                            user,
                            &id,
                            &via,
                            depth >= max_depth,
                            request.suggested_only,
                        )
                        .await?;
                    let Some(room) = found else {
                        continue;
                    };
                    room
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
                for (child, link) in room.children.iter().rev() {
                    if !visited.contains(child) {
                        stack.push((child.clone(), depth + 1, via_of(link), None));
                    }
                }
            }
            if found > skip {
                rooms.push(room.chunk());
            }
        }
        Ok(HierarchyPage {
            rooms,
            next_batch: more.then(|| token(skip + limit, max_depth, request.suggested_only)),
        })
    }

    /// A room the walk reaches through a link naming `via`: from this server's state when it
    /// is in the room, else from another server's answer (a summary an earlier answer gave
    /// serves a room that is not a space, or one at the depth limit, without a request), else
    /// from the state this server kept of a room it left. `None`: nothing is known, or a
    /// server said the room is not accessible to this one.
    async fn walk_room(
        &self,
        remote: &mut RemoteWalk,
        user: &UserId,
        room_id: &str,
        via: &[String],
        at_depth_limit: bool,
        suggested_only: bool,
    ) -> Result<Option<SpaceRoom>> {
        let row = self.store.room(room_id).await?;
        let held = match &row {
            Some(room) => self.holds_state(room).await?,
            None => false,
        };
        if let Some(room) = &row
            && held
            && self
                .store
                .server_in_room(room.room_nid, self.server_name.as_str())
                .await?
        {
            return self
                .space_room(room, Viewer::User(Some(user)), suggested_only)
                .await
                .map(Some);
        }
        if remote.said_inaccessible(room_id) {
            return Ok(None);
        }
        let learned = remote.learned(room_id);
        let answer = match &learned {
            Some((summary, _)) if summary["room_type"] != "m.space" || at_depth_limit => None,
            _ => {
                let mut servers = via.to_vec();
                servers.extend(learned.as_ref().map(|(_, server)| server.to_string()));
                self.remote_space(remote, room_id, &servers, suggested_only)
                    .await
            }
        };
        let (summary, children) = match (answer, learned) {
            (Some(answer), _) => (answer.summary.clone(), answer.links.clone()),
            (None, Some((summary, _))) => (summary, Vec::new()),
            (None, None) => match &row {
                Some(room) if held => {
                    return self
                        .space_room(room, Viewer::User(Some(user)), suggested_only)
                        .await
                        .map(Some);
                }
                _ => return Ok(None),
            },
        };
        let accessible = self
            .may_see(&summary, row.as_ref(), Viewer::User(Some(user)))
            .await?;
        let is_space = summary["room_type"] == "m.space";
        Ok(Some(SpaceRoom {
            summary,
            is_space,
            children: if is_space { children } else { Vec::new() },
            accessible,
        }))
    }

    /// `GET /_matrix/federation/v1/hierarchy/{roomId}` from `origin`: the room (with its
    /// links) and the summaries of its children this server is in that `origin` may see; the
    /// children it is in that `origin` may not see are listed by id, the others left out (this
    /// server cannot tell about them). 404 `M_NOT_FOUND` when this server is not in the room or
    /// `origin` may not see it.
    pub async fn hierarchy_for_server(
        &self,
        origin: &ServerName,
        room_id: &str,
        suggested_only: bool,
    ) -> Result<Value> {
        let not_found = || Error::NotFound("Room not found".to_owned());
        let room = self.resident_room(room_id).await?.ok_or_else(not_found)?;
        let space = self
            .space_room(&room, Viewer::Server(origin), suggested_only)
            .await?;
        if !space.accessible {
            return Err(not_found());
        }
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for (child_id, _) in space.children.iter().take(MAX_ROOMS_VISITED) {
            let Some(child) = self.resident_room(child_id).await? else {
                continue;
            };
            let child = self
                .space_room(&child, Viewer::Server(origin), suggested_only)
                .await?;
            if child.accessible {
                children.push(child.chunk());
            } else {
                inaccessible.push(child_id.clone());
            }
        }
        Ok(json!({
            "room": space.chunk(),
            "children": children,
            "inaccessible_children": inaccessible,
        }))
    }

    /// A room this server holds the state of and is in (a local user joined): one it can tell
    /// other servers about.
    async fn resident_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        let Some(room) = self.store.room(room_id).await? else {
            return Ok(None);
        };
        let resident = self.holds_state(&room).await?
            && self
                .store
                .server_in_room(room.room_nid, self.server_name.as_str())
                .await?;
        Ok(resident.then_some(room))
    }

    /// `GET /room_summary/{roomIdOrAlias}` of a room id (`Services::room_summary` resolves
    /// aliases): the summary `/hierarchy` shows, for a room the reader may learn about, with
    /// the reader's `membership` (`leave` when none) when they are logged in. A room this
    /// server holds no state of is asked of `via` (the client's, or the alias's servers) and
    /// the room id's server through the federation `/hierarchy`, for logged-in readers only.
    /// Anonymous readers see public, knockable and world-readable rooms only. An unknown room
    /// and one the reader may not learn about are the same 404 `M_NOT_FOUND`.
    pub async fn room_summary(
        &self,
        user: Option<&UserId>,
        room_id: &str,
        via: &[String],
    ) -> Result<Value> {
        let not_found = || Error::NotFound("Room not found".to_owned());
        let row = self.store.room(room_id).await?;
        let held = match &row {
            Some(room) => self.holds_state(room).await?,
            None => false,
        };
        let mut summary = match (&row, user) {
            (Some(room), _) if held => {
                let summary = self.space_room(room, Viewer::User(user), false).await?;
                if !summary.accessible {
                    return Err(not_found());
                }
                summary.summary
            }
            (_, Some(user)) => {
                let mut servers = via.to_vec();
                servers.extend(
                    ruma::RoomId::parse(room_id)
                        .ok()
                        .and_then(|id| id.server_name().map(ToString::to_string)),
                );
                let answer = self
                    .remote_space(&mut RemoteWalk::new(), room_id, &servers, false)
                    .await
                    .ok_or_else(not_found)?;
                if !self
                    .may_see(&answer.summary, row.as_ref(), Viewer::User(Some(user)))
                    .await?
                {
                    return Err(not_found());
                }
                answer.summary.clone()
            }
            _ => return Err(not_found()),
        };
        if let Some(user) = user {
            let membership = self.membership_in(row.as_ref(), user).await?;
            summary["membership"] = json!(membership.unwrap_or_else(|| "leave".to_owned()));
        }
        Ok(summary)
    }

    /// A room's summary, links and accessibility for `viewer`, from this server's state.
    pub(super) async fn space_room(
        &self,
        room: &RoomRow,
        viewer: Viewer<'_>,
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
        if matches!(join_rule.as_str(), "restricted" | "knock_restricted") {
            let allowed_rooms: Vec<&str> = join_rules["allow"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == "m.room_membership")
                .filter_map(|a| a["room_id"].as_str())
                .collect();
            summary["allowed_room_ids"] = json!(allowed_rooms);
        }

        let reader = match viewer {
            Viewer::User(user) => user,
            Viewer::Server(_) => None,
        };
        let children = if is_space {
            let links = state
                .state
                .iter()
                .filter(|(t, k, _)| t == "m.space.child" && !k.is_empty())
                .filter_map(|(_, _, json)| self.stripped_event(room, json, reader, true))
                .collect();
            valid_links(links, suggested_only)
        } else {
            Vec::new()
        };
        let accessible = self.may_see(&summary, Some(room), viewer).await?;
        Ok(SpaceRoom {
            summary,
            is_space,
            children,
            accessible,
        })
    }

    /// Whether `viewer` may learn about the room `summary` describes (this server's or another
    /// server's summary; `room`: this server's row of it, for memberships). Anyone may when its
    /// history is world-readable or its join rule public or knockable; a user also when joined
    /// or invited, or, for a restricted room, joined to one of its allowed rooms; a server
    /// (never one the room's server ACL denies) also when one of its users is joined to the
    /// room, or, for a restricted room, to one of its allowed rooms, by this server's state.
    pub(super) async fn may_see(
        &self,
        summary: &Value,
        room: Option<&RoomRow>,
        viewer: Viewer<'_>,
    ) -> Result<bool> {
        if let (Viewer::Server(server), Some(room)) = (viewer, room)
            && !self.server_allowed(&room.room_id, server).await?
        {
            return Ok(false);
        }
        // An absent `join_rule` is `public` (the public rooms chunk's rule).
        let join_rule = summary["join_rule"].as_str().unwrap_or("public");
        if summary["world_readable"] == true
            || matches!(join_rule, "public" | "knock" | "knock_restricted")
        {
            return Ok(true);
        }
        let allowed_rooms: Vec<String> = if join_rule == "restricted" {
            summary["allowed_room_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        } else {
            Vec::new()
        };
        match viewer {
            Viewer::User(None) => Ok(false),
            Viewer::User(Some(user)) => {
                let membership = self.membership_in(room, user).await?;
                Ok(matches!(membership.as_deref(), Some("join" | "invite"))
                    || self.joined_any(user, &allowed_rooms).await?)
            }
            Viewer::Server(server) => {
                if let Some(room) = room
                    && self
                        .store
                        .server_in_room(room.room_nid, server.as_str())
                        .await?
                {
                    return Ok(true);
                }
                for allowed in &allowed_rooms {
                    if let Some(allowed) = self.store.room(allowed).await?
                        && self
                            .store
                            .server_in_room(allowed.room_nid, server.as_str())
                            .await?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
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
