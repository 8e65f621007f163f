//! Endpoint squatting: the broker refuses unsafe socket paths and touches
//! nothing; clients refuse servers of untrusted uids.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use warden_testkit::{
    bin_path, command_as, config_text, output_with_timeout, wardenctl, BrokerProcess, TestDir,
};

use crate::{stderr, users, RULES};

/// Runs wardend on `socket` and expects it to refuse to start.
fn expect_refusal(dir: &TestDir, socket: &Path) -> anyhow::Result<String> {
    let conf = dir.path().join("refuse.toml");
    std::fs::write(&conf, config_text(dir, RULES))?;
    let out = output_with_timeout(
        Command::new(bin_path("wardend"))
            .arg("--config")
            .arg(&conf)
            .arg("--socket")
            .arg(socket),
        Duration::from_secs(20),
    )?;
    assert_ne!(
        out.status.code(),
        Some(0),
        "wardend must refuse {}",
        socket.display()
    );
    Ok(stderr(&out))
}

#[test]
fn another_users_socket_at_the_path_is_refused_and_kept() -> anyhow::Result<()> {
    let Some((_, bob, _)) = users("another_users_socket_at_the_path_is_refused_and_kept") else {
        return Ok(());
    };
    let dir = TestDir::new("squat-sock")?;
    let sock = dir.path().join("warden.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock)?);
    std::os::unix::fs::lchown(&sock, Some(bob.uid), Some(bob.gid))?;
    let err = expect_refusal(&dir, &sock)?;
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("uid {}", bob.uid)),
        "names the owner: {err}"
    );
    let meta = std::fs::symlink_metadata(&sock)?;
    assert_eq!(meta.uid(), bob.uid, "the squatter's socket was left alone");
    Ok(())
}

#[test]
fn symlink_at_the_path_is_refused_and_target_untouched() -> anyhow::Result<()> {
    if users("symlink_at_the_path_is_refused_and_target_untouched").is_none() {
        return Ok(());
    }
    let dir = TestDir::new("squat-link")?;
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "precious")?;
    let sock = dir.path().join("warden.sock");
    std::os::unix::fs::symlink(&target, &sock)?;
    let err = expect_refusal(&dir, &sock)?;
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(err.contains("symlink"), "{err}");
    assert!(err.contains("uid 0"), "names the owner: {err}");
    assert_eq!(std::fs::read_to_string(&target)?, "precious");
    assert!(std::fs::symlink_metadata(&sock)?.file_type().is_symlink());
    Ok(())
}

#[test]
fn world_writable_parent_directory_is_refused() -> anyhow::Result<()> {
    if users("world_writable_parent_directory_is_refused").is_none() {
        return Ok(());
    }
    let dir = TestDir::new("squat-dir")?;
    let open = dir.path().join("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
    let err = expect_refusal(&dir, &open.join("warden.sock"))?;
    assert!(err.contains(&open.display().to_string()), "{err}");
    assert!(err.contains("uid 0"), "{err}");
    assert!(!open.join("warden.sock").exists(), "nothing was created");
    // /tmp is sticky and world-writable: never a place for the socket.
    let tmp = format!("/tmp/wdn-squat-{}/warden.sock", std::process::id());
    let err = expect_refusal(&dir, Path::new(&tmp))?;
    assert!(err.contains("/tmp"), "{err}");
    assert!(!Path::new(&tmp).exists());
    Ok(())
}

#[test]
fn stale_own_socket_is_reclaimed_and_second_broker_fails() -> anyhow::Result<()> {
    if users("stale_own_socket_is_reclaimed_and_second_broker_fails").is_none() {
        return Ok(());
    }
    let dir = TestDir::new("stale")?;
    let sockdir = dir.path().join("s");
    std::fs::create_dir(&sockdir)?;
    drop(std::os::unix::net::UnixListener::bind(
        sockdir.join("warden.sock"),
    )?);
    let first = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    assert!(first.log().contains("stale"), "{}", first.log());

    let err = expect_refusal(&dir, first.socket())?;
    assert!(err.contains("in use"), "{err}");
    let ping = wardenctl(None, first.socket(), &["ping"])?;
    assert_eq!(
        ping.status.code(),
        Some(0),
        "the first broker still serves: {}",
        stderr(&ping)
    );
    Ok(())
}

const SQUATTER: &str = r#"
import socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + path[1:] if path.startswith("@") else path)
s.listen(1)
if not path.startswith("@"):
    import os
    os.chmod(path, 0o777)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(5)
n = 0
try:
    while True:
        b = c.recv(4096)
        if not b:
            break
        n += len(b)
except OSError:
    pass
print(n, flush=True)
"#;

#[test]
fn client_refuses_a_squatter_and_sends_nothing() -> anyhow::Result<()> {
    let Some((alice, bob, _)) = users("client_refuses_a_squatter_and_sends_nothing") else {
        return Ok(());
    };
    let pid = std::process::id();
    for path in [
        format!("/tmp/wdn-squat-{pid}.sock"),
        format!("@wdn-squat-{pid}"),
    ] {
        let _ = std::fs::remove_file(&path);
        let mut squatter = command_as(&bob, Path::new("/usr/bin/python3"))
            .args(["-c", SQUATTER, &path])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = BufReader::new(
            squatter
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        )
        .lines();
        assert_eq!(lines.next().transpose()?.as_deref(), Some("ready"));
        let out = wardenctl(Some(&alice), Path::new(&path), &["ping"])?;
        assert_eq!(out.status.code(), Some(3), "{path}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("uid {}", bob.uid)) && err.contains("not trusted"),
            "{err}"
        );
        let received = lines.next().transpose()?.unwrap_or_default();
        assert_eq!(
            received, "0",
            "{path}: the client sent bytes to the squatter"
        );
        let _ = squatter.wait();
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

#[test]
fn a_service_users_broker_in_a_root_controlled_directory_is_trusted() -> anyhow::Result<()> {
    let Some((alice, bob, _)) =
        users("a_service_users_broker_in_a_root_controlled_directory_is_trusted")
    else {
        return Ok(());
    };
    // Like /run/warden handed to a `warden` service user by root: the
    // directory is bob's, every ancestor is root's and not writable by
    // others, so a client trusts bob as the server there.
    let dir = TestDir::new("svcuser")?;
    let svc = dir.path().join("svc");
    std::fs::create_dir(&svc)?;
    std::os::unix::fs::chown(&svc, Some(bob.uid), Some(bob.gid))?;
    let sock = svc.join("warden.sock");
    let broker = BrokerProcess::start_as(&dir, &config_text(&dir, RULES), sock.clone(), &bob)?;
    let out = wardenctl(Some(&alice), &sock, &["--json", "version"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Pinning another uid refuses it, before anything is sent.
    let pinned = alice.uid.to_string();
    let out = wardenctl(Some(&alice), &sock, &["--server-uid", &pinned, "ping"])?;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("uid {}", bob.uid)),
        "{}",
        stderr(&out)
    );
    drop(broker);
    Ok(())
}
