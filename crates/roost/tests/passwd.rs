//! `roost passwd FILE USER` run as a process, the password piped on stdin (not a terminal), and
//! the file it leaves checked with `roost_node::passwords::PasswordFile`.
//!
//! Every add or change hashes once with argon2id (m=19 MiB, t=2): about 0.7 s each in an
//! unoptimised build, so the steps share one test and one file.

#![allow(clippy::unwrap_used)]

use roost_node::passwords::PasswordFile;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `roost passwd [FLAGS...] FILE USER` with `stdin` piped in.
fn passwd(flags: &[&str], file: &Path, user: &str, stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("passwd")
        .args(flags)
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may exit before reading (a bad file, --delete): ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn add_change_add_delete_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.passwd");

    // Add: the file is created, mode 0600.
    let out = passwd(&[], &file, "alice", b"first secret\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let users = PasswordFile::load(&file).unwrap();
    assert_eq!(users.len(), 1);
    assert!(users.verify("alice", b"first secret"));

    // Change it (`\r\n` is a line end too), keeping an operator's comment.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("# Roost users\n{text}")).unwrap();
    let out = passwd(&[], &file, "alice", b"second secret\r\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let users = PasswordFile::load(&file).unwrap();
    assert!(users.verify("alice", b"second secret"));
    assert!(!users.verify("alice", b"first secret"));

    // Add a second user; no trailing newline on stdin is fine.
    let out = passwd(&[], &file, "bob", b"bob's secret");
    assert!(out.status.success(), "{}", stderr(&out));
    let users = PasswordFile::load(&file).unwrap();
    assert_eq!(users.len(), 2);
    assert!(users.verify("bob", b"bob's secret"));

    // Delete alice; deleting her again is an error (64) that names her.
    let out = passwd(&["--delete"], &file, "alice", b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# Roost users\nbob:$argon2id$"), "{text}");
    let users = PasswordFile::load(&file).unwrap();
    assert_eq!(users.len(), 1);
    assert!(!users.contains("alice"));
    let out = passwd(&["--delete"], &file, "alice", b"");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("no user \"alice\""),
        "{}",
        stderr(&out)
    );

    // An empty password is refused (64), the file untouched.
    for empty in [&b""[..], b"\n"] {
        let out = passwd(&[], &file, "carol", empty);
        assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
        assert!(stderr(&out).contains("empty password"), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // A bad user name is refused (64).
    let out = passwd(&[], &file, "car ol", b"x\n");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[test]
fn a_file_with_a_plaintext_line_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.passwd");
    let text = "# old mosquitto file\nalice:hunter2\n";
    std::fs::write(&file, text).unwrap();

    for (flags, user) in [(&[][..], "bob"), (&[], "alice"), (&["--delete"], "alice")] {
        let out = passwd(flags, &file, user, b"new secret\n");
        assert_eq!(
            out.status.code(),
            Some(64),
            "{flags:?} {user}: {}",
            stderr(&out)
        );
        let message = stderr(&out);
        assert!(
            message.starts_with(&format!(
                "roost passwd: {}: line 2: user \"alice\": ",
                file.display()
            )),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }
}

#[test]
fn an_unreadable_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: reading it fails, exit 1.
    let out = passwd(&[], dir.path(), "alice", b"secret\n");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&dir.path().display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn scram_credentials_are_added_on_request_and_dropped_on_a_plain_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwords");
    let out = passwd(&["--scram"], &file, "meter", b"pw-1\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(" SCRAM-SHA-256$10000:"), "{text}");
    assert!(!text.contains("pw-1"));
    let f = PasswordFile::load(&file).unwrap();
    assert!(f.verify("meter", b"pw-1"));
    let creds = f.scram("meter").unwrap();
    assert!(creds.verify_password(b"pw-1"));
    // Changing the password without --scram drops the SCRAM credentials (they would be stale).
    let out = passwd(&[], &file, "meter", b"pw-2\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let f = PasswordFile::load(&file).unwrap();
    assert!(f.scram("meter").is_none());
    // --scram with --delete is a usage error.
    let out = passwd(&["--scram", "--delete"], &file, "meter", b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
