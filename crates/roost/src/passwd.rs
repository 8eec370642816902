//! `roost passwd FILE USER`: adds or changes a user's password in a password file, or removes
//! the user (`--delete`). The file format and its checks are
//! [`roost_node::passwords`]'s.
//!
//! ```text
//! roost passwd users.passwd alice             prompts "Password: " and "Again: " (no echo)
//! printf '%s\n' "$PW" | roost passwd F alice  reads one line from stdin (not a terminal)
//! roost passwd --delete users.passwd alice    removes alice; an error if she is not there
//! ```
//!
//! The password comes from stdin: when stdin is a terminal, it is asked for twice with echo off
//! and the two must match; otherwise the first line is read (its `\n` or `\r\n` removed), so
//! scripts pipe it in and it never appears on a command line (`ps`). An empty password, or one
//! longer than MQTT allows (65,535 bytes), is refused.
//!
//! The whole file is read and checked before anything else happens, and a file that fails (a
//! plaintext password, a duplicate user...) is never rewritten: the error names the line, and the
//! operator fixes it by hand. A missing FILE is created. The new file replaces the old one
//! atomically with mode 0600 ([`PasswordFile::save_atomically`]); comments and the order of the
//! lines are kept.
//!
//! Prints nothing on success, like `mosquitto_passwd`. Exit codes: 0 done; 64 (EX_USAGE) for
//! bad input: a bad user name, a bad existing file, an unknown user with `--delete`, an empty or
//! mismatched password; 1 for I/O errors (reading or writing FILE, reading stdin). Errors are
//! one line on stderr naming FILE and the problem.

use clap::Args;
use roost_node::passwords::{validate_user_name, PasswordFile, PasswordFileError};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The longest password accepted: an MQTT CONNECT's password is Binary Data with a two-byte
/// length [MQTT-1.5.6], so a longer one could never be sent.
const MAX_PASSWORD_BYTES: usize = 65_535;

/// `roost passwd`: add, change or delete a user in a password file.
#[derive(Args, Debug)]
pub(crate) struct PasswdArgs {
    /// The password file (`user:argon2id-hash` lines); created with mode 0600 if missing.
    file: PathBuf,
    /// The user (MQTT user name) to add, change or delete.
    user: String,
    /// Remove USER from FILE instead of setting a password; an error if USER is not there.
    #[arg(long)]
    delete: bool,
    /// Also store SCRAM-SHA-256 credentials (RFC 5803: salt, iterations, StoredKey, ServerKey)
    /// so the user can authenticate with MQTT 5 enhanced authentication without sending the
    /// password. They are a PBKDF2 verifier: weaker against offline cracking than the argon2
    /// hash, so add them only for users that need SCRAM.
    #[arg(long, conflicts_with = "delete")]
    scram: bool,
}

/// Why `roost passwd` failed: the exit code it gets, and the line printed.
#[derive(Debug)]
enum Failure {
    /// Bad input (exit 64).
    Usage(String),
    /// An I/O error (exit 1).
    Io(String),
}

/// Runs `roost passwd`; on failure prints one line on stderr and exits 64 or 1.
pub(crate) fn run(args: PasswdArgs) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("roost passwd: {message}");
            ExitCode::from(crate::EXIT_CONFIG)
        }
        Err(Failure::Io(message)) => {
            eprintln!("roost passwd: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Loads (or starts) FILE, applies the change, saves it; nothing is written on any error.
fn execute(args: &PasswdArgs) -> Result<(), Failure> {
    let path = args.file.as_path();
    // `{:?}`: a rejected name may hold control characters; print them escaped.
    validate_user_name(&args.user)
        .map_err(|e| Failure::Usage(format!("user {:?}: {e}", args.user)))?;
    let mut file = match PasswordFile::load(path) {
        Ok(file) => file,
        Err(PasswordFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !args.delete =>
        {
            PasswordFile::new()
        }
        Err(e) => return Err(file_failure(path, e)),
    };
    if args.delete {
        if !file.remove(&args.user) {
            return Err(Failure::Usage(format!(
                "{}: no user {:?}",
                path.display(),
                args.user
            )));
        }
    } else {
        let password = read_password()?;
        file.set(&args.user, &password)
            .map_err(|e| file_failure(path, e))?;
        if args.scram {
            file.set_scram(&args.user, &password)
                .map_err(|e| file_failure(path, e))?;
        }
    }
    file.save_atomically(path)
        .map_err(|e| file_failure(path, e))
}

/// An error about FILE: I/O errors name their own path, the others get FILE in front.
fn file_failure(path: &Path, e: PasswordFileError) -> Failure {
    if e.is_io() {
        Failure::Io(e.to_string())
    } else {
        Failure::Usage(format!("{}: {e}", path.display()))
    }
}

/// The new password: from the terminal (twice, no echo) when stdin is one, else stdin's first
/// line. Refuses an empty one.
fn read_password() -> Result<Vec<u8>, Failure> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        prompt_twice(&stdin)?
    } else {
        read_line(&mut stdin.lock())
            .map_err(|e| Failure::Io(format!("cannot read the password from stdin: {e}")))?
    };
    if password.is_empty() {
        return Err(Failure::Usage("empty password refused".to_owned()));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Failure::Usage(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes, the most MQTT can carry"
        )));
    }
    Ok(password)
}

/// Reads one line, without its `\n` or `\r\n`; at most [`MAX_PASSWORD_BYTES`] + 1 bytes of it
/// are kept, enough for the caller to see that it is too long.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader
        .take(MAX_PASSWORD_BYTES as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line.truncate(MAX_PASSWORD_BYTES + 1);
    Ok(line)
}

/// Asks for the password twice on the terminal (prompts on stderr, echo off) and refuses a
/// mismatch.
#[cfg(unix)]
fn prompt_twice(stdin: &std::io::Stdin) -> Result<Vec<u8>, Failure> {
    let terminal_err = |e: std::io::Error| Failure::Io(format!("cannot read the terminal: {e}"));
    let _echo_off = EchoOff::new(stdin).map_err(terminal_err)?;
    let ask = |prompt: &str| {
        {
            // Not held while reading: the Ctrl-C thread prints on stderr too.
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(prompt.as_bytes());
            let _ = stderr.flush();
        }
        read_line(&mut stdin.lock()).map_err(terminal_err)
    };
    let first = ask("Password: ")?;
    let again = ask("Again: ")?;
    if first != again {
        return Err(Failure::Usage("the passwords do not match".to_owned()));
    }
    Ok(first)
}

/// Without termios there is no way to read a password without echo: refuse rather than echo it.
#[cfg(not(unix))]
fn prompt_twice(_stdin: &std::io::Stdin) -> Result<Vec<u8>, Failure> {
    Err(Failure::Usage(
        "cannot turn terminal echo off here: pipe the password on stdin".to_owned(),
    ))
}

/// Terminal echo turned off (ECHO cleared, ECHONL set so Enter still moves to the next line)
/// until dropped, when the saved settings come back. Ctrl-C in between would kill the process
/// with echo still off, so SIGINT is caught meanwhile by a thread that restores the terminal
/// and exits 130, as the shell would report a SIGINT.
#[cfg(unix)]
struct EchoOff {
    saved: rustix::termios::Termios,
}

#[cfg(unix)]
impl EchoOff {
    fn new(stdin: &std::io::Stdin) -> std::io::Result<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let saved = tcgetattr(stdin)?;
        restore_on_interrupt(saved.clone())?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        // Flush: drop anything typed before the prompt, as getpass(3) does.
        tcsetattr(stdin, OptionalActions::Flush, &quiet)?;
        Ok(Self { saved })
    }
}

#[cfg(unix)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// From now on, SIGINT restores `saved` on stdin and exits 130. The handler is registered
/// before this returns (tokio's signal driver, no unsafe code), so no Ctrl-C is missed.
#[cfg(unix)]
fn restore_on_interrupt(saved: rustix::termios::Termios) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut interrupt = {
        let _context = runtime.enter();
        signal(SignalKind::interrupt())?
    };
    std::thread::spawn(move || {
        runtime.block_on(interrupt.recv());
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &saved,
        );
        eprintln!();
        std::process::exit(130);
    });
    Ok(())
}
