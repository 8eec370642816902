//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as MQTT 5 enhanced authentication: the CONNECT carries
//! Authentication Method `SCRAM-SHA-256` and the client-first message, the server answers
//! AUTH 0x18 with the server-first message, the client answers AUTH 0x18 with its proof, and
//! the CONNACK carries the server's signature (docs/security.md). The password never crosses
//! the wire and the server stores only what RFC 5803 stores (salt, iterations, StoredKey,
//! ServerKey), in the password file next to the user's argon2 hash.
//!
//! Sans-IO: [`ScramServer::start`] takes the client-first message and returns the server-first
//! one; [`ScramServer::finish`] takes the client-final message and returns the server-final
//! one, or an error. Crypto from ring (PBKDF2, HMAC, SHA-256), compared in constant time.
//! No channel binding (`n,,` and `y,,` are accepted, `p=` refused) and no authorization
//! identity other than the user's own.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

/// The MQTT Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";
/// PBKDF2 iterations for new credentials (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// Iterations accepted in a stored credential (the client pays for them on every connect).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// The longest SCRAM message accepted.
pub const MAX_MESSAGE: usize = 1024;

/// What the server keeps for a user (RFC 5803).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal, in time that does not depend on where the first difference is.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// PBKDF2-HMAC-SHA256 of the password: RFC 5802's SaltedPassword.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, salt, password, &mut out);
    out
}

impl ScramCredentials {
    /// Derives the credentials for `password` with a fresh 16-byte salt.
    pub fn derive(password: &[u8], iterations: u32) -> Result<ScramCredentials, &'static str> {
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "the system random number generator failed")?;
        Ok(Self::derive_with_salt(password, salt, iterations))
    }

    fn derive_with_salt(password: &[u8], salt: Vec<u8>, iterations: u32) -> ScramCredentials {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        ScramCredentials {
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
            salt,
        }
    }

    /// Whether `password` is the one these credentials were derived from (a plain CONNECT
    /// password checked against a SCRAM-only entry). Costs the PBKDF2 iterations.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let other = Self::derive_with_salt(password, self.salt.clone(), self.iterations);
        ct_eq(&other.stored_key, &self.stored_key)
    }

    /// RFC 5803's text form: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn to_rfc5803(&self) -> String {
        format!(
            "{METHOD}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses RFC 5803's text form.
    pub fn parse(s: &str) -> Result<ScramCredentials, String> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("not a SCRAM-SHA-256 credential")?;
        let (params, keys) = rest.split_once('$').ok_or("missing '$' before the keys")?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or("missing ':' between iterations and salt")?;
        let iterations: u32 = iter.parse().map_err(|_| "iterations are not a number")?;
        if !(4096..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "iterations must be between 4096 and {MAX_ITERATIONS}, not {iterations}"
            ));
        }
        let salt = B64.decode(salt).map_err(|_| "salt is not base64")?;
        if salt.len() < 8 {
            return Err("salt shorter than 8 bytes".into());
        }
        let (stored, server) = keys.split_once(':').ok_or("missing ':' between the keys")?;
        let key = |k: &str, what: &str| -> Result<[u8; 32], String> {
            let v = B64.decode(k).map_err(|_| format!("{what} is not base64"))?;
            v.try_into().map_err(|_| format!("{what} is not 32 bytes"))
        };
        Ok(ScramCredentials {
            iterations,
            salt,
            stored_key: key(stored, "StoredKey")?,
            server_key: key(server, "ServerKey")?,
        })
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not what RFC 5802 says (CONNACK 0x87 / DISCONNECT).
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Unknown user or wrong proof (CONNACK 0x86); the two are not told apart.
    #[error("SCRAM authentication failed")]
    Failed,
}

/// The server's half of one exchange, between server-first and client-final.
#[derive(Debug)]
pub struct ScramServer {
    user: String,
    /// None: the user is unknown; the exchange goes on with made-up values and fails at the
    /// end, so the answer does not tell which users exist.
    creds: Option<ScramCredentials>,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// Decodes a saslname (`=2C` is `,`, `=3D` is `=`).
fn saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 3)
            .ok_or(ScramError::Malformed("bad '=' escape"))?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return Err(ScramError::Malformed("bad '=' escape")),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ScramServer {
    /// Takes the client-first message; `lookup` gives a user's credentials, `fake` made-up ones
    /// for an unknown user (the same every time for the same user, so probing learns nothing).
    /// Returns the server-first message.
    pub fn start(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
        fake: impl FnOnce(&str) -> ScramCredentials,
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        if client_first.len() > MAX_MESSAGE {
            return Err(ScramError::Malformed("message too long"));
        }
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let bare = if let Some(b) = text.strip_prefix("n,,") {
            b
        } else if let Some(b) = text.strip_prefix("y,,") {
            b
        } else if text.starts_with("p=") {
            return Err(ScramError::Malformed("channel binding is not offered"));
        } else {
            return Err(ScramError::Malformed(
                "gs2 header must be n,, (no authorization identity)",
            ));
        };
        let mut parts = bare.split(',');
        let user = parts
            .next()
            .and_then(|p| p.strip_prefix("n="))
            .ok_or(ScramError::Malformed("missing n="))?;
        let user = saslname(user)?;
        let cnonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic() && c != ','))
            .ok_or(ScramError::Malformed("missing or bad r="))?;
        if parts.any(|p| p.starts_with("m=")) {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
        let creds = lookup(&user);
        let shown = creds.clone().unwrap_or_else(|| fake(&user));
        let mut snonce = [0u8; 18];
        ring::rand::SystemRandom::new()
            .fill(&mut snonce)
            .map_err(|_| ScramError::Failed)?;
        let nonce = format!("{cnonce}{}", B64.encode(snonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&shown.salt),
            shown.iterations
        );
        Ok((
            ScramServer {
                user,
                creds,
                nonce,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
            },
            server_first.into_bytes(),
        ))
    }

    /// The user named in the client-first message.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Takes the client-final message; returns the server-final message (`v=...`) if the
    /// proof is right.
    pub fn finish(&self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        if client_final.len() > MAX_MESSAGE {
            return Err(ScramError::Malformed("message too long"));
        }
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing p="))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(ScramError::Malformed("missing c="))?;
        if binding != "biws" && binding != "eSws" {
            // base64 of "n,," or "y,,": what the client-first header said.
            return Err(ScramError::Malformed("channel binding data does not match"));
        }
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing r="))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let Some(creds) = &self.creds else {
            return Err(ScramError::Failed);
        };
        let proof: [u8; 32] = proof.try_into().map_err(|_| ScramError::Failed)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac_sha256(&creds.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        if !ct_eq(&sha256(&client_key), &creds.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac_sha256(&creds.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The client's side, for tests and tools.
pub mod client {
    use super::*;

    /// The client-final message for `password`, given the messages so far; and the server
    /// signature the client should then expect.
    pub fn client_final(
        password: &[u8],
        client_first_bare: &str,
        server_first: &str,
    ) -> Option<(String, Vec<u8>)> {
        let mut nonce = None;
        let mut salt: Option<Vec<u8>> = None;
        let mut iterations = None;
        for p in server_first.split(',') {
            if let Some(v) = p.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = p.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = p.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let (nonce, salt, iterations) = (nonce?, salt?, iterations?);
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        Some((
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fake(_: &str) -> ScramCredentials {
        ScramCredentials::derive_with_salt(b"", vec![7; 16], 4096)
    }

    /// RFC 7677 §3's example: user "user", password "pencil", the nonces and salt given.
    #[test]
    fn the_rfc_7677_example_computes_the_same_proof_and_signature() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = ScramCredentials::derive_with_salt(b"pencil", salt, 4096);
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, server_final) =
            client::client_final(b"pencil", bare, server_first).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
        let _ = creds;
    }

    fn exchange(password: &[u8], stored: Option<ScramCredentials>) -> Result<Vec<u8>, ScramError> {
        let bare = "n=dev=2C1,r=clientnonce123";
        let (server, first) =
            ScramServer::start(format!("n,,{bare}").as_bytes(), |_| stored, fake)?;
        assert_eq!(server.user(), "dev,1");
        let first = String::from_utf8(first).unwrap();
        let (fin, expected) = client::client_final(password, bare, &first).unwrap();
        let v = server.finish(fin.as_bytes())?;
        assert_eq!(v, expected);
        Ok(v)
    }

    #[test]
    fn right_password_passes_wrong_password_and_unknown_user_fail_alike() {
        let creds = ScramCredentials::derive(b"s3cret", 4096).unwrap();
        assert!(exchange(b"s3cret", Some(creds.clone())).is_ok());
        assert_eq!(
            exchange(b"wrong", Some(creds)).unwrap_err(),
            ScramError::Failed
        );
        assert_eq!(exchange(b"s3cret", None).unwrap_err(), ScramError::Failed);
    }

    #[test]
    fn credentials_round_trip_and_verify_plain_passwords() {
        let c = ScramCredentials::derive(b"pw", 4096).unwrap();
        let text = c.to_rfc5803();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(ScramCredentials::parse(&text).unwrap(), c);
        assert!(c.verify_password(b"pw"));
        assert!(!c.verify_password(b"pw2"));
        assert!(ScramCredentials::parse("SCRAM-SHA-256$100:AAAAAAAAAAA=$x:y").is_err());
        assert!(ScramCredentials::parse("$argon2id$v=19$...").is_err());
    }

    #[test]
    fn malformed_messages_are_refused() {
        let look = |_: &str| None;
        for m in [
            &b"p=tls-unique,,n=u,r=x"[..],
            b"n,a=admin,n=u,r=x",
            b"n,,r=x",
            b"n,,n=u",
            b"n,,n=u=ZZ,r=x",
            b"n,,n=u,r=x,m=ext",
            &[0xff, 0xfe][..],
        ] {
            assert!(
                matches!(
                    ScramServer::start(m, look, fake),
                    Err(ScramError::Malformed(_))
                ),
                "{m:?}"
            );
        }
        let (s, _) = ScramServer::start(b"n,,n=u,r=abc", look, fake).unwrap();
        assert!(matches!(
            s.finish(b"c=biws,r=other,p=AAAA"),
            Err(ScramError::Malformed(_))
        ));
    }
}
