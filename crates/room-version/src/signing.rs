//! Ed25519 signing and signature checks on JSON objects (appendices "Signing JSON").
//!
//! This is the primitive layer: which entity and key id to use, and which signatures an event
//! needs, is decided in `pdu` (building) and `verify` (receiving) from the room version.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::account_key::AccountKey;
use crate::canonical::{JsonError, to_canonical_string};

/// The key id every account-key signature uses (MSC4243).
pub const ACCOUNT_KEY_ID: &str = "ed25519:1";

/// Signatures, seeds and server keys may arrive with or without `=` padding and with non-zero
/// trailing bits (the spec's own test seed has them); accept both (appendices, "Unpadded Base64":
/// decoders SHOULD be lenient). Account keys are identities and are parsed strictly elsewhere.
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// An ed25519 signing key. Secret: never logged (Debug shows the public half only).
#[derive(Clone)]
pub struct KeyPair {
    key: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &STANDARD_NO_PAD.encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// A malformed key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is not base64")]
    NotBase64,
    #[error("key must be 32 bytes")]
    WrongLength,
    #[error("public key is not a valid ed25519 point")]
    NotAPoint,
}

impl KeyPair {
    /// From the 32-byte seed (what Synapse-style `ed25519 a_xyz <seed>` key files hold).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// From an unpadded (or padded) standard base64 seed.
    pub fn from_base64_seed(seed: &str) -> Result<Self, KeyError> {
        let bytes = LENIENT_STANDARD
            .decode(seed)
            .map_err(|_| KeyError::NotBase64)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongLength)?;
        Ok(Self::from_seed(&seed))
    }

    /// The seed, for storing the key (encrypted) at rest.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public half as an account key (entity and localpart in account-key rooms).
    pub fn account_key(&self) -> AccountKey {
        AccountKey::from_verifying_key(self.key.verifying_key())
    }

    fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// A public key a signature is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::NotAPoint)
    }

    /// From the unpadded base64 form used in `/key/v2/server` answers.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = LENIENT_STANDARD
            .decode(s)
            .map_err(|_| KeyError::NotBase64)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongLength)?;
        Self::from_bytes(&bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

impl From<&AccountKey> for PublicKey {
    fn from(key: &AccountKey) -> Self {
        Self(*key.verifying_key())
    }
}

/// Why a signature check failed. Any of these means "drop" for a PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature from {entity} under {key_id}")]
    Missing { entity: String, key_id: String },
    #[error("signature from {entity} under {key_id} is not valid base64 of 64 bytes")]
    Malformed { entity: String, key_id: String },
    #[error("signature from {entity} under {key_id} does not verify")]
    Invalid { entity: String, key_id: String },
    #[error("`signatures` is not an object of objects of strings")]
    BadSignaturesField,
    #[error("the public key for {entity} {key_id} was not supplied")]
    KeyNotSupplied { entity: String, key_id: String },
    #[error("key {key_id} of {entity} expired before the event was sent")]
    KeyExpired { entity: String, key_id: String },
    #[error("sender is not a valid key-form user id: {0}")]
    BadAccountKey(String),
    #[error("event is malformed: {0}")]
    Json(#[from] JsonError),
}

/// The bytes a signature covers: the canonical object without `signatures` and `unsigned`.
pub fn signing_bytes(object: &CanonicalJsonObject) -> String {
    let mut copy = object.clone();
    copy.remove("signatures");
    copy.remove("unsigned");
    to_canonical_string(&copy)
}

/// Sign `object` as `entity` under `key_id`, adding to `signatures` (other signatures are kept).
pub fn sign_json(
    object: &mut CanonicalJsonObject,
    entity: &str,
    key_id: &str,
    key: &KeyPair,
) -> Result<(), JsonError> {
    let signature = key.sign_bytes(signing_bytes(object).as_bytes());
    add_signature(object, entity, key_id, STANDARD_NO_PAD.encode(signature))
}

pub(crate) fn add_signature(
    object: &mut CanonicalJsonObject,
    entity: &str,
    key_id: &str,
    signature: String,
) -> Result<(), JsonError> {
    let signatures = object
        .entry("signatures".to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    let CanonicalJsonValue::Object(signatures) = signatures else {
        return Err(JsonError::BadField {
            field: "signatures",
        });
    };
    let per_entity = signatures
        .entry(entity.to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    let CanonicalJsonValue::Object(per_entity) = per_entity else {
        return Err(JsonError::BadField {
            field: "signatures",
        });
    };
    per_entity.insert(key_id.to_owned(), CanonicalJsonValue::String(signature));
    Ok(())
}

/// Look up the signature string `signatures[entity][key_id]`. Looking up by name (never by
/// enumerating `signatures`) matters: a 43-char account key can also be a valid host name.
fn find_signature<'a>(
    object: &'a CanonicalJsonObject,
    entity: &str,
    key_id: &str,
) -> Result<&'a str, SignatureError> {
    let missing = || SignatureError::Missing {
        entity: entity.to_owned(),
        key_id: key_id.to_owned(),
    };
    let Some(signatures) = object.get("signatures") else {
        return Err(missing());
    };
    let CanonicalJsonValue::Object(signatures) = signatures else {
        return Err(SignatureError::BadSignaturesField);
    };
    match signatures.get(entity) {
        None => Err(missing()),
        Some(CanonicalJsonValue::Object(per_entity)) => match per_entity.get(key_id) {
            None => Err(missing()),
            Some(CanonicalJsonValue::String(s)) => Ok(s),
            Some(_) => Err(SignatureError::BadSignaturesField),
        },
        Some(_) => Err(SignatureError::BadSignaturesField),
    }
}

/// Check that `object` carries a valid signature by `entity` under `key_id` with `key`.
pub fn verify_json(
    object: &CanonicalJsonObject,
    entity: &str,
    key_id: &str,
    key: &PublicKey,
) -> Result<(), SignatureError> {
    let signature = find_signature(object, entity, key_id)?;
    verify_signature_over(&signing_bytes(object), signature, entity, key_id, key)
}

/// Check one signature over already-computed signing bytes (saves re-encoding when an event
/// needs several signatures checked).
pub(crate) fn verify_signature_over(
    message: &str,
    signature_b64: &str,
    entity: &str,
    key_id: &str,
    key: &PublicKey,
) -> Result<(), SignatureError> {
    let malformed = || SignatureError::Malformed {
        entity: entity.to_owned(),
        key_id: key_id.to_owned(),
    };
    let bytes = LENIENT_STANDARD
        .decode(signature_b64)
        .map_err(|_| malformed())?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| malformed())?;
    key.0
        .verify(message.as_bytes(), &Signature::from_bytes(&bytes))
        .map_err(|_| SignatureError::Invalid {
            entity: entity.to_owned(),
            key_id: key_id.to_owned(),
        })
}

pub(crate) fn find_signature_for<'a>(
    object: &'a CanonicalJsonObject,
    entity: &str,
    key_id: &str,
) -> Result<&'a str, SignatureError> {
    find_signature(object, entity, key_id)
}

/// Sign arbitrary JSON with an account key: entity = the bare key, key id `ed25519:1`. This is
/// how `/query/accounts` answers and erasure attestations are signed (MSC4243.md §2.3 item 19).
pub fn sign_json_with_account_key(
    object: &mut CanonicalJsonObject,
    key: &KeyPair,
) -> Result<(), JsonError> {
    let account_key = key.account_key();
    sign_json(object, account_key.as_str(), ACCOUNT_KEY_ID, key)
}

/// Check an account-key signature on arbitrary JSON (entity = the bare key, `ed25519:1`).
pub fn verify_json_with_account_key(
    object: &CanonicalJsonObject,
    key: &AccountKey,
) -> Result<(), SignatureError> {
    verify_json(object, key.as_str(), ACCOUNT_KEY_ID, &PublicKey::from(key))
}

/// Check many account-key signatures on arbitrary JSON at once, e.g. the up to 2,048 answers
/// of one `/query/accounts` reply. Same result as calling [`verify_json_with_account_key`] on
/// each item, in order. Large batches are split over the available cores with scoped threads
/// (pure CPU work: no I/O, nothing outlives the call), because ed25519 verification dominates
/// the cost of a reply.
pub fn verify_json_with_account_keys(
    items: &[(AccountKey, &CanonicalJsonObject)],
) -> Vec<Result<(), SignatureError>> {
    const MIN_PER_THREAD: usize = 128;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.min(items.len() / MIN_PER_THREAD).max(1);
    let check = |chunk: &[(AccountKey, &CanonicalJsonObject)]| {
        chunk
            .iter()
            .map(|(key, obj)| verify_json_with_account_key(obj, key))
            .collect::<Vec<_>>()
    };
    if threads == 1 {
        return check(items);
    }
    let chunk_size = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk_size)
            .map(|chunk| scope.spawn(move || check(chunk)))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (handle, chunk) in handles.into_iter().zip(items.chunks(chunk_size)) {
            // A panicking worker would be a bug in the verifier; recompute that chunk on this
            // thread rather than propagate the panic.
            out.extend(handle.join().unwrap_or_else(|_| check(chunk)));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::parse_object;

    const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    fn sig_of(obj: &CanonicalJsonObject) -> &str {
        find_signature(obj, "domain", "ed25519:1").unwrap()
    }

    #[test]
    fn spec_appendix_json_signing_vectors() {
        let key = KeyPair::from_base64_seed(SPEC_SEED).unwrap();
        let mut empty = parse_object(b"{}").unwrap();
        sign_json(&mut empty, "domain", "ed25519:1", &key).unwrap();
        assert_eq!(
            sig_of(&empty),
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        let mut two = parse_object(br#"{"one": 1, "two": "Two"}"#).unwrap();
        sign_json(&mut two, "domain", "ed25519:1", &key).unwrap();
        assert_eq!(
            sig_of(&two),
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        let public = PublicKey::from_bytes(&key.public_key()).unwrap();
        verify_json(&two, "domain", "ed25519:1", &public).unwrap();
        // Unsigned data is not covered.
        two.insert(
            "unsigned".into(),
            CanonicalJsonValue::Object(Default::default()),
        );
        verify_json(&two, "domain", "ed25519:1", &public).unwrap();
        // Tampering is detected.
        two.insert("one".into(), CanonicalJsonValue::Integer(2u8.into()));
        assert!(matches!(
            verify_json(&two, "domain", "ed25519:1", &public),
            Err(SignatureError::Invalid { .. })
        ));
    }

    #[test]
    fn missing_and_malformed_signatures_are_errors() {
        let key = KeyPair::from_seed(&[1; 32]);
        let public = PublicKey::from_bytes(&key.public_key()).unwrap();
        let obj = parse_object(br#"{"a":1}"#).unwrap();
        assert!(matches!(
            verify_json(&obj, "x", "ed25519:1", &public),
            Err(SignatureError::Missing { .. })
        ));
        let obj = parse_object(br#"{"a":1,"signatures":{"x":{"ed25519:1":"!!"}}}"#).unwrap();
        assert!(matches!(
            verify_json(&obj, "x", "ed25519:1", &public),
            Err(SignatureError::Malformed { .. })
        ));
        let obj = parse_object(br#"{"a":1,"signatures":{"x":"nope"}}"#).unwrap();
        assert_eq!(
            verify_json(&obj, "x", "ed25519:1", &public),
            Err(SignatureError::BadSignaturesField)
        );
        let obj = parse_object(br#"{"a":1,"signatures":[]}"#).unwrap();
        assert_eq!(
            verify_json(&obj, "x", "ed25519:1", &public),
            Err(SignatureError::BadSignaturesField)
        );
    }

    #[test]
    fn batch_verification_matches_single_checks() {
        let keys: Vec<KeyPair> = (0..300u16)
            .map(|i| {
                let mut seed = [3u8; 32];
                seed[..2].copy_from_slice(&i.to_le_bytes());
                KeyPair::from_seed(&seed)
            })
            .collect();
        let mut objects: Vec<CanonicalJsonObject> = keys
            .iter()
            .map(|k| {
                let mut o = parse_object(br#"{"domain":"d.example"}"#).unwrap();
                sign_json_with_account_key(&mut o, k).unwrap();
                o
            })
            .collect();
        // Break every seventh answer.
        for o in objects.iter_mut().step_by(7) {
            o.insert(
                "domain".into(),
                CanonicalJsonValue::String("evil.example".into()),
            );
        }
        let items: Vec<(AccountKey, &CanonicalJsonObject)> = keys
            .iter()
            .map(|k| k.account_key())
            .zip(objects.iter())
            .collect();
        let results = verify_json_with_account_keys(&items);
        assert_eq!(results.len(), 300);
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), i % 7 != 0, "item {i}");
            assert_eq!(
                *result,
                verify_json_with_account_key(items[i].1, &items[i].0)
            );
        }
    }

    #[test]
    fn account_key_json_round_trip() {
        let key = KeyPair::from_seed(&[9; 32]);
        let mut obj = parse_object(br#"{"account_name":"alice","domain":"a.example"}"#).unwrap();
        sign_json_with_account_key(&mut obj, &key).unwrap();
        verify_json_with_account_key(&obj, &key.account_key()).unwrap();
        let other = KeyPair::from_seed(&[10; 32]).account_key();
        assert!(verify_json_with_account_key(&obj, &other).is_err());
    }
}
