//! The password file: MQTT user names and their argon2id password hashes.
//!
//! ```text
//! # Roost password file: written by `roost passwd FILE USER`.
//! alice:$argon2id$v=19$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0
//! ```
//!
//! One `user:hash` per line, like `mosquitto_passwd`'s files but with the hash an argon2id
//! [PHC string](https://github.com/P-H-C/phc-string-format/blob/master/phc-sf-spec.md). Blank
//! lines and lines starting with `#` are kept as they are, so an operator's comments survive
//! `roost passwd`. Everything else is checked when the file is read, and the first bad line
//! fails the whole file with its line number ([`PasswordFileError`]): a plaintext password, any
//! other algorithm, a bad user name, a user listed twice. A node never runs with half a
//! password file, and a plaintext password is never accepted (nor ever printed: errors name the
//! line and the user, never the rest of the line).
//!
//! Who calls it: `roost passwd` ([`PasswordFile::load`], [`PasswordFile::set`],
//! [`PasswordFile::save_atomically`]); the node's CONNECT authentication calls
//! [`PasswordFile::verify`], once per CONNECT that carries a password.
//!
//! Cost and concurrency: [`PasswordFile::verify`] runs argon2id with the file's parameters,
//! about 25 ms of one core and 19 MiB of memory with ours (see [`hash_password`]). That is far
//! above what async code may block (house style: ~500 µs), so the caller runs it on a blocking
//! thread (`tokio::task::spawn_blocking`) and should bound how many run at once (a semaphore
//! sized to the cores): each holds its 19 MiB while it runs, and more verifications than cores
//! only wait for each other. This module does neither; it is plain, synchronous code.
//! [`PasswordFile`] is `Send + Sync`: share it behind an `Arc`.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The most users a password file may hold. A bound, like every other in Roost: the file is
/// held in memory whole (about 200 bytes a user), and a million is far beyond any deployment
/// that keeps its users in a flat file.
pub const MAX_USERS: usize = 1_000_000;

/// The largest password file read or written, in bytes (64 MiB). Checked before reading, so a
/// wrong path (a disk image, a log) fails fast instead of filling memory. With the default
/// parameters a line is about 100 bytes plus the user name, so this bound is the one met first
/// (at roughly 600,000 users).
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

/// The longest user name, in bytes. MQTT allows 65,535 [MQTT-1.5.4], but a name is a key held
/// in memory and printed in logs: 256 bytes is more than any real user name.
pub const MAX_USER_NAME_BYTES: usize = 256;

/// argon2id memory cost of new hashes, in KiB (19 MiB): the OWASP Password Storage Cheat Sheet's
/// first recommended configuration (m=19456, t=2, p=1), also the `argon2` crate's default.
pub const ARGON2_M_COST_KIB: u32 = 19_456;

/// argon2id passes over memory (time cost) of new hashes: OWASP's recommendation with 19 MiB.
pub const ARGON2_T_COST: u32 = 2;

/// argon2id lanes of new hashes. 1: the `argon2` crate computes lanes one after the other, so
/// more lanes would cost the same time and gain nothing here.
pub const ARGON2_P_COST: u32 = 1;

/// Length of new hashes' output, in bytes (256 bits).
pub const ARGON2_OUTPUT_LEN: usize = 32;

/// Length of new hashes' random salt, in bytes (128 bits, RFC 9106's recommendation).
pub const SALT_LEN: usize = 16;

/// The most memory a hash in the file may ask for, in KiB (256 MiB). Every CONNECT naming that
/// user would allocate this much, so a line beyond it is a load error rather than a way to run
/// the node out of memory.
pub const MAX_LOADED_M_COST_KIB: u32 = 256 * 1024;

/// The most passes a hash in the file may ask for: 16 passes over 19 MiB already cost about
/// 0.2 s a CONNECT.
pub const MAX_LOADED_T_COST: u32 = 16;

/// The most lanes a hash in the file may ask for.
pub const MAX_LOADED_P_COST: u32 = 16;

/// The salt of the throw-away hash computed for an unknown user (see [`PasswordFile::verify`]).
/// Its value does not matter; only that the work is the same as for a real user.
const DUMMY_SALT: [u8; SALT_LEN] = *b"roost-no-user!!!";

/// Why a user name is not allowed in a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    /// The name is empty.
    #[error("the user name is empty")]
    Empty,
    /// The name is longer than [`MAX_USER_NAME_BYTES`].
    #[error("the user name is {len} bytes long, more than {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_USER_NAME_BYTES`].
        max: usize,
    },
    /// The name contains `:`, the separator between user and hash.
    #[error("the user name contains `:`")]
    Colon,
    /// The name contains whitespace or a control character: it could not be told apart from the
    /// file's layout, and would garble a terminal when printed.
    #[error("the user name contains whitespace or a control character")]
    WhitespaceOrControl,
}

/// Why a password file could not be read, changed or written.
///
/// The variants with a `line` come from parsing and do not name the file: the caller prints the
/// path in front (`roost passwd` writes `FILE: line 3: ...`). None of them quote the hash part
/// of a line, which may be a plaintext password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file (or its temporary copy, or its directory) could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file that failed: the temporary copy, the target of the rename, or the directory
        /// synced after it.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`], or would become so.
    #[error("the password file is larger than {max} bytes")]
    TooLarge {
        /// [`MAX_FILE_BYTES`].
        max: usize,
    },
    /// The file is not UTF-8; `line` is the first line that is not.
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A line that is not blank nor a comment has no `:`.
    #[error("line {line}: expected `user:hash`")]
    MissingColon {
        /// 1-based line number.
        line: usize,
    },
    /// A line's user name is not allowed.
    #[error("line {line}: {reason}")]
    BadUserName {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: UserNameError,
    },
    /// A line's hash is not an argon2id PHC string Roost can verify: a plaintext password,
    /// another algorithm, a damaged string, or parameters beyond the `MAX_LOADED_*` bounds.
    #[error(
        "line {line}: user {user:?}: not an argon2id hash in PHC format ({reason}); plaintext \
         passwords are not accepted, set it with `roost passwd`"
    )]
    NotArgon2 {
        /// 1-based line number.
        line: usize,
        /// The line's user.
        user: String,
        /// What is wrong, without quoting the hash.
        reason: String,
    },
    /// A user's SCRAM-SHA-256 credentials (after the hash) are not RFC 5803's form.
    #[error("line {line}: user {user:?}: bad SCRAM-SHA-256 credentials: {reason}")]
    BadScram {
        /// 1-based line number.
        line: usize,
        /// The user.
        user: String,
        /// What is wrong.
        reason: String,
    },
    /// A user is listed twice.
    #[error("line {line}: user {user:?} is already on line {first_line}")]
    DuplicateUser {
        /// The user.
        user: String,
        /// Where it was listed first (1-based).
        first_line: usize,
        /// Where it was listed again (1-based).
        line: usize,
    },
    /// The file holds, or would hold, more than [`MAX_USERS`] users.
    #[error("more than {max} users")]
    TooManyUsers {
        /// [`MAX_USERS`].
        max: usize,
    },
    /// [`PasswordFile::set`] was given a user name that is not allowed.
    #[error("{0}")]
    InvalidUserName(#[from] UserNameError),
    /// Hashing a new password failed (no randomness from the operating system).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

impl PasswordFileError {
    /// Whether this is an I/O failure (reading or writing the file) rather than bad content.
    /// `roost passwd` exits 1 for these and 64 for the rest.
    pub fn is_io(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Write { .. } | Self::Hash(_))
    }
}

/// One line of the file, in file order.
#[derive(Clone)]
enum Line {
    /// A blank line or a `#` comment, written back as it was read.
    Other(String),
    /// A user and its PHC string, checked by [`check_hash`], and optionally its SCRAM-SHA-256
    /// credentials (RFC 5803 form, after a space) for MQTT 5 enhanced authentication.
    Entry {
        user: String,
        hash: String,
        scram: Option<crate::scram::ScramCredentials>,
    },
}

/// A password file in memory: its lines in order (comments included) and an index from user to
/// line.
///
/// `Debug` shows only the number of users: hashes are not secret in the way passwords are, but
/// they are what an attacker would crack offline, so they stay out of logs.
#[derive(Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// User -> position of its [`Line::Entry`] in `lines`. Right after [`PasswordFile::parse`]
    /// a position is the line number minus one; [`PasswordFile::remove`] shifts them.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// An empty file (no users), for `roost passwd` creating one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses the file at `path`. A file larger than [`MAX_FILE_BYTES`] is refused
    /// before it is read. A missing file is an error ([`PasswordFileError::Read`] with
    /// [`io::ErrorKind::NotFound`]): whether that means "no users" is the caller's decision.
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let read_err = |source| PasswordFileError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        if size > MAX_FILE_BYTES as u64 {
            return Err(PasswordFileError::TooLarge {
                max: MAX_FILE_BYTES,
            });
        }
        // `take` as well: the file may grow between the size check and the read.
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(e) => {
                let before = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                return Err(PasswordFileError::NotUtf8 { line });
            }
        };
        Self::parse(text)
    }

    /// Parses the text of a password file (see the [module docs](self) for the format). The
    /// first bad line fails the whole text.
    pub fn parse(text: &str) -> Result<Self, PasswordFileError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(PasswordFileError::TooLarge {
                max: MAX_FILE_BYTES,
            });
        }
        let mut file = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                file.lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let Some((user, hash)) = raw.split_once(':') else {
                return Err(PasswordFileError::MissingColon { line });
            };
            validate_user_name(user)
                .map_err(|reason| PasswordFileError::BadUserName { line, reason })?;
            let field = hash.trim_end();
            let (hash, scram) = match field.split_once(' ') {
                Some((h, s)) => (h, Some(s.trim())),
                None => (field, None),
            };
            check_hash(hash).map_err(|reason| PasswordFileError::NotArgon2 {
                line,
                user: user.to_owned(),
                reason,
            })?;
            let scram = match scram {
                Some(s) => Some(crate::scram::ScramCredentials::parse(s).map_err(|reason| {
                    PasswordFileError::BadScram {
                        line,
                        user: user.to_owned(),
                        reason,
                    }
                })?),
                None => None,
            };
            if let Some(&first) = file.index.get(user) {
                return Err(PasswordFileError::DuplicateUser {
                    user: user.to_owned(),
                    first_line: first + 1,
                    line,
                });
            }
            if file.index.len() >= MAX_USERS {
                return Err(PasswordFileError::TooManyUsers { max: MAX_USERS });
            }
            file.index.insert(user.to_owned(), file.lines.len());
            file.lines.push(Line::Entry {
                user: user.to_owned(),
                hash: hash.to_owned(),
                scram,
            });
        }
        Ok(file)
    }

    /// Whether `password` is `user`'s password.
    ///
    /// Cost: one argon2id computation with the parameters of the user's hash; with
    /// [`hash_password`]'s it took about 25 ms (median of 20; 22 ms at best) in a release build
    /// on the 2-core Intel Xeon development machine, and 19 MiB of memory. Run it on a blocking
    /// thread (`tokio::task::spawn_blocking`), never on the async runtime.
    ///
    /// An unknown user costs the same: the password is hashed anyway, with the parameters of the
    /// file's first user (ours when the file is empty) and a fixed salt, and the result thrown
    /// away, so how long a CONNECT takes to be refused does not tell which users exist. (Users
    /// whose hashes have other parameters than the first one's still take their own time.)
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        if let Some(Line::Entry { hash, .. }) =
            self.index.get(user).and_then(|&i| self.lines.get(i))
        {
            return verify_hash(hash, password);
        }
        self.spend_unknown_user_time(password);
        false
    }

    /// The work of [`verify`](Self::verify) for a user that does not exist.
    fn spend_unknown_user_time(&self, password: &[u8]) {
        let params = self.first_entry_params().unwrap_or_else(default_params);
        let mut output = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // The result is thrown away; `black_box` keeps the work from being optimised out.
        let _ = std::hint::black_box(argon2.hash_password_into(password, &DUMMY_SALT, &mut output));
        std::hint::black_box(&output);
    }

    /// The argon2 parameters of the first user's hash, if there is a user.
    fn first_entry_params(&self) -> Option<Params> {
        let hash = self.lines.iter().find_map(|line| match line {
            Line::Entry { hash, .. } => Some(hash),
            Line::Other(_) => None,
        })?;
        let parsed = PasswordHash::new(hash).ok()?;
        Params::try_from(&parsed).ok()
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the file has no users (it may still have comments).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `user` is in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.index.contains_key(user)
    }

    /// Sets `user`'s password, hashed by [`hash_password`] with a fresh random salt: a known
    /// user keeps its line, a new one is added at the end. Costs one argon2id hash (see
    /// [`verify`](Self::verify)). Refuses a bad user name and a user beyond [`MAX_USERS`]; an
    /// empty password is accepted here (`roost passwd` refuses it).
    pub fn set(&mut self, user: &str, password: &[u8]) -> Result<(), PasswordFileError> {
        validate_user_name(user)?;
        let existing = self.index.get(user).copied();
        if existing.is_none() && self.index.len() >= MAX_USERS {
            return Err(PasswordFileError::TooManyUsers { max: MAX_USERS });
        }
        let hash = hash_password(password)?;
        let entry = Line::Entry {
            user: user.to_owned(),
            hash,
            scram: None,
        };
        match existing.and_then(|i| self.lines.get_mut(i)) {
            Some(line) => *line = entry,
            None => {
                self.index.insert(user.to_owned(), self.lines.len());
                self.lines.push(entry);
            }
        }
        Ok(())
    }

    /// `user`'s SCRAM-SHA-256 credentials, if the file has them.
    pub fn scram(&self, user: &str) -> Option<crate::scram::ScramCredentials> {
        match self.index.get(user).and_then(|&i| self.lines.get(i)) {
            Some(Line::Entry { scram, .. }) => scram.clone(),
            _ => None,
        }
    }

    /// Whether any user has SCRAM-SHA-256 credentials.
    pub fn has_scram(&self) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l, Line::Entry { scram: Some(_), .. }))
    }

    /// Adds SCRAM-SHA-256 credentials derived from `password` to `user` (who must exist: call
    /// [`set`](Self::set) first). `roost passwd --scram`.
    pub fn set_scram(&mut self, user: &str, password: &[u8]) -> Result<(), PasswordFileError> {
        let creds =
            crate::scram::ScramCredentials::derive(password, crate::scram::DEFAULT_ITERATIONS)
                .map_err(|e| PasswordFileError::Hash(e.to_string()))?;
        match self.index.get(user).and_then(|&i| self.lines.get_mut(i)) {
            Some(Line::Entry { scram, .. }) => {
                *scram = Some(creds);
                Ok(())
            }
            _ => Err(PasswordFileError::Hash(format!("no user {user:?}"))),
        }
    }

    /// Removes `user`; false if it was not in the file. Comment lines stay where they were.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(position) = self.index.remove(user) else {
            return false;
        };
        self.lines.remove(position);
        // The lines after it moved up by one.
        for (i, line) in self.lines.iter().enumerate().skip(position) {
            if let Line::Entry { user, .. } = line {
                self.index.insert(user.clone(), i);
            }
        }
        true
    }

    /// The file's text: every line in order, comments and blank lines as they were read, each
    /// ending with `\n` (a `\r\n` read is written as `\n`).
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            match line {
                Line::Other(raw) => text.push_str(raw),
                Line::Entry { user, hash, scram } => {
                    text.push_str(user);
                    text.push(':');
                    text.push_str(hash);
                    if let Some(s) = scram {
                        text.push(' ');
                        text.push_str(&s.to_rfc5803());
                    }
                }
            }
            text.push('\n');
        }
        text
    }

    /// Writes [`to_text`](Self::to_text) to `path` so that a reader sees the old file or the
    /// new one, never a part: the text goes to a new temporary file beside `path` (mode 0600 on
    /// unix, whatever mode the old file had), which is fsynced, renamed over `path`, and the
    /// directory fsynced so the rename survives a crash. The file then belongs to the user who
    /// ran this; a symbolic link at `path` is replaced, not followed.
    ///
    /// Two writers at once do not corrupt the file, but the last rename wins: one change is
    /// lost. There is no lock.
    pub fn save_atomically(&self, path: &Path) -> Result<(), PasswordFileError> {
        let text = self.to_text();
        if text.len() > MAX_FILE_BYTES {
            return Err(PasswordFileError::TooLarge {
                max: MAX_FILE_BYTES,
            });
        }
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| PasswordFileError::Write { path, source }
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let Some(name) = path.file_name() else {
            return Err(write_err(path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            )));
        };
        // Unique within this process (pid) and among its calls (counter); `create_new` refuses
        // anything already there rather than writing through it.
        static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
        let temp = dir.join(format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(source) = write_new_file(&temp, text.as_bytes()) {
            let _ = std::fs::remove_file(&temp);
            return Err(write_err(&temp)(source));
        }
        if let Err(source) = std::fs::rename(&temp, path) {
            let _ = std::fs::remove_file(&temp);
            return Err(write_err(path)(source));
        }
        sync_dir(dir).map_err(write_err(dir))
    }
}

/// Creates `path` (it must not exist) with mode 0600 on unix, writes `bytes` and fsyncs it.
fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Fsyncs a directory, making a rename in it durable (unix; elsewhere nothing to do).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Checks a user name: not empty, at most [`MAX_USER_NAME_BYTES`], no `:`, no whitespace or
/// control characters.
pub fn validate_user_name(user: &str) -> Result<(), UserNameError> {
    if user.is_empty() {
        return Err(UserNameError::Empty);
    }
    if user.len() > MAX_USER_NAME_BYTES {
        return Err(UserNameError::TooLong {
            len: user.len(),
            max: MAX_USER_NAME_BYTES,
        });
    }
    if user.contains(':') {
        return Err(UserNameError::Colon);
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UserNameError::WhitespaceOrControl);
    }
    Ok(())
}

/// The parameters of new hashes: [`ARGON2_M_COST_KIB`], [`ARGON2_T_COST`], [`ARGON2_P_COST`],
/// [`ARGON2_OUTPUT_LEN`].
fn default_params() -> Params {
    // These constants are within argon2's bounds; `DEFAULT` is the same values, as a fallback
    // that cannot fail.
    Params::new(
        ARGON2_M_COST_KIB,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .unwrap_or(Params::DEFAULT)
}

/// Hashes `password` with argon2id (version 19), a fresh 16-byte salt from the operating
/// system, and the parameters m=19456 KiB, t=2, p=1 ([`ARGON2_M_COST_KIB`], [`ARGON2_T_COST`],
/// [`ARGON2_P_COST`]): OWASP's minimum recommendation for argon2id. They are a trade: every
/// MQTT CONNECT with a password pays one such computation on the broker (about 25 ms and
/// 19 MiB, see [`PasswordFile::verify`]), so stronger parameters would cut the CONNECT rate a
/// node can take while still being cheap next to an attacker's cost per guess.
///
/// Returns the PHC string, e.g. `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`. Fails only if
/// the operating system gives no randomness.
pub fn hash_password(password: &[u8]) -> Result<String, PasswordFileError> {
    let hash_err = |e: argon2::password_hash::Error| PasswordFileError::Hash(e.to_string());
    let mut salt = [0u8; SALT_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| PasswordFileError::Hash(format!("no random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(hash_err)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, default_params());
    let hash = argon2.hash_password(password, &salt).map_err(hash_err)?;
    Ok(hash.to_string())
}

/// Verifies `password` against a PHC string that passed [`check_hash`].
fn verify_hash(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    // Algorithm, version and parameters come from the string; the comparison is constant-time.
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// Checks that `hash` is an argon2id, version 19 PHC string that [`verify_hash`] can use, with
/// parameters within the `MAX_LOADED_*` bounds. The error says what is wrong without quoting
/// the string.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed =
        PasswordHash::new(hash).map_err(|_| "not a `$algorithm$...` PHC string".to_owned())?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err("the algorithm is not argon2id".to_owned());
    }
    if parsed.version != Some(Version::V0x13 as u32) {
        return Err("the version is not v=19".to_owned());
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("bad parameters: {e}"))?;
    if params.m_cost() > MAX_LOADED_M_COST_KIB {
        return Err(format!(
            "m={} KiB is more than the {MAX_LOADED_M_COST_KIB} allowed",
            params.m_cost()
        ));
    }
    if params.t_cost() > MAX_LOADED_T_COST {
        return Err(format!(
            "t={} is more than the {MAX_LOADED_T_COST} allowed",
            params.t_cost()
        ));
    }
    if params.p_cost() > MAX_LOADED_P_COST {
        return Err(format!(
            "p={} is more than the {MAX_LOADED_P_COST} allowed",
            params.p_cost()
        ));
    }
    let Some(salt) = parsed.salt else {
        return Err("no salt".to_owned());
    };
    let mut salt_bytes = [0u8; 64];
    match salt.decode_b64(&mut salt_bytes) {
        Ok(bytes) if bytes.len() >= argon2::MIN_SALT_LEN => {}
        Ok(_) => {
            return Err(format!(
                "the salt is shorter than {} bytes",
                argon2::MIN_SALT_LEN
            ))
        }
        Err(_) => return Err("the salt is not base64".to_owned()),
    }
    if parsed.hash.is_none() {
        return Err("no hash after the salt".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `secret` hashed by [`hash_password`].
    const SECRET_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$\
                               pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0";

    fn line_of(user: &str) -> String {
        format!("{user}:{SECRET_HASH}")
    }

    // Each set and verify costs about 0.7 s in an unoptimised test build: the tests use few.

    #[test]
    fn round_trip_set_to_text_parse_verify() {
        let mut file = PasswordFile::new();
        file.set("alice", b"alice's password").unwrap();
        file.set("bob", b"bob's password").unwrap();
        let text = file.to_text();
        assert!(text.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"));

        let parsed = PasswordFile::parse(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed.to_text(), text);
        assert!(parsed.verify("alice", b"alice's password"));
        assert!(parsed.verify("bob", b"bob's password"));
        assert!(!parsed.verify("alice", b"bob's password"), "wrong password");
        assert!(!parsed.verify("carol", b"alice's password"), "unknown user");
    }

    #[test]
    fn set_replaces_a_known_users_hash_in_place() {
        let text = format!("{}\n{}\n", line_of("alice"), line_of("bob"));
        let mut file = PasswordFile::parse(&text).unwrap();
        assert!(file.verify("alice", b"secret"));
        file.set("alice", b"new").unwrap();
        assert_eq!(file.len(), 2);
        let text = file.to_text();
        assert!(text.starts_with("alice:") && !text.starts_with(&line_of("alice")));
        assert!(text.ends_with(&format!("{}\n", line_of("bob"))));
        assert!(!file.verify("alice", b"secret"));
    }

    #[test]
    fn unknown_user_in_an_empty_file_is_refused() {
        assert!(!PasswordFile::new().verify("alice", b"secret"));
    }

    #[test]
    fn an_unknown_user_costs_the_first_users_parameters() {
        // Cheap parameters (m=64 KiB, t=1) on the first user: an unknown user's dummy hash
        // uses them, so it takes as long as that user's verification.
        let cheap = "$argon2id$v=19$m=64,t=1,p=1$XUZifDWFi2INJU3yHyguuQ$\
                     pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0";
        let file = PasswordFile::parse(&format!("# c\nbob:{cheap}\n{}\n", line_of("al"))).unwrap();
        let params = file.first_entry_params().unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (64, 1, 1)
        );
        assert!(!file.verify("carol", b"secret"));
        assert!(PasswordFile::new().first_entry_params().is_none());
        assert_eq!(default_params().m_cost(), ARGON2_M_COST_KIB);
    }

    #[test]
    fn plaintext_line_is_refused_with_its_line_number_and_user() {
        let text = format!("# users\n{}\nbob:hunter2\n", line_of("alice"));
        let err = PasswordFile::parse(&text).unwrap_err();
        assert!(
            matches!(&err, PasswordFileError::NotArgon2 { line: 3, user, .. } if user == "bob"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.starts_with("line 3: user \"bob\": "), "{message}");
        assert!(
            !message.contains("hunter2"),
            "never print the password: {message}"
        );
    }

    #[test]
    fn other_algorithms_and_damaged_hashes_are_refused() {
        let cases = [
            // argon2i and argon2d: not argon2id.
            "$argon2i$v=19$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "$argon2d$v=19$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            // bcrypt (mosquitto_passwd's older formats are `$6$` and `$7$`).
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "$7$101$abcdefghijklmnop$abcdefghijklmnopqrstuvwxyz",
            // Version 16, no version, no hash, no salt, a 4-byte salt.
            "$argon2id$v=16$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "$argon2id$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "$argon2id$v=19$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ",
            "$argon2id$v=19$m=19456,t=2,p=1",
            "$argon2id$v=19$m=19456,t=2,p=1$AAAAAA$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            // Parameters beyond the loaded bounds, or unknown.
            "$argon2id$v=19$m=4194304,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "$argon2id$v=19$m=19456,t=100,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "$argon2id$v=19$m=19456,t=2,p=64$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "$argon2id$v=19$m=19456,t=2,p=1,x=3$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            // Space after the colon, empty.
            " $argon2id$v=19$m=19456,t=2,p=1$XUZifDWFi2INJU3yHyguuQ$pSBprBANF4jwCJskiOmpqdiIYCMo8Wqu8bPJL5mH5d0",
            "",
        ];
        for hash in cases {
            let err = PasswordFile::parse(&format!("alice:{hash}\n")).unwrap_err();
            assert!(
                matches!(&err, PasswordFileError::NotArgon2 { line: 1, user, .. } if user == "alice"),
                "{hash}: {err:?}"
            );
        }
        // Our own, with trailing whitespace (and a CRLF ending), is fine.
        let file = PasswordFile::parse(&format!("{}  \r\n", line_of("alice"))).unwrap();
        assert_eq!(file.to_text(), format!("{}\n", line_of("alice")));
    }

    #[test]
    fn duplicate_user_names_both_lines() {
        let text = format!(
            "{}\n#\n{}\n{}\n",
            line_of("alice"),
            line_of("bob"),
            line_of("alice")
        );
        let err = PasswordFile::parse(&text).unwrap_err();
        assert!(
            matches!(&err, PasswordFileError::DuplicateUser { user, first_line: 1, line: 4 } if user == "alice"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "line 4: user \"alice\" is already on line 1"
        );
    }

    #[test]
    fn comments_blank_lines_and_order_are_preserved() {
        let text = format!(
            "# Roost users\n\n{}\n  # indented comment\n{}\n{}\n# trailing\n",
            line_of("carol"),
            line_of("alice"),
            line_of("bob")
        );
        let mut file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.to_text(), text);

        assert!(file.remove("alice"));
        assert!(!file.remove("alice"));
        assert!(!file.contains("alice"));
        let expected = format!(
            "# Roost users\n\n{}\n  # indented comment\n{}\n# trailing\n",
            line_of("carol"),
            line_of("bob")
        );
        assert_eq!(file.to_text(), expected);
        // The index followed the lines that moved: removing and listing still agree.
        assert!(file.remove("bob"));
        assert_eq!(file.len(), 1);
        assert!(file.contains("carol"));
        assert_eq!(
            file.to_text(),
            format!(
                "# Roost users\n\n{}\n  # indented comment\n# trailing\n",
                line_of("carol")
            )
        );
    }

    #[test]
    fn bad_user_names_are_refused() {
        let long = "x".repeat(MAX_USER_NAME_BYTES + 1);
        let cases: [(&str, UserNameError); 6] = [
            ("", UserNameError::Empty),
            (
                &long,
                UserNameError::TooLong {
                    len: MAX_USER_NAME_BYTES + 1,
                    max: MAX_USER_NAME_BYTES,
                },
            ),
            (" alice", UserNameError::WhitespaceOrControl),
            ("al ice", UserNameError::WhitespaceOrControl),
            ("al\u{7}ice", UserNameError::WhitespaceOrControl),
            ("al\u{a0}ice", UserNameError::WhitespaceOrControl),
        ];
        for (user, expected) in cases {
            assert_eq!(validate_user_name(user), Err(expected.clone()), "{user:?}");
            let text = format!("# header\n{}\n", line_of(user));
            match PasswordFile::parse(&text) {
                Err(PasswordFileError::BadUserName { line: 2, reason }) => {
                    assert_eq!(reason, expected, "{user:?}")
                }
                other => panic!("{user:?}: {other:?}"),
            }
            assert!(matches!(
                PasswordFile::new().set(user, b"x"),
                Err(PasswordFileError::InvalidUserName(reason)) if reason == expected
            ));
        }
        assert_eq!(validate_user_name("a:b"), Err(UserNameError::Colon));
        assert!(matches!(
            PasswordFile::new().set("a:b", b"x"),
            Err(PasswordFileError::InvalidUserName(UserNameError::Colon))
        ));
        // The longest allowed, and non-ASCII.
        let longest = "x".repeat(MAX_USER_NAME_BYTES);
        assert_eq!(validate_user_name(&longest), Ok(()));
        assert_eq!(validate_user_name("zoë@example.org"), Ok(()));
        assert!(PasswordFile::parse(&line_of(&longest)).is_ok());
    }

    #[test]
    fn a_line_without_a_colon_is_refused() {
        let text = format!("{}\nhunter2\n", line_of("alice"));
        let err = PasswordFile::parse(&text).unwrap_err();
        assert!(
            matches!(err, PasswordFileError::MissingColon { line: 2 }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("hunter2"));
    }

    #[cfg(unix)]
    #[test]
    fn save_atomically_writes_mode_0600_and_replaces_the_old_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let file = PasswordFile::parse(&format!("# c\n{}\n", line_of("alice"))).unwrap();
        file.save_atomically(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.to_text(), file.to_text());
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("passwd")]);
    }

    #[test]
    fn load_refuses_missing_oversized_and_non_utf8_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(matches!(
            PasswordFile::load(&missing),
            Err(PasswordFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));

        // A sparse file: refused from its size, before reading.
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES as u64 + 1)
            .unwrap();
        assert!(matches!(
            PasswordFile::load(&big),
            Err(PasswordFileError::TooLarge { .. })
        ));

        let latin1 = dir.path().join("latin1");
        let mut bytes = format!("{}\n# z", line_of("alice")).into_bytes();
        bytes.push(0xEB); // 'ë' in Latin-1
        std::fs::write(&latin1, bytes).unwrap();
        let err = PasswordFile::load(&latin1).unwrap_err();
        assert!(
            matches!(err, PasswordFileError::NotUtf8 { line: 2 }),
            "{err:?}"
        );
        assert!(!err.is_io());
    }

    #[test]
    fn hash_password_uses_the_documented_parameters_and_fresh_salts() {
        let a = hash_password(b"same").unwrap();
        let b = hash_password(b"same").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert_eq!(check_hash(&a), Ok(()));
        let parsed = PasswordHash::new(&a).unwrap();
        assert_eq!(
            parsed.salt.unwrap().as_str().len(),
            22,
            "16 bytes in base64"
        );
        assert_eq!(parsed.hash.unwrap().len(), ARGON2_OUTPUT_LEN);
    }

    #[test]
    fn debug_does_not_show_hashes() {
        let file = PasswordFile::parse(&line_of("alice")).unwrap();
        let shown = format!("{file:?}");
        assert!(
            !shown.contains("argon2") && !shown.contains("alice"),
            "{shown}"
        );
    }
}
