//! History visibility (client-server API, "History visibility"): whether a user may see an
//! event, decided by the room's `m.room.history_visibility` and the user's membership in the
//! state at the event, and by the user's ignored-users list (their non-state events are hidden
//! on every surface that reads through here: sync, `/messages`, `/context`, `/event`,
//! `/relations`, `/threads`, bundled aggregations).
//!
//! Both facts are read from the snapshot of each row (one query for all rows' snapshots, one for
//! the events holding them) and cached per `(snapshot, user)`: snapshots never change, and the
//! two content fields read survive redaction in every room version, so a cached fact is never
//! stale.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use myelin_store::EventRow;
use ruma::UserId;
use serde_json::Value;

use super::Rooms;
use crate::Result;

/// The history visibility and the reader's membership in one snapshot (`None`: no such event).
type Facts = (Option<String>, Option<String>);

/// What history visibility decided for one event a reader may see: the reader's membership in
/// the state at (after) the event, "leave" when they had none, which clients get as
/// `unsigned.membership` (spec v1.11). Only [`Rooms::visibility`] makes one, from the snapshot
/// that let the event through, so the membership costs no read of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sight {
    membership: String,
}

impl Sight {
    /// The reader's membership at the event.
    pub(crate) fn membership(&self) -> &str {
        &self.membership
    }
}

/// Cached facts are dropped all at once past this many entries (each is a few dozen bytes).
const FACTS_CACHE_MAX: usize = 100_000;

/// [`Facts`] by `(state group, user id)`.
#[derive(Debug, Default)]
pub(super) struct FactsCache {
    facts: Mutex<HashMap<(i64, String), Facts>>,
}

impl FactsCache {
    fn get(&self, group: i64, user: &str) -> Option<Facts> {
        let facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        facts.get(&(group, user.to_owned())).cloned()
    }

    fn put(&self, group: i64, user: &str, facts: Facts) {
        let mut cache = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= FACTS_CACHE_MAX {
            cache.clear();
        }
        cache.insert((group, user.to_owned()), facts);
    }
}

impl Rooms {
    /// Which of `rows` (of one room or several) the user may see, in order: a [`Sight`] for
    /// each they may.
    pub(crate) async fn visible_rows(
        &self,
        rows: &[EventRow],
        user: &UserId,
    ) -> Result<Vec<Option<Sight>>> {
        let rows: Vec<&EventRow> = rows.iter().collect();
        self.visibility(user, &rows, &HashMap::new()).await
    }

    /// [`Rooms::visible_rows`] for one row.
    pub(crate) async fn sight_of(&self, row: &EventRow, user: &UserId) -> Result<Option<Sight>> {
        let mut sights = self.visibility(user, &[row], &HashMap::new()).await?;
        Ok(sights.pop().flatten())
    }

    /// History visibility of rows from any rooms, in order. `joined_now` may say, per room,
    /// whether the reader is joined now (what `shared` visibility asks); rooms it does not
    /// name are looked up.
    ///
    /// What decides each row: the [`Facts`] of the state at the row (cached, see the module
    /// docs).
    pub(crate) async fn visibility(
        &self,
        user: &UserId,
        rows: &[&EventRow],
        joined_now: &HashMap<i64, bool>,
    ) -> Result<Vec<Option<Sight>>> {
        let facts = self.visibility_facts(user, rows).await?;
        let ignored = self.ignored_users(user).await?;
        // In account-key rooms the user's membership is under its key-form id.
        let key_form = self.key_form_of(user);
        let mut joined_now = joined_now.clone();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            // Ignored users' messages are hidden everywhere; their state events are not (the
            // room would make no sense without them).
            if row.state_key.is_none() && ignored.contains(&row.sender) {
                out.push(None);
                continue;
            }
            // An event without room state (an outlier) is no part of the history to see.
            let Some(group) = row.state_group else {
                out.push(None);
                continue;
            };
            let (visibility, membership_then) = facts.get(&group).cloned().unwrap_or_default();
            let sight = || Sight {
                membership: membership_then
                    .clone()
                    .unwrap_or_else(|| "leave".to_owned()),
            };
            if row.event_type == "m.room.member"
                && row
                    .state_key
                    .as_deref()
                    .is_some_and(|key| key == user.as_str() || Some(key) == key_form.as_deref())
            {
                // A user always sees their own membership events.
                out.push(Some(sight()));
                continue;
            }
            let visible = match visibility.as_deref().unwrap_or("shared") {
                "world_readable" => true,
                _ if membership_then.as_deref() == Some("join") => true,
                "shared" => match joined_now.get(&row.room_nid) {
                    Some(joined) => *joined,
                    None => {
                        let joined = self
                            .store
                            .membership(row.room_nid, user.as_str())
                            .await?
                            .is_some_and(|m| m.0 == "join");
                        joined_now.insert(row.room_nid, joined);
                        joined
                    }
                },
                "invited" => membership_then.as_deref() == Some("invite"),
                _ => false,
            };
            out.push(visible.then(sight));
        }
        Ok(out)
    }

    /// The users `user` ignores (`m.ignored_user_list` account data; a malformed list ignores
    /// nobody).
    pub(crate) async fn ignored_users(&self, user: &UserId) -> Result<HashSet<String>> {
        let Some(content) = self
            .store
            .global_account_data_cached(user.as_str(), "m.ignored_user_list")
            .await?
        else {
            return Ok(HashSet::new());
        };
        Ok(serde_json::from_str::<Value>(&content)
            .ok()
            .and_then(|v| v.get("ignored_users").and_then(Value::as_object).cloned())
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// The [`Facts`] of each row's snapshot for `user`, by state group: from the cache, and
    /// for the snapshots it lacks, two reads for all of them.
    async fn visibility_facts(
        &self,
        user: &UserId,
        rows: &[&EventRow],
    ) -> Result<HashMap<i64, Facts>> {
        const VISIBILITY: (&str, &str) = ("m.room.history_visibility", "");
        let member = ("m.room.member", user.as_str());
        // The user's key-form id names its membership in account-key rooms; a snapshot belongs
        // to one room, so at most one of the two is in it.
        let key_form = self.key_form_of(user);
        let key_member = key_form.as_deref().map(|id| ("m.room.member", id));
        let mut out = HashMap::new();
        let mut missing: Vec<i64> = Vec::new();
        for group in rows.iter().filter_map(|row| row.state_group) {
            if out.contains_key(&group) || missing.contains(&group) {
                continue;
            }
            match self.visibility_facts.get(group, user.as_str()) {
                Some(facts) => {
                    out.insert(group, facts);
                }
                None => missing.push(group),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let at_groups = self
            .store
            .state_entries_at_groups(
                &missing,
                &[VISIBILITY, member]
                    .into_iter()
                    .chain(key_member)
                    .collect::<Vec<_>>(),
            )
            .await?;
        let mut needed: Vec<i64> = at_groups
            .values()
            .flat_map(|entries| entries.values().copied())
            .collect();
        needed.sort_unstable();
        needed.dedup();
        let contents: HashMap<i64, Value> = self
            .store
            .events_by_nids(&needed)
            .await?
            .into_iter()
            .map(|row| {
                let content = serde_json::from_str::<Value>(&row.json)
                    .map(|mut json| json["content"].take())
                    .unwrap_or(Value::Null);
                (row.event_nid, content)
            })
            .collect();
        let key = |(t, k): (&str, &str)| (t.to_owned(), k.to_owned());
        let (visibility_key, member_key) = (key(VISIBILITY), key(member));
        let key_member_key = key_member.map(key);
        for group in missing {
            let entries = at_groups.get(&group);
            let field = |state: &(String, String), name: &str| -> Option<String> {
                entries
                    .and_then(|entries| entries.get(state))
                    .and_then(|nid| contents.get(nid))
                    .and_then(|content| content[name].as_str())
                    .map(str::to_owned)
            };
            let facts = (
                field(&visibility_key, "history_visibility"),
                field(&member_key, "membership")
                    .or_else(|| key_member_key.as_ref().and_then(|k| field(k, "membership"))),
            );
            self.visibility_facts
                .put(group, user.as_str(), facts.clone());
            out.insert(group, facts);
        }
        Ok(out)
    }
}
