//! Secrets at rest: access tokens are sealed with AES-256-GCM under the relay's master key before
//! they reach the database, so a copy of the database without the key exposes no token.
//!
//! A sealed value is `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`. The key id (a short
//! hash of the key) tells which key sealed it, so a wrong key is reported as such and not as
//! corruption. The asset id is the associated data: a sealed token copied onto another asset
//! row does not open.

use std::path::{Path, PathBuf};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

/// Prefix of every sealed value.
const SEALED_PREFIX: &str = "enc:v1:";
/// Environment variable holding the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "CAPI_RELAY_MASTER_KEY";
/// Environment variable naming a file that holds the master key.
pub const MASTER_KEY_FILE_ENV: &str = "CAPI_RELAY_MASTER_KEY_FILE";
/// The key file used when neither is set; created on first use.
pub const DEFAULT_KEY_FILE: &str = "capi-relay.key";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "the master key is not valid: {0} (expected the base64 of 32 random bytes; make one with `capi-relay keys generate-master`)"
    )]
    BadKey(String),
    #[error("cannot read the master key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the token was sealed with master key {sealed_with}, but this relay has key {have}; start it with the key the database was sealed with (or rotate with `capi-relay keys rotate-master`)"
    )]
    WrongKey { sealed_with: String, have: String },
    #[error("the sealed token is damaged or belongs to another asset")]
    Damaged,
    #[error("the stored token is not sealed")]
    NotSealed,
}

/// The master key. Its bytes never leave this type except through `encode` for a new key file.
pub struct MasterKey {
    key: SecretBox<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        MasterKey::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let digest = Sha256::new()
            .chain_update(b"capi-relay master key id\0")
            .chain_update(bytes)
            .finalize();
        MasterKey {
            id: hex::encode(&digest[..4]),
            key: SecretBox::new(Box::new(bytes)),
        }
    }

    /// Parses the base64 text of a key (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<MasterKey, VaultError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| VaultError::BadKey(format!("not base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| VaultError::BadKey(format!("{} bytes, not 32", b.len())))?;
        Ok(MasterKey::from_bytes(bytes))
    }

    pub fn read_file(path: &Path) -> Result<MasterKey, VaultError> {
        let text = std::fs::read_to_string(path).map_err(|source| VaultError::KeyFile {
            path: path.to_owned(),
            source,
        })?;
        MasterKey::parse(&text)
    }

    /// The base64 text of the key, for writing a key file.
    pub fn encode(&self) -> SecretString {
        SecretString::from(B64.encode(self.key.expose_secret()))
    }

    /// 64 bytes for `purpose` (e.g. the dashboard's cookie key), derived from the master key so
    /// no other secret has to be kept; the key itself is never exposed.
    pub fn derive(&self, purpose: &str) -> [u8; 64] {
        let digest = sha2::Sha512::new()
            .chain_update(b"capi-relay derived key\0")
            .chain_update(purpose.as_bytes())
            .chain_update(b"\0")
            .chain_update(self.key.expose_secret())
            .finalize();
        let mut out = [0u8; 64];
        out.copy_from_slice(&digest);
        out
    }

    /// Short public fingerprint, safe to print.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.key.expose_secret().into())
    }

    /// Seals `token` for the asset `asset_id`.
    pub fn seal(&self, token: &SecretString, asset_id: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: token.expose_secret().as_bytes(),
                    aad: asset_id.as_bytes(),
                },
            )
            .expect("AES-GCM sealing of a short token cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}:{}", self.id, B64.encode(blob))
    }

    /// Opens a value sealed by [`seal`](Self::seal) for the same asset.
    pub fn open(&self, sealed: &str, asset_id: &str) -> Result<SecretString, VaultError> {
        let rest = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(VaultError::NotSealed)?;
        let (key_id, blob) = rest.split_once(':').ok_or(VaultError::Damaged)?;
        if key_id != self.id {
            return Err(VaultError::WrongKey {
                sealed_with: key_id.to_owned(),
                have: self.id.clone(),
            });
        }
        let blob = B64.decode(blob).map_err(|_| VaultError::Damaged)?;
        if blob.len() < 12 + 16 {
            return Err(VaultError::Damaged);
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: asset_id.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Damaged)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| VaultError::Damaged)
    }
}

/// Whether a stored value is sealed (older relays stored tokens in plain text).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The base64 key itself (`CAPI_RELAY_MASTER_KEY`).
    Inline,
    /// A key file named by configuration.
    File(PathBuf),
    /// The default key file, created with a fresh key if missing.
    DefaultFile(PathBuf),
}

/// Loads the master key: `CAPI_RELAY_MASTER_KEY`, else the file named by `key_file` (or
/// `CAPI_RELAY_MASTER_KEY_FILE`), else `./capi-relay.key`, generated on first use so a
/// zero-setup relay still seals its tokens. Returns the key and where it came from.
pub fn load_master_key(
    inline: Option<&SecretString>,
    key_file: Option<&Path>,
) -> Result<(MasterKey, KeySource), VaultError> {
    if let Some(text) = inline {
        return Ok((MasterKey::parse(text.expose_secret())?, KeySource::Inline));
    }
    if let Some(path) = key_file {
        return Ok((
            MasterKey::read_file(path)?,
            KeySource::File(path.to_owned()),
        ));
    }
    let path = PathBuf::from(DEFAULT_KEY_FILE);
    if !path.exists() {
        let key = MasterKey::generate();
        write_key_file(&path, &key).map_err(|source| VaultError::KeyFile {
            path: path.clone(),
            source,
        })?;
        tracing::warn!(
            path = %path.display(),
            key_id = key.id(),
            "generated a new master key file; back it up: without it the stored access tokens cannot be read"
        );
        return Ok((key, KeySource::DefaultFile(path)));
    }
    Ok((MasterKey::read_file(&path)?, KeySource::DefaultFile(path)))
}

/// Writes a key file readable by its owner only.
pub fn write_key_file(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{}", key.encode().expose_secret())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn a_sealed_token_opens_with_the_same_key_and_asset_only() {
        let key = MasterKey::generate();
        let sealed = key.seal(&token("EAAG-secret"), "102290129340398");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("EAAG-secret"));
        let opened = key.open(&sealed, "102290129340398").unwrap();
        assert_eq!(opened.expose_secret(), "EAAG-secret");
        assert!(matches!(key.open(&sealed, "999"), Err(VaultError::Damaged)));
        let other = MasterKey::generate();
        assert!(matches!(
            other.open(&sealed, "102290129340398"),
            Err(VaultError::WrongKey { .. })
        ));
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let key = MasterKey::generate();
        let t = token("EAAG-secret");
        assert_ne!(key.seal(&t, "1"), key.seal(&t, "1"));
    }

    #[test]
    fn a_tampered_value_is_refused() {
        let key = MasterKey::generate();
        let sealed = key.seal(&token("EAAG-secret"), "1");
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(key.open(&tampered, "1"), Err(VaultError::Damaged)));
        assert!(matches!(
            key.open("EAAG-plain", "1"),
            Err(VaultError::NotSealed)
        ));
    }

    #[test]
    fn keys_round_trip_through_their_text_and_bad_keys_are_named() {
        let key = MasterKey::generate();
        let again = MasterKey::parse(key.encode().expose_secret()).unwrap();
        assert_eq!(key.id(), again.id());
        let err = MasterKey::parse("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("5 bytes, not 32"), "{err}");
        assert!(MasterKey::parse("not base64!").is_err());
    }

    #[test]
    fn key_files_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = MasterKey::generate();
        write_key_file(&path, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (loaded, source) = load_master_key(None, Some(&path)).unwrap();
        assert_eq!(loaded.id(), key.id());
        assert_eq!(source, KeySource::File(path));
    }
}
