//! Operations that take several transactions, finished after a crash: room creation (the room
//! row, then one event per step), a profile change's fan-out (a new member event in each
//! joined room) and account deactivation (the account, then a leave per room, then erasure).
//!
//! Each is journaled in the store (`pending_operations`, migration 0035) in the same
//! transaction as its first step, with what resuming it needs, and the entry is deleted after
//! its last step. The process that starts an operation holds a lease on it ([`LEASE`]), renewed
//! while the operation runs. An operation that stops half-way (the process dies, the request
//! is dropped, a step fails on something other than the room's rules) keeps its entry: once its
//! lease runs out, any process of the server claims it (a conditional update that one claimer
//! wins) and runs it again from the start, every step first checking whether it is done
//! already, so that the end is the same as if nothing had stopped it. A graceful shutdown hands
//! back the leases of operations it is no longer running, so a restart resumes them at once.
//! Resuming runs at start-up and then every [`SWEEP_EVERY`].
//!
//! Leases are owned by `<instance>/<boot>`: the process's stable name (`instance_name` in the
//! configuration, one per process sharing the database, never two processes with one name at
//! once) and a name new at every start. A process claims at once the operations leased by an
//! earlier boot of its own instance, which is dead (after a SIGKILL, a power cut: no graceful
//! shutdown handed them back); another instance's leases it leaves until they run out, since
//! that process may be alive and running them.
//!
//! Test builds (the `failpoints` feature, enabled by the tests' dev-dependencies only) have
//! crash points ([`crash_point!`]) in the middle of each operation.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use myelin_store::{NewOperation, PendingOperation, Store};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use crate::{Error, Result, Services, accounts::AuthedUser, now_millis};

/// How long a process holds an operation without renewing its claim: how long after a crash
/// another process (or the restarted one) takes it over.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often the leases of running operations are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(20);
/// How often unclaimed operations are looked for (besides at start-up).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How many operations one sweep claims at most.
const CLAIM_BATCH: i64 = 32;

/// The kinds of journaled operations.
pub(crate) const CREATE_ROOM: &str = "create_room";
pub(crate) const PROFILE: &str = "profile";
pub(crate) const DEACTIVATE: &str = "deactivate";

/// Test-only crash point. With the `failpoints` feature, when the failpoint `$name` is
/// configured as `return(<subject>)` (`fail::cfg`) and `$subject` is that subject, the
/// enclosing function (or async block) returns an internal error there, as if the process had
/// died at that point: nothing after it runs, nothing before it is undone, and the operation's
/// journal entry stays. Configured as `return(hang:<subject>)`, it waits there for ever instead
/// (the process holding the operation, as a process that is about to be killed: tests that
/// SIGKILL a server binary stop it there, see [`failpoints_from_env`]). Without the feature it
/// expands to nothing.
macro_rules! crash_point {
    ($name:literal, $subject:expr) => {
        #[cfg(feature = "failpoints")]
        {
            let subject: &str = AsRef::<str>::as_ref($subject);
            match fail::eval($name, |configured: Option<String>| configured).flatten() {
                Some(configured) if configured == subject => {
                    return Err($crate::Error::Internal(format!(
                        "crash point {} reached",
                        $name
                    )));
                }
                Some(configured) if configured.strip_prefix("hang:") == Some(subject) => {
                    tracing::warn!(crash_point = $name, "hanging at a crash point");
                    std::future::pending::<()>().await;
                }
                _ => {}
            }
        }
    };
}
pub(crate) use crash_point;

/// Test builds only (the `failpoints` feature, which only the tests' dev-dependencies enable,
/// so only the binary `cargo test` builds has it): configures the failpoints the environment
/// variable `FAILPOINTS` names, as `name=actions;name=actions` (the `fail` crate's syntax), for
/// tests that run the server binary. Without the feature it does nothing, whatever the
/// environment says.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    if let Ok(points) = std::env::var("FAILPOINTS") {
        for point in points.split(';').filter(|point| !point.trim().is_empty()) {
            match point.split_once('=') {
                Some((name, actions)) => match fail::cfg(name.trim(), actions.trim()) {
                    Ok(()) => tracing::warn!(name, actions, "test build: failpoint configured"),
                    Err(err) => tracing::error!(name, %err, "test build: bad failpoint"),
                },
                None => tracing::error!(point, "test build: a failpoint needs name=actions"),
            }
        }
    }
}

/// Whether an error is this server's own failure (the database, mostly), which may go away if
/// the step is tried again: the operation is then left to be resumed. Any other error is the
/// room's rules, the input or another server refusing the step (or not answering, as the
/// steps that ask other servers already allow for), which trying again would not change.
pub(crate) fn is_transient(err: &Error) -> bool {
    matches!(err, Error::Internal(_))
}

/// This process's claims on journaled operations.
#[derive(Debug)]
pub struct Journal {
    store: Store,
    /// Names this process in the leases it takes: `<instance>/<boot>`, the boot new at every
    /// start.
    owner: String,
    /// `<instance>/`: the leases of this instance's earlier boots are claimed at once.
    instance_prefix: String,
    /// How long a lease lasts without being renewed ([`LEASE`]).
    lease: Duration,
    /// The operations this process is running now, whose leases it renews.
    running: Mutex<HashSet<i64>>,
    /// Becomes true when the first sweep after start-up has run what it claimed.
    first_sweep: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// An operation this process is running: its lease is renewed until this drops.
#[derive(Debug)]
pub(crate) struct Running {
    journal: Arc<Journal>,
    operation_id: i64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.journal
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.operation_id);
    }
}

impl Journal {
    /// The journal of the process named `instance` (`instance_name`), in a new boot.
    pub(crate) fn new(store: Store, instance: &str) -> Arc<Self> {
        let boot = crate::tokens::random_from(b"abcdefghijklmnopqrstuvwxyz0123456789", 16);
        // Test builds may lengthen the lease (the failpoint `operations::lease_secs`, configured
        // `return(<seconds>)`), so that a test can tell a claim at start-up from one after the
        // lease ran out without waiting for either.
        #[cfg(feature = "failpoints")]
        let lease = fail::eval("operations::lease_secs", |secs: Option<String>| {
            secs.and_then(|secs| secs.parse().ok())
        })
        .flatten()
        .map_or(LEASE, Duration::from_secs);
        #[cfg(not(feature = "failpoints"))]
        let lease = LEASE;
        Arc::new(Journal {
            store,
            owner: format!("{instance}/{boot}"),
            instance_prefix: format!("{instance}/"),
            lease,
            running: Mutex::default(),
            first_sweep: watch::Sender::new(false),
            tasks: Mutex::default(),
        })
    }

    /// An operation this process is about to start (and hold), for the store to journal with
    /// its first step.
    pub(crate) fn operation<'a>(
        &'a self,
        kind: &'a str,
        subject: &'a str,
        params: &'a str,
    ) -> NewOperation<'a> {
        let now = now_millis();
        NewOperation {
            kind,
            subject,
            params,
            owner: &self.owner,
            lease_until: now + self.lease_millis(),
            now,
        }
    }

    /// Marks a journaled operation as running here (its lease renewed) until the guard drops.
    pub(crate) fn running(self: &Arc<Self>, operation_id: i64) -> Running {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation_id);
        Running {
            journal: self.clone(),
            operation_id,
        }
    }

    /// The operation is over: its journal entry goes.
    pub(crate) async fn finish(&self, running: Running) -> Result<()> {
        self.store.finish_operation(running.operation_id).await?;
        Ok(())
    }

    /// Ends an operation that stopped on `err`: a refusal ends it (trying again would not
    /// change the answer), a transient failure leaves it to be resumed. Returns `err`.
    pub(crate) async fn stopped(&self, running: Running, err: Error) -> Error {
        if !is_transient(&err)
            && let Err(finish_err) = self.finish(running).await
        {
            tracing::warn!(%finish_err, "could not end a refused operation; it will be resumed");
        }
        err
    }

    fn running_ids(&self) -> Vec<i64> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    async fn renew(&self) {
        let until = now_millis() + self.lease_millis();
        for operation_id in self.running_ids() {
            match self
                .store
                .renew_operation(&self.owner, operation_id, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(operation_id, "an operation's lease is no longer ours")
                }
                Err(err) => tracing::warn!(operation_id, %err, "could not renew a lease"),
            }
        }
    }
}

impl Journal {
    fn lease_millis(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What finishing a deactivation needs (the user is the operation's subject).
#[derive(Debug, Serialize, Deserialize)]
struct Deactivation {
    erase: bool,
}

impl Services {
    /// `PUT /profile/{userId}/displayname`: stores the new display name (or removes it), then
    /// sends a member event carrying it into every room the user is joined to.
    pub async fn set_displayname(
        &self,
        user: &AuthedUser,
        target: &UserId,
        displayname: Option<&str>,
    ) -> Result<()> {
        let operation = self.journal.operation(PROFILE, target.as_str(), "{}");
        let id = self
            .profiles
            .set_displayname(user, target, displayname, &operation)
            .await?;
        self.fan_out_profile(target, id).await
    }

    /// `PUT /profile/{userId}/avatar_url`: as [`Services::set_displayname`].
    pub async fn set_avatar_url(
        &self,
        user: &AuthedUser,
        target: &UserId,
        avatar_url: Option<&str>,
    ) -> Result<()> {
        let operation = self.journal.operation(PROFILE, target.as_str(), "{}");
        let id = self
            .profiles
            .set_avatar_url(user, target, avatar_url, &operation)
            .await?;
        self.fan_out_profile(target, id).await
    }

    async fn fan_out_profile(&self, user: &UserId, operation_id: i64) -> Result<()> {
        let running = self.journal.running(operation_id);
        match self.rooms.profile_changed(user, false).await {
            Ok(()) => self.journal.finish(running).await,
            Err(err) => Err(self.journal.stopped(running, err).await),
        }
    }

    /// `POST /account/deactivate` after UIA: the account is deactivated at once (no more
    /// logins, every session ended), then it leaves every room and, for `erase`, its account
    /// key is erased; what a crash leaves of the second half is finished by the journal.
    pub async fn deactivate_account(&self, user: &AuthedUser, erase: bool) -> Result<()> {
        let params = serde_json::to_string(&Deactivation { erase })
            .map_err(|e| Error::Internal(e.to_string()))?;
        let operation = self
            .journal
            .operation(DEACTIVATE, user.user_id.as_str(), &params);
        let id = self.accounts.deactivate(user, &operation).await?;
        let running = self.journal.running(id);
        match self.finish_deactivation(&user.user_id, erase).await {
            Ok(()) => self.journal.finish(running).await,
            Err(err) => Err(self.journal.stopped(running, err).await),
        }
    }

    /// The second half of a deactivation: leave every room (the leaves are signed by the
    /// account key in account-key rooms, so erasure goes last), then erase.
    async fn finish_deactivation(&self, user: &UserId, erase: bool) -> Result<()> {
        self.rooms.leave_all(user).await?;
        if erase {
            self.accounts.erase_account_key(user).await?;
        }
        Ok(())
    }

    /// Runs a journaled operation claimed from the journal, from its start (each step checks
    /// whether it is done already).
    async fn resume(&self, operation: &PendingOperation) -> Result<()> {
        let subject = || {
            OwnedUserId::try_from(operation.subject.as_str())
                .map_err(|e| Error::InvalidParam(format!("journaled subject: {e}")))
        };
        match operation.kind.as_str() {
            CREATE_ROOM => self.rooms.resume_room_creation(&operation.params).await,
            PROFILE => self.rooms.profile_changed(&subject()?, true).await,
            DEACTIVATE => {
                let params: Deactivation = serde_json::from_str(&operation.params)
                    .map_err(|e| Error::BadJson(format!("journaled deactivation: {e}")))?;
                self.finish_deactivation(&subject()?, params.erase).await
            }
            other => Err(Error::Unknown(format!(
                "unknown kind of journaled operation {other}"
            ))),
        }
    }

    /// Claims the operations whose lease has run out, and those an earlier boot of this
    /// instance left, and runs them, all at once; returns when they have ended.
    pub async fn resume_operations(&self) -> Result<usize> {
        let journal = &self.journal;
        let now = now_millis();
        let claimed = self
            .store
            .claim_operations(
                &journal.owner,
                &journal.instance_prefix,
                now,
                now + journal.lease_millis(),
                CLAIM_BATCH,
            )
            .await?;
        let count = claimed.len();
        let runs = claimed.into_iter().map(|operation| {
            let running = journal.running(operation.operation_id);
            async move {
                tracing::info!(
                    operation_id = operation.operation_id,
                    kind = %operation.kind,
                    subject = %operation.subject,
                    "resuming an operation a crash or a failure left unfinished"
                );
                match self.resume(&operation).await {
                    Ok(()) => {
                        if let Err(err) = journal.finish(running).await {
                            tracing::warn!(operation_id = operation.operation_id, %err, "could not end a resumed operation");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(operation_id = operation.operation_id, kind = %operation.kind, %err, "a resumed operation stopped");
                        journal.stopped(running, err).await;
                    }
                }
            }
        });
        futures::future::join_all(runs).await;
        Ok(count)
    }

    /// Starts resuming journaled operations (now, then every [`SWEEP_EVERY`]) and renewing the
    /// leases of those running here.
    pub(crate) fn start_operations(self: &Arc<Self>) {
        let sweeper = {
            let services = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(err) = services.resume_operations().await {
                        tracing::warn!(%err, "could not look for unfinished operations");
                    }
                    services.journal.first_sweep.send_replace(true);
                    tokio::time::sleep(SWEEP_EVERY).await;
                }
            })
        };
        let renewer = {
            let journal = self.journal.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    journal.renew().await;
                }
            })
        };
        self.journal
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([sweeper, renewer]);
    }

    /// Stops resuming and renewing, and hands back the leases of the operations this process
    /// holds but no longer runs (one still running keeps its lease until it runs out).
    pub(crate) async fn stop_operations(&self) {
        let still_running = self.journal.running_ids();
        for task in self
            .journal
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        if let Err(err) = self
            .store
            .release_operations(&self.journal.owner, &still_running)
            .await
        {
            tracing::warn!(%err, "could not hand back the leases of unfinished operations");
        }
    }

    /// Waits until the first look for unfinished operations after start-up has run what it
    /// found (tests wait on it after a restart).
    pub async fn operations_resumed(&self) {
        let mut done = self.journal.first_sweep.subscribe();
        let _ = done.wait_for(|done| *done).await;
    }
}
