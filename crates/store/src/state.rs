//! Room state snapshots read back: the `(type, state_key) → event` map of a state group,
//! resolved through its delta chain in one query, and a bounded in-memory cache of those maps.
//!
//! A state group never changes once written (new state makes a new group), so cached maps need
//! no invalidation, only eviction; that also holds with several processes over one database.
//! Events themselves are not cached here: a redaction changes an event's row.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use sqlx::Row;

use crate::{Backend, Store, StoreError, with_pool};

/// The state of a snapshot: each `(event type, state key)` and the event nid holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateMap {
    entries: HashMap<(String, String), i64>,
}

impl StateMap {
    /// The event nid for `(event_type, state_key)`, if the snapshot has one.
    pub fn get(&self, event_type: &str, state_key: &str) -> Option<i64> {
        // Keys are owned pairs; the lookup builds one only when the map is not empty.
        if self.entries.is_empty() {
            return None;
        }
        self.entries
            .get(&(event_type.to_owned(), state_key.to_owned()))
            .copied()
    }

    /// Every event nid of the snapshot.
    pub fn event_nids(&self) -> impl Iterator<Item = i64> + '_ {
        self.entries.values().copied()
    }

    /// Every entry: `((event type, state key), event nid)`.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, String), i64)> + '_ {
        self.entries.iter().map(|(k, v)| (k, *v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A row of [`Store::group_members_changed`]'s read: group, parent, member key and event.
type GroupMemberRow = (i64, Option<i64>, Option<String>, Option<i64>);

/// What a state group holds itself ([`Store::group_members_changed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMembers {
    /// The group it is a delta over; `None` for a group that holds its whole state.
    pub parent: Option<i64>,
    /// Its own `m.room.member` entries: `(state key, event nid)`.
    pub members: Vec<(String, i64)>,
}

/// How many state entries (summed over cached snapshots) the cache keeps before evicting the
/// oldest snapshots: about 10 MB of keys.
const CACHE_MAX_ENTRIES: usize = 100_000;

/// Resolved snapshots by state group, evicted oldest first once over [`CACHE_MAX_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct StateCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    maps: HashMap<i64, Arc<StateMap>>,
    order: VecDeque<i64>,
    entries: usize,
}

impl StateCache {
    fn get(&self, group: i64) -> Option<Arc<StateMap>> {
        self.lock().maps.get(&group).cloned()
    }

    fn insert(&self, group: i64, map: Arc<StateMap>) {
        let mut inner = self.lock();
        if inner.maps.contains_key(&group) {
            return;
        }
        inner.entries += map.len();
        inner.maps.insert(group, map);
        inner.order.push_back(group);
        // Keep at least the snapshot just inserted, however large.
        while inner.entries > CACHE_MAX_ENTRIES && inner.order.len() > 1 {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(evicted) = inner.maps.remove(&oldest) {
                inner.entries -= evicted.len();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters (entries are immutable): keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// The state of a snapshot as `(type, state_key) → event nid`, following its delta chain
    /// (nearer groups win). Cached: snapshots are immutable.
    pub async fn state_ids_at_group(&self, state_group: i64) -> Result<Arc<StateMap>, StoreError> {
        if let Some(map) = self.state_cache.get(state_group) {
            return Ok(map);
        }
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "WITH RECURSIVE chain (state_group, depth) AS ( \
                     SELECT CAST($1 AS BIGINT), 0 \
                     UNION ALL \
                     SELECT g.parent_group, c.depth + 1 FROM state_groups g \
                     JOIN chain c ON g.state_group = c.state_group \
                     WHERE g.parent_group IS NOT NULL) \
                 SELECT s.event_type, s.state_key, s.event_nid, c.depth FROM chain c \
                 JOIN state_group_entries s ON s.state_group = c.state_group \
                 ORDER BY c.depth",
            )
            .bind(state_group)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| -> Result<(String, String, i64), sqlx::Error> {
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        let mut entries = HashMap::with_capacity(rows.len());
        for (event_type, state_key, event_nid) in rows {
            // Rows come nearest group first: the first one seen for a key wins.
            entries.entry((event_type, state_key)).or_insert(event_nid);
        }
        let map = Arc::new(StateMap { entries });
        self.state_cache.insert(state_group, map.clone());
        Ok(map)
    }

    /// What each of `groups` holds itself, without following its chain: its parent (`None` for
    /// a full group, which holds its whole state) and its `m.room.member` entries as
    /// `(state key, event nid)` (for a delta group, only the members it changed over its
    /// parent; a delta never removes a key). One statement for all; unknown groups are absent.
    /// Lets a reader that knows something of a parent's members carry it over to a child that
    /// changed none of the members it cares about, without reading the child's whole state.
    pub async fn group_members_changed(
        &self,
        groups: &[i64],
    ) -> Result<HashMap<i64, GroupMembers>, StoreError> {
        let mut out: HashMap<i64, GroupMembers> = HashMap::new();
        // One constant text for any number of groups (the groups as one parameter), so that
        // fan-out batches of every size share one prepared statement.
        let select = "SELECT g.state_group, g.parent_group, s.state_key, s.event_nid FROM state_groups g \
             LEFT JOIN state_group_entries s ON s.state_group = g.state_group AND s.event_type = 'm.room.member' \
             WHERE g.state_group IN ";
        let rows: Vec<GroupMemberRow> = match &self.backend {
            Backend::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{select}(SELECT UNNEST($1::BIGINT[]))"
                )))
                .bind(groups)
                .fetch_all(pool)
                .await?
            }
            Backend::Sqlite(pool) => {
                let list: Vec<String> = groups.iter().map(i64::to_string).collect();
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{select}(SELECT value FROM json_each($1))"
                )))
                .bind(format!("[{}]", list.join(",")))
                .fetch_all(pool)
                .await?
            }
        };
        for (group, parent, key, nid) in rows {
            let entry = out.entry(group).or_insert_with(|| GroupMembers {
                parent,
                members: Vec::new(),
            });
            if let (Some(key), Some(nid)) = (key, nid) {
                entry.members.push((key, nid));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: usize) -> Arc<StateMap> {
        Arc::new(StateMap {
            entries: (0..n)
                .map(|i| (("t".to_owned(), i.to_string()), i as i64))
                .collect(),
        })
    }

    #[test]
    fn the_cache_evicts_oldest_first_and_keeps_the_newest_however_large() {
        let cache = StateCache::default();
        cache.insert(1, map(CACHE_MAX_ENTRIES / 2));
        cache.insert(2, map(CACHE_MAX_ENTRIES / 2));
        assert!(cache.get(1).is_some() && cache.get(2).is_some());
        cache.insert(3, map(10));
        assert!(cache.get(1).is_none(), "the oldest snapshot goes first");
        assert!(cache.get(2).is_some() && cache.get(3).is_some());
        cache.insert(4, map(CACHE_MAX_ENTRIES * 2));
        assert!(cache.get(4).is_some(), "an oversized snapshot stays alone");
        assert!(cache.get(2).is_none() && cache.get(3).is_none());
        assert_eq!(cache.lock().entries, CACHE_MAX_ENTRIES * 2);
    }

    #[test]
    fn lookups_find_entries_by_type_and_state_key() {
        let m = map(3);
        assert_eq!(m.get("t", "2"), Some(2));
        assert_eq!(m.get("t", "9"), None);
        assert_eq!(StateMap::default().get("t", "1"), None);
    }
}
