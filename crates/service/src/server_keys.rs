//! The server's ed25519 signing key: created on first start, sealed at rest, stable across
//! restarts, and published as the signed key object of `GET /_matrix/key/v2/server`.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use myelin_store::{Store, StoredSigningKey};
use ruma::api::federation::discovery::ServerSigningKeys;
use ruma::{
    OwnedServerName,
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    serde::Raw,
    signatures::Ed25519KeyPair,
};
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
    /// The current key's id without the algorithm (`a_Xy12`).
    version: String,
    key_pair: Ed25519KeyPair,
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
        let der = sealer.open(&current.private_key_enc)?;
        let key_pair = Ed25519KeyPair::from_der(&der, current.key_id.clone())
            .map_err(|e| ServerKeyError::Damaged(current.key_id.clone(), e.to_string()))?;
        if key_pair.public_key().as_slice() != current.public_key.as_slice() {
            return Err(ServerKeyError::Damaged(
                current.key_id,
                "the private key does not match the stored public key".to_owned(),
            ));
        }
        Ok(ServerKeys {
            server_name,
            version: current.key_id,
            key_pair,
            old_keys,
        })
    }

    fn generate(sealer: &Sealer) -> Result<StoredSigningKey, ServerKeyError> {
        let der = Ed25519KeyPair::generate();
        let version = format!("a_{}", random_alphanumeric(4));
        let key_pair = Ed25519KeyPair::from_der(&der, version.clone())
            .map_err(|e| ServerKeyError::Damaged(version.clone(), e.to_string()))?;
        Ok(StoredSigningKey {
            key_id: version,
            public_key: key_pair.public_key().to_vec(),
            private_key_enc: sealer.seal(&der),
            created_ts: now_millis(),
            expired_ts: None,
        })
    }

    /// The current key id, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    /// The current public key, unpadded standard base64 as the spec publishes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.key_pair.public_key())
    }

    /// Signs `object` in place as this server (adds to `signatures.<server_name>`).
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) {
        ruma::signatures::sign_json(self.server_name.as_str(), &self.key_pair, object)
            .expect("signing a canonical JSON object cannot fail");
    }

    /// The signed key object for `GET /_matrix/key/v2/server`, valid for [`KEY_VALIDITY_MS`].
    pub fn server_key_object(&self) -> Raw<ServerSigningKeys> {
        let mut verify_keys = BTreeMap::new();
        verify_keys.insert(self.key_id(), json!({ "key": self.public_key_base64() }));
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
