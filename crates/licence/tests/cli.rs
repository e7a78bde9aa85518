//! `xmppfed-license` as the key holder runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_xmppfed-license");

#[test]
fn keygen_issue_inspect_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();

    let out = run(&["keygen", d.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("licence-signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is created private");
    }
    let again = run(&["keygen", d.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing signing key is never overwritten"
    );

    let key = d.join("licence-signing.key");
    let out = run(&[
        "issue",
        "--key",
        key.to_str().unwrap(),
        "--id",
        "L-7",
        "--licensee",
        "Contoso Ltd",
        "--nodes",
        "3",
        "--expires",
        "2099-12-31T23:59:59Z",
        "--feature",
        "sqlserver",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let licence = d.join("licence");
    std::fs::write(&licence, &out.stdout).unwrap();

    let public = d.join("licence-signing.pub");
    let out = run(&[
        "inspect",
        licence.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("valid signature") && text.contains("nodes: 3") && text.contains("(Valid)"),
        "{text}"
    );

    // Flip one character of the payload: the signature no longer matches.
    let mut bytes = std::fs::read(&licence).unwrap();
    let i = "xmppfed-licence-v1.".len() + 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&licence, bytes).unwrap();
    let out = run(&[
        "inspect",
        licence.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature does not match"));
}
