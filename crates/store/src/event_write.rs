//! The write of one event's own rows in one round trip: the event row (or the outlier of the
//! same id upgraded in place) and, over its new nid, its edges, the citations that learn its
//! nid, the forward extremities it replaces and becomes, its relation, search text, push actions,
//! the client's transaction id and its delivery mark. A send's commit waits on every round trip
//! it makes (a hop to SQLite's worker thread, a network exchange with PostgreSQL), so these go
//! as one query: on PostgreSQL one statement, data-modifying `WITH` parts over the row's
//! `RETURNING` (`ins`); on SQLite the same statements one after the other in one query.
//!
//! Every part writes only when the event row was written by this append (on PostgreSQL: `ins`
//! has a row; on SQLite: the row of this id has the stream position this append gave it), so
//! an append refused for a stored id writes none of them (the transaction is rolled back
//! anyway, but nothing fails for a reason other than the refusal first). On PostgreSQL every
//! part reads the database as it was before the statement; the parts are written so that this
//! and SQLite's in-order reading give the same result.
//!
//! On PostgreSQL the statement can also take the event's stream position ([`Position::TakenHere`],
//! a `pos` part before the row): a lone message then needs no transaction of its own (see
//! `rooms::one_statement_append`).

use crate::{
    DatabaseKind,
    rooms::{Delivery, NewEvent, PushAction},
};

/// Push action rows written within the event's statement; a room with more members than this
/// gets its rows in statements of their own (see `rooms::persist_events`).
pub(crate) const PUSH_ACTIONS_IN_WRITE: usize = 64;

/// Where the event's stream position comes from.
#[derive(Clone, Copy)]
pub(crate) enum Position {
    /// Taken by the caller, in the transaction the statement runs in.
    Given(i64),
    /// Taken by the statement itself, from the events stream's row (PostgreSQL only: SQLite
    /// runs the parts as statements of their own, which need the caller's transaction).
    TakenHere,
}

/// A value bound to the statement, in the order the placeholders were numbered.
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
}

/// The statement writing one event (see the module documentation), built part by part; each
/// part binds its own values after those before it.
pub(crate) struct EventWrite<'a> {
    kind: DatabaseKind,
    args: Vec<Arg<'a>>,
    insert: String,
    /// The statements after the insert, each reading the event's nid from [`Self::source`].
    parts: Vec<String>,
    /// The placeholders of the event's `prev_events` ids.
    prevs: Vec<String>,
    /// Whether the statement takes the event's stream position (`pos`).
    takes_position: bool,
}

/// The event row (`$1`..`$14`, its stream position where `{position}` stands; `$15`: the current
/// state group the event was decided against, or NULL, checked in the same statement), and what
/// an outlier of the same id keeps when this append upgrades it in place.
const EVENT_INSERT: &str = "INSERT INTO events (event_id, room_nid, stream_ordering, depth, event_type, state_key, \
     sender, origin_server_ts, json, state_group, state_group_before, topological_ordering, \
     prev_state_nid, status, rejection_reason) \
     SELECT $1, $2, {position}, $4, $5, $6, $7, $8, $9, $10, $11, $4, $12, $13, $14 \
     WHERE $15 IS NULL OR EXISTS (SELECT 1 FROM room_current_state s \
     WHERE s.room_nid = $2 AND s.state_group = $15) \
     ON CONFLICT (event_id) DO UPDATE SET stream_ordering = excluded.stream_ordering, \
     state_group = excluded.state_group, state_group_before = excluded.state_group_before, \
     prev_state_nid = excluded.prev_state_nid, status = excluded.status, \
     rejection_reason = excluded.rejection_reason \
     WHERE events.status = 'outlier' AND excluded.status <> 'outlier' AND events.room_nid = excluded.room_nid \
     RETURNING event_nid, stream_ordering";

impl<'a> EventWrite<'a> {
    /// The statement writing `event`'s own rows at `position`: `after` and `before` its state
    /// groups, `expected_current` the current state group it must still find (see
    /// [`EVENT_INSERT`]), `extremity` whether it replaces the extremities it cites, `push_now`
    /// the push actions that go with it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kind: DatabaseKind,
        event: &'a NewEvent<'a>,
        position: Position,
        after: Option<i64>,
        before: Option<i64>,
        expected_current: Option<i64>,
        extremity: bool,
        push_now: &'a [PushAction],
    ) -> Self {
        let mut write = Self::row(kind, event, position, after, before, expected_current);
        if !event.just_built {
            write.citers_learn_nid();
        }
        if extremity {
            write.extremity(event.just_built);
        }
        if let Some((parent, rel_type)) = event.relation {
            write.relation(parent, rel_type);
        }
        if let Some((key, text)) = event.search {
            write.search(key, text);
        }
        write.push_actions(push_now);
        if let Some(txn) = event.txn {
            write.txn(txn.user_id, txn.device_id, txn.scope, txn.txn_id);
        }
        match event.delivery {
            Delivery::BySender => {}
            Delivery::Relay => write.mark("federation_relayed_events"),
            Delivery::ByResident => write.mark("federation_delivered_events"),
        }
        write
    }

    /// The event row of `event` at `position`, with its edges. `$3` is the stream position
    /// given, or how many the statement takes; `$16` is `event.now`, `$17` on its edges.
    fn row(
        kind: DatabaseKind,
        event: &'a NewEvent<'a>,
        position: Position,
        after: Option<i64>,
        before: Option<i64>,
        expected_current: Option<i64>,
    ) -> Self {
        let args = vec![
            Arg::Text(event.event_id),
            Arg::Int(event.room_nid),
            Arg::Int(match position {
                Position::Given(stream_ordering) => stream_ordering,
                Position::TakenHere => 1,
            }),
            Arg::Int(event.depth),
            Arg::Text(event.event_type),
            Arg::OptText(event.state_key),
            Arg::Text(event.sender),
            Arg::Int(event.origin_server_ts),
            Arg::Text(event.json),
            Arg::OptInt(after),
            Arg::OptInt(before),
            Arg::OptInt(event.replaces),
            Arg::Text(event.status.column()),
            Arg::OptText(event.status.reason()),
            Arg::OptInt(expected_current),
            Arg::Int(event.now),
        ];
        let takes_position = matches!(position, Position::TakenHere);
        debug_assert!(
            !takes_position || kind == DatabaseKind::Postgres,
            "only PostgreSQL's statement takes its position"
        );
        let mut write = Self {
            kind,
            args,
            insert: EVENT_INSERT.replacen(
                "{position}",
                if takes_position {
                    "(SELECT position FROM pos)"
                } else {
                    "$3"
                },
                1,
            ),
            parts: Vec::new(),
            prevs: Vec::new(),
            takes_position,
        };
        // The edges: `prev_events` (kind 0) and `auth_events` (kind 1), with the cited events'
        // nids where they are stored; a duplicate citation is one edge. `kind` is one of two
        // constants, written into the statement; ids are bound.
        let mut rows = Vec::new();
        for (edge_kind, id) in event
            .prev_event_ids
            .iter()
            .map(|id| (0, id))
            .chain(event.auth_event_ids.iter().map(|id| (1, id)))
        {
            let cited = write.bind(Arg::Text(id));
            if edge_kind == 0 {
                write.prevs.push(cited.clone());
            }
            rows.push(if rows.is_empty() {
                format!("SELECT {edge_kind} AS kind, {cited} AS cited")
            } else {
                format!("SELECT {edge_kind}, {cited}")
            });
        }
        if !rows.is_empty() {
            let source = write.source();
            write.parts.push(format!(
                "INSERT INTO event_edges (event_nid, kind, cited_event_id, cited_event_nid) \
                 SELECT n.event_nid, v.kind, v.cited, (SELECT c.event_nid FROM events c WHERE c.event_id = v.cited) \
                 FROM {source} CROSS JOIN ({}) AS v WHERE TRUE ON CONFLICT DO NOTHING",
                rows.join(" UNION ALL ")
            ));
        }
        write
    }

    /// Numbers the next placeholder for `arg`.
    fn bind(&mut self, arg: Arg<'a>) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// Where the parts read the event's nid and stream position, as a table
    /// `n (event_nid, stream_ordering)` with one row when this append wrote the event row and
    /// none otherwise.
    fn source(&self) -> &'static str {
        match self.kind {
            DatabaseKind::Postgres => "ins n",
            DatabaseKind::Sqlite => {
                "(SELECT event_nid, stream_ordering FROM events WHERE event_id = $1 AND stream_ordering = $3) n"
            }
        }
    }

    /// Stored events that cite the event (it arrived after them) learn its nid. Not needed for
    /// an event whose id this server has just made: nothing can cite it yet.
    fn citers_learn_nid(&mut self) {
        let source = self.source();
        self.parts.push(format!(
            "UPDATE event_edges SET cited_event_nid = n.event_nid FROM {source} \
             WHERE event_edges.cited_event_id = $1 AND event_edges.cited_event_nid IS NULL"
        ));
    }

    /// The extremities the event cites stop being forward extremities, and the event becomes
    /// one, unless a normal stored event already cites it (it arrived after its child: by an
    /// edge that learns its nid in this same write, or, for an outlier upgraded in place, by
    /// its nid). `just_built`: its id is new, so nothing cites it.
    fn extremity(&mut self, just_built: bool) {
        let source = self.source();
        if !self.prevs.is_empty() {
            self.parts.push(format!(
                "DELETE FROM forward_extremities WHERE room_nid = $2 AND event_nid IN \
                 (SELECT c.event_nid FROM events c WHERE c.event_id IN ({})) \
                 AND EXISTS (SELECT 1 FROM {source})",
                self.prevs.join(", ")
            ));
        }
        let mut insert = format!(
            "INSERT INTO forward_extremities (room_nid, event_nid) SELECT $2, n.event_nid FROM {source}"
        );
        if !just_built {
            insert.push_str(
                " WHERE NOT EXISTS (SELECT 1 FROM event_edges g JOIN events c ON c.event_nid = g.event_nid \
                 WHERE g.cited_event_nid = n.event_nid AND g.kind = 0 AND c.status = 'normal') \
                 AND NOT EXISTS (SELECT 1 FROM event_edges g JOIN events c ON c.event_nid = g.event_nid \
                 WHERE g.cited_event_id = $1 AND g.cited_event_nid IS NULL AND g.kind = 0 AND c.status = 'normal')",
            );
        }
        self.parts.push(insert);
    }

    /// `content.m.relates_to`: `(parent event id, rel_type)`.
    fn relation(&mut self, parent: &'a str, rel_type: &'a str) {
        let source = self.source();
        let (parent, rel_type) = (self.bind(Arg::Text(parent)), self.bind(Arg::Text(rel_type)));
        self.parts.push(format!(
            "INSERT INTO event_relations (event_nid, room_nid, parent_event_id, rel_type, event_type, sender, stream_ordering) \
             SELECT n.event_nid, $2, {parent}, {rel_type}, $5, $7, n.stream_ordering FROM {source}"
        ));
    }

    /// The searchable text `(key, text)`, in the backend's search index (see `search`).
    fn search(&mut self, key: &'a str, text: &'a str) {
        let source = self.source();
        let (key, text) = (self.bind(Arg::Text(key)), self.bind(Arg::Text(text)));
        self.parts.push(match self.kind {
            DatabaseKind::Postgres => format!(
                "INSERT INTO event_search (event_nid, room_nid, stream_ordering, key, vector) \
                 SELECT n.event_nid, $2, n.stream_ordering, {key}, to_tsvector('english', {text}) FROM {source}"
            ),
            DatabaseKind::Sqlite => format!(
                "INSERT INTO event_search (rowid, room_nid, stream_ordering, key, value) \
                 SELECT n.event_nid, $2, n.stream_ordering, {key}, {text} FROM {source}"
            ),
        });
    }

    /// Push actions, at most [`PUSH_ACTIONS_IN_WRITE`] rows.
    fn push_actions(&mut self, actions: &'a [PushAction]) {
        if actions.is_empty() {
            return;
        }
        let rows: Vec<String> = actions
            .iter()
            .map(|a| {
                let user = self.bind(Arg::Text(&a.user_id));
                let notify = self.bind(Arg::Bool(a.notify));
                let highlight = self.bind(Arg::Bool(a.highlight));
                let actions = self.bind(Arg::Text(&a.actions));
                format!("({user}, {notify}, {highlight}, {actions})")
            })
            .collect();
        let source = self.source();
        self.parts.push(format!(
            "INSERT INTO event_push_actions (event_nid, room_nid, stream_ordering, ts, user_id, notify, highlight, actions) \
             SELECT n.event_nid, $2, n.stream_ordering, $16, v.* FROM {source} CROSS JOIN (VALUES {}) AS v WHERE TRUE",
            rows.join(", ")
        ));
    }

    /// The client transaction that sent the event.
    fn txn(&mut self, user_id: &'a str, device_id: &'a str, scope: &'a str, txn_id: &'a str) {
        let source = self.source();
        let values = [user_id, device_id, scope, txn_id].map(|v| self.bind(Arg::Text(v)));
        self.parts.push(format!(
            "INSERT INTO event_txn_ids (user_id, device_id, scope, txn_id, event_id, created_ts) \
             SELECT {}, {}, {}, {}, $1, $16 FROM {source}",
            values[0], values[1], values[2], values[3]
        ));
    }

    /// A mark in `table` (`federation_relayed_events` or `federation_delivered_events`).
    fn mark(&mut self, table: &'static str) {
        let source = self.source();
        self.parts.push(format!(
            "INSERT INTO {table} (event_nid) SELECT n.event_nid FROM {source} WHERE TRUE ON CONFLICT DO NOTHING"
        ));
    }

    /// The query's text; its one row is the event's `(event_nid, stream_ordering)`, and there
    /// is none when the append was refused.
    pub(crate) fn sql(&self) -> String {
        match self.kind {
            DatabaseKind::Postgres => {
                let mut parts = Vec::with_capacity(self.parts.len() + 2);
                if self.takes_position {
                    // The next position of the events stream (`$3` is how many: one).
                    parts.push(format!(
                        "pos AS ({})",
                        crate::store::take_event_positions_sql("$3")
                    ));
                }
                parts.push(format!("ins AS ({})", self.insert));
                for (i, part) in self.parts.iter().enumerate() {
                    parts.push(format!("p{i} AS ({part})"));
                }
                format!(
                    "WITH {} SELECT event_nid, stream_ordering FROM ins",
                    parts.join(", ")
                )
            }
            DatabaseKind::Sqlite => {
                let mut sql = self.insert.clone();
                for part in &self.parts {
                    sql.push_str("; ");
                    sql.push_str(part);
                }
                sql
            }
        }
    }

    /// The values to bind, in order.
    pub(crate) fn args(&self) -> &[Arg<'a>] {
        &self.args
    }
}
