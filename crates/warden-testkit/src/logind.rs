//! A private `dbus-daemon` and a fake `org.freedesktop.login1` on it, for
//! the per-session host tests (this machine has no logind; the fake speaks
//! the real interface, see `data/fake_logind.py`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context};

/// A `dbus-daemon` of its own, listening on a socket in the test's
/// directory; killed when dropped.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
}

impl PrivateBus {
    /// Starts one with its socket at `dir/bus.sock`.
    pub fn start(dir: &Path) -> anyhow::Result<PrivateBus> {
        let socket = dir.join("bus.sock");
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dbus-daemon (Debian package dbus-daemon)")?;
        let mut line = String::new();
        let out = child.stdout.take().context("dbus-daemon has no stdout")?;
        BufReader::new(out).read_line(&mut line)?;
        if line.trim().is_empty() {
            let _ = child.kill();
            bail!("dbus-daemon printed no address");
        }
        Ok(PrivateBus {
            child,
            address: format!("unix:path={}", socket.display()),
        })
    }

    /// Its address (`unix:path=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Kills it (a lost bus).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fake logind, driven by the test; killed when dropped.
#[derive(Debug)]
pub struct FakeLogind {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fake_logind.py")
}

impl FakeLogind {
    /// Starts it on `bus`, once it owns `org.freedesktop.login1`.
    pub fn start(bus: &PrivateBus) -> anyhow::Result<FakeLogind> {
        let mut child = Command::new("/usr/bin/python3")
            .arg(script())
            .arg(bus.address())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the fake logind (Debian packages python3-dbus, python3-gi)")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut f = FakeLogind {
            child,
            stdin,
            stdout,
        };
        let ready = f.line()?;
        anyhow::ensure!(ready == "ready", "the fake logind said {ready:?}");
        Ok(f)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the fake logind exited");
        }
        Ok(line.trim().to_owned())
    }

    fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let answer = self.line()?;
        anyhow::ensure!(answer == "ok", "fake logind: {cmd}: {answer}");
        Ok(())
    }

    /// A new session `id` of `uid` (`name`) with `class`, `runtime` as its
    /// user's RuntimePath, and `pids` in it (signals SessionNew).
    pub fn add(
        &mut self,
        id: &str,
        uid: u32,
        name: &str,
        class: &str,
        runtime: &Path,
        pids: &[u32],
    ) -> anyhow::Result<()> {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        self.command(&format!(
            "add {id} {uid} {name} {class} {} {}",
            runtime.display(),
            pids.join(" ")
        ))
    }

    /// Sets a session's State (signals PropertiesChanged).
    pub fn set_state(&mut self, id: &str, state: &str) -> anyhow::Result<()> {
        self.command(&format!("state {id} {state}"))
    }

    /// Removes a session (signals SessionRemoved).
    pub fn remove(&mut self, id: &str) -> anyhow::Result<()> {
        self.command(&format!("remove {id}"))
    }
}

impl Drop for FakeLogind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
