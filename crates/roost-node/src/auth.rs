//! Who a client is: the CONNECT's credentials checked against the password file, or the
//! identity of its verified TLS client certificate, or neither (anonymous, if its listener
//! allows it). docs/security.md.
//!
//! ```text
//!  CONNECT ─▶ negotiate (core) ─▶ authenticate ─▶ Identity ─▶ admit (quota, registry)
//!                                   ├ certificate with an identity (listener cert_identity)
//!                                   ├ username + password ─▶ password file (argon2, blocking pool)
//!                                   └ neither ─▶ anonymous, if the listener allows it
//! ```
//!
//! Password checks cost what argon2 makes them cost (about 19 MiB and tens of milliseconds
//! each, `passwords::ARGON2_*`), on purpose. Two things keep that from turning into an outage:
//! at most [`MAX_CONCURRENT_VERIFIES`]-per-core checks run at once (each holds its memory), and
//! a successful check is remembered as a keyed HMAC of the password for
//! [`VERIFIED_TTL`], so a reconnect storm after a node restart costs one HMAC per client
//! rather than one argon2 run. The memory is cleared when the password file is reloaded.

use crate::listener::Accepted;
use crate::passwords::PasswordFile;
use parking_lot::{Mutex, RwLock};
use roost_codec::{Connect, ReasonCode};
use roost_core::connect::Refusal;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Password checks running at once, per core.
pub(crate) const MAX_CONCURRENT_VERIFIES: usize = 2;
/// How long a successful password check is remembered.
pub(crate) const VERIFIED_TTL: Duration = Duration::from_secs(600);
/// Most remembered checks; when full, the memory is cleared.
pub(crate) const MAX_VERIFIED: usize = 100_000;

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Anonymous,
    Password,
    Certificate,
    Token,
    Scram,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Anonymous => "anonymous",
            Method::Password => "password",
            Method::Certificate => "certificate",
            Method::Token => "token",
            Method::Scram => "scram",
        }
    }
}

/// The outcome of authentication: what the session is known as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The username: the CONNECT's (checked, or unchecked without a password file), the
    /// certificate's identity, or the token's identity claim.
    pub(crate) username: Option<String>,
    pub(crate) method: Method,
    /// When the credentials stop being valid (a token's `exp`): the connection is closed then.
    pub(crate) expires_at: Option<std::time::SystemTime>,
}

/// The node's credential stores.
pub(crate) struct Auth {
    password_path: Option<PathBuf>,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    verifying: Semaphore,
    /// `auth.jwt_key_file`, if set.
    jwt: Option<crate::jwt::JwtVerifier>,
    /// user → (HMAC of the password under `key`, when verified).
    verified: Mutex<HashMap<String, ([u8; 32], Instant)>>,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("password_path", &self.password_path)
            .finish_non_exhaustive()
    }
}

/// A credential store that could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("auth.password_file {}: {source}", path.display())]
    Passwords {
        path: PathBuf,
        source: crate::passwords::PasswordFileError,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtConfigError),
}

impl Auth {
    /// Loads the password file, if one is configured.
    pub(crate) fn load(c: &crate::config::AuthConfig) -> Result<Auth, AuthError> {
        let password_path = c.password_file.clone();
        let jwt = crate::jwt::JwtVerifier::from_config(c)?;
        let passwords = match &password_path {
            Some(p) => Some(Arc::new(PasswordFile::load(p).map_err(|source| {
                AuthError::Passwords {
                    path: p.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| AuthError::Random)?;
        Ok(Auth {
            password_path,
            passwords: RwLock::new(passwords),
            verifying: Semaphore::new(MAX_CONCURRENT_VERIFIES * cores),
            jwt,
            verified: Mutex::new(HashMap::new()),
            key,
        })
    }

    /// Re-reads the password file (SIGHUP). On error the old one stays. `Ok(false)` when none
    /// is configured.
    pub(crate) fn reload(&self) -> Result<bool, AuthError> {
        let Some(p) = &self.password_path else {
            return Ok(false);
        };
        let file = PasswordFile::load(p).map_err(|source| AuthError::Passwords {
            path: p.clone(),
            source,
        })?;
        *self.passwords.write() = Some(Arc::new(file));
        self.verified.lock().clear();
        Ok(true)
    }

    /// `user`'s SCRAM-SHA-256 credentials from the password file, if any.
    pub(crate) fn scram(&self, user: &str) -> Option<crate::scram::ScramCredentials> {
        self.passwords.read().as_ref().and_then(|p| p.scram(user))
    }

    /// Made-up SCRAM parameters for a user without credentials: a salt derived from the user
    /// name under this process's key, so repeated probes see the same salt and learn nothing.
    pub(crate) fn scram_decoy(&self, user: &str) -> crate::scram::ScramCredentials {
        let tag = ring::hmac::sign(&self.key, user.as_bytes());
        crate::scram::ScramCredentials {
            iterations: crate::scram::DEFAULT_ITERATIONS,
            salt: tag.as_ref()[..16].to_vec(),
            stored_key: [0; 32],
            server_key: [0; 32],
        }
    }

    /// Number of users in the password file (0 without one).
    pub(crate) fn user_count(&self) -> usize {
        self.passwords.read().as_ref().map_or(0, |p| p.len())
    }

    /// Decides who the client of `connect` is, or refuses it: 0x86 Bad user name or password
    /// (v3.1.1: 0x04), 0x87 Not authorized (v3.1.1: 0x05).
    pub(crate) async fn authenticate(
        &self,
        via: &Accepted,
        connect: &Connect,
        client_id: &str,
    ) -> Result<Identity, Refusal> {
        let listener = &via.listener;
        if let Some(cert) = &via.cert {
            use crate::config::CertIdentity;
            let named = match listener.cert_identity {
                CertIdentity::None => None,
                CertIdentity::Cn => Some(cert.cn.clone()),
                CertIdentity::San => Some(cert.sans.first().cloned()),
            };
            if let Some(name) = named {
                let Some(name) = name.filter(|n| !n.is_empty()) else {
                    return Err(Refusal::new(ReasonCode::NOT_AUTHORIZED, "cert_no_identity"));
                };
                if listener.require_client_id_match && name != client_id {
                    return Err(Refusal::new(
                        ReasonCode::NOT_AUTHORIZED,
                        "cert_client_id_mismatch",
                    ));
                }
                return Ok(Identity {
                    username: Some(name),
                    method: Method::Certificate,
                    expires_at: None,
                });
            }
        }
        if let (Some(jwt), Some(password)) = (&self.jwt, connect.password.as_deref()) {
            if crate::jwt::JwtVerifier::looks_like_token(password) {
                let token = std::str::from_utf8(password).unwrap_or_default();
                return match jwt.verify(token) {
                    Ok(v) => Ok(Identity {
                        username: Some(v.subject),
                        method: Method::Token,
                        expires_at: Some(v.expires_at),
                    }),
                    Err(e) => {
                        tracing::debug!(client_id, error = %e, "token refused");
                        Err(Refusal::new(
                            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                            "bad_token",
                        ))
                    }
                };
            }
        }
        let passwords = self.passwords.read().clone();
        match (&connect.username, passwords) {
            (Some(user), Some(file)) => {
                let Some(password) = connect.password.as_deref() else {
                    return Err(Refusal::new(
                        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                        "bad_credentials",
                    ));
                };
                if self.verify(file, user, password).await {
                    Ok(Identity {
                        username: Some(user.clone()),
                        method: Method::Password,
                        expires_at: None,
                    })
                } else {
                    Err(Refusal::new(
                        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                        "bad_credentials",
                    ))
                }
            }
            // No password file: a username is a claim nobody checks, so the client counts as
            // anonymous (Mosquitto does the same).
            (username, _) => {
                if via.cert.is_some() || listener.allow_anonymous {
                    Ok(Identity {
                        username: username.clone(),
                        method: if via.cert.is_some() {
                            Method::Certificate
                        } else {
                            Method::Anonymous
                        },
                        expires_at: None,
                    })
                } else {
                    Err(Refusal::new(ReasonCode::NOT_AUTHORIZED, "not_authorized"))
                }
            }
        }
    }

    async fn verify(&self, file: Arc<PasswordFile>, user: &str, password: &[u8]) -> bool {
        if let Some((known, at)) = self.verified.lock().get(user) {
            // Constant-time compare of the remembered MAC.
            if at.elapsed() < VERIFIED_TTL && ring::hmac::verify(&self.key, password, known).is_ok()
            {
                return true;
            }
        }
        let Ok(_permit) = self.verifying.acquire().await else {
            return false;
        };
        let user_owned = user.to_owned();
        let password_mac_input = password;
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || file.verify(&user_owned, &password))
            .await
            .unwrap_or(false);
        if ok {
            let mut mac = [0u8; 32];
            mac.copy_from_slice(ring::hmac::sign(&self.key, password_mac_input).as_ref());
            let mut v = self.verified.lock();
            if v.len() >= MAX_VERIFIED {
                v.clear();
            }
            v.insert(user.to_owned(), (mac, Instant::now()));
        }
        ok
    }
}

impl crate::broker::Broker {
    /// Re-reads every TLS listener's certificate files (the admin API's too, when it serves
    /// HTTPS) and the password file, and proposes
    /// the policy file to the cluster again (SIGHUP, `POST /api/v1/reload`). Each failure keeps the old file in use and is logged at ERROR
    /// (the operator's change did not take). Returns what was reloaded and what failed.
    pub(crate) async fn reload_credentials(&self) -> Vec<(String, Result<(), String>)> {
        let mut report = Vec::new();
        for l in self.listeners.read().iter() {
            match l.reload_tls() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(listener = %l.name, "certificate reloaded");
                    report.push((format!("listener {}", l.name), Ok(())));
                }
                Err(e) => {
                    tracing::error!(listener = %l.name, error = %e, "certificate reload failed; the old one stays in use");
                    report.push((format!("listener {}", l.name), Err(e)));
                }
            }
        }
        if let Some(tls) = self.admin_tls.get() {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!("admin API certificate reloaded");
                    report.push(("http.tls_cert".into(), Ok(())));
                }
                Err(e) => {
                    tracing::error!(error = %e, "admin API certificate reload failed; the old one stays in use");
                    report.push(("http.tls_cert".into(), Err(e)));
                }
            }
        }
        match self.auth.reload() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(users = self.auth.user_count(), "password file reloaded");
                report.push(("auth.password_file".into(), Ok(())));
            }
            Err(e) => {
                tracing::error!(error = %e, "password file reload failed; the old one stays in use");
                report.push(("auth.password_file".into(), Err(e.to_string())));
            }
        }
        if self.policies.file.is_some() {
            match self.propose_policy_file_if(None).await {
                Ok(version) => {
                    tracing::info!(version, "policy file reloaded and replicated");
                    report.push(("auth.policy_file".into(), Ok(())));
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy file reload failed; the policies in force stay");
                    report.push(("auth.policy_file".into(), Err(e)));
                }
            }
        }
        report
    }
}
