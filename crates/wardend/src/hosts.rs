//! The `[[host]]` sections at work: child hosts started, supervised and
//! stopped with the broker.
//!
//! At start, with hosts configured, wardend:
//! 1. makes a cgroup of its own for the hosts, `warden-hosts-HASH` below
//!    its own cgroup (cgroup v2; HASH of the socket path, see
//!    [`hosts_cgroup_name`]), killing and removing anything an earlier
//!    broker on that socket left there, and a leaf per host;
//! 2. starts the reaper (`wardend --reaper-for CGROUP`), which kills that
//!    cgroup once wardend is gone, however it ended;
//! 3. supervises each host (`warden-supervisor`): `warden-host`, found
//!    next to `wardend`, spawned as the host's user with its groups, its
//!    environment allowlist, its channel on stdin and its stderr into the
//!    log; the channel is adopted by the broker with the identity the
//!    spawn assigned and the host's name.
//!
//! `hosts.list` and `hosts.restart` (in-broker handlers) report and
//! restart them; at shutdown they are stopped (SIGTERM, SIGKILL after
//! their `stop_timeout_ms`) and their cgroup is killed.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use warden::{Broker, BrokerBuilder, Handler, HandlerContext, HandlerFuture};
use warden_policy::{HostScope, HostSection, SessionsSection};
use warden_proto::{ErrorCode, Payload, WireError};
use warden_supervisor::{
    supervise, HostCommander, HostHandle, HostState, Launch, Reaper, RestartPolicy, Spawner,
};
use warden_sys::{ChildCredentials, ChildSpec, PeerIdentity};

/// The hosts' cgroup, below wardend's own: `warden-hosts-HASH`, HASH from
/// the broker's socket path. Only one broker serves a socket at a time
/// (the endpoint is locked), so two brokers sharing a cgroup (started
/// from one shell) never share a hosts' cgroup, and a broker restarted on
/// the same socket finds (and clears) what its killed predecessor left.
fn hosts_cgroup_name(socket: &Path) -> String {
    // FNV-1a: stable across builds, which a std hasher does not promise.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in socket.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("warden-hosts-{h:016x}")
}

/// The supervised hosts.
pub struct Hosts {
    hosts: Vec<(String, HostHandle)>,
    sessions: Option<crate::sessions::SessionHosts>,
    cgroup: Option<PathBuf>,
    _reaper: Option<Reaper>,
}

/// What `hosts.list` and `hosts.restart` reach: filled in once the hosts
/// run (the handlers are registered before the broker is built).
#[derive(Clone, Default)]
pub struct HostsView(Arc<Mutex<Vec<(String, HostView)>>>);

struct HostView {
    status: tokio::sync::watch::Receiver<warden_supervisor::HostStatus>,
    restart: HostCommander,
    user: String,
    /// The logind session of a session host.
    session: Option<String>,
    /// The modules it loads now (and at its next start): its `modules`,
    /// changed by `wardenctl module load|unload`.
    modules: CurrentModules,
    /// What it may load: its configured `modules`, and the entries of its
    /// `module_dir`.
    configured: Vec<PathBuf>,
    module_dir: Option<PathBuf>,
}

/// A host's current module list, shared by its view and its launches.
type CurrentModules = Arc<Mutex<Vec<PathBuf>>>;

fn current(m: &CurrentModules) -> Vec<PathBuf> {
    m.lock().map(|v| v.clone()).unwrap_or_default()
}

impl HostsView {
    /// Starts every failed host again (a successful reload does, as
    /// `wardenctl hosts restart` does for one).
    pub fn restart_failed(&self) {
        if let Ok(v) = self.0.lock() {
            for (name, h) in v.iter() {
                if h.status.borrow().state == HostState::Failed && h.restart.restart() {
                    tracing::info!(host = %name, "reload: restarting the failed host");
                }
            }
        }
    }
}

/// wardend's own cgroup v2 directory, from /proc/self/cgroup.
fn own_cgroup() -> Option<PathBuf> {
    let mount = warden_sys::cgroup2_mount()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Kills every process below `dir` and removes its leaves (what a broker
/// killed earlier left there).
fn clear_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let leaf = e.path();
                // The kill is asynchronous: give the leaf a moment to empty.
                for _ in 0..100 {
                    if std::fs::remove_dir(&leaf).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Hosts {
    /// Starts every configured host. `view` is what the handlers read.
    ///
    /// # Errors
    /// A host's user cannot be resolved, `warden-host` is missing, or the
    /// spawner thread cannot start.
    pub fn start(
        hosts: &[HostSection],
        sessions: &SessionsSection,
        socket: &Path,
        broker: &Broker,
        view: &HostsView,
    ) -> anyhow::Result<Hosts> {
        let exe = std::env::current_exe().context("cannot find wardend's own path")?;
        let host_exe = exe.with_file_name("warden-host");
        anyhow::ensure!(
            host_exe.is_file(),
            "{} not found: child hosts need warden-host installed next to wardend",
            host_exe.display()
        );
        let cgroup = match own_cgroup() {
            Some(own) => {
                let dir = own.join(hosts_cgroup_name(socket));
                match std::fs::create_dir_all(&dir) {
                    Ok(()) => {
                        clear_cgroup(&dir);
                        Some(dir)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cannot create the hosts' cgroup {}: {e}; hosts run without one, \
                             and what a module starts may outlive a killed broker",
                            dir.display()
                        );
                        None
                    }
                }
            }
            None => {
                tracing::warn!(
                    "no cgroup v2 hierarchy: hosts run without a cgroup, and what a module \
                     starts may outlive a killed broker"
                );
                None
            }
        };
        let reaper = match &cgroup {
            Some(dir) => Some(
                Reaper::start(
                    &exe,
                    [std::ffi::OsStr::new("--reaper-for"), dir.as_os_str()],
                )
                .context("cannot start the hosts' reaper")?,
            ),
            None => None,
        };
        let spawner = Spawner::start().context("cannot start the spawner thread")?;
        let launcher = Launcher {
            host_exe,
            cgroup: cgroup.clone(),
            spawner,
            broker: broker.clone(),
            view: view.clone(),
        };
        let mut started = Vec::new();
        for h in hosts.iter().filter(|h| h.scope == HostScope::System) {
            // The configuration refuses a system host without `user`;
            // never fall back to an account nobody named.
            let name = h
                .user
                .as_deref()
                .with_context(|| format!("host {}: a system host needs `user`", h.name))?;
            let user = warden_sys::user_by_name(name)
                .with_context(|| format!("looking up host {}'s user {name}", h.name))?
                .with_context(|| format!("host {}: user {name} does not exist", h.name))?;
            started.push((h.name.clone(), launcher.start(h, &user, None)?));
        }
        let session_hosts: Vec<HostSection> = hosts
            .iter()
            .filter(|h| h.scope == HostScope::Session)
            .cloned()
            .collect();
        let sessions = (!session_hosts.is_empty())
            .then(|| crate::sessions::SessionHosts::start(sessions, session_hosts, launcher));
        Ok(Hosts {
            hosts: started,
            sessions,
            cgroup,
            _reaper: reaper,
        })
    }

    /// Stops every host and kills what is left in their cgroup.
    pub async fn stop(self) {
        let mut set = tokio::task::JoinSet::new();
        for (_, h) in self.hosts {
            set.spawn(h.stop());
        }
        if let Some(sessions) = self.sessions {
            for h in sessions.stop() {
                set.spawn(h.stop());
            }
        }
        while set.join_next().await.is_some() {}
        if let Some(dir) = &self.cgroup {
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                clear_cgroup(&dir);
                let _ = std::fs::remove_dir(&dir);
            })
            .await;
        }
        tracing::info!("child hosts stopped");
    }
}

/// What starting a host needs, shared by system hosts and the session
/// hosts started as sessions come and go.
#[derive(Clone)]
pub struct Launcher {
    host_exe: PathBuf,
    cgroup: Option<PathBuf>,
    spawner: Spawner,
    broker: Broker,
    view: HostsView,
}

/// The logind session a session host serves.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// logind's session id.
    pub id: String,
    /// The user's `XDG_RUNTIME_DIR` (logind's `RuntimePath`), passed at
    /// each start if the directory exists then.
    pub runtime_path: Option<PathBuf>,
}

/// A session id as a cgroup leaf name part: letters and digits kept,
/// every other byte as `_XX` (so no id can name `..` or a path).
fn leaf_part(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

impl Launcher {
    /// Starts supervising `h` as `user` (for `session` if it is a session
    /// host) and adds it to the view.
    ///
    /// # Errors
    /// The user's groups cannot be read, or its cgroup leaf not made.
    pub fn start(
        &self,
        h: &HostSection,
        user: &warden_sys::UserInfo,
        session: Option<SessionInfo>,
    ) -> anyhow::Result<HostHandle> {
        let groups = warden_sys::groups_of_user(&user.name, user.gid)
            .with_context(|| format!("host {}: the groups of {}", h.name, user.name))?;
        let leaf_name = match &session {
            None => h.name.clone(),
            Some(s) => format!("{}@{}", h.name, leaf_part(&s.id)),
        };
        let leaf = match &self.cgroup {
            Some(dir) => {
                let leaf = dir.join(&leaf_name);
                std::fs::create_dir_all(&leaf)
                    .with_context(|| format!("creating {}", leaf.display()))?;
                Some(leaf)
            }
            None => None,
        };
        let modules: CurrentModules = Arc::new(Mutex::new(h.modules.clone()));
        let launch = HostLaunch {
            section: h.clone(),
            modules: Arc::clone(&modules),
            program: self.host_exe.clone(),
            credentials: ChildCredentials {
                uid: user.uid,
                gid: user.gid,
                groups,
            },
            leaf,
            session: session.clone(),
            broker: self.broker.clone(),
        };
        let policy = RestartPolicy {
            first_delay: Duration::from_millis(h.restart_delay_ms),
            max_delay: Duration::from_millis(h.restart_max_delay_ms),
            crash_limit: h.crash_limit,
            crash_window: Duration::from_millis(h.crash_window_ms),
            stable_after: Duration::from_millis(h.stable_after_ms),
        };
        let handle = supervise(
            leaf_name,
            launch,
            self.spawner.clone(),
            policy,
            Duration::from_millis(h.stop_timeout_ms),
        );
        if let Ok(mut v) = self.view.0.lock() {
            v.push((
                h.name.clone(),
                HostView {
                    status: handle.watch(),
                    restart: handle.commander(),
                    user: user.name.clone(),
                    session: session.map(|s| s.id),
                    modules,
                    configured: h.modules.clone(),
                    module_dir: h.module_dir.clone(),
                },
            ));
        }
        Ok(handle)
    }

    /// Removes the view of host `name`'s instance for `session`.
    pub fn forget_session(&self, name: &str, session: &str) {
        if let Ok(mut v) = self.view.0.lock() {
            v.retain(|(n, h)| !(n == name && h.session.as_deref() == Some(session)));
        }
    }
}

/// One host's starts.
struct HostLaunch {
    session: Option<SessionInfo>,
    section: HostSection,
    modules: CurrentModules,
    program: PathBuf,
    credentials: ChildCredentials,
    leaf: Option<PathBuf>,
    broker: Broker,
}

impl Launch for HostLaunch {
    type Channel = (UnixStream, OwnedFd);

    fn prepare(&mut self) -> std::io::Result<(ChildSpec, Self::Channel)> {
        let (ours, theirs) = UnixStream::pair()?;
        let (err_r, err_w) = warden_sys::pipe_cloexec()?;
        let cgroup_procs = match &self.leaf {
            Some(leaf) => {
                // Again at each start: an old reaper may have removed it.
                std::fs::create_dir_all(leaf)?;
                Some(OwnedFd::from(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(leaf.join("cgroup.procs"))?,
                ))
            }
            None => None,
        };
        let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = self
            .section
            .env
            .iter()
            .filter(|k| k.as_str() != "XDG_RUNTIME_DIR")
            .filter_map(|k| std::env::var_os(k).map(|v| (k.into(), v)))
            .collect();
        // At each start: only a directory that exists now.
        if let Some(dir) = self
            .session
            .as_ref()
            .and_then(|s| s.runtime_path.as_ref())
            .filter(|d| d.is_dir())
        {
            env.push(("XDG_RUNTIME_DIR".into(), dir.clone().into_os_string()));
        }
        let modules = current(&self.modules);
        let (landlock, seccomp) = sandbox(&self.section, &self.program, &modules)?;
        let mut args: Vec<std::ffi::OsString> =
            vec!["--name".into(), self.section.name.clone().into()];
        args.extend(modules.into_iter().map(PathBuf::into_os_string));
        Ok((
            ChildSpec {
                program: self.program.clone(),
                args,
                env,
                credentials: Some(self.credentials.clone()),
                channel: OwnedFd::from(theirs),
                stderr: Some(err_w),
                cgroup_procs,
                death_signal: libc_sigkill(),
                landlock,
                seccomp,
            },
            (ours, err_r),
        ))
    }

    fn started(&mut self, (ours, err_r): Self::Channel, pid: u32, pidfd: BorrowedFd<'_>) {
        warden_supervisor::forward_stderr(self.section.name.clone(), pid, err_r);
        let pidfd = match pidfd.try_clone_to_owned() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(host = %self.section.name, pid, "cannot keep the host's pidfd: {e}");
                return;
            }
        };
        let identity = PeerIdentity {
            uid: self.credentials.uid,
            gid: self.credentials.gid,
            groups: self.credentials.groups.clone(),
            pid,
            pidfd: Some(pidfd),
        };
        let (broker, name) = (self.broker.clone(), self.section.name.clone());
        let session = self.session.as_ref().map(|s| s.id.clone());
        tokio::spawn(async move {
            let adopted = match &session {
                None => broker.adopt(ours, identity, &name).await,
                Some(s) => broker.adopt_session_host(ours, identity, &name, s).await,
            };
            if let Err(e) = adopted {
                tracing::error!(host = %name, pid, "the broker cannot take the host's channel: {e}");
            }
        });
    }

    fn exited(&mut self, _pid: u32) {
        // What the host's modules started goes with it.
        if let Some(leaf) = &self.leaf {
            let _ = std::fs::write(leaf.join("cgroup.kill"), b"1");
        }
    }
}

fn libc_sigkill() -> i32 {
    9
}

/// What a host needs to read to start at all, granted with its
/// `read_paths` when Landlock is on (with its program and its modules):
/// the dynamic loader and the C library, in the system library
/// directories, the loader's cache, and `/dev/null` (the host puts it on
/// its stdin).
const HOST_NEEDS: [&str; 6] = [
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/etc/ld.so.cache",
    "/dev/null",
];

/// The host's Landlock ruleset (with `read_paths` or `write_paths`) and
/// seccomp filter (with `deny_syscalls`), built for one start.
fn sandbox(
    h: &HostSection,
    program: &Path,
    modules: &[PathBuf],
) -> std::io::Result<(Option<OwnedFd>, Option<warden_sys::SeccompProgram>)> {
    let landlock = if h.read_paths.is_empty() && h.write_paths.is_empty() {
        None
    } else {
        let mut read: Vec<PathBuf> = h.read_paths.clone();
        read.push(program.to_owned());
        read.extend(modules.iter().cloned());
        read.extend(h.module_dir.iter().cloned());
        read.extend(HOST_NEEDS.iter().map(PathBuf::from).filter(|p| p.exists()));
        let access = warden_sys::FsAccess {
            read,
            write: h.write_paths.clone(),
        };
        Some(warden_sys::landlock_ruleset(&access).map_err(std::io::Error::other)?)
    };
    let seccomp = if h.deny_syscalls.is_empty() {
        None
    } else {
        let mut nrs = Vec::new();
        for name in &h.deny_syscalls {
            nrs.push(warden_sys::syscall_number(name).map_err(std::io::Error::other)?);
        }
        Some(warden_sys::seccomp_deny_filter(&nrs))
    };
    Ok((landlock, seccomp))
}

/// `hosts.list`: every host with its state, pid, restarts and modules.
struct ListHosts(HostsView);

impl Handler for ListHosts {
    fn call(&self, _ctx: HandlerContext, _params: Payload) -> HandlerFuture {
        let rows: Vec<Value> = match self.0 .0.lock() {
            Ok(v) => v
                .iter()
                .map(|(name, h)| {
                    let s = h.status.borrow().clone();
                    json!({
                        "name": name,
                        "session": h.session,
                        "user": h.user,
                        "state": s.state.as_str(),
                        "pid": s.pid,
                        "restarts": s.restarts,
                        "last_exit": s.last_exit,
                        "next_start_in_ms": s.next_start_in.map(|d| d.as_millis() as u64),
                        "modules": current(&h.modules),
                        "module_dir": h.module_dir,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let answer = Payload::from_value(&json!({ "hosts": rows }))
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()));
        Box::pin(async move { answer })
    }
}

/// `hosts.restart {"name": NAME}`: starts a host again now (a failed one
/// too), forgetting its crashes.
struct RestartHost(HostsView);

impl Handler for RestartHost {
    fn call(&self, _ctx: HandlerContext, params: Payload) -> HandlerFuture {
        #[derive(serde::Deserialize)]
        struct P {
            name: String,
        }
        let answer = (|| {
            let p: P = params.parse().map_err(|e| {
                WireError::new(
                    ErrorCode::BadRequest,
                    format!("params must be {{\"name\": HOST}}: {e}"),
                )
            })?;
            let v = self
                .0
                 .0
                .lock()
                .map_err(|_| WireError::new(ErrorCode::Internal, "hosts state poisoned"))?;
            let named: Vec<&HostView> = v
                .iter()
                .filter(|(n, _)| *n == p.name)
                .map(|(_, h)| h)
                .collect();
            if named.is_empty() {
                let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    format!("no host is named {:?}; running: {names:?}", p.name),
                ));
            }
            // Every instance (one per session for a per-session host).
            let mut restarted = 0;
            for h in named {
                if h.status.borrow().state != HostState::Stopped && h.restart.restart() {
                    restarted += 1;
                }
            }
            if restarted == 0 {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    "the host is stopped (the broker is shutting down) or a command is already pending",
                ));
            }
            Payload::from_value(&json!({ "restarting": p.name }))
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
        })();
        Box::pin(async move { answer })
    }
}

/// `hosts.module {"host": NAME, "op": "load" | "unload" | "reload",
/// "module": PATH_OR_NAME}` (`wardenctl module`): changes the modules of
/// a running host. Needs the `module` action on the host's name besides
/// `call` on the method; every request is audited. A load names a file
/// from the host's `modules` or directly in its `module_dir`; the host
/// checks it again (root's, writable by nobody else, no symlink) and
/// loads a sealed copy. The host's current list is what it starts with
/// after a restart.
struct ModuleOp(HostsView);

impl Handler for ModuleOp {
    fn call(&self, ctx: HandlerContext, params: Payload) -> HandlerFuture {
        let view = self.0.clone();
        Box::pin(async move { module_op(&view, &ctx, &params).await })
    }

    fn description(&self) -> Option<&str> {
        Some("Loads, unloads or reloads a module in a child host (wardenctl module)")
    }
}

fn wire(code: ErrorCode, text: impl Into<String>) -> WireError {
    WireError::new(code, text)
}

async fn module_op(
    view: &HostsView,
    ctx: &HandlerContext,
    params: &Payload,
) -> Result<Payload, WireError> {
    #[derive(serde::Deserialize)]
    struct P {
        host: String,
        op: String,
        module: String,
    }
    let p: P = params.parse().map_err(|e| {
        wire(
            ErrorCode::BadRequest,
            format!("params must be {{\"host\": NAME, \"op\": \"load\"|\"unload\"|\"reload\", \"module\": PATH}}: {e}"),
        )
    })?;
    if !matches!(p.op.as_str(), "load" | "unload" | "reload") {
        return Err(wire(
            ErrorCode::BadRequest,
            format!("{:?} is not an operation: use load, unload or reload", p.op),
        ));
    }
    let action = format!("module.{}", p.op);
    let actor = warden::audit::Actor::of_caller(ctx);
    let audit = |rule: Option<&str>, result: &str, message: &str, extra: Value| {
        warden::audit::record(warden::audit::Record {
            actor: &actor,
            action: &action,
            target: json!([p.host, p.module]),
            rule,
            result,
            message,
            extra,
        });
    };
    let decision = ctx.decide(warden_policy::Action::Module, &p.host);
    let rule = decision.reason();
    if !decision.allowed {
        audit(Some(&rule), "denied", "module change denied", json!({}));
        return Err(wire(
            ErrorCode::Denied,
            format!(
                "uid {} may not change the modules of host {:?} ({rule}); it needs the `module` action on that host's name",
                ctx.caller.uid, p.host
            ),
        ));
    }
    let (modules, configured, module_dir) = {
        let v = view
            .0
            .lock()
            .map_err(|_| wire(ErrorCode::Internal, "hosts state poisoned"))?;
        let Some((_, h)) = v.iter().find(|(n, _)| *n == p.host) else {
            let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
            return Err(wire(
                ErrorCode::BadRequest,
                format!("no host is named {:?}; configured: {names:?}", p.host),
            ));
        };
        if h.session.is_some() {
            return Err(wire(
                ErrorCode::Unavailable,
                format!(
                    "{} is a per-session host: changing its modules at run time is not implemented yet (edit its [[host]] modules and restart the broker)",
                    p.host
                ),
            ));
        }
        (
            Arc::clone(&h.modules),
            h.configured.clone(),
            h.module_dir.clone(),
        )
    };
    if p.op == "load" {
        if let Err(why) = loadable(Path::new(&p.module), &configured, module_dir.as_deref()) {
            audit(
                Some(&rule),
                "refused",
                "module load refused",
                json!({ "why": why }),
            );
            return Err(wire(ErrorCode::Denied, why));
        }
    }
    let request = Payload::from_value(&json!({ "op": p.op, "module": p.module }))
        .map_err(|e| wire(ErrorCode::Internal, e.to_string()))?;
    let answer = ctx
        .broker
        .call_host(
            &p.host,
            warden_proto::HOST_MODULE_METHOD,
            request,
            warden::CallOptions::acting_for(ctx.caller.clone()),
        )
        .await;
    match &answer {
        Ok(result) => {
            let r: Value = result.parse().unwrap_or(Value::Null);
            if let (Some(path), Ok(mut list)) = (r["path"].as_str(), modules.lock()) {
                let path = PathBuf::from(path);
                match p.op.as_str() {
                    "load" if !list.contains(&path) => list.push(path),
                    "unload" => list.retain(|m| *m != path),
                    _ => {}
                }
            }
            audit(Some(&rule), "ok", "module changed", r);
        }
        Err(e) => audit(
            Some(&rule),
            "failed",
            "module change failed",
            json!({ "error": e.to_string() }),
        ),
    }
    answer
}

/// Whether `path` may be loaded into a host with these `modules` and
/// `module_dir`: one of the modules, or a file directly in the directory.
fn loadable(path: &Path, modules: &[PathBuf], module_dir: Option<&Path>) -> Result<(), String> {
    use std::path::Component;
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(format!(
            "{} is not an absolute path without `.` or `..`",
            path.display()
        ));
    }
    if modules.iter().any(|m| m == path) || (module_dir.is_some() && path.parent() == module_dir) {
        return Ok(());
    }
    Err(match module_dir {
        Some(d) => format!(
            "{} is neither one of the host's modules {modules:?} nor in its module_dir {}",
            path.display(),
            d.display()
        ),
        None => format!(
            "{} is not one of the host's modules {modules:?}, and the host has no module_dir",
            path.display()
        ),
    })
}

/// `hosts.session_call {"host": NAME, "session": ID, "method": M,
/// "params": P}`: the broker calls `M` in that session's instance of the
/// per-session host `NAME`, acting for the caller, and answers what the
/// host answers (seed 003: the service calls into a user's session over
/// the connection the session's process made, never an endpoint of the
/// user's). Administrators only in the embedded default; audited.
struct SessionCall;

impl Handler for SessionCall {
    fn call(&self, ctx: HandlerContext, params: Payload) -> HandlerFuture {
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct P {
                host: String,
                session: String,
                method: String,
                #[serde(default)]
                params: Value,
            }
            let p: P = params.parse().map_err(|e| {
                wire(
                    ErrorCode::BadRequest,
                    format!("params must be {{\"host\": NAME, \"session\": ID, \"method\": M, \"params\": P}}: {e}"),
                )
            })?;
            let inner = Payload::from_value(&p.params)
                .map_err(|e| wire(ErrorCode::BadRequest, e.to_string()))?;
            let answer = ctx
                .broker
                .call_session_host(
                    &p.host,
                    &p.session,
                    &p.method,
                    inner,
                    warden::CallOptions::acting_for(ctx.caller.clone()),
                )
                .await;
            warden::audit::record(warden::audit::Record {
                actor: &warden::audit::Actor::of_caller(&ctx),
                action: "hosts.session_call",
                target: json!([p.host, p.session, p.method]),
                rule: None,
                result: if answer.is_ok() { "ok" } else { "failed" },
                message: "call into a user's session host",
                extra: json!({}),
            });
            answer
        })
    }

    fn description(&self) -> Option<&str> {
        Some("Calls a method in one session's instance of a per-session host")
    }
}

/// Registers `hosts.list`, `hosts.restart`, `hosts.module` and
/// `hosts.session_call`.
pub fn register(builder: BrokerBuilder, view: &HostsView) -> anyhow::Result<BrokerBuilder> {
    builder
        .handler("hosts.list", ListHosts(view.clone()))
        .context("registering hosts.list")?
        .handler("hosts.restart", RestartHost(view.clone()))
        .context("registering hosts.restart")?
        .handler("hosts.module", ModuleOp(view.clone()))
        .context("registering hosts.module")?
        .handler("hosts.session_call", SessionCall)
        .context("registering hosts.session_call")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_modules_and_module_dir_entries_are_loadable() {
        let mods = [PathBuf::from("/usr/lib/warden/modules/a.so")];
        let dir = Some(Path::new("/usr/lib/warden/extra"));
        assert!(loadable(&mods[0], &mods, None).is_ok());
        assert!(loadable(Path::new("/usr/lib/warden/extra/b.so"), &mods, dir).is_ok());
        for bad in [
            "/usr/lib/warden/extra/sub/b.so",
            "/usr/lib/warden/extra/../modules/x.so",
            "/tmp/b.so",
            "b.so",
            "/usr/lib/warden/extra",
        ] {
            assert!(loadable(Path::new(bad), &mods, dir).is_err(), "{bad}");
        }
        let e = loadable(Path::new("/tmp/b.so"), &mods, None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("has no module_dir"), "{e}");
    }
}
