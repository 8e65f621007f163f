//! Fixtures for Warden's cross-process tests.
//!
//! Tests here use real parts: a real `wardend` in a separate process, real
//! Unix sockets, and real test users with their own uids (created once per
//! machine, behind a lock, and removed by `.ci/run` at the end of a run).
//! Tests that need root are marked `#[ignore = "needs root"]` and call
//! [`require_root`] first: they run only when asked for
//! (`--include-ignored`, which `scripts/test` passes as root or under
//! `CI=true`), and then fail without root.
//!
//! The tests that use wardend's test hooks run a wardend built with
//! `--features test-hooks` ([`hooks_wardend`], found through
//! [`HOOKS_WARDEND_ENV`]); the others run the plain build next to the test
//! program ([`bin_path`]).

pub mod logind;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Names of the project's test users and groups. Unique to this project
/// so that two suites never share a user.
pub const USER_A: &str = "wdn_alice";
/// Second test user.
pub const USER_B: &str = "wdn_bob";
/// A group only `USER_A` belongs to.
pub const GROUP_A: &str = "wdn_grp";
/// The admin group used by test configs; only `USER_ADMIN` is in it.
pub const GROUP_ADMIN: &str = "wdn_admins";
/// An administrator test user.
pub const USER_ADMIN: &str = "wdn_admin";
/// A system account (`useradd -r`: a uid in login.defs' system range,
/// below 1000 on Debian), standing in for the installed `warden` service
/// user.
pub const USER_SVC: &str = "wdn_svc";

/// True under CI (`CI=true`), where skipping is failing.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails the test unless it runs as root. For tests marked
/// `#[ignore = "needs root"]`: they run only when included explicitly
/// (`--include-ignored`), and then lacking root is a failure, not a skip.
pub fn require_root(test: &str) {
    if warden_sys::effective_uid() != 0 {
        panic!(
            "{test}: needs root (test users with their own uids, sockets under /run): \
             run it as root (sudo scripts/test), or leave out --include-ignored"
        );
    }
}

/// The environment variable that names a `wardend` built with the test
/// hooks (`--features test-hooks`). `scripts/test` builds one into its own
/// target directory and sets this.
pub const HOOKS_WARDEND_ENV: &str = "WARDEN_TEST_WARDEND_HOOKS";

/// The command that builds the wardend [`HOOKS_WARDEND_ENV`] names.
pub const HOOKS_WARDEND_BUILD: &str =
    "cargo build -p wardend --features test-hooks --target-dir \"$CARGO_TARGET_DIR/test-hooks\"";

/// The environment variable that names a plain (no test hooks) release
/// `wardend`; `scripts/test` builds it (`cargo build --release -p wardend`)
/// and sets this.
pub const PLAIN_RELEASE_WARDEND_ENV: &str = "WARDEN_TEST_WARDEND_RELEASE";

/// The wardend built with the test hooks, from [`HOOKS_WARDEND_ENV`].
/// Panics, naming the build command, if it is unset or not there.
pub fn hooks_wardend() -> PathBuf {
    let Some(p) = std::env::var_os(HOOKS_WARDEND_ENV).filter(|p| !p.is_empty()) else {
        panic!(
            "{HOOKS_WARDEND_ENV} is not set: this test needs a wardend with test hooks. \
             Run scripts/test, or build one with `{HOOKS_WARDEND_BUILD}` and set \
             {HOOKS_WARDEND_ENV} to its path (.../test-hooks/debug/wardend)"
        );
    };
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "{HOOKS_WARDEND_ENV}={}: no such file; build it with `{HOOKS_WARDEND_BUILD}`",
        p.display()
    );
    p
}

/// The plain release wardend, from [`PLAIN_RELEASE_WARDEND_ENV`]. When it
/// is unset: under CI a panic, else `None` after printing why the test
/// skips.
pub fn plain_release_wardend(test: &str) -> Option<PathBuf> {
    match std::env::var_os(PLAIN_RELEASE_WARDEND_ENV).filter(|p| !p.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "{PLAIN_RELEASE_WARDEND_ENV}={}: no such file; build it with \
                 `cargo build --release -p wardend`",
                p.display()
            );
            Some(p)
        }
        None if in_ci() => panic!(
            "{test}: {PLAIN_RELEASE_WARDEND_ENV} is not set (scripts/test sets it to a \
             `cargo build --release -p wardend`), and CI=true forbids skipping"
        ),
        None => {
            eprintln!(
                "SKIP {test}: {PLAIN_RELEASE_WARDEND_ENV} is not set (scripts/test sets it to \
                 the plain release wardend)"
            );
            None
        }
    }
}

/// A test user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Login name.
    pub name: String,
    /// Uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn lookup(name: &str) -> anyhow::Result<TestUser> {
    let u = warden_sys::user_by_name(name)?.with_context(|| format!("user {name} missing"))?;
    Ok(TestUser {
        name: u.name,
        uid: u.uid,
        gid: u.gid,
    })
}

/// The test users (A, B, admin), created on first use. `useradd` locks
/// `/etc/passwd`, so creation is serialized with a lock file across test
/// processes.
pub fn test_users() -> anyhow::Result<(TestUser, TestUser, TestUser)> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| create_users().map_err(|e| format!("{e:#}")));
    if let Err(e) = r {
        bail!("cannot create test users: {e}");
    }
    Ok((lookup(USER_A)?, lookup(USER_B)?, lookup(USER_ADMIN)?))
}

/// The system test account ([`USER_SVC`]), created on first use along
/// with the others.
pub fn service_user() -> anyhow::Result<TestUser> {
    test_users()?;
    lookup(USER_SVC)
}

fn create_users() -> anyhow::Result<()> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/warden-testkit-users.lock")
        .context("opening the user-creation lock")?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the user-creation lock")?;
    for g in [GROUP_A, GROUP_ADMIN] {
        if warden_sys::group_by_name(g)?.is_none() {
            run_checked(Command::new("groupadd").arg(g))?;
        }
    }
    for (user, groups, system) in [
        (USER_A, GROUP_A, false),
        (USER_B, "", false),
        (USER_ADMIN, GROUP_ADMIN, false),
        (USER_SVC, "", true),
    ] {
        if warden_sys::user_by_name(user)?.is_none() {
            let mut cmd = Command::new("useradd");
            cmd.args(["-M", "-U", "-s", "/usr/sbin/nologin"]);
            if system {
                cmd.arg("--system");
            }
            if !groups.is_empty() {
                cmd.args(["-G", groups]);
            }
            cmd.arg(user);
            run_checked(&mut cmd)?;
        } else if !groups.is_empty() {
            // Left from an earlier run whose groups were removed and made
            // again (the CI cleanup): make sure of the membership.
            run_checked(Command::new("usermod").args(["-a", "-G", groups, user]))?;
        }
    }
    Ok(())
}

/// Path of a binary built by this workspace (`wardend`, `wardenctl`,
/// `warden-peer`), next to the running test executable's directory.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// A copy of `file` that every user can read and execute, in a
/// per-process directory under `/run` (root-owned, 0755). Test users may
/// not be able to reach the original (a checkout or target directory
/// under a 0700 home).
pub fn shared_copy(file: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = Path::new(SHARED_DIR);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
    let name = file.file_name().context("no file name")?.to_string_lossy();
    // One copy per version of the file (size and mtime), under its own
    // name so the process's comm stays the program's name.
    let version = dir.join(format!(
        "{}-{}",
        meta.len(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    ));
    std::fs::create_dir_all(&version)?;
    std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o755))?;
    let copy = version.join(name.as_ref());
    if !copy.exists() {
        static N: AtomicU32 = AtomicU32::new(0);
        let tmp = version.join(format!(
            ".{name}.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::copy(file, &tmp).with_context(|| format!("copying {}", file.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &copy)?;
    }
    Ok(copy)
}

/// Where [`shared_copy`] puts its copies; `scripts/test` and `.ci/run`
/// remove it.
pub const SHARED_DIR: &str = "/run/wdn-shared";

/// A command that runs `program` as `user` (with the user's groups), via
/// util-linux `setpriv`. Programs under the build directory or the
/// checkout are run from a [`shared_copy`], so the user can reach them.
pub fn command_as(user: &TestUser, program: &Path) -> Command {
    let program = if program.starts_with("/usr") || program.starts_with("/bin") {
        program.to_path_buf()
    } else {
        shared_copy(program).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let program = program.as_path();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(program);
    c
}

/// Like [`command_as`], with exactly these supplementary groups instead of
/// the user's own (to act as a member of a group the user is not in).
pub fn command_as_with_groups(user: &TestUser, groups: &[u32], program: &Path) -> Command {
    let program = shared_copy(program).unwrap_or_else(|e| panic!("{e:#}"));
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg(format!("--groups={}", list.join(",")))
        .arg("--")
        .arg(program);
    c
}

/// A private directory for sockets and logs, under `/run` (root-owned,
/// not writable by others, so the broker's checks accept it). Removed on
/// drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates a fresh directory (mode 0755): under `/run` as root, else
    /// in the user's runtime directory (`$XDG_RUNTIME_DIR`, or
    /// `/run/user/UID`).
    pub fn new(tag: &str) -> anyhow::Result<TestDir> {
        let uid = warden_sys::effective_uid();
        let base = if uid == 0 {
            PathBuf::from("/run")
        } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            PathBuf::from(d)
        } else {
            // No login session's variable (e.g. under `su` or `sudo -u`):
            // the session directory itself, if there is one.
            let d = PathBuf::from(format!("/run/user/{uid}"));
            anyhow::ensure!(
                d.is_dir(),
                "XDG_RUNTIME_DIR is unset and {} does not exist: not root, the tests \
                 need a private runtime directory of this user's",
                d.display()
            );
            d
        };
        Self::new_under(&base, tag)
    }

    /// Creates a fresh directory (mode 0755) in `base` instead of `/run`
    /// (e.g. `/home`, to stand in for a user's home directory).
    pub fn new_under(base: &Path, tag: &str) -> anyhow::Result<TestDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = base.join(format!(
            "wdn-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(TestDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A test config: the given rules and limits, with the socket in `dir`.
pub fn config_text(dir: &TestDir, extra: &str) -> String {
    // Rules name the test users, and a deny rule naming a user that does
    // not exist is a config error: as root, make sure they exist, whatever
    // order the tests run in (a test that needs no root may run first).
    if warden_sys::effective_uid() == 0 {
        if let Err(e) = test_users() {
            eprintln!("config_text: {e:#}");
        }
    }
    format!(
        "[broker]\nsocket = \"{}\"\nsocket_mode = \"0666\"\nadmin_group = \"{GROUP_ADMIN}\"\n{extra}\n",
        dir.path().join("s/warden.sock").display()
    )
}

/// A `wardend` running in a separate process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl BrokerProcess {
    /// Writes `config` to `dir/warden.toml` and starts `wardend` on it,
    /// waiting until it answers a ping.
    pub fn start(dir: &TestDir, config: &str) -> anyhow::Result<BrokerProcess> {
        Self::start_env(dir, config, &[])
    }

    /// Like [`BrokerProcess::start`], with extra environment variables.
    pub fn start_env(
        dir: &TestDir,
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<BrokerProcess> {
        let conf = dir.path().join("warden.toml");
        std::fs::write(&conf, config)?;
        let socket = dir.path().join("s/warden.sock");
        Self::spawn_env(dir, &["--config".as_ref(), conf.as_os_str()], socket, env)
    }

    /// Starts `wardend` with arbitrary arguments, expecting its socket at
    /// `socket`.
    pub fn spawn(
        dir: &TestDir,
        args: &[&std::ffi::OsStr],
        socket: PathBuf,
    ) -> anyhow::Result<BrokerProcess> {
        Self::spawn_env(dir, args, socket, &[])
    }

    /// Like [`BrokerProcess::spawn`], with extra environment variables.
    pub fn spawn_env(
        dir: &TestDir,
        args: &[&std::ffi::OsStr],
        socket: PathBuf,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<BrokerProcess> {
        Self::spawn_full(&bin_path("wardend"), dir, args, socket, env, None, None)
    }

    /// Like [`BrokerProcess::start_env`], with the wardend built with the
    /// test hooks ([`hooks_wardend`]) and `WARDEND_TEST_HOOKS=1` on.
    pub fn start_hooks(
        dir: &TestDir,
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<BrokerProcess> {
        let mut env = env.to_vec();
        env.push(("WARDEND_TEST_HOOKS", "1".as_ref()));
        Self::start_program(&hooks_wardend(), dir, config, &env)
    }

    /// Like [`BrokerProcess::start_env`], running `program` as wardend.
    pub fn start_program(
        program: &Path,
        dir: &TestDir,
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<BrokerProcess> {
        let conf = dir.path().join("warden.toml");
        std::fs::write(&conf, config)?;
        let socket = dir.path().join("s/warden.sock");
        Self::spawn_full(
            program,
            dir,
            &["--config".as_ref(), conf.as_os_str()],
            socket,
            env,
            None,
            None,
        )
    }

    /// Writes `config` to `dir/warden.toml` and starts `wardend` on it with
    /// `stderr` as its standard error (instead of the log file, so
    /// [`BrokerProcess::log`] is empty), waiting until it answers a hello.
    pub fn start_with_stderr(
        dir: &TestDir,
        config: &str,
        stderr: Stdio,
    ) -> anyhow::Result<BrokerProcess> {
        let conf = dir.path().join("warden.toml");
        std::fs::write(&conf, config)?;
        let socket = dir.path().join("s/warden.sock");
        Self::spawn_full(
            &bin_path("wardend"),
            dir,
            &["--config".as_ref(), conf.as_os_str()],
            socket,
            &[],
            None,
            Some(stderr),
        )
    }

    /// Starts `wardend` as `user` (a service account), on `config`, with
    /// its socket at `socket`.
    pub fn start_as(
        dir: &TestDir,
        config: &str,
        socket: PathBuf,
        user: &TestUser,
    ) -> anyhow::Result<BrokerProcess> {
        let conf = dir.path().join("warden.toml");
        std::fs::write(&conf, config)?;
        Self::spawn_full(
            &bin_path("wardend"),
            dir,
            &[
                "--config".as_ref(),
                conf.as_os_str(),
                "--socket".as_ref(),
                socket.as_os_str(),
            ],
            socket.clone(),
            &[],
            Some(user),
            None,
        )
    }

    fn spawn_full(
        program: &Path,
        dir: &TestDir,
        args: &[&std::ffi::OsStr],
        socket: PathBuf,
        env: &[(&str, &std::ffi::OsStr)],
        user: Option<&TestUser>,
        stderr: Option<Stdio>,
    ) -> anyhow::Result<BrokerProcess> {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = dir
            .path()
            .join(format!("wardend-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let logf = std::fs::File::create(&log)?;
        let stderr = stderr.unwrap_or_else(|| Stdio::from(logf));
        let mut cmd = match user {
            Some(u) => command_as(u, program),
            None => Command::new(program),
        };
        // Debug logs unless the arguments ask for another level (the last
        // --log-level counts).
        let child = cmd
            .arg("--log-level=debug")
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning wardend")?;
        let mut b = BrokerProcess {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = b.try_wait()? {
                bail!("wardend exited early with {status}:\n{}", b.log());
            }
            if let Ok(mut c) = RawConn::connect(&b.socket) {
                if c.hello().is_ok() {
                    return Ok(b);
                }
            }
            if Instant::now() > deadline {
                bail!("wardend did not come up in 20 s:\n{}", b.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket path as a string.
    pub fn socket_str(&self) -> String {
        self.socket.display().to_string()
    }

    /// The broker's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid())?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
        Ok(())
    }

    /// Non-blocking exit check.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("already reaped"),
        }
    }

    /// Waits up to `timeout` for the broker to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                self.child = None;
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("wardend did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw protocol connection for tests that send bad bytes on purpose.
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub stream: UnixStream,
}

impl RawConn {
    /// Connects (with a 5 s read timeout).
    pub fn connect(path: &Path) -> std::io::Result<RawConn> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(RawConn { stream })
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    /// Sends one frame with `body`.
    pub fn send_json(&mut self, body: &Value) -> std::io::Result<()> {
        let text = serde_json::to_vec(body)?;
        let mut f = (text.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&text);
        self.send_bytes(&f)
    }

    /// Reads one frame; `Ok(None)` on a clean close.
    pub fn recv(&mut self) -> anyhow::Result<Option<Value>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let n = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n];
        self.stream.read_exact(&mut body)?;
        Ok(Some(serde_json::from_slice(&body)?))
    }

    /// Reads one frame, failing on close.
    pub fn recv_some(&mut self) -> anyhow::Result<Value> {
        self.recv()?.context("connection closed")
    }

    /// True if the broker closed the connection (after any frames it sent).
    pub fn closed(&mut self) -> bool {
        loop {
            match self.recv() {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends hello and returns the welcome.
    pub fn hello(&mut self) -> anyhow::Result<Value> {
        self.send_json(&json!({"kind": "hello", "version": 1, "client": "testkit"}))?;
        let w = self.recv_some()?;
        if w["kind"] != "welcome" {
            bail!("expected welcome, got {w}");
        }
        Ok(w)
    }

    /// Calls a method and returns the answer frame.
    pub fn call(&mut self, id: u64, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send_json(&json!({"kind": "call", "id": id, "method": method, "params": params}))?;
        self.recv_some()
    }
}

/// Runs a command with a timeout, collecting its output. Its stdout and
/// stderr are read while it runs (a child writing more than a pipe holds
/// would otherwise block until the timeout).
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `wardenctl` with `args` against `socket`, as `user` (or as the
/// current user if `None`).
pub fn wardenctl(user: Option<&TestUser>, socket: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let bin = bin_path("wardenctl");
    let mut cmd = match user {
        Some(u) => command_as(u, &bin),
        None => Command::new(&bin),
    };
    cmd.arg("--socket").arg(socket).args(args);
    output_with_timeout(&mut cmd, Duration::from_secs(30))
}
