//! The sealing key kept in the data directory, and sealing with it: private keys (the server's
//! signing keys, later users' account keys) are stored only in sealed form, so a database dump
//! alone does not give them away.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit},
};

/// The file in `data_dir` holding the 32-byte sealing key.
pub const SEALING_KEY_FILE: &str = "sealing.key";
const NONCE_LEN: usize = 24;

/// Why the sealing key could not be had or a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read or create the sealing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sealing key {0} is not 32 bytes; it is damaged or not Myelin's")]
    BadKeyFile(PathBuf),
    #[error(
        "a sealed value could not be opened: it was sealed with another sealing key (is \
         data_dir the one this database was created with?) or it is damaged"
    )]
    Unseal,
}

/// Seals and opens secrets with the data directory's key (XChaCha20-Poly1305, random nonce).
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Loads the sealing key from `data_dir`, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SecretsError> {
        let path = data_dir.join(SEALING_KEY_FILE);
        let io = |source| SecretsError::Io {
            path: path.clone(),
            source,
        };
        let key = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&path).map_err(io)?;
                file.write_all(&key).map_err(io)?;
                file.sync_all().map_err(io)?;
                key.to_vec()
            }
            Err(err) => return Err(io(err)),
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| SecretsError::BadKeyFile(path.clone()))?;
        Ok(Sealer {
            cipher: XChaCha20Poly1305::new(&key.into()),
        })
    }

    /// Seals `plaintext`: a fresh nonce followed by the ciphertext and its tag.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext)
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens what [`Sealer::seal`] produced with the same key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretsError::Unseal);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretsError::Unseal)?;
        self.cipher
            .decrypt(&XNonce::from(nonce), ciphertext)
            .map_err(|_| SecretsError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_key_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let sealed = sealer.seal(b"private key bytes");
        assert_ne!(&sealed[NONCE_LEN..], b"private key bytes");
        let again = Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"private key bytes");
    }

    #[test]
    fn another_key_or_tampering_cannot_open() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sealed = Sealer::load_or_create(a.path()).unwrap().seal(b"secret");
        let other = Sealer::load_or_create(b.path()).unwrap();
        assert!(matches!(other.open(&sealed), Err(SecretsError::Unseal)));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let own = Sealer::load_or_create(a.path()).unwrap();
        assert!(matches!(own.open(&tampered), Err(SecretsError::Unseal)));
        assert!(matches!(own.open(&[1, 2, 3]), Err(SecretsError::Unseal)));
    }

    #[test]
    fn damaged_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SEALING_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Sealer::load_or_create(dir.path()),
            Err(SecretsError::BadKeyFile(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Sealer::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SEALING_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
