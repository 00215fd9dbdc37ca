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

/// Check one account-key signature strictly (`verify_strict`): besides the ordinary equation it
/// refuses small-order keys and small-order or non-canonical `R`. Account keys are identities
/// every server of a room must judge alike, and a lax check would let a forged signature under
/// a weak key stand (MSC4243.md §4 Q12).
pub(crate) fn verify_account_signature_over(
    message: &str,
    signature_b64: &str,
    key: &AccountKey,
) -> Result<(), SignatureError> {
    let entity = key.as_str();
    let bytes = LENIENT_STANDARD
        .decode(signature_b64)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .ok_or_else(|| SignatureError::Malformed {
            entity: entity.to_owned(),
            key_id: ACCOUNT_KEY_ID.to_owned(),
        })?;
    key.verifying_key()
        .verify_strict(message.as_bytes(), &Signature::from_bytes(&bytes))
        .map_err(|_| SignatureError::Invalid {
            entity: entity.to_owned(),
            key_id: ACCOUNT_KEY_ID.to_owned(),
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
    let signature = find_signature(object, key.as_str(), ACCOUNT_KEY_ID)?;
    verify_account_signature_over(&signing_bytes(object), signature, key)
}

/// Check many account-key signatures on arbitrary JSON at once, e.g. the up to 2,048 answers
/// of one `/query/accounts` reply. Large batches are split over the available cores with scoped
/// threads (pure CPU work: no I/O, nothing outlives the call); see
/// [`verify_json_with_account_keys_threads`] for what each thread does.
pub fn verify_json_with_account_keys(
    items: &[(AccountKey, &CanonicalJsonObject)],
) -> Vec<Result<(), SignatureError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    verify_json_with_account_keys_threads(items, threads)
}

/// [`verify_json_with_account_keys`] on at most `threads` threads (1 = the calling thread only).
///
/// Each thread checks its share with ed25519 batch verification (one multiscalar
/// multiplication for the whole share, about twice as fast as one check per signature). When a
/// batch fails, it is halved and each half checked again, down to small groups that are checked
/// one by one, so every failing item gets the same error as [`verify_json_with_account_key`].
///
/// A valid signature is always accepted and a signature made without the private key is always
/// refused. The one difference from single checks: a batch uses the cofactorless equation with
/// random weights, so a signature deliberately built by the key holder with small-order
/// components (which the single check refuses) may be accepted as part of a batch. The key holder
/// gains nothing from that (they can sign anything with their key anyway), and a reply is this
/// server's own judgement, not room state, so no room can split over it.
pub fn verify_json_with_account_keys_threads(
    items: &[(AccountKey, &CanonicalJsonObject)],
    threads: usize,
) -> Vec<Result<(), SignatureError>> {
    const MIN_PER_THREAD: usize = 128;
    let threads = threads.min(items.len() / MIN_PER_THREAD).max(1);
    if threads == 1 {
        return check_account_key_batch(items);
    }
    let chunk_size = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk_size)
            .map(|chunk| scope.spawn(move || check_account_key_batch(chunk)))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (handle, chunk) in handles.into_iter().zip(items.chunks(chunk_size)) {
            // A panicking worker would be a bug in the verifier; recompute that chunk on this
            // thread rather than propagate the panic.
            out.extend(
                handle
                    .join()
                    .unwrap_or_else(|_| check_account_key_batch(chunk)),
            );
        }
        out
    })
}

/// One signature ready for the curve: what it covers, the signature and the key.
struct Prepared {
    index: usize,
    message: String,
    signature: Signature,
    key: VerifyingKey,
}

/// Batch-verify one thread's share (see [`verify_json_with_account_keys_threads`]).
fn check_account_key_batch(
    items: &[(AccountKey, &CanonicalJsonObject)],
) -> Vec<Result<(), SignatureError>> {
    let mut out: Vec<Result<(), SignatureError>> = Vec::with_capacity(items.len());
    let mut prepared = Vec::with_capacity(items.len());
    for (index, (key, object)) in items.iter().enumerate() {
        let entity = key.as_str();
        let decoded = find_signature(object, entity, ACCOUNT_KEY_ID).and_then(|signature| {
            LENIENT_STANDARD
                .decode(signature)
                .ok()
                .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
                .ok_or_else(|| SignatureError::Malformed {
                    entity: entity.to_owned(),
                    key_id: ACCOUNT_KEY_ID.to_owned(),
                })
        });
        match decoded {
            Ok(bytes) => {
                out.push(Ok(()));
                prepared.push(Prepared {
                    index,
                    message: signing_bytes(object),
                    signature: Signature::from_bytes(&bytes),
                    key: *key.verifying_key(),
                });
            }
            Err(e) => out.push(Err(e)),
        }
    }
    let mut failed = Vec::new();
    find_invalid(&prepared, &mut failed);
    for p in failed {
        out[p.index] = Err(SignatureError::Invalid {
            entity: items[p.index].0.as_str().to_owned(),
            key_id: ACCOUNT_KEY_ID.to_owned(),
        });
    }
    out
}

/// Collect the signatures that do not verify: the whole group in one batch equation; if that
/// fails, each half again; groups of at most 8 one by one.
fn find_invalid<'a>(group: &'a [Prepared], failed: &mut Vec<&'a Prepared>) {
    const CHECK_ONE_BY_ONE: usize = 8;
    if group.is_empty() {
        return;
    }
    if group.len() <= CHECK_ONE_BY_ONE {
        failed.extend(group.iter().filter(|p| {
            p.key
                .verify_strict(p.message.as_bytes(), &p.signature)
                .is_err()
        }));
        return;
    }
    let messages: Vec<&[u8]> = group.iter().map(|p| p.message.as_bytes()).collect();
    let signatures: Vec<Signature> = group.iter().map(|p| p.signature).collect();
    let keys: Vec<VerifyingKey> = group.iter().map(|p| p.key).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return;
    }
    let (left, right) = group.split_at(group.len() / 2);
    find_invalid(left, failed);
    find_invalid(right, failed);
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
        // A missing signature, a malformed one, one by the wrong key, and one whose `s` is not
        // a canonical scalar (refused by the batch equation as a whole).
        objects[1].remove("signatures");
        let key2 = keys[2].account_key();
        add_signature(&mut objects[2], key2.as_str(), ACCOUNT_KEY_ID, "!!".into()).unwrap();
        let wrong = keys[4].sign_bytes(signing_bytes(&objects[3]).as_bytes());
        let key3 = keys[3].account_key();
        add_signature(
            &mut objects[3],
            key3.as_str(),
            ACCOUNT_KEY_ID,
            STANDARD_NO_PAD.encode(wrong),
        )
        .unwrap();
        let mut big_s = keys[5].sign_bytes(signing_bytes(&objects[5]).as_bytes());
        big_s[32..].copy_from_slice(&[0xff; 32]);
        let key5 = keys[5].account_key();
        add_signature(
            &mut objects[5],
            key5.as_str(),
            ACCOUNT_KEY_ID,
            STANDARD_NO_PAD.encode(big_s),
        )
        .unwrap();
        let bad = |i: usize| i.is_multiple_of(7) || [1, 2, 3, 5].contains(&i);
        let items: Vec<(AccountKey, &CanonicalJsonObject)> = keys
            .iter()
            .map(|k| k.account_key())
            .zip(objects.iter())
            .collect();
        for results in [
            verify_json_with_account_keys(&items),
            verify_json_with_account_keys_threads(&items, 1),
            verify_json_with_account_keys_threads(&items, 3),
        ] {
            assert_eq!(results.len(), 300);
            for (i, result) in results.iter().enumerate() {
                assert_eq!(result.is_ok(), !bad(i), "item {i}");
                assert_eq!(
                    *result,
                    verify_json_with_account_key(items[i].1, &items[i].0)
                );
            }
        }
        assert!(matches!(
            verify_json_with_account_keys(&items)[1],
            Err(SignatureError::Missing { .. })
        ));
        assert!(matches!(
            verify_json_with_account_keys(&items)[2],
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn batch_verification_of_all_valid_and_of_nothing() {
        assert!(verify_json_with_account_keys(&[]).is_empty());
        let keys: Vec<KeyPair> = (0..40u8).map(|i| KeyPair::from_seed(&[i; 32])).collect();
        let objects: Vec<CanonicalJsonObject> = keys
            .iter()
            .map(|k| {
                let mut o = parse_object(br#"{"domain":"d.example"}"#).unwrap();
                sign_json_with_account_key(&mut o, k).unwrap();
                o
            })
            .collect();
        let items: Vec<(AccountKey, &CanonicalJsonObject)> = keys
            .iter()
            .map(|k| k.account_key())
            .zip(objects.iter())
            .collect();
        assert!(
            verify_json_with_account_keys_threads(&items, 1)
                .iter()
                .all(Result::is_ok)
        );
        // One bad item among valid ones is found by halving.
        let mut tampered = objects.clone();
        tampered[29].insert("domain".into(), CanonicalJsonValue::String("x".into()));
        let items: Vec<(AccountKey, &CanonicalJsonObject)> = keys
            .iter()
            .map(|k| k.account_key())
            .zip(tampered.iter())
            .collect();
        let results = verify_json_with_account_keys_threads(&items, 1);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 29, "item {i}");
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
