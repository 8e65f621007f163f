//! warden-host as a real process, on a socketpair the broker adopted,
//! loading the Rust and the C example modules.
//!
//! Root only: a module must be root's, in directories only root can
//! write, so the test copies them under /run as root.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use warden::{Broker, Shutdown};
use warden_client::{Client, ConnectOptions, ErrorCode};
use warden_policy::{Config, StaticResolver};
use warden_sys::PeerIdentity;

const LIVENESS: Duration = Duration::from_secs(20);

const RULES: &str = r#"
[[rule]]
actions = ["call", "provide"]
names = ["example.**"]
everyone = true
"#;

/// A private, root-owned directory under /run with the two modules.
struct Modules {
    dir: PathBuf,
}

impl Drop for Modules {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test exe has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

fn modules() -> anyhow::Result<Modules> {
    anyhow::ensure!(
        nix_root(),
        "this test needs root: modules must be root's (run as root, or scripts/test)"
    );
    let dir = PathBuf::from(format!(
        "/run/warden-host-t-{}-{}",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let rust = target_dir()?.join("libwarden_example_echo.so");
    anyhow::ensure!(
        rust.is_file(),
        "{} is missing: `cargo build -p warden-example-echo` builds it (scripts/test does)",
        rust.display()
    );
    std::fs::copy(&rust, dir.join("libwarden_example_echo.so"))?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../warden-module");
    let out = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(src.join("include"))
        .arg("-o")
        .arg(dir.join("libwarden_example_hello_c.so"))
        .arg(src.join("examples/c/hello.c"))
        .output()
        .context("running cc (the C example module)")?;
    anyhow::ensure!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in ["libwarden_example_echo.so", "libwarden_example_hello_c.so"] {
        std::fs::set_permissions(dir.join(m), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(Modules { dir })
}

/// A number no other test of this process got.
fn unique() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn nix_root() -> bool {
    warden_sys::effective_uid() == 0
}

struct Setup {
    socket: PathBuf,
    broker: Broker,
    _trigger: warden::ShutdownTrigger,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn broker() -> anyhow::Result<Setup> {
    let dir =
        std::env::temp_dir().join(format!("warden-host-b-{}-{}", std::process::id(), unique()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("b.sock");
    let config = Config::parse(RULES, "t.toml", &StaticResolver::default())?;
    let broker = Broker::builder(&config).build();
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let (trigger, shutdown) = Shutdown::new();
    let serving = broker.clone();
    tokio::spawn(async move { serving.serve(listener, shutdown).await });
    Ok(Setup {
        socket,
        broker,
        _trigger: trigger,
        _dir: tempdir::Dir(dir),
    })
}

/// A uid and gid no account has: the host runs as them.
const HOST_UID: u32 = 64_911;

/// Starts warden-host as [`HOST_UID`] with `modules`, on a socketpair
/// the broker adopts with the identity the spawn assigned.
async fn host(setup: &Setup, modules: &[PathBuf]) -> anyhow::Result<(Child, std::fs::File)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut args: Vec<std::ffi::OsString> = vec!["--name".into(), "agent".into()];
    args.extend(modules.iter().map(|m| m.clone().into_os_string()));
    let spawned = warden_sys::spawn_child(warden_sys::ChildSpec {
        program: PathBuf::from(env!("CARGO_BIN_EXE_warden-host")),
        args,
        env: vec![],
        credentials: Some(warden_sys::ChildCredentials {
            uid: HOST_UID,
            gid: HOST_UID,
            groups: vec![],
        }),
        channel: OwnedFd::from(theirs),
        stderr: Some(err_w),
        cgroup_procs: None,
        death_signal: 9,
        landlock: None,
        seccomp: None,
    })?;
    let pid = spawned.child.id();
    setup
        .broker
        .adopt(
            ours,
            PeerIdentity {
                uid: HOST_UID,
                gid: HOST_UID,
                groups: Vec::new(),
                pid,
                pidfd: Some(spawned.pidfd),
            },
            "agent",
        )
        .await?;
    Ok((spawned.child, std::fs::File::from(err_r)))
}

/// Calls `method` until a provider serves it (the host registers its
/// methods after loading).
async fn call_when_served(c: &Client, method: &str, params: Value) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        match c.call_json(method, params.clone()).await {
            Ok(v) => return Ok(v),
            Err(e) if e.code() == Some(ErrorCode::UnknownMethod) && t.elapsed() < LIVENESS => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => anyhow::bail!("{method}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn the_host_serves_the_rust_and_the_c_module_with_the_callers_identity() -> anyhow::Result<()>
{
    let m = modules()?;
    let setup = broker().await?;
    let (mut child, mut stderr) = host(
        &setup,
        &[
            m.dir.join("libwarden_example_echo.so"),
            m.dir.join("libwarden_example_hello_c.so"),
        ],
    )
    .await?;
    let c = Client::connect(ConnectOptions::new(setup.socket.display().to_string())).await?;
    let v = match call_when_served(&c, "example.echo", json!({"x": 1})).await {
        Ok(v) => v,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let mut log = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
            anyhow::bail!("{e}; the host said: {log}");
        }
    };
    assert_eq!(v["params"], json!({"x": 1}), "{v}");
    assert_eq!(v["caller"]["uid"], warden_sys::effective_uid(), "{v}");
    assert_eq!(v["caller"]["pid"], std::process::id(), "{v}");
    assert_eq!(v["host"]["name"], "agent", "{v}");
    assert_eq!(v["host"]["pid"], child.id(), "{v}");
    let v = call_when_served(&c, "example.hello_c", Value::Null).await?;
    assert_eq!(
        v,
        json!({"hello": warden_sys::effective_uid(), "from": "c"})
    );
    // It runs as the assigned uid, and made itself non-dumpable: the
    // kernel then gives its /proc entries to root, so the account it runs
    // as cannot read its memory or ptrace it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    assert!(
        status.contains(&format!("Uid:\t{HOST_UID}\t{HOST_UID}")),
        "{status}"
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(format!(
        "/proc/{}/mem",
        child.id()
    ))?);
    assert_eq!(
        owner, 0,
        "the host's /proc entries are its own: it is still dumpable"
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_module_others_could_write_is_refused() -> anyhow::Result<()> {
    let m = modules()?;
    let setup = broker().await?;
    let path = m.dir.join("libwarden_example_echo.so");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    let (mut child, mut stderr) = host(&setup, std::slice::from_ref(&path)).await?;
    let (status, err) = tokio::task::spawn_blocking(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        (child.wait(), err)
    })
    .await?;
    assert!(
        !status?.success(),
        "the host loaded a world-writable module"
    );
    assert!(
        err.contains(&path.display().to_string()) && err.contains("writable by nobody else"),
        "{err}"
    );
    Ok(())
}
