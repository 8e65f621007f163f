//! Endpoint squatting: the broker refuses unsafe socket paths and touches
//! nothing; clients refuse servers of untrusted uids, including an
//! ordinary user's server in that user's own directory.

use std::io::{BufRead, BufReader, Lines};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use warden_testkit::{
    bin_path, command_as, config_text, output_with_timeout, service_user, wardenctl, BrokerProcess,
    TestDir, TestUser,
};

use crate::python::script as python_client;
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
#[ignore = "needs root"]
fn another_users_socket_at_the_path_is_refused_and_kept() -> anyhow::Result<()> {
    let (_, bob, _) = users("another_users_socket_at_the_path_is_refused_and_kept");
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
#[ignore = "needs root"]
fn symlink_at_the_path_is_refused_and_target_untouched() -> anyhow::Result<()> {
    users("symlink_at_the_path_is_refused_and_target_untouched");
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
#[ignore = "needs root"]
fn world_writable_parent_directory_is_refused() -> anyhow::Result<()> {
    users("world_writable_parent_directory_is_refused");
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

/// Listens on `argv[1]` (a path, or `@name` for an abstract name),
/// accepts one connection, and prints how many bytes the client sent
/// before closing (or waiting 5 s), or `no connection` after 30 s.
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
s.settimeout(30)
try:
    c, _ = s.accept()
except OSError:
    print("no connection", flush=True)
    sys.exit(0)
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

/// A listener run as another user, recording what a client sends it.
struct Squatter {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Squatter {
    /// Starts [`SQUATTER`] as `user` on `path` and waits until it listens.
    fn start(user: &TestUser, path: &str) -> anyhow::Result<Squatter> {
        let mut child = command_as(user, Path::new("/usr/bin/python3"))
            .args(["-c", SQUATTER, path])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut squatter = Squatter {
            child,
            lines: BufReader::new(out).lines(),
        };
        let first = squatter.lines.next().transpose()?;
        anyhow::ensure!(first.as_deref() == Some("ready"), "squatter said {first:?}");
        Ok(squatter)
    }

    /// How many bytes the client sent (as the squatter printed it).
    fn received(mut self) -> anyhow::Result<String> {
        let n = self.lines.next().transpose()?.unwrap_or_default();
        self.child.wait()?;
        Ok(n)
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn client_refuses_a_squatter_and_sends_nothing() -> anyhow::Result<()> {
    let (alice, bob, _) = users("client_refuses_a_squatter_and_sends_nothing");
    let pid = std::process::id();
    for path in [
        format!("/tmp/wdn-squat-{pid}.sock"),
        format!("@wdn-squat-{pid}"),
    ] {
        let _ = std::fs::remove_file(&path);
        let squatter = Squatter::start(&bob, &path)?;
        let out = wardenctl(Some(&alice), Path::new(&path), &["ping"])?;
        assert_eq!(out.status.code(), Some(3), "{path}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("uid {}", bob.uid)) && err.contains("not trusted"),
            "{err}"
        );
        assert_eq!(
            squatter.received()?,
            "0",
            "{path}: the client sent bytes to the squatter"
        );
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Points `victim`'s clients (wardenctl, then the Python client), through
/// `WARDEN_SOCKET` as a shared script would, at a squatter run by `owner`
/// in `dir`, a directory root gave to `owner`: each must refuse the
/// server, naming its uid, before sending a byte.
fn victim_sends_nothing_to(victim: &TestUser, owner: &TestUser, dir: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid))?;
    // Debian's login.defs: UID_MIN 1000, so system accounts end at 999.
    assert!(
        owner.uid >= 1000,
        "uid {} must not be a system account for this test",
        owner.uid
    );
    let sock = dir.join("w.sock");
    let sock_str = sock.display().to_string();
    let clients: [(&str, Command); 2] = [
        ("wardenctl", command_as(victim, &bin_path("wardenctl"))),
        ("python", {
            let mut c = command_as(victim, Path::new("/usr/bin/python3"));
            c.arg(python_client());
            c
        }),
    ];
    for (name, mut client) in clients {
        let _ = std::fs::remove_file(&sock);
        let squatter = Squatter::start(owner, &sock_str)?;
        let out = output_with_timeout(
            client.env("WARDEN_SOCKET", &sock).arg("ping"),
            Duration::from_secs(30),
        )?;
        let err = stderr(&out);
        let received = squatter.received()?;
        assert_eq!(
            received, "0",
            "{name} sent {received} bytes (its hello) to uid {}'s server at {sock_str}: {err}",
            owner.uid
        );
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(
            err.contains(&format!("uid {}", owner.uid)) && err.contains("not trusted"),
            "{name}: {err}"
        );
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_server_in_another_users_home_gets_no_hello() -> anyhow::Result<()> {
    let (alice, bob, _) = users("a_server_in_another_users_home_gets_no_hello");
    // Like /home/bob: root-owned ancestors, handed to an ordinary user.
    let home = TestDir::new_under(Path::new("/home"), "squat-home")?;
    victim_sends_nothing_to(&alice, &bob, home.path())?;
    // Like /run/user/UID.
    let run = TestDir::new("squat-run-user")?;
    let user_dir = run.path().join("user");
    std::fs::create_dir(&user_dir)?;
    std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o755))?;
    victim_sends_nothing_to(&alice, &bob, &user_dir)?;
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_server_in_a_directory_of_nobody_gets_no_hello() -> anyhow::Result<()> {
    let (alice, _, _) = users("a_server_in_a_directory_of_nobody_gets_no_hello");
    // 65534 sits below a large SYS_UID_MAX on some systems, and many
    // unrelated services run as it: never a trusted owner.
    let nobody =
        warden_sys::user_by_name("nobody")?.ok_or_else(|| anyhow::anyhow!("no user nobody"))?;
    assert_eq!(nobody.uid, 65534);
    let nobody = TestUser {
        name: nobody.name,
        uid: nobody.uid,
        gid: nobody.gid,
    };
    let dir = TestDir::new("squat-nobody")?;
    let owned = dir.path().join("nobody");
    std::fs::create_dir(&owned)?;
    std::fs::set_permissions(&owned, std::fs::Permissions::from_mode(0o755))?;
    victim_sends_nothing_to(&alice, &nobody, &owned)
}

#[test]
#[ignore = "needs root"]
fn a_service_users_broker_in_a_root_controlled_directory_is_trusted() -> anyhow::Result<()> {
    let (alice, _, _) = users("a_service_users_broker_in_a_root_controlled_directory_is_trusted");
    // Like /run/warden handed to the `warden` service user (a system
    // account from systemd-sysusers) by root: the directory is the
    // service's, every ancestor is root's and not writable by others, and
    // the owner is a system account, so a client trusts it as the server.
    let svc_user = service_user()?;
    assert!(
        svc_user.uid < 1000,
        "useradd --system gave uid {}, outside Debian's system range",
        svc_user.uid
    );
    let dir = TestDir::new("svcuser")?;
    let svc = dir.path().join("svc");
    std::fs::create_dir(&svc)?;
    std::os::unix::fs::chown(&svc, Some(svc_user.uid), Some(svc_user.gid))?;
    let sock = svc.join("warden.sock");
    let broker = BrokerProcess::start_as(&dir, &config_text(&dir, RULES), sock.clone(), &svc_user)?;
    let out = wardenctl(Some(&alice), &sock, &["--json", "version"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = output_with_timeout(
        command_as(&alice, Path::new("/usr/bin/python3"))
            .arg(python_client())
            .arg("--socket")
            .arg(&sock)
            .arg("ping"),
        Duration::from_secs(30),
    )?;
    assert_eq!(out.status.code(), Some(0), "python: {}", stderr(&out));
    // Pinning another uid refuses it, before anything is sent.
    let pinned = alice.uid.to_string();
    let out = wardenctl(Some(&alice), &sock, &["--server-uid", &pinned, "ping"])?;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("uid {}", svc_user.uid)),
        "{}",
        stderr(&out)
    );
    drop(broker);
    Ok(())
}
