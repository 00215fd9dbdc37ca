//! User-interactive authentication: the flows an operation offers, sessions that remember which
//! stages a client completed, and the 401 challenge that tells it what is left.
//!
//! Sessions live in memory: they last minutes, and a restart only makes a client start its flow
//! again. Each session is bound to the operation that created it, so completing `m.login.dummy`
//! for registration cannot be replayed to delete a device.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::Error;

/// How long a client has to finish a flow.
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Bound on live sessions, so unauthenticated clients cannot grow memory without limit.
const MAX_SESSIONS: usize = 100_000;

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
}

/// The live UIA sessions.
#[derive(Debug, Default)]
pub struct UiaSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

impl UiaSessions {
    /// Runs one round of UIA for `operation` (e.g. `register`, `delete_device:@u:hs:DEV`).
    /// Returns `Ok(())` when a flow is complete (and forgets the session), otherwise the
    /// challenge to send back.
    pub fn check(
        &self,
        operation: &str,
        flows: &[Vec<Stage>],
        session: Option<&str>,
        credential: Option<Credential>,
    ) -> Result<(), Error> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);

        // An unknown or foreign session id starts a new session rather than failing: the client
        // learns the new id from the challenge.
        let id = match session {
            Some(id) if sessions.get(id).is_some_and(|s| s.operation == operation) => id.to_owned(),
            _ => {
                if sessions.len() >= MAX_SESSIONS {
                    return Err(Error::Internal(
                        "too many authentication sessions".to_owned(),
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = challenge(uia.check("register", &flows, None, None));
        assert_eq!(c.flows, flows);
        assert!(c.completed.is_empty() && c.error.is_none());
        uia.check(
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
        uia.check(
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
        let first = challenge(uia.check("op", &flows, None, None));
        let failed = challenge(uia.check(
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
        let c = challenge(uia.check("register", &[vec![Stage::Dummy]], None, None));
        // The register session cannot be used for another operation.
        let other = challenge(uia.check(
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
        let c = challenge(uia.check("register", &flows, None, None));
        uia.check(
            "register",
            &flows,
            Some(&c.session),
            Some(Credential::Completed(Stage::Dummy)),
        )
        .unwrap();
        let again = challenge(uia.check("register", &flows, Some(&c.session), None));
        assert_ne!(again.session, c.session);
    }
}
