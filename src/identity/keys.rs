//! Verification keys for a JWT issuer, loaded once from the places its
//! config names: an HMAC secret (environment or file), a PEM public key, or
//! a JWKS document. Never from a token.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{AlgorithmFamily, DecodingKey};

/// One key an issuer signs with.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The key id, when the source names one (JWKS).
    pub kid: Option<String>,
    /// The key itself; its family says which algorithms it verifies.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.key.family())
            .finish()
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The environment variable is unset or empty.
    #[error("environment variable `{0}` is unset or empty")]
    Env(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable key.
    #[error("{0}")]
    Invalid(String),
}

/// An HMAC secret from an environment variable.
pub fn secret_from_env(name: &str) -> Result<VerifyingKey, KeyError> {
    let secret = std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| KeyError::Env(name.to_owned()))?;
    hmac_key(secret.as_encoded_bytes())
}

/// An HMAC secret from a file; one trailing newline is ignored.
pub fn secret_from_file(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read(path)?;
    let secret = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(&bytes);
    hmac_key(secret)
}

fn hmac_key(secret: &[u8]) -> Result<VerifyingKey, KeyError> {
    check_secret(secret)?;
    Ok(VerifyingKey {
        kid: None,
        key: DecodingKey::from_secret(secret),
    })
}

/// An HMAC secret must be long, and must not be a public key in disguise.
fn check_secret(secret: &[u8]) -> Result<(), KeyError> {
    if secret.len() < 32 {
        return Err(KeyError::Invalid(format!(
            "the HMAC secret has {} bytes; use at least 32",
            secret.len()
        )));
    }
    // A public key pasted as a shared secret is the classic algorithm
    // confusion set-up: anyone could sign with it.
    let start = secret.trim_ascii_start();
    if [
        &b"-----BEGIN"[..],
        b"{",
        b"ssh-",
        b"ecdsa-",
        b"MII",
        b"MCow",
        b"MFkw",
    ]
    .iter()
    .any(|p| start.starts_with(p))
    {
        return Err(KeyError::Invalid(
            "the HMAC secret looks like a PEM, DER, SSH or JWK key; use public_key_file or jwks_file for public keys"
                .to_owned(),
        ));
    }
    Ok(())
}

/// A PEM public key: RSA, EC (P-256, P-384) or Ed25519.
pub fn public_key_from_pem(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read(path)?;
    if pem.windows(7).any(|w| w == b"PRIVATE") {
        return Err(KeyError::Invalid(format!(
            "{} holds a private key; give usher only the public key",
            path.display()
        )));
    }
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            KeyError::Invalid(format!(
                "{} is not a PEM RSA, EC or Ed25519 public key",
                path.display()
            ))
        })?;
    Ok(VerifyingKey { kid: None, key })
}

/// The signing keys of a JWKS document (`{"keys": [...]}`); encryption keys
/// are skipped. Shared with JWKS fetched over HTTP.
pub fn keys_from_jwks(json: &[u8]) -> Result<Vec<VerifyingKey>, KeyError> {
    let set: JwkSet = serde_json::from_slice(json)
        .map_err(|e| KeyError::Invalid(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        // Shared secrets in a JWKS meet the same bar as configured ones.
        if let AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
            let secret = URL_SAFE_NO_PAD
                .decode(&oct.value)
                .map_err(|_| KeyError::Invalid("an `oct` key is not base64url".to_owned()))?;
            check_secret(&secret)?;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(KeyError::Invalid(
            "the JWKS document has no usable signing key".to_owned(),
        ));
    }
    Ok(keys)
}

/// A JWKS document from a file.
pub fn keys_from_jwks_file(path: &Path) -> Result<Vec<VerifyingKey>, KeyError> {
    keys_from_jwks(&read(path)?).map_err(|e| match e {
        KeyError::Invalid(msg) => KeyError::Invalid(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// The family name used in messages.
pub fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    crate::config::bounded_read::read(path, crate::config::MAX_KEY_FILE, "key files").map_err(
        |source| KeyError::Read {
            path: path.display().to_string(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_key_file_is_an_error_not_a_hang() {
        let e = secret_from_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key files may be at most 1 MiB"), "{e}");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name)
    }

    #[test]
    fn loads_each_public_key_type() {
        for (name, family) in [
            ("rsa.pub.pem", AlgorithmFamily::Rsa),
            ("ec.pub.pem", AlgorithmFamily::Ec),
            ("ed.pub.pem", AlgorithmFamily::Ed),
        ] {
            assert_eq!(
                public_key_from_pem(&fixture(name)).unwrap().key.family(),
                family,
                "{name}"
            );
        }
    }

    #[test]
    fn refuses_private_keys_and_garbage() {
        assert!(public_key_from_pem(&fixture("rsa.key.pem")).is_err());
        assert!(public_key_from_pem(&fixture("README.md")).is_err());
        assert!(public_key_from_pem(&fixture("missing.pem")).is_err());
    }

    #[test]
    fn refuses_weak_or_confused_secrets() {
        assert!(hmac_key(b"short").is_err());
        let pem = std::fs::read(fixture("rsa.pub.pem")).unwrap();
        assert!(
            hmac_key(&pem).is_err(),
            "a public key is not a shared secret"
        );
        assert!(hmac_key(&[b'k'; 32]).is_ok());
        for disguised in [
            &b"  -----BEGIN PUBLIC KEY-----xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..],
            b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQxxxxxxx",
            b"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxxxx",
        ] {
            assert!(
                hmac_key(disguised).is_err(),
                "{:?}",
                String::from_utf8_lossy(disguised)
            );
        }
    }

    #[test]
    fn jwks_documents() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA","kid":"h1"},
            {"kty":"EC","crv":"P-256","use":"enc","x":"AA","y":"AA","kid":"e1"},
            {"kty":"XYZ","kid":"odd"}
        ]}"#;
        let keys = keys_from_jwks(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("h1"));
        assert!(keys_from_jwks(br#"{"keys":[]}"#).is_err());
        assert!(
            keys_from_jwks(br#"{"keys":[{"kty":"oct","k":""}]}"#).is_err(),
            "empty secret"
        );
        assert!(
            keys_from_jwks(br#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#).is_err(),
            "short secret"
        );
        assert!(keys_from_jwks(b"[]").is_err());
        assert!(keys_from_jwks(b"\xff").is_err());
    }
}
