//! JSON Web Tokens in the CONNECT password field (docs/security.md): HS256 with a shared
//! secret, or RS256 / ES256 with a public key, verified with `jsonwebtoken`. The token's
//! identity claim (`sub` by default) becomes the username — the CONNECT's own username is
//! ignored, as device SDKs often send a placeholder there; its `exp` is required and the
//! connection is closed when it passes (DISCONNECT 0x87 for v5).

use crate::config::AuthConfig;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `exp` and `nbf`.
pub(crate) const LEEWAY_SECS: u64 = 5;
/// A password longer than this is not tried as a token (a bound on what we parse).
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified token: who it names and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) subject: String,
    pub(crate) expires_at: SystemTime,
}

/// Why a token was refused (logged at DEBUG; the client gets 0x86 / 0x04).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("claim {0:?} is missing or not a non-empty string")]
    NoIdentity(String),
}

/// A JWT configuration that cannot be used; names the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct JwtConfigError {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

/// Verifies tokens with the configured key.
pub(crate) struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|e| JwtConfigError {
        key,
        message: format!("{}: {e}", path.display()),
    })
}

impl JwtVerifier {
    /// From `[auth]`: `None` when no JWT key is configured.
    pub(crate) fn from_config(c: &AuthConfig) -> Result<Option<JwtVerifier>, JwtConfigError> {
        let Some(path) = &c.jwt_key_file else {
            return Ok(None);
        };
        let bad = |message: String| JwtConfigError {
            key: "auth.jwt_key_file",
            message: format!("{}: {message}", path.display()),
        };
        let bytes = read(path, "auth.jwt_key_file")?;
        let (alg, key) = match c.jwt_algorithm.as_str() {
            "HS256" => {
                // A secret file: its bytes, without a trailing newline.
                let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                if secret.len() < 32 {
                    return Err(bad(format!(
                        "an HS256 secret needs at least 32 bytes, this one has {}",
                        secret.len()
                    )));
                }
                (Algorithm::HS256, DecodingKey::from_secret(secret))
            }
            "RS256" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&bytes).map_err(|e| bad(e.to_string()))?,
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(&bytes).map_err(|e| bad(e.to_string()))?,
            ),
            other => {
                return Err(JwtConfigError {
                    key: "auth.jwt_algorithm",
                    message: format!("{other:?}: must be HS256, RS256 or ES256"),
                })
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &c.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &c.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Some(JwtVerifier {
            key,
            validation,
            claim: c.jwt_identity_claim.clone(),
        }))
    }

    /// Whether `password` looks like a token (three base64url parts) worth verifying.
    pub(crate) fn looks_like_token(password: &[u8]) -> bool {
        password.len() <= MAX_TOKEN_BYTES
            && password.iter().filter(|b| **b == b'.').count() == 2
            && password
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// Verifies `token` (signature, algorithm, `exp`, `nbf`, and `aud`/`iss` when
    /// configured).
    pub(crate) fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )?;
        let subject = data
            .claims
            .get(&self.claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::NoIdentity(self.claim.clone()))?
            .to_owned();
        // Required by the validation above.
        let exp = data
            .claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .unwrap_or_default();
        Ok(Verified {
            subject,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(dir: &Path, aud: Option<&str>) -> JwtVerifier {
        let path = dir.join("secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        let c = AuthConfig {
            jwt_key_file: Some(path),
            jwt_algorithm: "HS256".into(),
            jwt_audience: aud.map(str::to_owned),
            ..AuthConfig::default()
        };
        JwtVerifier::from_config(&c).unwrap().unwrap()
    }

    fn token(claims: serde_json::Value, key: &[u8]) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_valid_token_names_its_subject_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), None);
        let exp = now() + 60;
        let t = token(serde_json::json!({"sub": "dev-1", "exp": exp}), SECRET);
        assert!(JwtVerifier::looks_like_token(t.as_bytes()));
        let ok = v.verify(&t).unwrap();
        assert_eq!(ok.subject, "dev-1");
        assert_eq!(ok.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
    }

    #[test]
    fn expired_forged_unsigned_and_claimless_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), Some("roost"));
        let exp = now() + 60;
        let good = serde_json::json!({"sub": "d", "exp": exp, "aud": "roost"});
        assert!(v.verify(&token(good.clone(), SECRET)).is_ok());
        let expired = serde_json::json!({"sub": "d", "exp": now() - 60, "aud": "roost"});
        assert!(v.verify(&token(expired, SECRET)).is_err());
        let forged = token(good.clone(), b"another secret, 32 bytes or more!");
        assert!(v.verify(&forged).is_err());
        let no_exp = serde_json::json!({"sub": "d", "aud": "roost"});
        assert!(v.verify(&token(no_exp, SECRET)).is_err());
        let wrong_aud = serde_json::json!({"sub": "d", "exp": exp, "aud": "other"});
        assert!(v.verify(&token(wrong_aud, SECRET)).is_err());
        let no_sub = serde_json::json!({"exp": exp, "aud": "roost"});
        assert!(matches!(
            v.verify(&token(no_sub, SECRET)),
            Err(TokenError::NoIdentity(_))
        ));
        // alg "none": header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJkIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(v.verify(none).is_err());
    }

    #[test]
    fn short_secrets_and_unknown_algorithms_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"short").unwrap();
        let c = AuthConfig {
            jwt_key_file: Some(path.clone()),
            jwt_algorithm: "HS256".into(),
            ..AuthConfig::default()
        };
        let e = JwtVerifier::from_config(&c).unwrap_err();
        assert_eq!(e.key, "auth.jwt_key_file");
        let c = AuthConfig {
            jwt_key_file: Some(path),
            jwt_algorithm: "HS512".into(),
            ..AuthConfig::default()
        };
        assert_eq!(
            JwtVerifier::from_config(&c).unwrap_err().key,
            "auth.jwt_algorithm"
        );
        assert!(!JwtVerifier::looks_like_token(b"plain password"));
    }
}
