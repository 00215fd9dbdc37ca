//! Account keys (MSC4243): the strict grammar of a key-form localpart, the [`AccountKey`] type and
//! key-form user ids.
//!
//! The grammar is deliberately strict (MSC4243.md §2.1 item 2, §4 Q12): if two servers accepted
//! different spellings of one key, one key could appear as several room members and lenient and
//! strict servers would disagree about the room (a split brain). So a key is exactly 43 characters
//! of the URL-safe alphabet, with zero padding bits, and must decode to a valid ed25519 point.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;

/// The length of an unpadded URL-safe base64 encoding of 32 bytes.
pub const ACCOUNT_KEY_LENGTH: usize = 43;

/// Characters allowed last: 43 chars carry 258 bits for 256 bits of key, so the last character's
/// two low bits must be zero. Any other last character is a non-canonical spelling.
const CANONICAL_LAST_CHARS: &str = "AEIMQUYcgkosw048";

/// Why a string is not an account key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountKeyError {
    #[error("account key must be {ACCOUNT_KEY_LENGTH} characters, got {0}")]
    WrongLength(usize),
    #[error("account key contains {0:?}, outside the URL-safe base64 alphabet")]
    InvalidCharacter(char),
    #[error("account key has non-zero trailing bits (non-canonical encoding)")]
    NonCanonical,
    #[error("account key is not a valid ed25519 point")]
    NotAPoint,
    #[error("account key is a small-order (weak) ed25519 point")]
    WeakKey,
    #[error("account key is a non-canonical encoding of its ed25519 point")]
    NonCanonicalPoint,
    #[error("not a user id of the form @<account key>:<domain>: {0}")]
    NotKeyFormUserId(String),
}

/// A user's ed25519 account key, known to be in canonical form and a valid point.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AccountKey {
    encoded: String,
    key: VerifyingKey,
}

impl PartialOrd for AccountKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for AccountKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.encoded.cmp(&other.encoded)
    }
}

impl AccountKey {
    /// Parse a bare key (a key-form localpart) with the strict grammar.
    pub fn parse(s: &str) -> Result<Self, AccountKeyError> {
        if s.len() != ACCOUNT_KEY_LENGTH {
            return Err(AccountKeyError::WrongLength(s.chars().count()));
        }
        if let Some(bad) = s.chars().find(|c| !is_url_safe_char(*c)) {
            return Err(AccountKeyError::InvalidCharacter(bad));
        }
        // Length and alphabet checked above, so the last char exists and is ASCII.
        let last = s
            .chars()
            .next_back()
            .ok_or(AccountKeyError::WrongLength(0))?;
        if !CANONICAL_LAST_CHARS.contains(last) {
            return Err(AccountKeyError::NonCanonical);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AccountKeyError::NonCanonical)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| AccountKeyError::NonCanonical)?;
        // Belt and braces: the round trip is the definition of canonical.
        if URL_SAFE_NO_PAD.encode(bytes) != s {
            return Err(AccountKeyError::NonCanonical);
        }
        Self::from_bytes(bytes)
    }

    /// Build from raw public key bytes; fails if they are not a valid point, are a small-order
    /// point, or are not the one canonical encoding of their point.
    ///
    /// Why both extra checks (MSC4243.md §4 Q12): a small-order key lets anyone forge a signature
    /// that a lax verifier accepts for almost any message, so `@<weak key>:any.domain` would have
    /// no owner; and a point has several 32-byte spellings (a y coordinate at or above p, the
    /// sign bit set on x = 0), which would give one key several localparts, i.e. several room
    /// members, and split lenient from strict servers.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, AccountKeyError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| AccountKeyError::NotAPoint)?;
        if key.is_weak() {
            return Err(AccountKeyError::WeakKey);
        }
        if key.to_edwards().compress().to_bytes() != bytes {
            return Err(AccountKeyError::NonCanonicalPoint);
        }
        Ok(Self {
            encoded: URL_SAFE_NO_PAD.encode(bytes),
            key,
        })
    }

    /// From a verifying key, which is a valid point by construction.
    pub(crate) fn from_verifying_key(key: VerifyingKey) -> Self {
        Self {
            encoded: URL_SAFE_NO_PAD.encode(key.to_bytes()),
            key,
        }
    }

    /// The key from the localpart of `@<key>:<domain>`.
    pub fn from_user_id(user_id: &str) -> Result<Self, AccountKeyError> {
        let (localpart, _) = split_user_id(user_id)
            .ok_or_else(|| AccountKeyError::NotKeyFormUserId(user_id.to_owned()))?;
        Self::parse(localpart)
    }

    /// The bare key string (URL-safe unpadded base64). Also the signature entity.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// `@<key>:<server_name>`.
    pub fn user_id(&self, server_name: &str) -> String {
        format!("@{}:{server_name}", self.encoded)
    }
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encoded)
    }
}

fn is_url_safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Split `@localpart:domain` at the first colon. `None` if the sigil or colon is missing or a part
/// is empty.
pub(crate) fn split_user_id(user_id: &str) -> Option<(&str, &str)> {
    let rest = user_id.strip_prefix('@')?;
    let (local, domain) = rest.split_once(':')?;
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

/// A parsed key-form user id `@<key>:<domain>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyFormUserId {
    pub key: AccountKey,
    pub server_name: String,
}

impl KeyFormUserId {
    /// Parse strictly: the localpart must be an account key, the id at most 255 bytes.
    pub fn parse(user_id: &str) -> Result<Self, AccountKeyError> {
        if user_id.len() > 255 {
            return Err(AccountKeyError::NotKeyFormUserId(user_id.to_owned()));
        }
        let (localpart, domain) = split_user_id(user_id)
            .ok_or_else(|| AccountKeyError::NotKeyFormUserId(user_id.to_owned()))?;
        if ruma::ServerName::parse(domain).is_err() {
            return Err(AccountKeyError::NotKeyFormUserId(user_id.to_owned()));
        }
        Ok(Self {
            key: AccountKey::parse(localpart)?,
            server_name: domain.to_owned(),
        })
    }
}

impl std::fmt::Display for KeyFormUserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}:{}", self.key, self.server_name)
    }
}

/// Whether a localpart looks like an account key (43 chars of `[A-Za-z0-9_-]`), whether or not it
/// is a valid key. Used to reserve that namespace: local registration of such names is refused
/// and remote `account_name`s of this shape are rejected (MSC4243.md §4 Q4).
pub fn looks_like_account_key(localpart: &str) -> bool {
    localpart.len() == ACCOUNT_KEY_LENGTH && localpart.chars().all(is_url_safe_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public key of the spec's appendix seed, in url-safe form (computed, not typed in: see
    /// `key_form_round_trip`).
    fn sample_key() -> AccountKey {
        let seed = [7u8; 32];
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        AccountKey::from_bytes(sk.verifying_key().to_bytes()).unwrap()
    }

    #[test]
    fn key_form_round_trip() {
        let key = sample_key();
        assert_eq!(key.as_str().len(), 43);
        let uid = key.user_id("example.org");
        let parsed = KeyFormUserId::parse(&uid).unwrap();
        assert_eq!(parsed.key, key);
        assert_eq!(parsed.server_name, "example.org");
        assert_eq!(parsed.to_string(), uid);
        assert_eq!(
            AccountKey::from_user_id(&uid).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(AccountKey::parse(key.as_str()).unwrap(), key);
    }

    #[test]
    fn msc_example_key_parses() {
        // The MSC's example key.
        let key = AccountKey::parse("l8Hft5qXKn1vfHrg3p4-W8gELQVo8N13JkluMfmn2sQ").unwrap();
        assert_eq!(key.as_str(), "l8Hft5qXKn1vfHrg3p4-W8gELQVo8N13JkluMfmn2sQ");
    }

    #[test]
    fn strict_grammar_rejects_every_lax_spelling() {
        let good = sample_key().as_str().to_owned();
        // Standard alphabet characters.
        let with_plus = format!("+{}", &good[1..]);
        assert_eq!(
            AccountKey::parse(&with_plus),
            Err(AccountKeyError::InvalidCharacter('+'))
        );
        let with_slash = format!("/{}", &good[1..]);
        assert_eq!(
            AccountKey::parse(&with_slash),
            Err(AccountKeyError::InvalidCharacter('/'))
        );
        // Padding.
        assert_eq!(
            AccountKey::parse(&format!("{good}=")),
            Err(AccountKeyError::WrongLength(44))
        );
        // 42 and 44 chars.
        assert_eq!(
            AccountKey::parse(&good[..42]),
            Err(AccountKeyError::WrongLength(42))
        );
        assert_eq!(
            AccountKey::parse(&format!("{good}A")),
            Err(AccountKeyError::WrongLength(44))
        );
        // Non-zero trailing bits: replace the last char with one that decodes to the same bytes
        // plus a set padding bit.
        let last = good.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let idx = alphabet.find(last).unwrap();
        let bumped = alphabet.as_bytes()[idx + 1] as char;
        let non_canonical = format!("{}{bumped}", &good[..42]);
        assert_eq!(
            AccountKey::parse(&non_canonical),
            Err(AccountKeyError::NonCanonical)
        );
        // Non-ASCII of the right byte length must not panic.
        let weird = format!("é{}", &good[2..]);
        assert!(AccountKey::parse(&weird).is_err());
    }

    #[test]
    fn rejects_bytes_that_are_not_a_point() {
        // Find a 32-byte string that does not decompress; y = 2 with sign 0 is off the curve for
        // ed25519 (checked by the library, not assumed: we search a few candidates).
        let mut found = false;
        for y in 2u8..50 {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            if VerifyingKey::from_bytes(&bytes).is_err() {
                let s = URL_SAFE_NO_PAD.encode(bytes);
                assert_eq!(AccountKey::parse(&s), Err(AccountKeyError::NotAPoint));
                found = true;
                break;
            }
        }
        assert!(found, "expected an off-curve candidate");
    }

    #[test]
    fn key_form_user_id_requires_domain_and_key() {
        let key = sample_key();
        assert!(KeyFormUserId::parse(&format!("@{key}")).is_err());
        assert!(KeyFormUserId::parse(&format!("{key}:example.org")).is_err());
        assert!(KeyFormUserId::parse("@alice:example.org").is_err());
        assert!(KeyFormUserId::parse(&format!("@{key}:")).is_err());
        assert!(looks_like_account_key(key.as_str()));
        assert!(!looks_like_account_key("alice"));
    }

    /// The eight small-order points of edwards25519 in their canonical encodings (y = 1, y = -1,
    /// y = 0 with both signs, and the four points of order 8).
    fn small_order_encodings() -> Vec<[u8; 32]> {
        let hex = [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        ];
        hex.iter()
            .map(|h| {
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
                }
                out
            })
            .collect()
    }

    #[test]
    fn refuses_small_order_keys() {
        let mut refused = 0;
        for bytes in small_order_encodings() {
            // Some of these spellings are not canonical (x = 0 with the sign bit set); all are
            // refused either way, and every one that decodes canonically is refused as weak.
            let err = AccountKey::from_bytes(bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    AccountKeyError::WeakKey
                        | AccountKeyError::NonCanonicalPoint
                        | AccountKeyError::NotAPoint
                ),
                "{err:?}"
            );
            if err == AccountKeyError::WeakKey {
                refused += 1;
            }
            // Through the grammar too: the canonical base64 of a weak key is not a key.
            assert!(AccountKey::parse(&URL_SAFE_NO_PAD.encode(bytes)).is_err());
        }
        assert!(
            refused >= 5,
            "expected most small-order points refused as weak"
        );
        // The identity point, the classic weak key.
        assert_eq!(
            AccountKey::from_bytes(small_order_encodings()[0]),
            Err(AccountKeyError::WeakKey)
        );
    }

    #[test]
    fn refuses_non_canonical_point_encodings() {
        // y = p + 1 spells the identity's y (1) non-canonically; y = p + 3 spells y = 3 if that is
        // on the curve: search a few small y for one that decodes, then spell it as y + p.
        // p = 2^255 - 19, so y + p = y - 19 + 2^255 with the top bit being the sign bit: in the
        // 255-bit field y + p fits when y < 19.
        let mut checked = 0;
        for y in 0u8..19 {
            let mut canonical = [0u8; 32];
            canonical[0] = y;
            let Ok(point) = VerifyingKey::from_bytes(&canonical) else {
                continue;
            };
            // y + p as little-endian 255 bits: p = 0x7fff...ffed.
            let mut spelled = [0xffu8; 32];
            spelled[31] = 0x7f;
            let (low, carry) = 0xedu8.overflowing_add(y);
            spelled[0] = low;
            assert!(!carry, "y < 19 keeps y + p below 2^255");
            if let Ok(alias) = VerifyingKey::from_bytes(&spelled) {
                // The library accepts the alias as the same point...
                assert_eq!(alias.to_edwards().compress(), point.to_edwards().compress());
                // ...but as an account key only the canonical spelling exists.
                let err = AccountKey::from_bytes(spelled).unwrap_err();
                assert!(
                    matches!(
                        err,
                        AccountKeyError::NonCanonicalPoint | AccountKeyError::WeakKey
                    ),
                    "{err:?}"
                );
                if !point.is_weak() {
                    assert_eq!(err, AccountKeyError::NonCanonicalPoint);
                }
                checked += 1;
            }
        }
        assert!(checked > 0, "expected a y below 19 on the curve");
        // "Negative zero": x = 0 with the sign bit set, for y = 1 (the identity).
        let mut negative_zero = small_order_encodings()[0];
        negative_zero[31] |= 0x80;
        assert!(AccountKey::from_bytes(negative_zero).is_err());
        // A real key still parses.
        assert!(AccountKey::from_bytes(sample_key().to_bytes()).is_ok());
    }
}
