//! The service refuses to start with an admin token that falls to guessing
//! (issue "hardening", 3), whether it comes from a flag or a file.

use std::process::Command;

fn serve(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sinkgate"))
        .arg("serve")
        .args(args)
        // Never reached: the token is checked first.
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env_remove("SINKGATE_ADMIN_TOKEN")
        .output()
        .expect("run sinkgate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_short_admin_token_is_refused_at_start() {
    let (ok, stderr) = serve(&["--admin-token", "abc"]);
    assert!(!ok);
    assert!(stderr.contains("at least 16"), "{stderr}");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "\n").unwrap();
    let (ok, stderr) = serve(&["--admin-token-file", file.path().to_str().unwrap()]);
    assert!(!ok, "an empty token file must not start the service");
    assert!(stderr.contains("at least 16"), "{stderr}");
}
