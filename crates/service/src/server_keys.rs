//! The server's ed25519 signing key: created on first start, sealed at rest, stable across
//! restarts, and published as the signed key object of `GET /_matrix/key/v2/server`.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, EventSigner, KeyPair, signing::sign_json,
};
use myelin_store::{Store, StoredSigningKey};
use ruma::api::federation::discovery::ServerSigningKeys;
use ruma::{OwnedServerName, serde::Raw};
use serde_json::json;

use crate::{now_millis, secrets::Sealer};

/// How long other servers may cache our key object. Short, so that a rotated key is picked up
/// within a day (Synapse's default `key_refresh_interval` too).
pub const KEY_VALIDITY_MS: i64 = 24 * 60 * 60 * 1000;

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum ServerKeyError {
    #[error(transparent)]
    Store(#[from] myelin_store::StoreError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("stored signing key ed25519:{0} is damaged: {1}")]
    Damaged(String, String),
}

/// A retired key, still published so that old signatures keep verifying.
#[derive(Debug, Clone)]
struct OldKey {
    key_id: String,
    public_key: Vec<u8>,
    expired_ts: i64,
}

/// The server's signing identity.
pub struct ServerKeys {
    server_name: OwnedServerName,
    /// `ed25519:<version>`.
    key_id: String,
    key_pair: KeyPair,
    old_keys: Vec<OldKey>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("server_name", &self.server_name)
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl ServerKeys {
    /// Loads the current signing key, creating and storing one if the server has none.
    pub async fn load_or_create(
        store: &Store,
        sealer: &Sealer,
        server_name: OwnedServerName,
    ) -> Result<Self, ServerKeyError> {
        let stored = store.signing_keys().await?;
        let mut old_keys = Vec::new();
        let mut current = None;
        for key in stored {
            match key.expired_ts {
                Some(expired_ts) => old_keys.push(OldKey {
                    key_id: key.key_id,
                    public_key: key.public_key,
                    expired_ts,
                }),
                // Newest first: the first unexpired key is the current one.
                None if current.is_none() => current = Some(key),
                None => {}
            }
        }
        let current = match current {
            Some(key) => key,
            None => {
                let key = Self::generate(sealer)?;
                store.insert_signing_key(&key).await?;
                tracing::info!(key_id = %format!("ed25519:{}", key.key_id), "created the server signing key");
                key
            }
        };
        let seed: [u8; 32] = sealer
            .open(&current.private_key_enc)?
            .try_into()
            .map_err(|_| {
                ServerKeyError::Damaged(current.key_id.clone(), "not a 32-byte seed".to_owned())
            })?;
        let key_pair = KeyPair::from_seed(&seed);
        if key_pair.public_key().as_slice() != current.public_key.as_slice() {
            return Err(ServerKeyError::Damaged(
                current.key_id,
                "the private key does not match the stored public key".to_owned(),
            ));
        }
        Ok(ServerKeys {
            server_name,
            key_id: format!("ed25519:{}", current.key_id),
            key_pair,
            old_keys,
        })
    }

    fn generate(sealer: &Sealer) -> Result<StoredSigningKey, ServerKeyError> {
        let seed: [u8; 32] = rand::random();
        let key_pair = KeyPair::from_seed(&seed);
        Ok(StoredSigningKey {
            key_id: format!("a_{}", random_alphanumeric(4)),
            public_key: key_pair.public_key().to_vec(),
            private_key_enc: sealer.seal(&seed),
            created_ts: now_millis(),
            expired_ts: None,
        })
    }

    /// The current key id, `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signer for events this server builds in rooms signed by server keys.
    pub fn event_signer(&self) -> EventSigner<'_> {
        EventSigner::Server {
            server_name: self.server_name.as_str(),
            key_id: &self.key_id,
            key: &self.key_pair,
        }
    }

    /// A copy of the current key pair and its id, for the federation client that signs
    /// outbound requests.
    pub fn request_signing_key(&self) -> (String, KeyPair) {
        (
            self.key_id.clone(),
            KeyPair::from_seed(&self.key_pair.seed()),
        )
    }

    /// Every key this server has published: id, public key, and until when it is valid (the
    /// current key: as long as the published key object says; old keys: their `expired_ts`).
    pub fn published_keys(&self) -> Vec<(String, [u8; 32], i64)> {
        let mut keys = vec![(
            self.key_id.clone(),
            self.key_pair.public_key(),
            now_millis() + KEY_VALIDITY_MS,
        )];
        for old in &self.old_keys {
            if let Ok(public) = <[u8; 32]>::try_from(old.public_key.as_slice()) {
                keys.push((format!("ed25519:{}", old.key_id), public, old.expired_ts));
            }
        }
        keys
    }

    /// The current public key, unpadded standard base64 as the spec publishes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.key_pair.public_key())
    }

    /// Signs `object` in place as this server (adds to `signatures.<server_name>`).
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) {
        sign_json(
            object,
            self.server_name.as_str(),
            &self.key_id,
            &self.key_pair,
        )
        .expect("signing a canonical JSON object with an object `signatures` cannot fail");
    }

    /// The signed key object for `GET /_matrix/key/v2/server`, valid for [`KEY_VALIDITY_MS`].
    pub fn server_key_object(&self) -> Raw<ServerSigningKeys> {
        let mut verify_keys = BTreeMap::new();
        verify_keys.insert(
            self.key_id.clone(),
            json!({ "key": self.public_key_base64() }),
        );
        let old_verify_keys: BTreeMap<String, serde_json::Value> = self
            .old_keys
            .iter()
            .map(|old| {
                (
                    format!("ed25519:{}", old.key_id),
                    json!({ "key": STANDARD_NO_PAD.encode(&old.public_key), "expired_ts": old.expired_ts }),
                )
            })
            .collect();
        let unsigned = json!({
            "server_name": self.server_name,
            "verify_keys": verify_keys,
            "old_verify_keys": old_verify_keys,
            "valid_until_ts": now_millis() + KEY_VALIDITY_MS,
        });
        let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(unsigned)
            .expect("the key object holds only strings and small integers")
        else {
            unreachable!("json! of an object is an object")
        };
        self.sign_json(&mut object);
        Raw::new(&object)
            .expect("a canonical JSON object serializes")
            .cast_unchecked()
    }
}

fn random_alphanumeric(len: usize) -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
