//! Password hashing with argon2id at the configured cost, off the async threads (a hash takes
//! tens of milliseconds at the default cost).

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};

use crate::{Error, config::PasswordConfig};

fn hasher(config: &PasswordConfig) -> Result<Argon2<'static>, Error> {
    let params = Params::new(
        config.memory_kib,
        config.iterations,
        config.parallelism,
        None,
    )
    .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string (which records the cost, so verification needs none).
pub async fn hash(config: &PasswordConfig, password: &str) -> Result<String, Error> {
    let argon = hasher(config)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt_bytes: [u8; 16] = rand::random();
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|e| Error::Internal(format!("salt: {e}")))?;
        argon
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// Whether `password` matches the PHC string `hash`. A malformed stored hash never matches.
pub async fn verify(hash: &str, password: &str) -> bool {
    let hash = hash.to_owned();
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || match PasswordHash::new(&hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordConfig {
        PasswordConfig {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[tokio::test]
    async fn hash_verifies_only_the_same_password() {
        let hash = hash(&cheap(), "correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(&hash, "correct horse").await);
        assert!(!verify(&hash, "Correct horse").await);
        assert!(!verify("not a phc string", "correct horse").await);
    }

    #[tokio::test]
    async fn cost_is_recorded_in_the_hash() {
        let config = PasswordConfig {
            memory_kib: 64,
            iterations: 3,
            parallelism: 1,
        };
        let hash = hash(&config, "pw").await.unwrap();
        assert!(hash.contains("m=64,t=3,p=1"), "{hash}");
    }
}
