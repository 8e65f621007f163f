//! A broker a user runs for themselves (`wardend` as that user, no
//! `--config`) is administered by that user, and by nobody else but root.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use warden_testkit::{bin_path, command_as, wardenctl, RawConn, TestDir, TestUser};

use crate::{stderr, users};

/// A wardend started as a user, killed on drop.
struct UserBroker {
    child: Child,
    log: std::path::PathBuf,
}

impl UserBroker {
    /// Starts `wardend --socket SOCKET` (the embedded default) as `user`,
    /// waiting until it answers a hello.
    fn start(dir: &TestDir, user: &TestUser, socket: &std::path::Path) -> anyhow::Result<Self> {
        let log = dir.path().join("wardend.log");
        let child = command_as(user, &bin_path("wardend"))
            .arg("--socket")
            .arg(socket)
            .arg("--log-level=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut b = UserBroker { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = b.child.try_wait()? {
                anyhow::bail!("wardend exited early with {status}:\n{}", b.log());
            }
            if RawConn::connect(socket).is_ok_and(|mut c| c.hello().is_ok()) {
                return Ok(b);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "wardend did not come up:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for UserBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn the_user_running_a_broker_on_the_embedded_default_administers_it() -> anyhow::Result<()> {
    let (alice, bob, _) = users("the_user_running_a_broker_administers_it");
    let dir = TestDir::new("owner")?;
    // The socket's directory belongs to the broker's user, as in
    // $XDG_RUNTIME_DIR.
    let sdir = dir.path().join("s");
    std::fs::create_dir(&sdir)?;
    nix::unistd::chown(
        &sdir,
        Some(nix::unistd::Uid::from_raw(alice.uid)),
        Some(nix::unistd::Gid::from_raw(alice.gid)),
    )?;
    let socket = sdir.join("warden.sock");
    let broker = UserBroker::start(&dir, &alice, &socket)?;
    // Clients trust a server of their own uid; bob pins alice's.
    let pin = alice.uid.to_string();
    let ctl = |user: &TestUser, args: &[&str]| {
        let mut all = vec!["--server-uid", pin.as_str()];
        all.extend_from_slice(args);
        wardenctl(Some(user), &socket, &all)
    };

    let out = ctl(&alice, &["--json", "status"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        broker.log()
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(status["connections"].as_u64() >= Some(1), "{status}");

    // Another user may connect and ping, but not administer.
    let out = ctl(&bob, &["ping"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for args in [&["status"][..], &["reload"][..]] {
        let out = ctl(&bob, args)?;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("error: denied"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // The owner may reload it too (the embedded default, again).
    let out = ctl(&alice, &["reload"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("reloaded <embedded default>: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A missing warden-admin group is reported once, at start, with the
    // command that creates it; the reload does not repeat it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log().contains("policy.reload") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no reload record:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let missing = warden_sys::group_by_name("warden-admin")?.is_none();
    let log = broker.log();
    assert_eq!(
        log.matches("create it with `groupadd warden-admin`")
            .count(),
        usize::from(missing),
        "{log}"
    );
    Ok(())
}
