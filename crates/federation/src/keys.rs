//! Reading other servers' key objects (`GET /_matrix/key/v2/server`, and the same objects as a
//! notary relays them from `/_matrix/key/v2/query`): which keys a server publishes, until when,
//! and whether the object carries the signatures that make it believable. Pure: fetching and
//! caching are the client's and the service's.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use myelin_room_version::{CanonicalJsonObject, CanonicalJsonValue, PublicKey, signing};

/// One public key a server published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    pub public_key: [u8; 32],
    /// Until when signatures by this key count: the object's `valid_until_ts`, or an old key's
    /// `expired_ts`.
    pub valid_until_ts: i64,
    /// Whether it came from `old_verify_keys`.
    pub old: bool,
}

/// A key object whose self-signatures checked out.
#[derive(Debug, Clone)]
pub struct VerifiedKeyObject {
    pub server_name: String,
    pub valid_until_ts: i64,
    pub keys: Vec<PublishedKey>,
    /// The object as received (with its signatures), to relay as a notary.
    pub object: CanonicalJsonObject,
}

/// Why a key object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyObjectError {
    #[error("the key object is not canonical JSON: {0}")]
    NotJson(String),
    #[error("field `{0}` is missing or has the wrong type")]
    BadField(&'static str),
    #[error("the key object is for {found}, not {expected}")]
    WrongServer { expected: String, found: String },
    #[error("key {0} is not 32 bytes of base64")]
    BadKey(String),
    #[error("the key object is not signed by its own key {key_id}: {reason}")]
    NotSelfSigned { key_id: String, reason: String },
    #[error("the key object is not signed by the notary {0}")]
    NotNotarised(String),
}

fn object_field<'a>(
    object: &'a CanonicalJsonObject,
    field: &'static str,
) -> Result<Option<&'a CanonicalJsonObject>, KeyObjectError> {
    match object.get(field) {
        None => Ok(None),
        Some(CanonicalJsonValue::Object(map)) => Ok(Some(map)),
        Some(_) => Err(KeyObjectError::BadField(field)),
    }
}

fn key_bytes(key_id: &str, entry: &CanonicalJsonValue) -> Result<[u8; 32], KeyObjectError> {
    let CanonicalJsonValue::Object(entry) = entry else {
        return Err(KeyObjectError::BadKey(key_id.to_owned()));
    };
    let Some(CanonicalJsonValue::String(key)) = entry.get("key") else {
        return Err(KeyObjectError::BadKey(key_id.to_owned()));
    };
    STANDARD_NO_PAD
        .decode(key.trim_end_matches('='))
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| KeyObjectError::BadKey(key_id.to_owned()))
}

/// Parses a key object of `expected_server` and checks that every key in `verify_keys` signed
/// it (the spec: a server's key object is signed by its keys). Keys of algorithms other than
/// ed25519 are skipped.
pub fn verify_key_object(
    value: serde_json::Value,
    expected_server: &str,
) -> Result<VerifiedKeyObject, KeyObjectError> {
    let CanonicalJsonValue::Object(object) =
        CanonicalJsonValue::try_from(value).map_err(|e| KeyObjectError::NotJson(e.to_string()))?
    else {
        return Err(KeyObjectError::NotJson("not an object".to_owned()));
    };
    let Some(CanonicalJsonValue::String(server_name)) = object.get("server_name") else {
        return Err(KeyObjectError::BadField("server_name"));
    };
    if server_name != expected_server {
        return Err(KeyObjectError::WrongServer {
            expected: expected_server.to_owned(),
            found: server_name.clone(),
        });
    }
    let Some(CanonicalJsonValue::Integer(valid_until_ts)) = object.get("valid_until_ts") else {
        return Err(KeyObjectError::BadField("valid_until_ts"));
    };
    let valid_until_ts = i64::from(*valid_until_ts);
    let verify_keys =
        object_field(&object, "verify_keys")?.ok_or(KeyObjectError::BadField("verify_keys"))?;
    let mut keys = Vec::new();
    for (key_id, entry) in verify_keys {
        if !key_id.starts_with("ed25519:") {
            continue;
        }
        let public_key = key_bytes(key_id, entry)?;
        let verifier = PublicKey::from_bytes(&public_key)
            .map_err(|_| KeyObjectError::BadKey(key_id.clone()))?;
        signing::verify_json(&object, expected_server, key_id, &verifier).map_err(|e| {
            KeyObjectError::NotSelfSigned {
                key_id: key_id.clone(),
                reason: e.to_string(),
            }
        })?;
        keys.push(PublishedKey {
            key_id: key_id.clone(),
            public_key,
            valid_until_ts,
            old: false,
        });
    }
    if keys.is_empty() {
        return Err(KeyObjectError::BadField("verify_keys"));
    }
    if let Some(old_keys) = object_field(&object, "old_verify_keys")? {
        for (key_id, entry) in old_keys {
            if !key_id.starts_with("ed25519:") {
                continue;
            }
            let public_key = key_bytes(key_id, entry)?;
            let Some(CanonicalJsonValue::Integer(expired_ts)) = (match entry {
                CanonicalJsonValue::Object(map) => map.get("expired_ts"),
                _ => None,
            }) else {
                return Err(KeyObjectError::BadField("old_verify_keys.expired_ts"));
            };
            keys.push(PublishedKey {
                key_id: key_id.clone(),
                public_key,
                valid_until_ts: i64::from(*expired_ts),
                old: true,
            });
        }
    }
    Ok(VerifiedKeyObject {
        server_name: server_name.clone(),
        valid_until_ts,
        keys,
        object,
    })
}

/// Checks that a key object relayed by `notary` carries a signature by one of its keys.
pub fn verify_notary_signature(
    object: &CanonicalJsonObject,
    notary: &str,
    notary_keys: &[PublishedKey],
) -> Result<(), KeyObjectError> {
    let signed = notary_keys.iter().any(|key| {
        PublicKey::from_bytes(&key.public_key)
            .is_ok_and(|k| signing::verify_json(object, notary, &key.key_id, &k).is_ok())
    });
    if signed {
        Ok(())
    } else {
        Err(KeyObjectError::NotNotarised(notary.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_room_version::KeyPair;
    use serde_json::json;

    fn signed(
        value: serde_json::Value,
        server: &str,
        key_id: &str,
        key: &KeyPair,
    ) -> serde_json::Value {
        let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(value).unwrap()
        else {
            unreachable!()
        };
        signing::sign_json(&mut object, server, key_id, key).unwrap();
        serde_json::to_value(&object).unwrap()
    }

    fn object_for(key: &KeyPair) -> serde_json::Value {
        json!({
            "server_name": "a.org",
            "valid_until_ts": 5000,
            "verify_keys": { "ed25519:k1": { "key": STANDARD_NO_PAD.encode(key.public_key()) } },
            "old_verify_keys": { "ed25519:old": { "key": STANDARD_NO_PAD.encode([3u8; 32]), "expired_ts": 100 } },
        })
    }

    #[test]
    fn a_self_signed_object_gives_its_current_and_old_keys() {
        let key = KeyPair::from_seed(&[1; 32]);
        let verified = verify_key_object(
            signed(object_for(&key), "a.org", "ed25519:k1", &key),
            "a.org",
        )
        .expect("positive control");
        assert_eq!(verified.valid_until_ts, 5000);
        assert_eq!(verified.keys.len(), 2);
        assert_eq!(verified.keys[0].public_key, key.public_key());
        assert!(!verified.keys[0].old);
        assert_eq!(verified.keys[1].valid_until_ts, 100);
        assert!(verified.keys[1].old);
    }

    #[test]
    fn unsigned_forged_or_foreign_objects_are_refused() {
        let key = KeyPair::from_seed(&[1; 32]);
        let other = KeyPair::from_seed(&[2; 32]);
        assert!(matches!(
            verify_key_object(object_for(&key), "a.org"),
            Err(KeyObjectError::NotSelfSigned { .. })
        ));
        assert!(matches!(
            verify_key_object(
                signed(object_for(&key), "a.org", "ed25519:k1", &other),
                "a.org"
            ),
            Err(KeyObjectError::NotSelfSigned { .. })
        ));
        assert!(matches!(
            verify_key_object(
                signed(object_for(&key), "a.org", "ed25519:k1", &key),
                "b.org"
            ),
            Err(KeyObjectError::WrongServer { .. })
        ));
        let mut tampered = signed(object_for(&key), "a.org", "ed25519:k1", &key);
        tampered["valid_until_ts"] = json!(9_999_999);
        assert!(verify_key_object(tampered, "a.org").is_err());
        let mut no_validity = object_for(&key);
        no_validity
            .as_object_mut()
            .unwrap()
            .remove("valid_until_ts");
        assert!(matches!(
            verify_key_object(signed(no_validity, "a.org", "ed25519:k1", &key), "a.org"),
            Err(KeyObjectError::BadField("valid_until_ts"))
        ));
    }

    #[test]
    fn notary_signatures_are_checked() {
        let key = KeyPair::from_seed(&[1; 32]);
        let notary = KeyPair::from_seed(&[9; 32]);
        let notary_key = PublishedKey {
            key_id: "ed25519:n".into(),
            public_key: notary.public_key(),
            valid_until_ts: 0,
            old: false,
        };
        let by_server = signed(object_for(&key), "a.org", "ed25519:k1", &key);
        let relayed = signed(by_server.clone(), "notary.org", "ed25519:n", &notary);
        let verified = verify_key_object(relayed, "a.org").unwrap();
        verify_notary_signature(
            &verified.object,
            "notary.org",
            std::slice::from_ref(&notary_key),
        )
        .expect("positive control");
        let unrelayed = verify_key_object(by_server, "a.org").unwrap();
        assert!(verify_notary_signature(&unrelayed.object, "notary.org", &[notary_key]).is_err());
    }
}
