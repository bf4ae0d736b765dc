//! The gateway's SSH server against OpenSSH's `ssh` (openssh-client, installed by
//! `.ci/setup`), with an echo service in place of a console: the listed key gets its bytes
//! back through the channel; a key not listed, the right key for a console it does not open,
//! and a console the gateway does not serve are refused alike.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use gateway::serial::SerialService;
use gateway::ssh::{load_host_key, serve_ssh, SshConfig};
use tokio::io::AsyncWriteExt;

fn keygen(path: &Path) {
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs (apt install openssh-client)");
    assert!(status.success(), "ssh-keygen: {status}");
}

/// Runs `ssh user@127.0.0.1 -p port` with `key`, `input` on its stdin: (exit code, stdout,
/// stderr).
async fn ssh(port: u16, user: &str, key: &Path, input: &[u8]) -> (Option<i32>, Vec<u8>, String) {
    let mut child = tokio::process::Command::new("ssh")
        .args(["-T", "-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ssh runs (apt install openssh-client)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("writing to ssh");
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("ssh ends")
        .expect("ssh's output");
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[tokio::test]
async fn the_listed_key_reaches_its_console_and_every_other_login_is_refused_alike() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (host, user, wrong) = (
        dir.path().join("host"),
        dir.path().join("user"),
        dir.path().join("wrong"),
    );
    for k in [&host, &user, &wrong] {
        keygen(k);
    }
    let public = std::fs::read_to_string(dir.path().join("user.pub")).expect("user.pub");
    let keys = dir.path().join("authorized");
    std::fs::write(&keys, format!("vm1 {public}")).expect("authorized keys");
    let config = SshConfig {
        host_key: load_host_key(&host).expect("the host key"),
        authorized_keys: keys,
        consoles: vec!["vm1".into(), "vm2".into()],
    };
    // An echo console: the channel's bytes come back until it ends.
    let service: SerialService = Arc::new(|_console, channel| {
        Box::pin(async move {
            let (mut r, mut w) = tokio::io::split(channel);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        })
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(serve_ssh(listener, config, service));

    let input: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let (_, echoed, stderr) = ssh(port, "vm1", &user, &input).await;
    assert!(
        echoed == input,
        "the listed key's channel echoes all {} bytes, got {} ({stderr})",
        input.len(),
        echoed.len()
    );

    let mut refusals = Vec::new();
    for (user_name, key) in [("vm1", &wrong), ("vm2", &user), ("vm3", &user)] {
        let (code, out, stderr) = ssh(port, user_name, key, b"x").await;
        assert_eq!(code, Some(255), "{user_name}: {stderr}");
        assert!(out.is_empty(), "{user_name}: nothing comes through");
        refusals.push(stderr.replace(user_name, "USER"));
    }
    assert!(
        refusals
            .iter()
            .all(|r| r == "USER@127.0.0.1: Permission denied (publickey)."),
        "every refusal reads alike: {refusals:?}"
    );
}
