//! Databases written by Myelin before the event graph (issue 14) migrate, and read the same.
//!
//! The fixtures in `tests/fixtures/pre_graph/` were made by the server at 1aadcb3 (migrations
//! up to 0017; `generate.py` rebuilds them): a SQLite file and a PostgreSQL dump, each with the
//! answers that old server gave to every user's reads of every room. This test starts today's
//! server on a copy of each, which applies the graph migrations (0018, 0019) on start, logs the
//! fixture's users in and repeats every read: the events (ids, types, contents, `unsigned`
//! except `age`, order) must be the same, as must the refusals. Then the graph the migration
//! built is checked (edges, the state before each event, one forward extremity per room, the
//! current state group); the tokens clients got from the old server (`/messages` pages, sync
//! `prev_batch`) must still lead where they led; a new message in each room must land on top of
//! the old history without changing the state, a sync token the old server gave must still lead
//! to just the new messages, and a new topic must move only its own key. Pagination tokens are
//! not compared: their format changed (`t<topo>_<stream>`); nor are the client API's additions
//! since 1aadcb3 that are not stored data (see `forget_api_changes`). A failure lists every read
//! that differs, at its first difference; `PRE_GRAPH_DEBUG=1` prints both answers whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use myelin_store::{DatabaseKind, Store, graph::EdgeKind, test_support::TestDatabase};
use myelin_testkit::{TestServer, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pre_graph")
}

fn backend_name(kind: DatabaseKind) -> &'static str {
    match kind {
        DatabaseKind::Sqlite => "sqlite",
        DatabaseKind::Postgres => "postgres",
    }
}

/// What keeps a migrated fixture alive: its database and its data directory.
struct Fixture {
    server: TestServer,
    answers: Value,
    _db: Option<TestDatabase>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Copies the fixture of `kind` into a fresh database and starts today's server on it.
async fn start_on_fixture(kind: DatabaseKind) -> Fixture {
    let dir = fixture_dir();
    let name = backend_name(kind);
    let answers: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("answers-{name}.json"))).expect("answers"),
    )
    .expect("answers parse");

    // The server's signing key in the database is sealed with the fixture's sealing key: without
    // it the server would refuse to start rather than mint a new key.
    let data_dir = tempfile::tempdir().expect("data dir");
    std::fs::copy(dir.join("sealing.key"), data_dir.path().join("sealing.key")).expect("key");

    let (url, db, db_dir) = match kind {
        DatabaseKind::Sqlite => {
            let db_dir = tempfile::tempdir().expect("db dir");
            let path = db_dir.path().join("myelin.db");
            std::fs::copy(dir.join("sqlite.db"), &path).expect("copy the SQLite fixture");
            (Store::sqlite_url(&path), None, Some(db_dir))
        }
        DatabaseKind::Postgres => {
            let db = TestDatabase::create(DatabaseKind::Postgres).await;
            load_dump(&db.url, &dir.join("postgres.sql")).await;
            (db.url.clone(), Some(db), None)
        }
    };
    let data_path = data_dir.path().to_path_buf();
    let server = TestServer::start_with(kind, move |config| {
        config.database.url = Some(url);
        config.data_dir = data_path;
    })
    .await;
    Fixture {
        server,
        answers,
        _db: db,
        _dirs: [Some(data_dir), db_dir].into_iter().flatten().collect(),
    }
}

/// Loads a `pg_dump --inserts` file as plain statements, without psql: its `\restrict` and
/// `\unrestrict` lines are psql's own commands (they guard psql against a malicious dump) and
/// are left out; everything else is SQL. One connection of its own, because the dump empties
/// the session's `search_path`.
async fn load_dump(url: &str, path: &Path) {
    let dump = std::fs::read_to_string(path).expect("read the dump");
    let sql: String = dump
        .lines()
        .filter(|line| !line.starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("load the PostgreSQL dump");
    let _ = conn.close().await;
}

/// Removes what may differ between the old and the new server without the data differing: the
/// age of each event (it grows with the clock) and pagination tokens (their format changed).
fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["start", "end", "next_batch", "prev_batch", "next_token"] {
                map.remove(key);
            }
            if let Some(Value::Object(unsigned)) = map.get_mut("unsigned") {
                unsigned.remove("age");
            }
            map.values_mut().for_each(strip);
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// Forgets what the client API added between 1aadcb3 and today that is not stored data, on
/// both sides (what the old server answered never has it): `unsigned.membership` on every event
/// read from history (b483e88, spec v1.11), and `null` profile fields in `/joined_members`
/// rather than absent ones (302c53c). Sync's additions are forgotten in [`comparable`]. Anything
/// else that differs is a difference in the data.
fn forget_api_changes(what: &str, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(unsigned)) = map.get_mut("unsigned") {
                unsigned.remove("membership");
            }
            if what == "joined_members" {
                map.retain(|_, v| !v.is_null());
            }
            map.values_mut().for_each(|v| forget_api_changes(what, v));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| forget_api_changes(what, v)),
        _ => {}
    }
}

/// Sorts a list of state events by `(type, state_key)`: state is a map, and neither server
/// promises an order for it.
fn sort_state(events: &mut Value) {
    if let Value::Array(items) = events {
        items.sort_by_key(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        });
    }
}

/// One read as the test compares it: status, and for a success the stripped answer with state
/// lists in a fixed order; for a failure only the errcode (wording may change).
fn comparable(what: &str, status: u16, answer: &Value) -> Value {
    if status != 200 {
        return json!({"status": status, "errcode": answer["errcode"]});
    }
    let mut answer = answer.clone();
    strip(&mut answer);
    forget_api_changes(what, &mut answer);
    match what {
        // Pages are followed to the end; the events count, not where the pages were cut.
        "messages" | "relations" => {
            let events: Vec<Value> = answer
                .as_array()
                .expect("pages")
                .iter()
                .flat_map(|page| page["chunk"].as_array().cloned().unwrap_or_default())
                .collect();
            let states: Vec<Value> = answer
                .as_array()
                .expect("pages")
                .iter()
                .filter_map(|page| page.get("state").cloned())
                .collect();
            answer = json!({"events": events, "state": states});
        }
        "state" => sort_state(&mut answer),
        "members" => sort_state(&mut answer["chunk"]),
        "context" => sort_state(&mut answer["state"]),
        "sync" | "sync_since" => {
            // The rooms part of the answer; the rest (device keys, presence, to-device) is not
            // room history. Timelines keep their order; state sections are sets.
            // Three API changes since 1aadcb3 are forgotten: timelines carry bundled
            // aggregations (662bff4; /messages, /context and /event, compared whole, carry
            // them before and after), invite and knock state the create event whole (a75f4b7,
            // MSC4311), so that state is compared in its stripped fields, and a joined room's
            // empty `account_data` and `ephemeral`, and a left room's empty `state` and
            // `account_data`, are written out (as Synapse does; matrix-nio needs them).
            let mut rooms = answer["rooms"].take();
            for section in ["join", "leave"] {
                if let Some(Value::Object(map)) = rooms.get_mut(section) {
                    for room in map.values_mut() {
                        if let Value::Object(fields) = room {
                            for key in ["account_data", "ephemeral", "state"] {
                                if fields.get(key) == Some(&json!({"events": []})) {
                                    fields.remove(key);
                                }
                            }
                        }
                        sort_state(&mut room["state"]["events"]);
                        for event in room["timeline"]["events"]
                            .as_array_mut()
                            .into_iter()
                            .flatten()
                        {
                            if let Some(Value::Object(unsigned)) = event.get_mut("unsigned") {
                                unsigned.remove("m.relations");
                            }
                        }
                    }
                }
            }
            for (section, field) in [("invite", "invite_state"), ("knock", "knock_state")] {
                let Some(Value::Object(map)) = rooms.get_mut(section) else {
                    continue;
                };
                for room in map.values_mut() {
                    let events = &mut room[field]["events"];
                    for event in events.as_array_mut().into_iter().flatten() {
                        if let Value::Object(fields) = event {
                            fields.retain(|key, _| {
                                ["type", "state_key", "content", "sender"].contains(&key.as_str())
                            });
                        }
                    }
                    sort_state(events);
                }
            }
            answer = rooms;
        }
        _ => {}
    }
    json!({"status": status, "answer": answer})
}

/// Where two JSON values first differ, as a JSON pointer with both sides, or `None`.
fn first_difference(old: &Value, new: &Value, at: &str) -> Option<String> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                let path = format!("{at}/{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, &path),
                    (x, y) => Some(format!("{path}: old {x:?}, new {y:?}")),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{at}/{i}")))
            .or_else(|| {
                (a.len() != b.len())
                    .then(|| format!("{at}: old has {} items, new {}", a.len(), b.len()))
            }),
        _ => (old != new).then(|| format!("{at}: old {old}, new {new}")),
    }
}

/// Does one read now, following pages as `generate.py` did (from `start` when given), in the
/// shape it was recorded in.
async fn read_now(
    server: &TestServer,
    token: &str,
    what: &str,
    path: &str,
    body: Option<&Value>,
    start: Option<&str>,
) -> (u16, Value) {
    if let Some(body) = body {
        let (status, answer) = server.post(path, token, body.clone()).await;
        return (status.as_u16(), answer);
    }
    if what != "messages" && what != "relations" {
        let (status, body) = server.get(path, token).await;
        return (status.as_u16(), body);
    }
    let mut pages = Vec::new();
    let mut from: Option<String> = start.map(str::to_owned);
    let mut status = StatusCode::OK;
    // Followed while the server gives a next token: a filtered page may be empty and still have
    // one. A walk that does not end is a failure, not a cut.
    for page_number in 0.. {
        assert!(page_number < 200, "{path}: more than 200 pages");
        let separator = if path.contains('?') { '&' } else { '?' };
        let page_path = match &from {
            Some(token) => format!("{path}{separator}from={}", enc(token)),
            None => path.to_owned(),
        };
        let (page_status, page) = server.get(&page_path, token).await;
        status = page_status;
        from = page
            .get("end")
            .or_else(|| page.get("next_batch"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        pages.push(page);
        if status != StatusCode::OK || from.is_none() {
            break;
        }
    }
    let answer = if status == StatusCode::OK {
        Value::Array(pages)
    } else {
        pages.pop().unwrap_or_default()
    };
    (status.as_u16(), answer)
}

/// Logs every fixture user in with the password the generator gave it.
async fn log_in(server: &TestServer, answers: &Value) -> BTreeMap<String, String> {
    let mut tokens = BTreeMap::new();
    for (name, user) in answers["users"].as_object().expect("users") {
        let (status, body) = server
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": name},
                    "password": user["password"],
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "log in {name}: {body}");
        assert_eq!(body["user_id"], user["user_id"]);
        tokens.insert(
            name.clone(),
            body["access_token"].as_str().expect("token").to_owned(),
        );
    }
    tokens
}

/// The events of a recorded `/messages` answer (pages, newest first).
fn recorded_events(read: &Value) -> Vec<Value> {
    read["answer"]
        .as_array()
        .expect("pages")
        .iter()
        .flat_map(|page| page["chunk"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn find_read<'a>(reads: &'a [Value], user: &str, what: &str, path_part: &str) -> &'a Value {
    reads
        .iter()
        .find(|r| {
            r["user"] == user
                && r["what"] == what
                && r["path"].as_str().is_some_and(|p| p.contains(path_part))
        })
        .unwrap_or_else(|| panic!("no recorded {what} of {user} for {path_part}"))
}

/// The graph facts the migration must establish in `room`, whose member read `history` (newest
/// first) before the migration: every event keeps its edges (each cited event found), its
/// state before is the state after its prev event, and the room has one forward extremity, its
/// newest event, whose state is the current state.
async fn check_graph(store: &Store, room_id: &str, history: &[Value], state: &[Value]) {
    let room = store.room(room_id).await.unwrap().expect("room migrated");
    let mut ids: BTreeSet<String> = history
        .iter()
        .chain(state)
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();
    // Auth events of the history that the reader did not see as timeline (rooms' first events).
    for id in ids.clone() {
        let row = store.event(&id).await.unwrap().expect("event migrated");
        let json: Value = serde_json::from_str(&row.json).unwrap();
        for cited in json["auth_events"].as_array().into_iter().flatten() {
            ids.insert(cited.as_str().expect("v3+ event id").to_owned());
        }
    }
    for id in &ids {
        let row = store.event(id).await.unwrap().expect("event migrated");
        assert_eq!(row.room_nid, room.room_nid);
        let json: Value = serde_json::from_str(&row.json).unwrap();
        let mut expected: Vec<(EdgeKind, String)> = Vec::new();
        for (kind, key) in [
            (EdgeKind::Prev, "prev_events"),
            (EdgeKind::Auth, "auth_events"),
        ] {
            for cited in json[key].as_array().into_iter().flatten() {
                expected.push((kind, cited.as_str().expect("event id").to_owned()));
            }
        }
        expected.sort();
        let edges = store.event_edges(row.event_nid).await.unwrap();
        let found: Vec<(EdgeKind, String)> = edges
            .iter()
            .map(|e| (e.kind, e.cited_event_id.clone()))
            .collect();
        assert_eq!(found, expected, "edges of {id}");
        for edge in &edges {
            let cited = store.event(&edge.cited_event_id).await.unwrap();
            assert_eq!(
                edge.cited_event_nid,
                cited.map(|c| c.event_nid),
                "{id} cites {} by nid",
                edge.cited_event_id
            );
        }
        assert_eq!(row.topological_ordering, row.depth, "{id}");
    }
    let newest = history.first().expect("history")["event_id"]
        .as_str()
        .unwrap();
    let newest = store.event(newest).await.unwrap().unwrap();
    assert_eq!(
        store.forward_extremities(room.room_nid).await.unwrap(),
        vec![newest.event_nid],
        "{room_id}: one forward extremity, its newest event"
    );
    assert_eq!(
        store.current_state_group(room.room_nid).await.unwrap(),
        newest.state_group,
        "{room_id}: the current state is the state after its newest event"
    );
    // That state group, the flattened current state and what /state answered before the
    // migration are the same events.
    let group = newest.state_group.expect("a state group");
    let in_group: BTreeSet<String> = store
        .state_at_group(group)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let current: BTreeSet<String> = store
        .current_state(room.room_nid, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let answered: BTreeSet<String> = state
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_group, answered, "{room_id}: the current state group");
    assert_eq!(current, answered, "{room_id}: the current state");
}

/// What no store read returns, read with SQL of its own: the state before every event of the
/// fixture's database is the state after its prev event (rooms were written by one writer, so
/// each event has one; a room's create event has none), and every state event is a change of
/// current state at its own stream position (`current_state_deltas`; sync reads those only
/// beside the state groups, so a lost one would not show in any read above).
async fn check_migrated_rows(db_url: &str, kind: DatabaseKind) {
    const SQL: &str = "SELECT e.event_id, e.event_type, e.state_group_before, p.state_group, \
                       (SELECT COUNT(*) FROM event_edges c WHERE c.event_nid = e.event_nid \
                        AND c.kind = 0) FROM events e \
                       LEFT JOIN event_edges g ON g.event_nid = e.event_nid AND g.kind = 0 \
                       LEFT JOIN events p ON p.event_nid = g.cited_event_nid";
    // State events without their delta, and deltas without their state event.
    const DELTAS: &str = "SELECT \
         (SELECT COUNT(*) FROM events e WHERE e.state_key IS NOT NULL AND NOT EXISTS ( \
             SELECT 1 FROM current_state_deltas d WHERE d.room_nid = e.room_nid \
             AND d.stream_ordering = e.stream_ordering AND d.event_type = e.event_type \
             AND d.state_key = e.state_key AND d.event_nid = e.event_nid)), \
         (SELECT COUNT(*) FROM current_state_deltas d WHERE NOT EXISTS ( \
             SELECT 1 FROM events e WHERE e.event_nid = d.event_nid \
             AND e.stream_ordering = d.stream_ordering)), \
         (SELECT COUNT(*) FROM current_state_deltas)";
    type Row = (String, String, Option<i64>, Option<i64>, i64);
    let (rows, deltas): (Vec<Row>, (i64, i64, i64)) = match kind {
        DatabaseKind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(db_url).await.unwrap();
            let rows = sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap();
            (
                rows,
                sqlx::query_as(DELTAS).fetch_one(&mut conn).await.unwrap(),
            )
        }
        DatabaseKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
            let rows = sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap();
            (
                rows,
                sqlx::query_as(DELTAS).fetch_one(&mut conn).await.unwrap(),
            )
        }
    };
    let (missing, stray, count) = deltas;
    assert_eq!(
        (missing, stray),
        (0, 0),
        "current_state_deltas of {count} rows"
    );
    assert!(count > 30, "{count} deltas");
    assert!(rows.len() > 100, "{} events", rows.len());
    for (id, event_type, before, prev_after, prevs) in rows {
        if event_type == "m.room.create" {
            assert_eq!((prevs, before), (0, None), "{id}");
        } else {
            assert_eq!(prevs, 1, "{id} has one prev event");
            assert!(before.is_some(), "{id} has a state before it");
            assert_eq!(
                before, prev_after,
                "{id}: state before = state after its prev"
            );
        }
    }
}

/// The events of a page, stripped and without the API's additions, for comparison.
fn page_events(page: &Value) -> Value {
    let mut events = page["chunk"].clone();
    strip(&mut events);
    forget_api_changes("messages", &mut events);
    events
}

/// Clients keep the tokens the old server gave them across the upgrade: the walk from a
/// `/messages` page token (`s<N>`) must give the events the old server gave after it (where
/// pages are cut is not compared: a filtered page is a window of events, possibly empty), and a
/// sync timeline's `prev_batch` must lead to the events before that timeline in the user's
/// history.
async fn check_old_tokens(server: &TestServer, tokens: &BTreeMap<String, String>, reads: &[Value]) {
    let mut checked = 0;
    for read in reads
        .iter()
        .filter(|r| r["what"] == "messages" && r["status"] == 200)
    {
        let user = read["user"].as_str().unwrap();
        let path = read["path"].as_str().unwrap();
        let pages = read["answer"].as_array().unwrap();
        for (i, page) in pages.iter().enumerate() {
            let Some(from) = page["end"].as_str() else {
                continue;
            };
            let old = comparable("messages", 200, &Value::Array(pages[i + 1..].to_vec()));
            let (status, walked) =
                read_now(server, &tokens[user], "messages", path, None, Some(from)).await;
            let new = comparable("messages", status, &walked);
            let difference = first_difference(&old, &new, "");
            assert!(
                difference.is_none(),
                "{user} {path} from the old token {from}: {difference:?}"
            );
            checked += 1;
        }
    }
    for read in reads.iter().filter(|r| r["what"] == "sync") {
        let user = read["user"].as_str().unwrap();
        for (room_id, room) in read["answer"]["rooms"]["join"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let timeline = &room["timeline"];
            let Some(first) = timeline["events"][0]["event_id"].as_str() else {
                continue;
            };
            let prev_batch = timeline["prev_batch"].as_str().expect("prev_batch");
            let history = recorded_events(find_read(
                reads,
                user,
                "messages",
                &format!("{}/messages?dir=b", enc(room_id)),
            ));
            let at = history
                .iter()
                .position(|e| e["event_id"] == first)
                .expect("the timeline's first event is in the history");
            let expected: Vec<Value> = history[at + 1..].iter().take(10).cloned().collect();
            let path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&from={}",
                enc(room_id),
                enc(prev_batch)
            );
            let (status, page) = server.get(&path, &tokens[user]).await;
            assert_eq!(status, StatusCode::OK, "{user} {path}: {page}");
            let difference = first_difference(
                &page_events(&json!({ "chunk": expected })),
                &page_events(&page),
                "",
            );
            assert!(
                difference.is_none(),
                "{user} {room_id}: /messages from the old sync prev_batch {prev_batch}: \
                 {difference:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} old tokens");
    eprintln!("{checked} old tokens lead where they led");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pre_graph_database_migrates_and_every_room_reads_the_same() {
    for kind in test_backends() {
        let fixture = start_on_fixture(kind).await;
        let server = &fixture.server;
        let answers = &fixture.answers;
        let tokens = log_in(server, answers).await;
        let reads = answers["reads"].as_array().expect("reads");
        assert!(reads.len() > 150, "{} reads recorded", reads.len());

        // Every read, before anything new is written (sync would see it).
        let mut differences = Vec::new();
        for read in reads {
            let user = read["user"].as_str().unwrap();
            let what = read["what"].as_str().unwrap();
            let path = read["path"].as_str().unwrap();
            let old = comparable(
                what,
                read["status"].as_u64().unwrap() as u16,
                &read["answer"],
            );
            let (status, answer) =
                read_now(server, &tokens[user], what, path, read.get("body"), None).await;
            let new = comparable(what, status, &answer);
            if let Some(difference) = first_difference(&old, &new, "") {
                differences.push(format!("{kind:?} {user} {what} {path}: {difference}"));
                // The first difference names the place; both whole answers help to see why.
                if std::env::var_os("PRE_GRAPH_DEBUG").is_some() {
                    eprintln!("OLD {old:#}\nNEW {new:#}");
                }
            }
        }
        assert!(
            differences.is_empty(),
            "{} of {} reads differ after the migration:\n{}",
            differences.len(),
            reads.len(),
            differences.join("\n")
        );

        eprintln!(
            "{kind:?}: {} recorded reads equal after the migration",
            reads.len()
        );
        check_old_tokens(server, &tokens, reads).await;

        let db_url = server.config.database.url.clone().expect("url");
        check_migrated_rows(&db_url, kind).await;

        let mut sent_ids: BTreeMap<String, String> = BTreeMap::new();
        for (key, room) in answers["rooms"].as_object().expect("rooms") {
            let room_id = room["room_id"].as_str().unwrap();
            let member = room["member"].as_str().unwrap();
            let token = &tokens[member];
            let r = enc(room_id);
            let history = recorded_events(find_read(
                reads,
                member,
                "messages",
                &format!("{r}/messages?dir=b"),
            ));
            let state_read = find_read(reads, member, "state", &format!("{r}/state"));
            let old_state = state_read["answer"].as_array().expect("state").clone();
            assert!(history.len() > 20, "{key}: {} events", history.len());
            check_graph(server.store(), room_id, &history, &old_state).await;

            // A new message builds on the old history: its one prev event is the newest old
            // event, /messages reads it above that history, and the state is what it was.
            let (status, sent) = server
                .put(
                    &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/after-migration"),
                    token,
                    json!({"msgtype": "m.text", "body": format!("after the migration in {key}")}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{key}: send: {sent}");
            let new_id = sent["event_id"].as_str().unwrap();
            sent_ids.insert(room_id.to_owned(), new_id.to_owned());
            let row = server.store().event(new_id).await.unwrap().unwrap();
            let json: Value = serde_json::from_str(&row.json).unwrap();
            assert_eq!(
                json["prev_events"],
                json!([history[0]["event_id"]]),
                "{key}"
            );
            let newest_old = server
                .store()
                .event(history[0]["event_id"].as_str().unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.depth, newest_old.depth + 1, "{key}");
            let room_nid = server
                .store()
                .room(room_id)
                .await
                .unwrap()
                .unwrap()
                .room_nid;
            assert_eq!(
                server.store().forward_extremities(room_nid).await.unwrap(),
                vec![row.event_nid],
                "{key}: the new message is the one forward extremity"
            );
            assert_eq!(
                server.store().current_state_group(room_nid).await.unwrap(),
                row.state_group,
                "{key}"
            );

            let path = format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=10");
            let (status, pages) = read_now(server, token, "messages", &path, None, None).await;
            let now = comparable("messages", status, &pages);
            let events = now["answer"]["events"].as_array().expect("events");
            assert_eq!(
                events[0]["event_id"], new_id,
                "{key}: the new message first"
            );
            let mut old_history = Value::Array(history.clone());
            strip(&mut old_history);
            let below = first_difference(&old_history, &Value::Array(events[1..].to_vec()), "");
            assert!(
                below.is_none(),
                "{key}: history below the new message: {below:?}"
            );

            let (status, state) = server
                .get(&format!("/_matrix/client/v3/rooms/{r}/state"), token)
                .await;
            let old = comparable("state", 200, &Value::Array(old_state));
            let new = comparable("state", status.as_u16(), &state);
            let difference = first_difference(&old, &new, "");
            assert!(difference.is_none(), "{key}: state: {difference:?}");
        }
        // A client's sync token from before the upgrade keeps working: from it, each joined
        // room shows just its new message, with no state (the history's state changes, now in
        // current_state_deltas, are all below the token) and nothing else.
        for read in reads.iter().filter(|r| r["what"] == "sync") {
            let user = read["user"].as_str().unwrap();
            let since = read["answer"]["next_batch"].as_str().expect("next_batch");
            let (status, body) = server
                .get(
                    &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(since)),
                    &tokens[user],
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{user}: {body}");
            let joined_before: BTreeSet<&String> = read["answer"]["rooms"]["join"]
                .as_object()
                .map(|rooms| rooms.keys().collect())
                .unwrap_or_default();
            let joined_now: BTreeSet<&String> = body["rooms"]["join"]
                .as_object()
                .map(|rooms| rooms.keys().collect())
                .unwrap_or_default();
            assert_eq!(joined_now, joined_before, "{user}: rooms with news");
            for section in ["invite", "leave", "knock"] {
                assert!(
                    body["rooms"][section]
                        .as_object()
                        .is_none_or(|m| m.is_empty()),
                    "{user}: {section}: {body}"
                );
            }
            for (room_id, room) in body["rooms"]["join"].as_object().into_iter().flatten() {
                let timeline: Vec<&str> = room["timeline"]["events"]
                    .as_array()
                    .expect("timeline")
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    timeline,
                    vec![sent_ids[room_id].as_str()],
                    "{user} {room_id}"
                );
                assert!(
                    room["state"]["events"]
                        .as_array()
                        .is_none_or(|events| events.is_empty()),
                    "{user} {room_id}: {room}"
                );
            }
        }
        // A state change on top of the migrated state: only the changed key moves.
        for (key, room) in answers["rooms"].as_object().expect("rooms") {
            let room_id = room["room_id"].as_str().unwrap();
            let member = room["member"].as_str().unwrap();
            let r = enc(room_id);
            let (status, sent) = server
                .put(
                    &format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/"),
                    &tokens[member],
                    json!({"topic": format!("after the migration in {key}")}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{key}: topic: {sent}");
            let state_key = |e: &Value| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["state_key"].as_str().unwrap().to_owned(),
                )
            };
            let old_state = find_read(reads, member, "state", &format!("{r}/state"))["answer"]
                .as_array()
                .expect("state")
                .clone();
            let mut expected: BTreeMap<(String, String), String> = old_state
                .iter()
                .map(|e| (state_key(e), e["event_id"].as_str().unwrap().to_owned()))
                .collect();
            expected.insert(
                ("m.room.topic".to_owned(), String::new()),
                sent["event_id"].as_str().unwrap().to_owned(),
            );
            let (status, state) = server
                .get(
                    &format!("/_matrix/client/v3/rooms/{r}/state"),
                    &tokens[member],
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{key}: {state}");
            let now: BTreeMap<(String, String), String> = state
                .as_array()
                .expect("state")
                .iter()
                .map(|e| (state_key(e), e["event_id"].as_str().unwrap().to_owned()))
                .collect();
            assert_eq!(now, expected, "{key}: state after a new topic");
            let row = server
                .store()
                .event(sent["event_id"].as_str().unwrap())
                .await
                .unwrap()
                .unwrap();
            let in_group: BTreeSet<String> = server
                .store()
                .state_at_group(row.state_group.expect("state group"))
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_id)
                .collect();
            assert_eq!(
                in_group,
                expected.values().cloned().collect::<BTreeSet<_>>(),
                "{key}: the topic's state group"
            );
        }
        fixture.server.stop().await;
    }
}
