//! One task per host: start it, watch it, restart it, stop it.

use std::os::fd::OwnedFd;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use warden_sys::{AsyncPidfd, ChildSpec};

use crate::backoff::{jitter, Backoff, RestartPolicy, Verdict};
use crate::spawner::Spawner;

/// What the broker does around each start of a host; the supervisor does
/// the rest.
pub trait Launch: Send + 'static {
    /// What the broker keeps of a start (its end of the host's channel).
    type Channel: Send + 'static;
    /// Everything for the next start, built fresh each time (a new
    /// socketpair, the current environment allowlist...).
    ///
    /// # Errors
    /// The start fails like a crash (and is retried with backoff).
    fn prepare(&mut self) -> std::io::Result<(ChildSpec, Self::Channel)>;
    /// The child runs as `pid` (`pidfd` names it, for as long as the
    /// call; duplicate it to keep it): adopt its channel.
    fn started(&mut self, channel: Self::Channel, pid: u32, pidfd: std::os::fd::BorrowedFd<'_>);
    /// The child `pid` is gone (exited, crashed or stopped): clean up what
    /// it may have left (its cgroup's other processes, the leaf).
    fn exited(&mut self, _pid: u32) {}
}

/// Where a host is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Being started.
    Starting,
    /// Its process runs.
    Running,
    /// Exited; restarts after a delay.
    Waiting,
    /// Crashed too often: left down until restarted by hand.
    Failed,
    /// Stopped for good (the broker is stopping, or the host was removed).
    Stopped,
}

impl HostState {
    /// The state as `wardenctl hosts` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Starting => "starting",
            HostState::Running => "running",
            HostState::Waiting => "waiting",
            HostState::Failed => "failed",
            HostState::Stopped => "stopped",
        }
    }
}

/// A host's state as its supervisor last published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// The state.
    pub state: HostState,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// How many times it was started again after the first start.
    pub restarts: u32,
    /// How its last process ended ("exited with status 1", "killed by
    /// signal 9", or why it could not start).
    pub last_exit: Option<String>,
    /// While waiting: the delay before the next start.
    pub next_start_in: Option<Duration>,
}

/// What an operator (or the broker) asks of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCommand {
    /// Start it again now, forgetting its crashes (stopping the running
    /// process first).
    Restart,
    /// Stop it for good.
    Stop,
}

/// The handle to a supervised host.
#[derive(Debug)]
pub struct HostHandle {
    status: watch::Receiver<HostStatus>,
    commands: mpsc::Sender<HostCommand>,
    task: tokio::task::JoinHandle<()>,
}

/// Sends commands to a supervised host; cheap to clone, for whoever
/// serves `hosts.restart` (the [`HostHandle`] stays with its owner).
#[derive(Debug, Clone)]
pub struct HostCommander(mpsc::Sender<HostCommand>);

impl HostCommander {
    /// Asks for a restart (see [`HostCommand::Restart`]). False if the
    /// supervisor is gone or already has a command waiting.
    pub fn restart(&self) -> bool {
        self.0.try_send(HostCommand::Restart).is_ok()
    }
}

impl HostHandle {
    /// A commander for this host.
    pub fn commander(&self) -> HostCommander {
        HostCommander(self.commands.clone())
    }

    /// The current status.
    pub fn status(&self) -> HostStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<HostStatus> {
        self.status.clone()
    }

    /// Asks for a restart (see [`HostCommand::Restart`]). False if the
    /// supervisor is gone or already has a command waiting.
    pub fn restart(&self) -> bool {
        self.commands.try_send(HostCommand::Restart).is_ok()
    }

    /// Stops the host (SIGTERM, SIGKILL after the grace period) and waits
    /// until its process is gone.
    pub async fn stop(self) -> HostStatus {
        let _ = self.commands.send(HostCommand::Stop).await;
        let _ = self.task.await;
        let status = self.status.borrow().clone();
        status
    }
}

/// Starts supervising the host `name`: its first start begins at once.
/// `grace` is how long a stopping host gets between SIGTERM and SIGKILL.
pub fn supervise<L: Launch>(
    name: String,
    launch: L,
    spawner: Spawner,
    policy: RestartPolicy,
    grace: Duration,
) -> HostHandle {
    let (status_tx, status) = watch::channel(HostStatus {
        state: HostState::Starting,
        pid: None,
        restarts: 0,
        last_exit: None,
        next_start_in: None,
    });
    let (commands, rx) = mpsc::channel(4);
    let task = tokio::spawn(run(Host {
        name,
        launch,
        spawner,
        policy,
        grace,
        status: status_tx,
        commands: rx,
    }));
    HostHandle {
        status,
        commands,
        task,
    }
}

struct Host<L: Launch> {
    name: String,
    launch: L,
    spawner: Spawner,
    policy: RestartPolicy,
    grace: Duration,
    status: watch::Sender<HostStatus>,
    commands: mpsc::Receiver<HostCommand>,
}

impl<L: Launch> Host<L> {
    fn set(&self, f: impl FnOnce(&mut HostStatus)) {
        self.status.send_modify(f);
    }
}

/// How a run of the host ended.
enum RunEnd {
    /// The process ended (or never started) on its own.
    Ended(String),
    /// An operator asked for a restart.
    Restart,
    /// Stop for good.
    Stop,
}

async fn run<L: Launch>(mut host: Host<L>) {
    let mut backoff = Backoff::new(host.policy);
    loop {
        host.set(|s| {
            s.state = HostState::Starting;
            s.next_start_in = None;
        });
        let began = Instant::now();
        let end = run_once(&mut host).await;
        let reason = match end {
            RunEnd::Stop => {
                host.set(|s| {
                    s.state = HostState::Stopped;
                    s.pid = None;
                });
                return;
            }
            RunEnd::Restart => {
                backoff.reset();
                host.set(|s| s.restarts += 1);
                continue;
            }
            RunEnd::Ended(reason) => reason,
        };
        tracing::warn!(host = %host.name, "host ended: {reason}");
        let verdict = backoff.exited(Instant::now(), began.elapsed(), jitter());
        host.set(|s| {
            s.pid = None;
            s.last_exit = Some(reason);
        });
        let wait = match verdict {
            Verdict::RestartAfter(delay) => {
                host.set(|s| {
                    s.state = HostState::Waiting;
                    s.next_start_in = Some(delay);
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => None,
                    cmd = host.commands.recv() => Some(cmd),
                }
            }
            Verdict::Failed { crashes } => {
                tracing::error!(
                    host = %host.name,
                    crashes,
                    "host failed: it crashed {crashes} times within {:?}; left down until \
                     `wardenctl hosts restart {}` or a reload",
                    host.policy.crash_window,
                    host.name
                );
                host.set(|s| s.state = HostState::Failed);
                Some(host.commands.recv().await)
            }
        };
        match wait {
            None => {}
            Some(Some(HostCommand::Restart)) => backoff.reset(),
            Some(Some(HostCommand::Stop) | None) => {
                host.set(|s| s.state = HostState::Stopped);
                return;
            }
        }
        host.set(|s| s.restarts += 1);
    }
}

async fn run_once<L: Launch>(host: &mut Host<L>) -> RunEnd {
    let (spec, channel) = match host.launch.prepare() {
        Ok(v) => v,
        Err(e) => return RunEnd::Ended(format!("could not be prepared: {e}")),
    };
    let spawned = match host.spawner.spawn(spec).await {
        Ok(s) => s,
        Err(e) => return RunEnd::Ended(format!("could not start: {e}")),
    };
    let pid = spawned.child.id();
    let mut watched = match Watched::new(spawned.child, spawned.pidfd) {
        Ok(w) => w,
        Err(e) => return RunEnd::Ended(format!("could not be watched: {e}")),
    };
    host.launch.started(channel, pid, watched.pidfd.as_fd());
    host.set(|s| {
        s.state = HostState::Running;
        s.pid = Some(pid);
    });
    tracing::info!(host = %host.name, pid, "host started");
    let end = tokio::select! {
        status = watched.exited() => RunEnd::Ended(describe(status)),
        cmd = host.commands.recv() => {
            watched.stop(host.grace).await;
            match cmd {
                Some(HostCommand::Restart) => RunEnd::Restart,
                Some(HostCommand::Stop) | None => RunEnd::Stop,
            }
        }
    };
    host.launch.exited(pid);
    end
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!(
                "killed by signal {sig}{}",
                if s.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            _ => format!("ended: {s}"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

/// A running child and its pidfd, readable once it exited.
struct Watched {
    child: Child,
    pidfd: AsyncPidfd,
    status: Option<ExitStatus>,
}

impl Watched {
    fn new(child: Child, pidfd: OwnedFd) -> std::io::Result<Watched> {
        Ok(Watched {
            child,
            pidfd: AsyncPidfd::new(pidfd)?,
            status: None,
        })
    }

    /// Waits for the exit and reaps the child.
    async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.pidfd.exited().await?;
        // Exited: the wait returns at once.
        let s = self.child.wait()?;
        self.status = Some(s);
        Ok(s)
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; returns once reaped.
    async fn stop(&mut self, grace: Duration) {
        if self.status.is_some() {
            return;
        }
        let _ = warden_sys::pidfd_signal(self.pidfd.as_fd(), libc::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_ok() {
            return;
        }
        let _ = warden_sys::pidfd_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = self.exited().await;
    }
}

/// The longest stderr line a host may write; longer ones are cut (and
/// marked) so a host cannot make the broker buffer without bound.
const MAX_LINE: usize = 4096;

/// Reads a host's stderr (`read_end` of its pipe) line by line into the
/// broker's log, tagged with the host's name and pid, until the pipe
/// closes. Control characters are escaped (`\x1b`), so a host cannot
/// write terminal escape sequences into an admin's terminal or forge log
/// lines with newlines; lines are cut at 4 KiB.
pub fn forward_stderr(host: String, pid: u32, read_end: OwnedFd) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(host = %host, pid, "cannot read the host's stderr: {e}");
                return;
            }
        };
        let mut line: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &chunk[..n] {
                if b == b'\n' {
                    tracing::info!(host = %host, pid, "{}", escape_line(&line));
                    line.clear();
                } else if line.len() < MAX_LINE {
                    line.push(b);
                } else {
                    tracing::info!(host = %host, pid, "{} [line cut at {MAX_LINE} bytes]", escape_line(&line));
                    line.clear();
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            tracing::info!(host = %host, pid, "{}", escape_line(&line));
        }
    })
}

/// A line as it may be printed: valid UTF-8 kept, control characters
/// (other than tab) and invalid bytes escaped as `\xNN`.
pub(crate) fn escape_line(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_bad_bytes_are_escaped() {
        assert_eq!(escape_line(b"ok\there"), "ok\there");
        assert_eq!(escape_line(b"\x1b[2Jwiped"), "\\x1b[2Jwiped");
        assert_eq!(escape_line(b"a\rb"), "a\\x0db");
        assert_eq!(escape_line(b"caf\xc3\xa9 \xff"), "caf\u{e9} \\xff");
        // C1 controls (U+009B is a one-character CSI on some terminals).
        assert_eq!(escape_line("x\u{9b}y".as_bytes()), "x\\xc2\\x9by");
    }
}
