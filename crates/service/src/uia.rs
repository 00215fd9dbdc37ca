//! User-interactive authentication: the flows an operation offers, sessions that remember which
//! stages a client completed, and the 401 challenge that tells it what is left.
//!
//! Sessions live in memory: they last minutes, and a restart only makes a client start its flow
//! again. Each session is bound to the operation that created it, so completing `m.login.dummy`
//! for registration cannot be replayed to delete a device.
//!
//! Bounds: one client address holds at most [`MAX_SESSIONS_PER_ADDRESS`] live sessions (a new
//! one replaces its oldest), the server at most [`MAX_SESSIONS`] (past it a new session is 429
//! `M_LIMIT_EXCEEDED`); and a user who gets their password wrong [`MAX_PASSWORD_FAILURES`]
//! times within [`PASSWORD_FAILURE_WINDOW`] may not try again until the oldest failure ages
//! out, so a stolen access token cannot be used to guess the password.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::Error;

/// How long a client has to finish a flow.
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Bound on live sessions, so unauthenticated clients cannot grow memory without limit.
pub const MAX_SESSIONS: usize = 100_000;
/// Bound on the live sessions of one client address (an IPv6 client: its /64).
pub const MAX_SESSIONS_PER_ADDRESS: usize = 32;
/// Wrong passwords a user may give in UIA within [`PASSWORD_FAILURE_WINDOW`].
pub const MAX_PASSWORD_FAILURES: usize = 5;
pub const PASSWORD_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Past this many users with recent failures, users whose failures all aged out are forgotten.
const PRUNE_FAILURES_ABOVE: usize = 10_000;

/// A stage of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Dummy,
    Password,
    RegistrationToken,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dummy => "m.login.dummy",
            Stage::Password => "m.login.password",
            Stage::RegistrationToken => "m.login.registration_token",
        }
    }
}

/// What the client sent in `auth`, already checked by the caller (the caller knows how to
/// verify a password or a registration token); `Failed` carries why a check failed.
#[derive(Debug, Clone)]
pub enum Credential {
    Completed(Stage),
    Failed { stage: Stage, message: String },
    Unsupported(String),
}

/// The 401 body: flows, the session, what is completed, and the error of the last attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct UiaChallenge {
    pub flows: Vec<Vec<Stage>>,
    pub session: String,
    pub completed: Vec<Stage>,
    /// `(errcode, message)` of the stage that failed, if one did.
    pub error: Option<(&'static str, String)>,
}

#[derive(Debug)]
struct Session {
    operation: String,
    completed: Vec<Stage>,
    created: Instant,
    /// The client address that opened it, as counted for the per-address bound.
    owner: IpAddr,
}

/// The live UIA sessions.
#[derive(Debug)]
pub struct UiaSessions {
    sessions: Mutex<HashMap<String, Session>>,
    max_sessions: usize,
    max_per_address: usize,
}

impl Default for UiaSessions {
    fn default() -> Self {
        UiaSessions {
            sessions: Mutex::default(),
            max_sessions: MAX_SESSIONS,
            max_per_address: MAX_SESSIONS_PER_ADDRESS,
        }
    }
}

impl UiaSessions {
    /// Runs one round of UIA for `operation` (e.g. `register`, `delete_device:@u:hs:DEV`)
    /// from a client at `address`. Returns `Ok(())` when a flow is complete (and forgets the
    /// session), otherwise the challenge to send back.
    pub fn check(
        &self,
        operation: &str,
        flows: &[Vec<Stage>],
        session: Option<&str>,
        credential: Option<Credential>,
        address: IpAddr,
    ) -> Result<(), Error> {
        let owner = crate::rate_limit::address_bucket(address);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);

        // An unknown or foreign session id starts a new session rather than failing: the client
        // learns the new id from the challenge.
        let id = match session {
            Some(id) if sessions.get(id).is_some_and(|s| s.operation == operation) => id.to_owned(),
            _ => {
                // One address: its oldest session makes room, so a client that opens many
                // only ever loses its own.
                let mut own: Vec<(&String, Instant)> = sessions
                    .iter()
                    .filter(|(_, s)| s.owner == owner)
                    .map(|(id, s)| (id, s.created))
                    .collect();
                if own.len() >= self.max_per_address {
                    own.sort_by_key(|(_, created)| *created);
                    let evict: Vec<String> = own[..=own.len() - self.max_per_address]
                        .iter()
                        .map(|(id, _)| (*id).clone())
                        .collect();
                    for id in evict {
                        sessions.remove(&id);
                    }
                }
                // The whole server: refuse new sessions until the oldest expires.
                if sessions.len() >= self.max_sessions {
                    let oldest = sessions.values().map(|s| s.created).min();
                    let wait = oldest.map_or(SESSION_LIFETIME, |created| {
                        SESSION_LIFETIME.saturating_sub(created.elapsed())
                    });
                    return Err(Error::LimitExceeded {
                        retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                    });
                }
                let id = crate::tokens::random_from(
                    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                    24,
                );
                sessions.insert(
                    id.clone(),
                    Session {
                        operation: operation.to_owned(),
                        completed: Vec::new(),
                        created: Instant::now(),
                        owner,
                    },
                );
                id
            }
        };
        let entry = sessions.get_mut(&id).expect("session inserted above");

        let mut error = None;
        match credential {
            Some(Credential::Completed(stage)) => {
                if flows.iter().any(|flow| flow.contains(&stage)) {
                    if !entry.completed.contains(&stage) {
                        entry.completed.push(stage);
                    }
                } else {
                    error = Some((
                        "M_UNRECOGNIZED",
                        format!("{} is not a stage of this operation", stage.as_str()),
                    ));
                }
            }
            Some(Credential::Failed { message, .. }) => error = Some(("M_FORBIDDEN", message)),
            Some(Credential::Unsupported(kind)) => {
                error = Some((
                    "M_UNRECOGNIZED",
                    format!("Unsupported authentication type {kind}"),
                ))
            }
            None => {}
        }

        let done = flows
            .iter()
            .any(|flow| flow.iter().all(|stage| entry.completed.contains(stage)));
        if done && error.is_none() {
            sessions.remove(&id);
            return Ok(());
        }
        Err(Error::Uia(Box::new(UiaChallenge {
            flows: flows.to_vec(),
            session: id,
            completed: entry.completed.clone(),
            error,
        })))
    }
}

/// Recent wrong passwords per user, for the bound on password guesses through UIA.
#[derive(Debug, Default)]
pub struct PasswordFailures {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl PasswordFailures {
    /// `Ok` when `user` may try a password now; otherwise 429 `M_LIMIT_EXCEEDED` with the time
    /// until their oldest recent failure ages out. Asked before the password is checked, so a
    /// right guess past the bound does not get through either.
    pub fn check(&self, user: &str) -> Result<(), Error> {
        self.check_at(user, Instant::now())
    }

    fn check_at(&self, user: &str, now: Instant) -> Result<(), Error> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(recent) = failures.get_mut(user) else {
            return Ok(());
        };
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= PASSWORD_FAILURE_WINDOW)
        {
            recent.pop_front();
        }
        match recent.front() {
            Some(oldest) if recent.len() >= MAX_PASSWORD_FAILURES => {
                let wait = PASSWORD_FAILURE_WINDOW.saturating_sub(now.duration_since(*oldest));
                Err(Error::LimitExceeded {
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong password by `user`.
    pub fn record(&self, user: &str) {
        self.record_at(user, Instant::now());
    }

    fn record_at(&self, user: &str, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > PRUNE_FAILURES_ABOVE {
            failures.retain(|_, recent| {
                recent
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < PASSWORD_FAILURE_WINDOW)
            });
        }
        let recent = failures.entry(user.to_owned()).or_default();
        recent.push_back(now);
        // Only the newest MAX_PASSWORD_FAILURES matter to the bound.
        while recent.len() > MAX_PASSWORD_FAILURES {
            recent.pop_front();
        }
    }

    /// A right password ends the count.
    pub fn clear(&self, user: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn check(
        uia: &UiaSessions,
        operation: &str,
        flows: &[Vec<Stage>],
        session: Option<&str>,
        credential: Option<Credential>,
    ) -> Result<(), Error> {
        uia.check(operation, flows, session, credential, ADDR)
    }

    fn challenge(result: Result<(), Error>) -> UiaChallenge {
        match result {
            Err(Error::Uia(c)) => *c,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    #[test]
    fn no_auth_gets_flows_then_completing_the_stage_passes() {
        let uia = UiaSessions::default();
        let flows = vec![vec![Stage::Dummy]];
        let c = challenge(check(&uia, "register", &flows, None, None));
        assert_eq!(c.flows, flows);
        assert!(c.completed.is_empty() && c.error.is_none());
        check(
            &uia,
            "register",
            &flows,
            Some(&c.session),
            Some(Credential::Completed(Stage::Dummy)),
        )
        .unwrap();
    }

    #[test]
    fn completed_in_one_request_without_session() {
        let uia = UiaSessions::default();
        check(
            &uia,
            "register",
            &[vec![Stage::Dummy]],
            None,
            Some(Credential::Completed(Stage::Dummy)),
        )
        .unwrap();
    }

    #[test]
    fn failed_stage_reports_forbidden_and_keeps_session() {
        let uia = UiaSessions::default();
        let flows = vec![vec![Stage::Password]];
        let first = challenge(check(&uia, "op", &flows, None, None));
        let failed = challenge(check(
            &uia,
            "op",
            &flows,
            Some(&first.session),
            Some(Credential::Failed {
                stage: Stage::Password,
                message: "Invalid password".to_owned(),
            }),
        ));
        assert_eq!(failed.session, first.session);
        assert_eq!(
            failed.error,
            Some(("M_FORBIDDEN", "Invalid password".to_owned()))
        );
    }

    #[test]
    fn stage_of_another_flow_or_session_of_another_operation_does_not_count() {
        let uia = UiaSessions::default();
        let c = challenge(check(&uia, "register", &[vec![Stage::Dummy]], None, None));
        // The register session cannot be used for another operation.
        let other = challenge(check(
            &uia,
            "delete_device",
            &[vec![Stage::Password]],
            Some(&c.session),
            Some(Credential::Completed(Stage::Dummy)),
        ));
        assert_ne!(other.session, c.session);
        assert!(other.completed.is_empty());
        assert!(other.error.is_some());
    }

    #[test]
    fn session_is_single_use() {
        let uia = UiaSessions::default();
        let flows = vec![vec![Stage::Dummy]];
        let c = challenge(check(&uia, "register", &flows, None, None));
        check(
            &uia,
            "register",
            &flows,
            Some(&c.session),
            Some(Credential::Completed(Stage::Dummy)),
        )
        .unwrap();
        let again = challenge(check(&uia, "register", &flows, Some(&c.session), None));
        assert_ne!(again.session, c.session);
    }

    #[test]
    fn one_address_keeps_its_newest_sessions_and_others_keep_theirs() {
        let uia = UiaSessions::default();
        let flows = vec![vec![Stage::Dummy]];
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        let theirs = challenge(uia.check("register", &flows, None, None, other)).session;
        let mine: Vec<String> = (0..MAX_SESSIONS_PER_ADDRESS + 5)
            .map(|_| challenge(check(&uia, "register", &flows, None, None)).session)
            .collect();
        let live = |id: &str| uia.sessions.lock().unwrap().contains_key(id);
        assert_eq!(
            mine.iter().filter(|id| live(id)).count(),
            MAX_SESSIONS_PER_ADDRESS
        );
        assert!(!live(&mine[0]) && live(mine.last().unwrap()));
        // Another address (in another /64) is untouched, and its session still completes.
        assert!(live(&theirs));
        // The same /64 counts as one address.
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..MAX_SESSIONS_PER_ADDRESS {
            let _ = uia.check("register", &flows, None, None, neighbour);
        }
        assert!(!live(&theirs));
    }

    #[test]
    fn past_the_server_wide_bound_a_new_session_is_429_and_live_ones_go_on() {
        let uia = UiaSessions {
            max_sessions: 8,
            max_per_address: 2,
            ..UiaSessions::default()
        };
        let flows = vec![vec![Stage::Dummy]];
        let sessions: Vec<String> = (1..=8u8)
            .map(|n| {
                let address = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, n));
                challenge(uia.check("register", &flows, None, None, address)).session
            })
            .collect();
        let late = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1));
        match uia.check("register", &flows, None, None, late) {
            Err(Error::LimitExceeded { retry_after_ms }) => {
                assert!(retry_after_ms > 0 && retry_after_ms <= 15 * 60 * 1000)
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // A live session still completes, and that makes room for the late client.
        uia.check(
            "register",
            &flows,
            Some(&sessions[0]),
            Some(Credential::Completed(Stage::Dummy)),
            late,
        )
        .unwrap();
        assert!(matches!(
            uia.check("register", &flows, None, None, late),
            Err(Error::Uia(_))
        ));
    }

    #[test]
    fn password_failures_past_the_bound_wait_for_the_window() {
        let failures = PasswordFailures::default();
        let start = Instant::now();
        for i in 0..MAX_PASSWORD_FAILURES {
            failures.check_at("@a:x", start).unwrap();
            failures.record_at("@a:x", start + Duration::from_secs(i as u64));
        }
        let later = start + Duration::from_secs(10);
        match failures.check_at("@a:x", later) {
            Err(Error::LimitExceeded { retry_after_ms }) => assert_eq!(retry_after_ms, 50_000),
            other => panic!("expected a limit, got {other:?}"),
        }
        // Another user is not affected; the window passing lifts it; a success clears it.
        failures.check_at("@b:x", later).unwrap();
        failures
            .check_at("@a:x", start + PASSWORD_FAILURE_WINDOW)
            .unwrap();
        failures.clear("@a:x");
        failures.check_at("@a:x", later).unwrap();
    }
}
