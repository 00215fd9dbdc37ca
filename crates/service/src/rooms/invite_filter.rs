//! Which invites a local user takes: the one rule every door asks about an invite of a local
//! user (local invites in `change_membership` and room creation, inbound federation invites in
//! `receive_invite`) and that `/sync` asks about each pending invite before showing it.
//!
//! The rule is MSC4155's processing order, first match wins:
//!
//! 1. the invitee's ignored-users list (`m.ignored_user_list`) names the inviter → ignore;
//! 2. their invite filter (global account data `org.matrix.msc4155.invite_permission_config`):
//!    `enabled: false` → allow; then `allowed_users` → allow, `ignored_users` → ignore,
//!    `blocked_users` → block; then `allowed_servers`, `ignored_servers`, `blocked_servers` the
//!    same way;
//! 3. otherwise allow.
//!
//! So user rules beat server rules both ways: an allowed user of a blocked server is allowed, a
//! blocked user of an allowed server blocked. The lists hold globs (`*`, `?`; spec appendix
//! "Glob-style matching"): `*_users` over the whole user ID, `*_servers` over the inviter's
//! server name without its port, without case, as server ACLs match. A missing, `null` or
//! malformed list is empty; `enabled` is true unless it is `false`.
//!
//! A blocked invite is refused (403 `M_INVITE_BLOCKED`, nothing stored); an ignored one is taken
//! as any other but never shown to the invitee. Invites stored before a rule blocked or ignored
//! them are not shown either (the MSC's SHOULD for pending invites), and show again when the
//! rule is lifted.

use std::collections::HashSet;

use ruma::UserId;
use serde_json::Value;

use super::Rooms;
use crate::Result;

/// The global account data type of the invite filter (MSC4155's unstable name).
pub const INVITE_PERMISSION_CONFIG: &str = "org.matrix.msc4155.invite_permission_config";

/// What an invitee's rules make of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteVerdict {
    /// Taken and shown.
    Allow,
    /// Taken but never shown to the invitee; the inviter is not told.
    Ignore,
    /// Refused.
    Block,
}

/// One user's invite rules, read once and asked about any number of inviters.
#[derive(Debug, Clone, Default)]
pub struct InviteFilter {
    /// `m.ignored_user_list`.
    ignored_list: HashSet<String>,
    /// The filter's `enabled` (true unless `false`).
    enabled: bool,
    allowed_users: Vec<String>,
    ignored_users: Vec<String>,
    blocked_users: Vec<String>,
    allowed_servers: Vec<String>,
    ignored_servers: Vec<String>,
    blocked_servers: Vec<String>,
}

impl InviteFilter {
    /// The rules of a filter's content (any JSON: what is not a list of strings counts as
    /// empty) and an ignored-users list.
    pub fn new(config: &Value, ignored_list: HashSet<String>) -> Self {
        let list = |field: &str| super::strings_of(&config[field]);
        InviteFilter {
            ignored_list,
            enabled: config["enabled"].as_bool() != Some(false),
            allowed_users: list("allowed_users"),
            ignored_users: list("ignored_users"),
            blocked_users: list("blocked_users"),
            allowed_servers: list("allowed_servers"),
            ignored_servers: list("ignored_servers"),
            blocked_servers: list("blocked_servers"),
        }
    }

    /// What these rules make of an invite from `inviter` (the module docs' order).
    pub fn verdict(&self, inviter: &UserId) -> InviteVerdict {
        if self.ignored_list.contains(inviter.as_str()) {
            return InviteVerdict::Ignore;
        }
        if !self.enabled {
            return InviteVerdict::Allow;
        }
        let user = inviter.as_str();
        let host = inviter.server_name().host();
        let user_in = |globs: &[String]| globs.iter().any(|g| glob_matches(g, user, false));
        let server_in = |globs: &[String]| globs.iter().any(|g| glob_matches(g, host, true));
        let steps: [(bool, InviteVerdict); 6] = [
            (user_in(&self.allowed_users), InviteVerdict::Allow),
            (user_in(&self.ignored_users), InviteVerdict::Ignore),
            (user_in(&self.blocked_users), InviteVerdict::Block),
            (server_in(&self.allowed_servers), InviteVerdict::Allow),
            (server_in(&self.ignored_servers), InviteVerdict::Ignore),
            (server_in(&self.blocked_servers), InviteVerdict::Block),
        ];
        steps
            .into_iter()
            .find_map(|(matched, verdict)| matched.then_some(verdict))
            .unwrap_or(InviteVerdict::Allow)
    }
}

/// Whether another server's refusal of an invite (its error body) is its user's invite rules:
/// `M_INVITE_BLOCKED`, or MSC4155's unstable name for it.
pub(super) fn is_invite_blocked(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|v| {
        matches!(
            v["errcode"].as_str(),
            Some("M_INVITE_BLOCKED" | "ORG.MATRIX.MSC4155.M_INVITE_BLOCKED")
        )
    })
}

/// The spec's glob-style matching over the whole of `text`: `*` is any run of characters
/// (none too), `?` exactly one, anything else itself. Linear backtracking to the last `*`, so
/// a hostile pattern costs at most `pattern × text` steps.
fn glob_matches(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let same = |p: char, t: char| p == '?' || p == t || (ignore_case && p.eq_ignore_ascii_case(&t));
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The last `*` seen and the text position it is tried to stop at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && same(pattern[p], text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the `*` take one more character and try again after it.
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl Rooms {
    /// `invitee`'s invite rules (see the module docs), from the cached account data.
    pub(crate) async fn invite_filter(&self, invitee: &UserId) -> Result<InviteFilter> {
        let config = self
            .store
            .global_account_data_cached(invitee.as_str(), INVITE_PERMISSION_CONFIG)
            .await?
            .and_then(|content| serde_json::from_str::<Value>(&content).ok())
            .unwrap_or(Value::Null);
        Ok(InviteFilter::new(
            &config,
            self.ignored_users(invitee).await?,
        ))
    }

    /// The door's answer to an invite `invitee`'s rules block: 403 `M_INVITE_BLOCKED` (the
    /// MSC's error, now the spec's), before anything is stored. Allowed and ignored invites
    /// pass (an ignored one is hidden by `/sync`).
    pub(crate) async fn refuse_blocked_invite(
        &self,
        invitee: &UserId,
        inviter: &UserId,
    ) -> Result<()> {
        if self.invite_filter(invitee).await?.verdict(inviter) == InviteVerdict::Block {
            return Err(crate::Error::InviteBlocked(format!(
                "{invitee} does not take invites from {inviter}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;
    use serde_json::json;

    use super::*;

    fn verdict(config: Value, inviter: &UserId) -> InviteVerdict {
        InviteFilter::new(&config, HashSet::new()).verdict(inviter)
    }

    #[test]
    fn globs_match_the_whole_text() {
        assert!(glob_matches("hs*", "hs2", false));
        assert!(glob_matches("*", "", false));
        assert!(glob_matches("@user-?*", "@user-1:hs1", false));
        assert!(!glob_matches("@user-?*", "@user-", false));
        assert!(glob_matches("a*b*c", "aXbYbZc", false));
        assert!(!glob_matches("a*b*c", "aXbYbZ", false));
        assert!(!glob_matches("hs", "hs2", false));
        assert!(!glob_matches("hs2", "hs", false));
        assert!(glob_matches("?", "é", false));
        assert!(!glob_matches("EVIL.example", "evil.example", false));
        assert!(glob_matches("EVIL.example", "evil.example", true));
    }

    #[test]
    fn no_config_or_an_empty_or_disabled_one_allows_everyone() {
        let bob = user_id!("@bob:hs2");
        assert_eq!(verdict(Value::Null, bob), InviteVerdict::Allow);
        assert_eq!(verdict(json!({}), bob), InviteVerdict::Allow);
        // null and malformed lists are empty.
        let odd = json!({"blocked_users": null, "blocked_servers": "*", "ignored_users": [3]});
        assert_eq!(verdict(odd, bob), InviteVerdict::Allow);
        // `enabled: false` turns the filter off; anything else leaves it on.
        let off = json!({"enabled": false, "blocked_servers": ["*"]});
        assert_eq!(verdict(off, bob), InviteVerdict::Allow);
        let on = json!({"enabled": "no", "blocked_servers": ["*"]});
        assert_eq!(verdict(on, bob), InviteVerdict::Block);
    }

    #[test]
    fn users_and_servers_are_blocked_and_ignored_by_glob() {
        let bob = user_id!("@bob:hs2");
        let carol = user_id!("@carol:hs1");
        let by_user = json!({"blocked_users": ["@bob:hs2"]});
        assert_eq!(verdict(by_user.clone(), bob), InviteVerdict::Block);
        assert_eq!(verdict(by_user, carol), InviteVerdict::Allow);
        let by_server = json!({"ignored_servers": ["hs2"]});
        assert_eq!(verdict(by_server.clone(), bob), InviteVerdict::Ignore);
        assert_eq!(verdict(by_server, carol), InviteVerdict::Allow);
        let every_hs = json!({"blocked_servers": ["hs*"]});
        assert_eq!(verdict(every_hs.clone(), bob), InviteVerdict::Block);
        assert_eq!(verdict(every_hs, carol), InviteVerdict::Block);
        let user_glob = json!({"blocked_users": ["@b?b:*"]});
        assert_eq!(verdict(user_glob.clone(), bob), InviteVerdict::Block);
        assert_eq!(verdict(user_glob, carol), InviteVerdict::Allow);
        // Server globs match the name without its port, in any case.
        let ported = user_id!("@dan:Evil.Example:8448");
        let evil = json!({"blocked_servers": ["evil.example"]});
        assert_eq!(verdict(evil, ported), InviteVerdict::Block);
        let with_port = json!({"blocked_servers": ["evil.example:8448"]});
        assert_eq!(verdict(with_port, ported), InviteVerdict::Allow);
    }

    #[test]
    fn user_rules_come_before_server_rules() {
        let bob = user_id!("@bob:hs2");
        let evil_bob = user_id!("@evil_bob:hs2");
        // An allowed user of a blocked server.
        let config = json!({"allowed_users": ["@bob:hs2"], "blocked_servers": ["hs2"]});
        assert_eq!(verdict(config.clone(), bob), InviteVerdict::Allow);
        assert_eq!(verdict(config, evil_bob), InviteVerdict::Block);
        // A blocked user of an allowed server.
        let config = json!({"blocked_users": ["@evil_bob:hs2"], "allowed_servers": ["hs2"]});
        assert_eq!(verdict(config.clone(), evil_bob), InviteVerdict::Block);
        assert_eq!(verdict(config, bob), InviteVerdict::Allow);
        // An ignored user of an allowed server.
        let config = json!({"ignored_users": ["@bob:hs2"], "allowed_servers": ["*"]});
        assert_eq!(verdict(config, bob), InviteVerdict::Ignore);
        // Within a level: allowed, then ignored, then blocked.
        let config = json!({"ignored_users": ["@bob:hs2"], "blocked_users": ["@bob:hs2"],
            "allowed_users": ["@bob:hs2"]});
        assert_eq!(verdict(config, bob), InviteVerdict::Allow);
        let config = json!({"ignored_users": ["@bob:hs2"], "blocked_users": ["@bob:hs2"]});
        assert_eq!(verdict(config, bob), InviteVerdict::Ignore);
        let config = json!({"ignored_servers": ["hs2"], "blocked_servers": ["*"]});
        assert_eq!(verdict(config, bob), InviteVerdict::Ignore);
    }

    #[test]
    fn the_ignored_users_list_comes_first() {
        let bob = user_id!("@bob:hs2");
        let ignored: HashSet<String> = [bob.to_string()].into();
        for config in [
            Value::Null,
            json!({"allowed_users": ["@bob:hs2"]}),
            json!({"blocked_users": ["@bob:hs2"]}),
            json!({"enabled": false}),
        ] {
            assert_eq!(
                InviteFilter::new(&config, ignored.clone()).verdict(bob),
                InviteVerdict::Ignore,
                "{config}"
            );
        }
    }

    #[test]
    fn a_refusal_for_invite_rules_is_recognised() {
        assert!(is_invite_blocked(r#"{"errcode":"M_INVITE_BLOCKED"}"#));
        assert!(is_invite_blocked(
            r#"{"errcode":"ORG.MATRIX.MSC4155.M_INVITE_BLOCKED","error":"no"}"#
        ));
        assert!(!is_invite_blocked(r#"{"errcode":"M_FORBIDDEN"}"#));
        assert!(!is_invite_blocked("not json"));
    }
}
