//! `/query/accounts` answers (MSC4243.md §2.3, §2.4): the signed per-key objects a server
//! serves for its own users ([`signed_account_answer`], [`signed_erasure`]) and the pure
//! classifier a requester applies to one per-key answer ([`classify_answer`]).
//!
//! The classifier holds every rule of §2.3 item 20 (b)–(e) and of erasure (item 27, Q11) that
//! can be judged from the answer alone; item (a), that the answer came over TLS verified for
//! the claimed domain, is the transport's business and the caller's precondition. Keeping the
//! judgement pure means every verdict is unit-tested and two callers cannot judge differently.

use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::account_key::{KeyFormUserId, looks_like_account_key};
use crate::signing::{KeyPair, sign_json_with_account_key, verify_json_with_account_key};

/// The errcode of an erased account's answer.
pub const M_ERASED: &str = "M_ERASED";

/// What one per-key answer means for the key-form user id it was asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerVerdict {
    /// (b)–(e) all hold: the domain vouches for the key under this account name.
    Verified { account_name: String },
    /// A validly signed `M_ERASED` for this domain: terminal.
    Erased,
    /// Anything else: the key stays (or becomes) Unverified, for the reason given.
    Unverified(Unverified),
}

/// Why an answer does not verify a key. `Missing` and `Unknown` are the two the retry policy
/// tells apart (item 24: retry servers that never answered before those that disowned the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unverified {
    /// The key is not in the answer at all (item 18: try again later).
    Missing,
    /// The domain answered an errcode other than a valid `M_ERASED` (usually `M_UNKNOWN`).
    Unknown { errcode: String },
    /// Not an object, or `account_name`/`domain` missing or not strings (item 20 (b)).
    Malformed,
    /// The signature by the key itself is missing or does not verify (item 20 (c), 27).
    BadSignature,
    /// The signed `domain` is not the domain of the key-form user id (item 20 (d), Q11).
    WrongDomain,
    /// `account_name` is not a strict account name, or looks like an account key (item 20 (e)).
    BadAccountName,
}

/// Classify the answer a domain gave for `user` (`None` when the key was absent).
pub fn classify_answer(
    user: &KeyFormUserId,
    answer: Option<&CanonicalJsonObject>,
) -> AnswerVerdict {
    let Some(answer) = answer else {
        return AnswerVerdict::Unverified(Unverified::Missing);
    };
    let string = |field: &str| match answer.get(field) {
        Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    if let Some(errcode) = answer.get("errcode") {
        let CanonicalJsonValue::String(errcode) = errcode else {
            return AnswerVerdict::Unverified(Unverified::Malformed);
        };
        if errcode != M_ERASED {
            return AnswerVerdict::Unverified(Unverified::Unknown {
                errcode: errcode.clone(),
            });
        }
        // An unsigned or foreign-domain erasure is ignored, never trusted: the signature stops a
        // DNS-takeover attacker from erasing users, the domain stops replay elsewhere.
        if verify_json_with_account_key(answer, &user.key).is_err() {
            return AnswerVerdict::Unverified(Unverified::BadSignature);
        }
        return match string("domain") {
            Some(domain) if domain == user.server_name => AnswerVerdict::Erased,
            Some(_) => AnswerVerdict::Unverified(Unverified::WrongDomain),
            None => AnswerVerdict::Unverified(Unverified::Malformed),
        };
    }
    let (Some(account_name), Some(domain)) = (string("account_name"), string("domain")) else {
        return AnswerVerdict::Unverified(Unverified::Malformed);
    };
    if verify_json_with_account_key(answer, &user.key).is_err() {
        return AnswerVerdict::Unverified(Unverified::BadSignature);
    }
    if domain != user.server_name {
        return AnswerVerdict::Unverified(Unverified::WrongDomain);
    }
    if !is_strict_account_name(account_name, domain) {
        return AnswerVerdict::Unverified(Unverified::BadAccountName);
    }
    AnswerVerdict::Verified {
        account_name: account_name.to_owned(),
    }
}

/// A strict (non-historical) localpart that forms a user id of at most 255 bytes on `domain`
/// and is not in the account-key namespace (MSC4243.md §4 Q4).
pub fn is_strict_account_name(account_name: &str, domain: &str) -> bool {
    !account_name.is_empty()
        && account_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/+".contains(c))
        && 1 + account_name.len() + 1 + domain.len() <= 255
        && !looks_like_account_key(account_name)
}

/// The per-key answer for one of this server's own accounts:
/// `{account_name, domain, signatures}` signed by the account key (entity = bare key,
/// `ed25519:1`; the key itself is the map key, not inside the object: item 19).
pub fn signed_account_answer(
    key: &KeyPair,
    account_name: &str,
    domain: &str,
) -> CanonicalJsonObject {
    let mut object = CanonicalJsonObject::new();
    object.insert(
        "account_name".to_owned(),
        CanonicalJsonValue::String(account_name.to_owned()),
    );
    object.insert(
        "domain".to_owned(),
        CanonicalJsonValue::String(domain.to_owned()),
    );
    sign_json_with_account_key(&mut object, key)
        .expect("signing an object of two strings cannot fail");
    object
}

/// The erasure attestation `{errcode: "M_ERASED", domain, signatures}`, made once at erasure
/// time (before the private key is destroyed) and served from then on.
pub fn signed_erasure(key: &KeyPair, domain: &str) -> CanonicalJsonObject {
    let mut object = CanonicalJsonObject::new();
    object.insert(
        "errcode".to_owned(),
        CanonicalJsonValue::String(M_ERASED.to_owned()),
    );
    object.insert(
        "domain".to_owned(),
        CanonicalJsonValue::String(domain.to_owned()),
    );
    sign_json_with_account_key(&mut object, key)
        .expect("signing an object of two strings cannot fail");
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(seed: u8, domain: &str) -> (KeyPair, KeyFormUserId) {
        let key = KeyPair::from_seed(&[seed; 32]);
        let id = KeyFormUserId {
            key: key.account_key(),
            server_name: domain.to_owned(),
        };
        (key, id)
    }

    fn unknown(errcode: &str) -> CanonicalJsonObject {
        let mut o = CanonicalJsonObject::new();
        o.insert(
            "errcode".to_owned(),
            CanonicalJsonValue::String(errcode.to_owned()),
        );
        o
    }

    #[test]
    fn a_signed_answer_for_the_domain_verifies() {
        let (key, alice) = user(1, "a.example");
        let answer = signed_account_answer(&key, "alice", "a.example");
        assert_eq!(
            classify_answer(&alice, Some(&answer)),
            AnswerVerdict::Verified {
                account_name: "alice".to_owned()
            }
        );
    }

    #[test]
    fn a_missing_key_is_unverified_missing() {
        let (_, alice) = user(1, "a.example");
        assert_eq!(
            classify_answer(&alice, None),
            AnswerVerdict::Unverified(Unverified::Missing)
        );
    }

    #[test]
    fn m_unknown_and_other_errcodes_are_unverified_unknown() {
        let (_, alice) = user(1, "a.example");
        for code in ["M_UNKNOWN", "M_FORBIDDEN"] {
            assert_eq!(
                classify_answer(&alice, Some(&unknown(code))),
                AnswerVerdict::Unverified(Unverified::Unknown {
                    errcode: code.to_owned()
                })
            );
        }
        let mut numeric = CanonicalJsonObject::new();
        numeric.insert(
            "errcode".to_owned(),
            CanonicalJsonValue::Integer(1u8.into()),
        );
        assert_eq!(
            classify_answer(&alice, Some(&numeric)),
            AnswerVerdict::Unverified(Unverified::Malformed)
        );
    }

    #[test]
    fn b_without_name_or_domain_is_malformed() {
        let (key, alice) = user(1, "a.example");
        for drop in ["account_name", "domain"] {
            let mut answer = signed_account_answer(&key, "alice", "a.example");
            answer.remove(drop);
            assert_eq!(
                classify_answer(&alice, Some(&answer)),
                AnswerVerdict::Unverified(Unverified::Malformed),
                "{drop}"
            );
        }
    }

    #[test]
    fn c_signature_by_another_key_or_none_is_refused() {
        let (_, alice) = user(1, "a.example");
        let (other, _) = user(2, "a.example");
        let forged = signed_account_answer(&other, "alice", "a.example");
        assert_eq!(
            classify_answer(&alice, Some(&forged)),
            AnswerVerdict::Unverified(Unverified::BadSignature)
        );
        let mut unsigned = forged.clone();
        unsigned.remove("signatures");
        assert_eq!(
            classify_answer(&alice, Some(&unsigned)),
            AnswerVerdict::Unverified(Unverified::BadSignature)
        );
        // A valid signature over other content (the name changed after signing).
        let (key, _) = user(1, "a.example");
        let mut tampered = signed_account_answer(&key, "alice", "a.example");
        tampered.insert(
            "account_name".to_owned(),
            CanonicalJsonValue::String("mallory".to_owned()),
        );
        assert_eq!(
            classify_answer(&alice, Some(&tampered)),
            AnswerVerdict::Unverified(Unverified::BadSignature)
        );
    }

    #[test]
    fn d_a_signed_answer_for_another_domain_is_refused() {
        let (key, alice) = user(1, "a.example");
        let answer = signed_account_answer(&key, "alice", "b.example");
        assert_eq!(
            classify_answer(&alice, Some(&answer)),
            AnswerVerdict::Unverified(Unverified::WrongDomain)
        );
    }

    #[test]
    fn e_account_names_must_be_strict_and_not_keys() {
        let (key, alice) = user(1, "a.example");
        let key_shaped = key.account_key().as_str().to_owned();
        let too_long = "a".repeat(250);
        for bad in [
            "Alice",
            "",
            "al ice",
            "al:ice",
            "ålice",
            &key_shaped,
            &too_long,
        ] {
            let answer = signed_account_answer(&key, bad, "a.example");
            assert_eq!(
                classify_answer(&alice, Some(&answer)),
                AnswerVerdict::Unverified(Unverified::BadAccountName),
                "{bad:?}"
            );
        }
        for good in ["alice", "a.b_c=d-e/f+g", "0"] {
            let answer = signed_account_answer(&key, good, "a.example");
            assert!(matches!(
                classify_answer(&alice, Some(&answer)),
                AnswerVerdict::Verified { .. }
            ));
        }
    }

    #[test]
    fn a_signed_erasure_for_the_domain_erases() {
        let (key, alice) = user(1, "a.example");
        let erasure = signed_erasure(&key, "a.example");
        assert_eq!(
            classify_answer(&alice, Some(&erasure)),
            AnswerVerdict::Erased
        );
    }

    #[test]
    fn forged_or_foreign_erasures_are_ignored() {
        let (key, alice) = user(1, "a.example");
        let (other, _) = user(2, "a.example");
        // Signed by someone else (a DNS-takeover attacker without the key).
        assert_eq!(
            classify_answer(&alice, Some(&signed_erasure(&other, "a.example"))),
            AnswerVerdict::Unverified(Unverified::BadSignature)
        );
        // Unsigned.
        let mut unsigned = signed_erasure(&key, "a.example");
        unsigned.remove("signatures");
        assert_eq!(
            classify_answer(&alice, Some(&unsigned)),
            AnswerVerdict::Unverified(Unverified::BadSignature)
        );
        // A genuine erasure replayed for another domain.
        assert_eq!(
            classify_answer(&alice, Some(&signed_erasure(&key, "b.example"))),
            AnswerVerdict::Unverified(Unverified::WrongDomain)
        );
    }
}
