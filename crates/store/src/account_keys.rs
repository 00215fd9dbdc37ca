//! Account keys (MSC4243.md Q3): the key ↔ account mapping for local and remote keys, with the
//! state of each claim (local, verified with its account name, unverified with retry
//! bookkeeping, erased), and this server's erasure log. The store keeps bytes: sealing a local
//! key's private half is the service's job, so no plaintext private key reaches this crate.
//!
//! The state machine of §2.4 item 31 lives here, in one place, because it is what the table
//! means: `unverified → verified`, `unverified → erased`, `verified → erased`; verified is never
//! downgraded, erased is terminal, and a key verified for one domain is never verified for
//! another (Q1).

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// What this server knows about one key's claim to one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// A local account's key (we hold the sealed private half).
    Local,
    /// The claimed domain vouched for the key (first verified name wins).
    Verified,
    /// Not (yet) vouched for.
    Unverified,
    /// Erased: terminal.
    Erased,
}

impl KeyState {
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "local" => KeyState::Local,
            "verified" => KeyState::Verified,
            "unverified" => KeyState::Unverified,
            "erased" => KeyState::Erased,
            other => {
                return Err(StoreError::Database(sqlx::Error::Decode(
                    format!("account key state {other:?}").into(),
                )));
            }
        })
    }
}

/// One row of `account_keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKeyRow {
    /// The bare key (unpadded URL-safe base64).
    pub account_key: String,
    pub domain: String,
    /// `@<key>:<domain>`.
    pub user_id: String,
    pub account_name: Option<String>,
    pub state: KeyState,
    /// Local keys only, sealed; `None` after erasure.
    pub private_key_enc: Option<Vec<u8>>,
    pub created_ts: i64,
    pub first_verified_ts: Option<i64>,
    pub erased_ts: Option<i64>,
    pub erasure_attestation: Option<String>,
    pub erasure_id: Option<i64>,
    pub attempts: i32,
    pub last_attempt_ts: Option<i64>,
    pub next_attempt_ts: Option<i64>,
    pub last_outcome: Option<String>,
}

// By hand: the sealed private key is not printed, even sealed.
impl std::fmt::Debug for AccountKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKeyRow")
            .field("user_id", &self.user_id)
            .field("account_name", &self.account_name)
            .field("state", &self.state)
            .field("erasure_id", &self.erasure_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// A new local key.
#[derive(Debug)]
pub struct NewLocalAccountKey<'a> {
    pub account_key: &'a str,
    pub domain: &'a str,
    pub account_name: &'a str,
    pub private_key_enc: &'a [u8],
    pub now: i64,
}

/// What a `/query/accounts` answer said about a remote key (already judged by the room
/// version's classifier).
#[derive(Debug, Clone)]
pub enum RemoteKeyVerdict<'a> {
    Verified {
        account_name: &'a str,
    },
    Unverified {
        /// `missing`, `unknown`, `unreachable`, ...: what the retry policy orders by.
        outcome: &'a str,
        next_attempt_ts: i64,
    },
    Erased {
        attestation: &'a str,
    },
}

const SELECT: &str = "SELECT account_key, domain, user_id, account_name, state, private_key_enc, \
     created_ts, first_verified_ts, erased_ts, erasure_attestation, erasure_id, attempts, \
     last_attempt_ts, next_attempt_ts, last_outcome FROM account_keys";

macro_rules! key_from_row {
    ($row:expr) => {{
        let row = $row;
        let state: String = row.try_get("state")?;
        Ok::<_, StoreError>(AccountKeyRow {
            account_key: row.try_get("account_key")?,
            domain: row.try_get("domain")?,
            user_id: row.try_get("user_id")?,
            account_name: row.try_get("account_name")?,
            state: KeyState::parse(&state)?,
            private_key_enc: row.try_get("private_key_enc")?,
            created_ts: row.try_get("created_ts")?,
            first_verified_ts: row.try_get("first_verified_ts")?,
            erased_ts: row.try_get("erased_ts")?,
            erasure_attestation: row.try_get("erasure_attestation")?,
            erasure_id: row.try_get("erasure_id")?,
            attempts: row.try_get("attempts")?,
            last_attempt_ts: row.try_get("last_attempt_ts")?,
            next_attempt_ts: row.try_get("next_attempt_ts")?,
            last_outcome: row.try_get("last_outcome")?,
        })
    }};
}

/// Appends to the current-state delta log, at a new position of the events stream per room,
/// the current state of every room `$user_id` (a key-form id) is a member of, and a local user
/// is joined to, that is its member event or that it sent, marked as a redelivery: syncs with
/// `use_state_after` hand those events to clients again, other syncs ignore them (MSC4243 §2.6
/// item 39). Whether anything was redelivered.
macro_rules! redeliver_state_of {
    ($tx:ident, $user_id:expr) => {{
        let user_id: &str = $user_id;
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT cs.room_nid, cs.event_type, cs.state_key, cs.event_nid \
             FROM current_state cs JOIN events e ON e.event_nid = cs.event_nid \
             WHERE cs.room_nid IN (SELECT room_nid FROM room_memberships WHERE user_id = $1) \
             AND cs.room_nid IN (SELECT l.room_nid FROM room_memberships l \
             JOIN users u ON u.user_id = l.user_id WHERE l.membership = 'join') \
             AND ((cs.event_type = 'm.room.member' AND cs.state_key = $1) OR e.sender = $1) \
             ORDER BY cs.room_nid",
        )
        .bind(user_id)
        .fetch_all(&mut *$tx)
        .await?;
        let rooms: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
        if !rooms.is_empty() {
            let count = i64::try_from(rooms.len()).unwrap_or(i64::MAX);
            let last = $crate::store::take_event_positions!($tx, count);
            let positions: std::collections::HashMap<i64, i64> = rooms
                .iter()
                .enumerate()
                .map(|(i, room)| (*room, last - count + 1 + i64::try_from(i).unwrap_or(0)))
                .collect();
            for (room_nid, event_type, state_key, event_nid) in &rows {
                sqlx::query(
                    "INSERT INTO current_state_deltas \
                     (stream_ordering, room_nid, event_type, state_key, event_nid, redelivery) \
                     VALUES ($1, $2, $3, $4, $5, TRUE)",
                )
                .bind(positions[room_nid])
                .bind(room_nid)
                .bind(event_type)
                .bind(state_key)
                .bind(event_nid)
                .execute(&mut *$tx)
                .await?;
            }
        }
        !rooms.is_empty()
    }};
}

/// SQL: the id of the user the room member id in `$column` stands for, as clients, EDUs and
/// device lists name users (MSC4243.md §2.7): a remote key verified for its domain is its
/// account-name id; any other member id is itself (local accounts' memberships are already
/// indexed by account name). Uses the alias `ak`.
macro_rules! account_of_member {
    ($column:literal) => {
        concat!(
            "COALESCE((SELECT '@' || ak.account_name || ':' || ak.domain FROM account_keys ak \
             WHERE ak.user_id = ",
            $column,
            " AND ak.state = 'verified'), ",
            $column,
            ")"
        )
    };
}
pub(crate) use account_of_member;

/// SQL: whether the room member id in `$column` names an account at all: not a key held
/// unverified or erased (such members stand for nobody a client or another server can name;
/// §2.7: no device list, no presence). Uses the alias `ak`.
macro_rules! member_names_an_account {
    ($column:literal) => {
        concat!(
            "NOT EXISTS (SELECT 1 FROM account_keys ak WHERE ak.user_id = ",
            $column,
            " AND ak.state IN ('unverified', 'erased'))"
        )
    };
}
pub(crate) use member_names_an_account;

/// The most accounts looked up in one statement.
const ACCOUNTS_PER_STATEMENT: usize = 200;

impl Store {
    /// The key of the local account `account_name` on `domain` (this server), if it has one.
    pub async fn local_account_key(
        &self,
        account_name: &str,
        domain: &str,
    ) -> Result<Option<AccountKeyRow>, StoreError> {
        let sql = format!("{SELECT} WHERE account_name = $1 AND domain = $2 AND state = 'local'");
        with_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(account_name)
                .bind(domain)
                .fetch_optional(pool)
                .await?;
            row.map(|row| key_from_row!(&row)).transpose()
        })
    }

    /// Stores a local account's key unless the account already has one, and returns the key the
    /// account has: keys are immutable, so of two racing creations the first stored wins and
    /// the second caller gets it (its own key is discarded unused).
    pub async fn insert_local_account_key(
        &self,
        key: &NewLocalAccountKey<'_>,
    ) -> Result<AccountKeyRow, StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO account_keys (account_key, domain, user_id, account_name, state, \
                 private_key_enc, created_ts) VALUES ($1, $2, $3, $4, 'local', $5, $6) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(key.account_key)
            .bind(key.domain)
            .bind(format!("@{}:{}", key.account_key, key.domain))
            .bind(key.account_name)
            .bind(key.private_key_enc)
            .bind(key.now)
            .execute(pool)
            .await?;
        });
        self.local_account_key(key.account_name, key.domain)
            .await?
            .ok_or_else(|| {
                StoreError::Conflict(format!(
                    "no account key stored for {}:{}",
                    key.account_name, key.domain
                ))
            })
    }

    /// The rows for these key-form user ids (those known), in no particular order.
    pub async fn account_keys_by_user_ids(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<AccountKeyRow>, StoreError> {
        const CHUNK: usize = 256;
        let mut out = Vec::with_capacity(user_ids.len());
        for chunk in user_ids.chunks(CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("{SELECT} WHERE user_id IN ({})", placeholders.join(", "));
            with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for id in chunk {
                    query = query.bind(id);
                }
                for row in query.fetch_all(pool).await? {
                    out.push(key_from_row!(&row)?);
                }
            });
        }
        Ok(out)
    }

    /// How many other servers' keys are held unverified (asked about, not vouched for yet):
    /// read at each `/metrics` scrape, so one count over the partial retry index.
    pub async fn unverified_account_key_count(&self) -> Result<i64, StoreError> {
        with_pool!(self, pool => {
            let count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM account_keys WHERE state = 'unverified'")
                    .fetch_one(pool)
                    .await?;
            Ok(count)
        })
    }

    /// Every key whose state clients' views depend on (local, verified, erased), for the
    /// service's in-memory lookup; unverified keys are the default and not listed.
    pub async fn known_account_keys(&self) -> Result<Vec<AccountKeyRow>, StoreError> {
        let sql = format!("{SELECT} WHERE state <> 'unverified'");
        with_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| key_from_row!(row))
                .collect()
        })
    }

    /// Erases the local account `account_name`: the row becomes `erased` with `attestation`
    /// (the signed `M_ERASED`, made before this call while the private key still existed), the
    /// private key and the name are destroyed, and the key takes the next position of the
    /// erasure log. Returns that position, or `None` if the account has no (unerased) key.
    pub async fn erase_local_account_key(
        &self,
        account_name: &str,
        domain: &str,
        attestation: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            // The next position under the write (a concurrent eraser on PostgreSQL meets the
            // unique index and fails whole, leaving nothing half-erased; the caller retries).
            let next: i64 = sqlx::query(
                "SELECT COALESCE(MAX(erasure_id), 0) + 1 AS next FROM account_keys \
                 WHERE domain = $1 AND erasure_id IS NOT NULL",
            )
            .bind(domain)
            .fetch_one(&mut *tx)
            .await?
            .try_get("next")?;
            let done = sqlx::query(
                "UPDATE account_keys SET state = 'erased', account_name = NULL, \
                 private_key_enc = NULL, erased_ts = $1, erasure_attestation = $2, erasure_id = $3 \
                 WHERE account_name = $4 AND domain = $5 AND state = 'local'",
            )
            .bind(now)
            .bind(attestation)
            .bind(next)
            .bind(account_name)
            .bind(domain)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(if done == 1 { Some(next) } else { None })
        })
    }

    /// This server's erasure log after position `after` (exclusive), at most `limit` entries,
    /// oldest first: (position, key row).
    pub async fn erasures_after(
        &self,
        domain: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AccountKeyRow>, StoreError> {
        let sql =
            format!("{SELECT} WHERE domain = $1 AND erasure_id > $2 ORDER BY erasure_id LIMIT $3");
        with_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(domain)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| key_from_row!(row))
                .collect()
        })
    }

    /// Claims up to `limit` unverified remote keys whose retry time has come (`next_attempt_ts`
    /// at or before `now`) and that are still members (joined, invited or knocking) of a room
    /// here, moving their retry time to `lease_until` so that another process (or the next
    /// round) does not ask about them meanwhile; the asking records the real next time. The most
    /// overdue are chosen first; their key-form user ids come back in no particular order.
    pub async fn claim_due_account_keys(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "UPDATE account_keys SET next_attempt_ts = $2 \
                 WHERE state = 'unverified' AND next_attempt_ts <= $1 AND user_id IN ( \
                   SELECT k.user_id FROM account_keys k WHERE k.state = 'unverified' \
                   AND k.next_attempt_ts <= $1 AND EXISTS (SELECT 1 FROM room_memberships m \
                     WHERE m.user_id = k.user_id AND m.membership IN ('join', 'invite', 'knock')) \
                   ORDER BY k.next_attempt_ts LIMIT $3) \
                 RETURNING user_id",
            )
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| row.try_get::<String, _>("user_id").map_err(StoreError::from))
                .collect()
        })
    }

    /// Up to `limit` other servers whose erasure logs are due a poll: they vouch for a key
    /// this server holds as verified, and were never polled or last before `polled_before`.
    /// With each, the position read up to (0 when never polled).
    pub async fn erasure_polls_due(
        &self,
        polled_before: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT k.domain, COALESCE(MAX(c.erasure_id), 0) AS erasure_id FROM account_keys k \
                 LEFT JOIN account_key_erasure_cursors c ON c.domain = k.domain \
                 WHERE k.state = 'verified' AND (c.polled_ts IS NULL OR c.polled_ts < $1) \
                 GROUP BY k.domain ORDER BY MIN(COALESCE(c.polled_ts, 0)), k.domain LIMIT $2",
            )
            .bind(polled_before)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("domain")?, row.try_get("erasure_id")?)))
                .collect()
        })
    }

    /// Records that `domain`'s erasure log was read up to `erasure_id` at `now` (a position
    /// never moves back: a lower one only updates the time).
    pub async fn set_erasure_cursor(
        &self,
        domain: &str,
        erasure_id: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO account_key_erasure_cursors (domain, erasure_id, polled_ts) VALUES ($1, $2, $3) \
                 ON CONFLICT (domain) DO UPDATE SET polled_ts = excluded.polled_ts, \
                 erasure_id = CASE WHEN excluded.erasure_id > account_key_erasure_cursors.erasure_id \
                 THEN excluded.erasure_id ELSE account_key_erasure_cursors.erasure_id END",
            )
            .bind(domain)
            .bind(erasure_id)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The latest position of this server's erasure log (0 when nobody was erased).
    pub async fn latest_erasure_id(&self, domain: &str) -> Result<i64, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "SELECT COALESCE(MAX(erasure_id), 0) AS latest FROM account_keys WHERE domain = $1",
            )
            .bind(domain)
            .fetch_one(pool)
            .await?
            .try_get("latest")?)
        })
    }

    /// Records what a `/query/accounts` answer said about the remote key-form user
    /// `@<account_key>:<domain>`, under the transitions of the module docs, and returns the
    /// key's state afterwards. A verdict a transition does not allow changes nothing (an
    /// unverified answer for a verified key; anything for an erased key; a verification for a
    /// key already verified for another domain, or under another name).
    pub async fn record_remote_account_key(
        &self,
        account_key: &str,
        domain: &str,
        verdict: &RemoteKeyVerdict<'_>,
        now: i64,
    ) -> Result<KeyState, StoreError> {
        let states = self
            .record_remote_account_keys(domain, &[(account_key, verdict.clone())], now)
            .await?;
        Ok(states[0])
    }

    /// [`Self::record_remote_account_key`] for many keys of one `domain` (one answer's
    /// verdicts), taken in order in ONE transaction: one commit and one flush to disk for the
    /// batch instead of one per key, which is what a join of a large room pays for. Returns
    /// each key's state afterwards, in the same order.
    pub async fn record_remote_account_keys(
        &self,
        domain: &str,
        verdicts: &[(&str, RemoteKeyVerdict<'_>)],
        now: i64,
    ) -> Result<Vec<KeyState>, StoreError> {
        if verdicts.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let mut states = Vec::with_capacity(verdicts.len());
            for (account_key, verdict) in verdicts {
                let (account_key, verdict) = (*account_key, verdict);
                let user_id = format!("@{account_key}:{domain}");
                sqlx::query(
                    "INSERT INTO account_keys (account_key, domain, user_id, state, created_ts) \
                     VALUES ($1, $2, $3, 'unverified', $4) ON CONFLICT DO NOTHING",
                )
                .bind(account_key)
                .bind(domain)
                .bind(&user_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let rows: Vec<(String, String, Option<String>)> = sqlx::query(
                    "SELECT domain, state, account_name FROM account_keys WHERE account_key = $1",
                )
                .bind(account_key)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((row.try_get("domain")?, row.try_get("state")?, row.try_get("account_name")?)))
                .collect::<Result<_, sqlx::Error>>()?;
                let mut current = KeyState::Unverified;
                let mut current_name = None;
                let mut owned_elsewhere = false;
                for (row_domain, state, name) in &rows {
                    let state = KeyState::parse(state)?;
                    if row_domain == domain {
                        current = state;
                        current_name = name.clone();
                    } else if matches!(state, KeyState::Local | KeyState::Verified) {
                        owned_elsewhere = true;
                    }
                }
                let next = match (current, verdict) {
                    (KeyState::Erased | KeyState::Local, _) => current,
                    (KeyState::Verified, RemoteKeyVerdict::Verified { account_name }) => {
                        if current_name.as_deref() != Some(*account_name) {
                            tracing::warn!(%user_id, "a later answer names the verified key differently; the first name stays");
                        }
                        current
                    }
                    (KeyState::Verified, RemoteKeyVerdict::Unverified { .. }) => current,
                    (KeyState::Unverified, RemoteKeyVerdict::Verified { .. }) if owned_elsewhere => {
                        tracing::warn!(%user_id, "the key is verified for another domain; this claim stays unverified");
                        current
                    }
                    (KeyState::Unverified, RemoteKeyVerdict::Verified { account_name }) => {
                        sqlx::query(
                            "UPDATE account_keys SET state = 'verified', account_name = $1, \
                             first_verified_ts = $2, last_attempt_ts = $2, next_attempt_ts = NULL, \
                             last_outcome = 'verified', attempts = attempts + 1 \
                             WHERE account_key = $3 AND domain = $4",
                        )
                        .bind(*account_name)
                        .bind(now)
                        .bind(account_key)
                        .bind(domain)
                        .execute(&mut *tx)
                        .await?;
                        // Clients of rooms this member is already in had them without it (the
                        // events of a key not verified are hidden, and a new member's key is
                        // asked about while its events are appended, or later after a failed
                        // ask), so its current state goes to them again (MSC4243 §2.6 item 39),
                        // and its account's device list becomes their business (§2.7): a
                        // change of the whole user, heard only here. A room being joined is
                        // verified before it is placed, so nothing is redelivered then.
                        if redeliver_state_of!(tx, &user_id) {
                            let account = format!("@{account_name}:{domain}");
                            crate::e2ee::announce_device_list_change!(tx, &account);
                        }
                        KeyState::Verified
                    }
                    (KeyState::Unverified, RemoteKeyVerdict::Unverified { outcome, next_attempt_ts }) => {
                        sqlx::query(
                            "UPDATE account_keys SET attempts = attempts + 1, last_attempt_ts = $1, \
                             next_attempt_ts = $2, last_outcome = $3 \
                             WHERE account_key = $4 AND domain = $5",
                        )
                        .bind(now)
                        .bind(*next_attempt_ts)
                        .bind(*outcome)
                        .bind(account_key)
                        .bind(domain)
                        .execute(&mut *tx)
                        .await?;
                        KeyState::Unverified
                    }
                    (KeyState::Unverified | KeyState::Verified, RemoteKeyVerdict::Erased { attestation }) => {
                        // Erasure deletes the name mapping (§2.4 item 30).
                        sqlx::query(
                            "UPDATE account_keys SET state = 'erased', account_name = NULL, \
                             erased_ts = $1, erasure_attestation = $2, next_attempt_ts = NULL \
                             WHERE account_key = $3 AND domain = $4",
                        )
                        .bind(now)
                        .bind(*attestation)
                        .bind(account_key)
                        .bind(domain)
                        .execute(&mut *tx)
                        .await?;
                        KeyState::Erased
                    }
                };
                states.push(next);
            }
            tx.commit().await?;
            Ok(states)
        })
    }

    /// The key-form ids of the remote keys verified under the account-name id `user_id`.
    pub async fn verified_key_forms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .member_ids_of(&[user_id])
            .await?
            .into_iter()
            .filter(|(member, _)| member != user_id)
            .map(|(member, _)| member)
            .collect())
    }

    /// The room member ids of each of `users` (account-name ids): the id itself, and in
    /// account-key rooms the key-form ids of the remote keys verified under that name
    /// (MSC4243.md §2.7: EDUs and device lists name users by account, membership is keyed by
    /// key). Pairs `(member id, account id)`; every user of `users` has at least its own.
    pub(crate) async fn member_ids_of(
        &self,
        users: &[&str],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out: Vec<(String, String)> = users
            .iter()
            .map(|u| ((*u).to_owned(), (*u).to_owned()))
            .collect();
        let named: Vec<(&str, &str)> = users
            .iter()
            .filter_map(|u| u.strip_prefix('@')?.split_once(':'))
            .collect();
        for chunk in named.chunks(ACCOUNTS_PER_STATEMENT) {
            let wanted: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(account_name = ${} AND domain = ${})",
                        2 * i + 1,
                        2 * i + 2
                    )
                })
                .collect();
            let sql = format!(
                "SELECT user_id, account_name, domain FROM account_keys \
                 WHERE state = 'verified' AND ({})",
                wanted.join(" OR ")
            );
            with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql.clone()));
                for (local, domain) in chunk {
                    query = query.bind(*local).bind(*domain);
                }
                for (member, name, domain) in query.fetch_all(pool).await? {
                    out.push((member, format!("@{name}:{domain}")));
                }
            });
        }
        Ok(out)
    }
}
