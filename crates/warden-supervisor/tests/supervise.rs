//! The supervisor with real child processes (`/bin/sh` scripts as hosts).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_supervisor::{supervise, HostState, HostStatus, Launch, Reaper, RestartPolicy, Spawner};
use warden_sys::ChildSpec;

/// A liveness bound, never a speed assertion.
const LIVENESS: Duration = Duration::from_secs(20);

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The starts a [`Script`] saw: pid and the broker's end of its channel.
type Seen = Arc<Mutex<Vec<(u32, UnixStream)>>>;

/// A host that runs `script` under /bin/sh; keeps the broker's end of each
/// start's channel and the pids it was told about.
struct Script {
    script: String,
    cgroup_procs: Option<PathBuf>,
    seen: Seen,
}

impl Launch for Script {
    type Channel = UnixStream;

    fn prepare(&mut self) -> std::io::Result<(ChildSpec, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        let cgroup_procs = match &self.cgroup_procs {
            Some(p) => Some(OwnedFd::from(
                std::fs::OpenOptions::new().write(true).open(p)?,
            )),
            None => None,
        };
        Ok((
            ChildSpec {
                program: PathBuf::from("/bin/sh"),
                args: vec!["-c".into(), self.script.clone().into()],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                credentials: None,
                channel: OwnedFd::from(theirs),
                stderr: None,
                cgroup_procs,
                death_signal: libc_sigkill(),
                landlock: None,
                seccomp: None,
            },
            ours,
        ))
    }

    fn started(&mut self, channel: UnixStream, pid: u32, _pidfd: std::os::fd::BorrowedFd<'_>) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((pid, channel));
        }
    }
}

fn libc_sigkill() -> i32 {
    9
}

fn host(script: &str) -> (Script, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    (
        Script {
            script: script.into(),
            cgroup_procs: None,
            seen: Arc::clone(&seen),
        },
        seen,
    )
}

async fn until(
    rx: &mut tokio::sync::watch::Receiver<HostStatus>,
    what: &str,
    mut f: impl FnMut(&HostStatus) -> bool,
) -> anyhow::Result<HostStatus> {
    let found = match tokio::time::timeout(LIVENESS, rx.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    match found {
        Some(s) => Ok(s),
        None => anyhow::bail!(
            "{what}: not within {LIVENESS:?}; last status {:?}",
            *rx.borrow()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_host_restarts_with_growing_delays_then_fails() -> anyhow::Result<()> {
    let spawner = Spawner::start()?;
    let (script, seen) = host("exit 3");
    let policy = RestartPolicy {
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
        crash_limit: 4,
        crash_window: Duration::from_secs(60),
        stable_after: Duration::from_secs(30),
    };
    let handle = supervise(
        "crashy".into(),
        script,
        spawner,
        policy,
        Duration::from_secs(1),
    );
    let mut rx = handle.watch();
    let mut delays = Vec::new();
    loop {
        let s = until(&mut rx, "a wait or the failure", |s| {
            matches!(s.state, HostState::Waiting | HostState::Failed)
        })
        .await?;
        if s.state == HostState::Failed {
            assert_eq!(
                s.last_exit.as_deref(),
                Some("exited with status 3"),
                "{s:?}"
            );
            assert_eq!(s.restarts, 3, "{s:?}");
            break;
        }
        delays.extend(s.next_start_in);
        until(&mut rx, "the next start", |s| s.state != HostState::Waiting).await?;
    }
    assert_eq!(delays.len(), 3, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "the delays did not grow: {delays:?}"
    );
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 4);
    // Failed stays down until restarted by hand; a restart runs it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.status().state, HostState::Failed);
    assert!(handle.restart());
    until(&mut rx, "a start after the restart", |s| s.restarts == 4).await?;
    let end = tokio::time::timeout(LIVENESS, handle.stop()).await?;
    assert_eq!(end.state, HostState::Stopped);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_terminates_then_kills_a_host_that_ignores_sigterm() -> anyhow::Result<()> {
    let spawner = Spawner::start()?;
    let (script, seen) = host("trap '' TERM; echo up >&0; while :; do sleep 0.05; done");
    let handle = supervise(
        "stubborn".into(),
        script,
        spawner,
        RestartPolicy::default(),
        Duration::from_millis(300),
    );
    let mut rx = handle.watch();
    let s = until(&mut rx, "running", |s| s.state == HostState::Running).await?;
    let pid = s.pid.unwrap_or(0);
    // The channel works: the host wrote on its stdin, the broker's end reads it.
    let mut end = {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        anyhow::ensure!(
            seen.len() == 1 && seen[0].0 == pid,
            "started() not called with the pid"
        );
        seen[0].1.try_clone()?
    };
    end.set_read_timeout(Some(LIVENESS))?;
    let mut up = [0u8; 3];
    end.read_exact(&mut up)?;
    assert_eq!(&up, b"up\n");
    let pidfd = warden_sys::pidfd_open(pid)?;
    let t = Instant::now();
    let status = tokio::time::timeout(LIVENESS, handle.stop())
        .await
        .map_err(|_| anyhow::anyhow!("stop did not finish: the host survived SIGKILL?"))?;
    assert_eq!(status.state, HostState::Stopped);
    assert!(
        warden_sys::pidfd_exited(std::os::fd::AsFd::as_fd(&pidfd))?,
        "the host still runs"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "killed before the grace period"
    );
    Ok(())
}

/// The reaper kills a host's whole cgroup, grandchildren included, once
/// the broker's end of its pipe closes (as it does when the broker dies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn the_reaper_kills_the_hosts_cgroup_when_the_broker_is_gone() -> anyhow::Result<()> {
    anyhow::ensure!(nix_is_root(), "creating cgroups needs root");
    let Some(root) = warden_sys::cgroup2_mount() else {
        anyhow::ensure!(!ci(), "no cgroup v2 hierarchy, and CI has one");
        eprintln!("skipping: no cgroup v2 hierarchy");
        return Ok(());
    };
    let parent = root.join(format!("warden-reaper-t-{}", std::process::id()));
    let leaf = parent.join("agent");
    std::fs::create_dir_all(&leaf)?;
    let spawner = Spawner::start()?;
    let (mut script, _seen) = host("sleep 300 & sleep 300 & wait");
    script.cgroup_procs = Some(leaf.join("cgroup.procs"));
    let handle = supervise(
        "agent".into(),
        script,
        spawner,
        RestartPolicy::default(),
        Duration::from_secs(1),
    );
    let procs = |p: &PathBuf| -> usize {
        std::fs::read_to_string(p.join("cgroup.procs"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let t = Instant::now();
    while procs(&leaf) < 3 {
        anyhow::ensure!(
            t.elapsed() < LIVENESS,
            "the host and its two children did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reaper = Reaper::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_warden-reaper")),
        [&parent],
    )?;
    // The reaper is not in the cgroup it kills.
    assert!(!std::fs::read_to_string(leaf.join("cgroup.procs"))?
        .lines()
        .any(|l| l.trim() == reaper.pid().to_string()));
    let t = Instant::now();
    drop(reaper);
    while procs(&leaf) > 0 {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(2),
            "processes left in the cgroup 2 s after the pipe closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tokio::time::timeout(LIVENESS, handle.stop()).await;
    let _ = std::fs::remove_dir(&leaf);
    let _ = std::fs::remove_dir(&parent);
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
