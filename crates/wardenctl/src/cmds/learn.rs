//! `wardenctl learn`: run a command (or watch a running process) under the
//! broker's learning-mode capture and report what it was denied.
//!
//! Capture from the first instruction: wardenctl finds the command's
//! program (the `PATH` search, done here, before any capture, so its
//! failed probes are not the command's denials), starts a helper (itself,
//! `wardenctl learn-exec`) that waits on a pipe, asks the broker to capture
//! the helper's pid, then lets the helper exec the program by its path.
//! The helper is already tracked when it execs, so nothing the command
//! does escapes the capture, and the command runs as the calling user with
//! wardenctl's environment, terminal, stdin, stdout and working directory.
//!
//! stdout belongs to the command: wardenctl writes nothing there. The
//! report (text, or JSON with `--json`) and errors go to stderr, or the
//! report to `--output FILE`; a profile (`--format landlock-json|systemd`)
//! only to `--output FILE`, written under a fresh name in the same
//! directory and renamed into place (no planted symlink is followed).

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use warden_client::{Client, Event as ClientEvent};
use warden_learn::profile::LandlockProfile;
use warden_learn::report::Report;
use warden_learn::{Event, EVENTS_TOPIC};

use crate::error::Error;

/// What `learn` writes (to stderr, or to `--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnFormat {
    /// The denials, grouped (or the full event list with --json).
    Report,
    /// A Landlock ruleset for the command (JSON; --verify takes it).
    LandlockJson,
    /// systemd unit sandboxing directives.
    Systemd,
}

impl LearnFormat {
    fn flag(self) -> &'static str {
        match self {
            LearnFormat::Report => "report",
            LearnFormat::LandlockJson => "landlock-json",
            LearnFormat::Systemd => "systemd",
        }
    }
}

/// Options of `wardenctl learn`.
#[derive(Debug)]
pub struct LearnArgs<'a> {
    pub pid: Option<u32>,
    pub duration: Option<Duration>,
    pub format: LearnFormat,
    pub output: Option<&'a Path>,
    pub verify: Option<&'a Path>,
    pub command: &'a [String],
    pub json: bool,
}

/// `wardenctl learn-exec`: in the helper process. Waits for the gate,
/// applies the Landlock profile if any, then becomes the command.
/// `command[0]` is the program's path (resolved by `learn`), `arg0` the
/// name the command was given as.
pub fn exec_helper(
    gate_fd: i32,
    landlock: Option<&Path>,
    arg0: Option<&str>,
    command: &[String],
) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return Err(Error::capture("no command given"));
    };
    // Read the profile before waiting: once the gate opens, the capture
    // is running and only the command's own work should show.
    let profile = landlock
        .map(read_profile)
        .transpose()
        .map_err(Error::capture)?;
    match warden_sys::wait_for_gate(gate_fd) {
        Ok(true) => {}
        Ok(false) => return Ok(ExitCode::from(127)),
        Err(e) => {
            return Err(Error::capture(format!(
                "internal: the gate pipe failed: {e}"
            )))
        }
    }
    if let Some(p) = &profile {
        if let Err(e) = apply_landlock(p) {
            return Err(Error::capture(format!(
                "cannot apply the Landlock profile: {e}"
            )));
        }
    }
    let err = std::process::Command::new(program)
        .arg0(arg0.unwrap_or(program))
        .args(args)
        .exec();
    eprintln!("wardenctl learn: cannot run {program}: {err}");
    Ok(ExitCode::from(127))
}

fn read_profile(path: &Path) -> Result<LandlockProfile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the profile {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a Landlock profile from `wardenctl learn --format landlock-json`: {e}",
            path.display()
        )
    })
}

fn right(name: &str) -> Option<landlock::AccessFs> {
    use landlock::AccessFs as A;
    Some(match name {
        "execute" => A::Execute,
        "write_file" => A::WriteFile,
        "read_file" => A::ReadFile,
        "read_dir" => A::ReadDir,
        "remove_dir" => A::RemoveDir,
        "remove_file" => A::RemoveFile,
        "make_char" => A::MakeChar,
        "make_dir" => A::MakeDir,
        "make_reg" => A::MakeReg,
        "make_sock" => A::MakeSock,
        "make_fifo" => A::MakeFifo,
        "make_block" => A::MakeBlock,
        "make_sym" => A::MakeSym,
        "refer" => A::Refer,
        "truncate" => A::Truncate,
        _ => return None,
    })
}

/// Restricts this process (and what it execs) to the profile.
fn apply_landlock(p: &LandlockProfile) -> Result<(), String> {
    use landlock::{
        BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    };
    let mut handled: BitFlags<landlock::AccessFs> = BitFlags::empty();
    for h in &p.handled {
        handled |= right(h).ok_or_else(|| format!("unknown access right {h:?}"))?;
    }
    let mut ruleset = Ruleset::default()
        .handle_access(handled)
        .and_then(|r| r.create())
        .map_err(|e| e.to_string())?;
    for rule in &p.rules {
        let mut access: BitFlags<landlock::AccessFs> = BitFlags::empty();
        for a in &rule.access {
            access |= right(a).ok_or_else(|| format!("unknown access right {a:?}"))?;
        }
        let Ok(fd) = PathFd::new(&rule.path) else {
            // The path does not exist (any more): nothing to grant.
            continue;
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("rule for {}: {e}", rule.path))?;
    }
    let status = ruleset.restrict_self().map_err(|e| e.to_string())?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("this kernel does not enforce Landlock".into());
    }
    Ok(())
}

/// Reads the session's events until its end record.
async fn collect(client: &Client, session: u64, report: &mut Report) -> Result<(), Error> {
    while !pump(client, client.next_event().await, session, report)?.ended {}
    Ok(())
}

/// Where the command's program is, found as `execvp` would find it: a
/// name with a `/` as it is, otherwise the first executable regular file
/// of that name in `PATH` (an empty entry is the working directory).
/// Done before the capture starts, so that its probes (a `PATH` directory
/// you may not search, a file of that name you may not execute) are not
/// reported as the command's denials.
///
/// # Errors
/// The exit status and message a shell gives: 127 when no file of that
/// name is in `PATH`, 126 when there is one but none you may execute.
pub fn find_program(name: &str, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, (u8, String)> {
    if name.is_empty() {
        return Err((127, "the command name is empty".into()));
    }
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = path.unwrap_or_else(|| std::ffi::OsStr::new(DEFAULT_PATH));
    let mut refused: Option<PathBuf> = None;
    for dir in std::env::split_paths(path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(name);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => {
                if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(candidate);
                }
                refused.get_or_insert(candidate);
            }
            _ => {}
        }
    }
    Err(match refused {
        Some(p) => (
            126,
            format!(
                "cannot run {name}: {} is not executable by you, and no other {name} in PATH is",
                p.display()
            ),
        ),
        None => (
            127,
            format!("cannot run {name}: command not found in PATH (give its path, e.g. ./{name})"),
        ),
    })
}

/// `PATH` when the environment has none (glibc's `execvp` default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The `--json` error object of a failed `learn`: `{"error": {"code",
/// "message", "exit"}}`, `code` the broker's error code when the broker
/// answered with one (`denied`, `limit_exceeded`, `unavailable`, ...),
/// else `local` (wardenctl's own step failed: a bad flag, a file, the
/// connection); `message` the full text wardenctl prints.
pub fn error_object(e: &Error) -> Value {
    let code = match e {
        Error::Capture {
            source: Some(warden_client::CallError::Remote(w)),
            ..
        } => Some(w.code.as_str()),
        _ => e.wire().map(|w| w.code.as_str()),
    };
    json!({ "error": {
        "code": code.unwrap_or("local"),
        "message": e.to_string(),
        "exit": e.exit_code(),
    }})
}

/// Prints an error of `learn` on stderr: with `--json` the error object
/// (one line, [`error_object`]) first, then the message; stdout is the
/// command's.
pub fn print_error(e: &Error, json: bool) {
    if json {
        let v = error_object(e);
        eprintln!(
            "{}",
            serde_json::to_string(&v).unwrap_or_else(|_| v.to_string())
        );
    }
    match e {
        Error::Capture { .. } | Error::CaptureClosed(_) => eprintln!("wardenctl learn: {e}"),
        _ => match e.wire() {
            Some(w) => eprintln!("error: {}: {}", w.code, crate::term::escape(&w.message)),
            None => eprintln!("error: {e}"),
        },
    }
}

/// Runs `learn`. `client` is connected.
pub async fn run(client: &Client, args: &LearnArgs<'_>) -> Result<ExitCode, Error> {
    if args.format != LearnFormat::Report && args.output.is_none() {
        return Err(Error::Usage(format!(
            "--format {} writes a profile, and only to a file: add --output FILE (stdout is \
             the command's own)",
            args.format.flag()
        )));
    }
    if let Some(path) = args.output {
        check_output(path)?;
    }
    let wants_profile = args.format != LearnFormat::Report;
    let mut report = Report::default();
    let (status, label, program) = if let Some(pid) = args.pid {
        attach(client, pid, args, wants_profile, &mut report).await?;
        (None, format!("pid {pid}"), None)
    } else {
        let Some(name) = args.command.first() else {
            return Err(Error::capture("give a command after --, or --pid PID"));
        };
        let program = match find_program(name, std::env::var_os("PATH").as_deref()) {
            Ok(p) => p,
            Err((code, msg)) => {
                eprintln!("wardenctl learn: {msg}");
                return Ok(ExitCode::from(code));
            }
        };
        let st = launch(client, args, &program, wants_profile, &mut report).await?;
        (Some(st), args.command.join(" "), Some(program))
    };
    let report_out = if args.json {
        let v = json!({
            "command": label,
            "exit_status": status.map(|st| {
                use std::os::unix::process::ExitStatusExt;
                json!({ "code": st.code(), "signal": st.signal() })
            }),
            "denials": report.groups(),
            "processes": report.processes,
            "events": report.events,
            "end": report.end.as_ref().map(|e| &e["end"]),
            "missed": report.missed,
        });
        serde_json::to_string(&v).unwrap_or_default() + "\n"
    } else {
        crate::term::escape_text(&report.render_text()).into_owned()
    };
    let profile = match args.format {
        LearnFormat::Report => None,
        LearnFormat::LandlockJson => {
            // Rules name absolute paths: the profile may be used elsewhere.
            let program = program
                .as_deref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
            let p = warden_learn::profile::landlock(&report, program.as_deref());
            let json = serde_json::to_string_pretty(&p)
                .map_err(|e| Error::capture(format!("internal: cannot encode the profile: {e}")))?;
            Some(json + "\n")
        }
        LearnFormat::Systemd => Some(
            crate::term::escape_text(&warden_learn::profile::systemd(&report, &label)).into_owned(),
        ),
    };
    match (profile, args.output) {
        (Some(p), Some(path)) => {
            write_output(path, &p)?;
            eprint!("{report_out}");
        }
        (None, Some(path)) => write_output(path, &report_out)?,
        (_, None) => eprint!("{report_out}"),
    }
    Ok(status.map_or(ExitCode::SUCCESS, exit_of))
}

/// Writes `text` to `path` for `--output`. A regular file (or none) is
/// replaced atomically: the text goes to a fresh file in the same
/// directory (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0644 less the umask),
/// which is then renamed over `path`, so a reader never sees half a
/// profile and a symlink planted at `path` is replaced, never followed.
/// A symlink already there is refused; a device or FIFO (`/dev/null`, a
/// pipe) is written in place (opened with `O_NOFOLLOW`).
///
/// # Errors
/// [`Error::Usage`] for a target that cannot be replaced (see
/// [`replace_target`]), [`Error::Io`] naming the file (both exit 2).
pub fn write_output(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |what: String| move |source| Error::Io { what, source };
    let nofollow = nix::fcntl::OFlag::O_NOFOLLOW.bits();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_fifo() => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nofollow)
                .open(path)
                .map_err(io(format!("cannot open {}", path.display())))?;
            return f
                .write_all(text.as_bytes())
                .map_err(io(format!("cannot write {}", path.display())));
        }
        _ => {}
    }
    let (dir, name) = replace_target(path)?;
    let cannot = |source| Error::Io {
        what: format!("cannot write {}", path.display()),
        source,
    };
    // A fresh name: another account may have put a file (or a symlink) at
    // any name it could guess; O_EXCL|O_NOFOLLOW refuses those, and the
    // next name is tried.
    let mut created = None;
    for attempt in 0..TMP_ATTEMPTS {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        // The first name is plain; later ones add the clock's nanoseconds,
        // which nobody can plant ahead of time.
        let salt = if attempt == 0 {
            0
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(attempt, |d| d.subsec_nanos())
        };
        tmp_name.push(format!(
            ".wardenctl-{}-{attempt}-{salt}.tmp",
            std::process::id()
        ));
        let tmp = dir.join(tmp_name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nofollow)
            .open(&tmp)
        {
            Ok(f) => {
                created = Some((f, tmp));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(cannot(e)),
        }
    }
    let Some((mut f, tmp)) = created else {
        return Err(cannot(std::io::Error::other(format!(
            "{TMP_ATTEMPTS} fresh names in {} were all taken",
            dir.display()
        ))));
    };
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // Ours: created above.
        let _ = std::fs::remove_file(&tmp);
        return Err(cannot(e));
    }
    Ok(())
}

/// The directory and file name `--output` replaces, checked before the
/// command runs so that a bad `--output` does not waste the capture.
///
/// # Errors
/// [`Error::Usage`] for a symlink, a directory, a path with no file name,
/// or a directory that does not exist.
fn replace_target(path: &Path) -> Result<(&Path, &std::ffi::OsStr), Error> {
    let usage = |why: &str| Error::Usage(format!("--output {}: {why}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(usage(
                "is a symbolic link; refusing to write through it (give the path of the file \
                 itself)",
            ))
        }
        Ok(m) if m.is_dir() => return Err(usage("is a directory; give a file name")),
        _ => {}
    }
    let Some(name) = path.file_name() else {
        return Err(usage("give a file name"));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(&format!(
            "the directory {} does not exist",
            dir.display()
        )));
    }
    Ok((dir, name))
}

/// Before the command runs: `--output` can be written.
fn check_output(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_fifo() => Ok(()),
        _ => replace_target(path).map(|_| ()),
    }
}

/// How many fresh temporary names `--output` tries before giving up.
const TMP_ATTEMPTS: u32 = 16;

fn exit_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        _ => ExitCode::from(1),
    }
}

async fn start_session(client: &Client, pid: u32, accesses: bool) -> Result<u64, Error> {
    let r = client
        .call_json("learn.start", json!({ "pid": pid, "accesses": accesses }))
        .await
        .map_err(|e| Error::capture_call("the broker refused the capture", e))?;
    let session = r["session"]
        .as_u64()
        .ok_or_else(|| Error::capture("the broker's learn.start answer has no session id"))?;
    client
        .call_json("learn.events", json!({ "session": session }))
        .await
        .map_err(|e| Error::capture_call("cannot stream the capture", e))?;
    Ok(session)
}

async fn stop_session(client: &Client, session: u64, report: &mut Report) -> Result<(), Error> {
    client
        .call_json("learn.stop", json!({ "session": session }))
        .await
        .map_err(|e| Error::capture_call("learn.stop failed", e))?;
    collect(client, session, report).await
}

/// `learn --pid`: capture a running process until Ctrl-C, `--duration`,
/// or its exit.
async fn attach(
    client: &Client,
    pid: u32,
    args: &LearnArgs<'_>,
    accesses: bool,
    report: &mut Report,
) -> Result<(), Error> {
    let session = start_session(client, pid, accesses).await?;
    let duration = args.duration.unwrap_or(Duration::MAX);
    eprintln!(
        "wardenctl learn: capturing process {pid} (session {session}); Ctrl-C to stop{}",
        args.duration
            .map(|d| format!(", or after {d:?}"))
            .unwrap_or_default()
    );
    let deadline = tokio::time::sleep(duration.min(Duration::from_secs(10 * 365 * 86400)));
    tokio::pin!(deadline);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut ctrl_c => break,
            ev = client.next_event() => {
                if pump(client, ev, session, report)?.exited == Some(pid) {
                    // The process exited: nothing more to see.
                    break;
                }
            }
        }
    }
    stop_session(client, session, report).await
}

/// What one frame of the stream brought.
#[derive(Debug, Default)]
struct Step {
    /// A process exited: its pid.
    exited: Option<u32>,
    /// The end record came: the stream is over.
    ended: bool,
}

/// Takes one frame of `session`'s stream into the report.
fn pump(
    client: &Client,
    ev: Option<ClientEvent>,
    session: u64,
    report: &mut Report,
) -> Result<Step, Error> {
    let mut step = Step::default();
    match ev {
        Some(ClientEvent::Event {
            topic,
            data,
            missed,
            ..
        }) if topic.as_str() == EVENTS_TOPIC => {
            report.missed += missed;
            let v: Value = data
                .parse()
                .map_err(|e| Error::capture(format!("undecodable event from the broker: {e}")))?;
            if v["session"].as_u64() != Some(session) {
                return Ok(step);
            }
            for e in v["events"].as_array().into_iter().flatten() {
                match serde_json::from_value::<Event>(e.clone()) {
                    Ok(ev) => {
                        if let Event::Exit { pid, .. } = &ev {
                            step.exited = Some(*pid);
                        }
                        report.add(ev);
                    }
                    Err(err) => eprintln!("wardenctl learn: skipped an event: {err}"),
                }
            }
            if v.get("end").is_some() {
                report.end = Some(v);
                step.ended = true;
            }
        }
        Some(ClientEvent::Lagged { missed }) => report.missed += missed,
        Some(ClientEvent::Event { .. }) => {}
        None => {
            return Err(Error::CaptureClosed(format!(
                "the connection to the broker closed during the capture{}",
                client
                    .last_error()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )))
        }
    }
    Ok(step)
}

/// `learn -- CMD`: start the helper, capture it, open the gate, wait.
async fn launch(
    client: &Client,
    args: &LearnArgs<'_>,
    program: &Path,
    accesses: bool,
    report: &mut Report,
) -> Result<std::process::ExitStatus, Error> {
    let Some((arg0, rest)) = args.command.split_first() else {
        return Err(Error::capture("give a command after --, or --pid PID"));
    };
    let me = std::env::current_exe()
        .map_err(|e| Error::capture(format!("cannot find wardenctl itself: {e}")))?;
    // The read end goes to the helper.
    let (gate_read, gate_write) = warden_sys::gate_pipe()
        .map_err(|e| Error::capture(format!("cannot create the gate pipe: {e}")))?;
    let mut cmd = std::process::Command::new(&me);
    cmd.arg("learn-exec")
        .arg("--gate-fd")
        .arg(gate_read.as_raw_fd().to_string());
    if let Some(p) = args.verify {
        cmd.arg("--landlock").arg(p);
    }
    cmd.arg("--arg0")
        .arg(arg0)
        .arg("--")
        .arg(program)
        .args(rest);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::capture(format!("cannot start {}: {e}", me.display())))?;
    drop(gate_read);
    // Ctrl-C goes to the command; wardenctl stays to report.
    let ignore_int = tokio::spawn(async {
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
        }
    });
    let pid = child.id();
    let session = match start_session(client, pid, accesses).await {
        Ok(s) => s,
        Err(e) => {
            // Closing the gate unopened makes the helper exit, not run.
            drop(gate_write);
            let _ = child.wait();
            ignore_int.abort();
            return Err(e);
        }
    };
    if let Err(e) = warden_sys::open_gate(gate_write) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::capture(format!("cannot start the command: {e}")));
    }
    let waiter = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(waiter);
    let status = loop {
        tokio::select! {
            st = &mut waiter => break st,
            // Keep the stream moving while the command runs.
            ev = client.next_event() => { pump(client, ev, session, report)?; }
        }
    };
    ignore_int.abort();
    let status = status
        .map_err(|e| Error::capture(format!("waiting for the command failed: {e}")))?
        .map_err(|e| Error::capture(format!("waiting for the command failed: {e}")))?;
    stop_session(client, session, report).await?;
    saw_the_command(report, pid)?;
    Ok(status)
}

/// A capture of `learn -- CMD` that recorded nothing at all did not see
/// the command: the helper was tracked before it ran, so its exec (or its
/// departure, or at least its exit) is always recorded when the capture
/// works. An empty report would claim "no denials"; say that the capture
/// failed instead.
fn saw_the_command(report: &Report, pid: u32) -> Result<(), Error> {
    let Some(end) = report.end.as_ref().map(|e| &e["end"]) else {
        return Ok(());
    };
    let count = |k: &str| end[k].as_u64().unwrap_or(0);
    if count("kernel_events") == 0 && count("lost_in_kernel") == 0 && report.events.is_empty() {
        return Err(Error::capture(format!(
            "the capture saw nothing of the command (pid {pid}), not even its exec or its \
             exit: the broker's eBPF side could not follow the process, so there is no report \
             (an empty one would wrongly say it was denied nothing)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(end: Value, events: Vec<Event>) -> Report {
        let mut r = Report::default();
        r.events = events;
        r.end = Some(json!({ "session": 1, "end": end }));
        r
    }

    #[test]
    fn a_capture_that_recorded_nothing_is_an_error_not_an_empty_report() {
        let blind = report(json!({"kernel_events": 0, "lost_in_kernel": 0}), vec![]);
        let err = saw_the_command(&blind, 42).err();
        let (msg, exit) = err
            .map(|e| (e.to_string(), e.exit_code()))
            .unwrap_or_default();
        assert!(msg.contains("saw nothing of the command (pid 42)"), "{msg}");
        assert_eq!(exit, crate::error::EXIT_REMOTE_ERROR);
        // Something was recorded, or lost: a real (if partial) capture.
        let seen = report(
            json!({"kernel_events": 2, "lost_in_kernel": 0}),
            vec![Event::Exit { pid: 42, status: 0 }],
        );
        assert!(saw_the_command(&seen, 42).is_ok());
        let lost = report(json!({"kernel_events": 0, "lost_in_kernel": 3}), vec![]);
        assert!(saw_the_command(&lost, 42).is_ok());
    }

    fn scratch(name: &str) -> std::io::Result<PathBuf> {
        let d = std::env::temp_dir().join(format!("wardenctl-learn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    #[test]
    fn the_program_is_found_in_path_skipping_what_cannot_run() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("path")?;
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::create_dir_all(&a)?;
        std::fs::create_dir_all(&b)?;
        // a/tool is not executable, b/tool is; a/dir-tool is a directory.
        std::fs::write(a.join("tool"), "#!/bin/sh\n")?;
        std::fs::write(b.join("tool"), "#!/bin/sh\n")?;
        std::fs::set_permissions(a.join("tool"), std::fs::Permissions::from_mode(0o644))?;
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755))?;
        let path = std::env::join_paths([d.join("missing"), a.clone(), b.clone()])
            .map_err(std::io::Error::other)?;
        let found = find_program("tool", Some(&path));
        let only_a = find_program("tool", Some(a.as_os_str()));
        let none = find_program("no-such-tool-here", Some(&path));
        let slash = find_program("./x/tool", Some(&path));
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(found, Ok(b.join("tool")));
        // Even for root: execute needs an x bit (access(2) says the same).
        let (code, msg) = only_a.err().unwrap_or_default();
        assert_eq!(code, 126, "{msg}");
        assert!(msg.contains("not executable"), "{msg}");
        let (code, msg) = none.err().unwrap_or_default();
        assert_eq!(code, 127, "{msg}");
        assert!(msg.contains("not found in PATH"), "{msg}");
        assert_eq!(slash, Ok(PathBuf::from("./x/tool")));
        Ok(())
    }

    #[test]
    fn output_replaces_the_file_and_never_writes_through_a_symlink() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("output")?;
        let out = d.join("profile.json");
        std::fs::write(&out, "old and longer than the new text")?;
        let first = write_output(&out, "new\n");
        let text = std::fs::read_to_string(&out)?;
        let mode = std::fs::metadata(&out)?.permissions().mode() & 0o7077;
        // A planted symlink to a file the victim owns.
        let victim = d.join("victim");
        std::fs::write(&victim, "precious")?;
        let link = d.join("link.json");
        std::os::unix::fs::symlink(&victim, &link)?;
        let through = write_output(&link, "overwritten");
        let victim_text = std::fs::read_to_string(&victim)?;
        let dir = write_output(&d, "x");
        let leftovers: Vec<String> = std::fs::read_dir(&d)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        let null = write_output(Path::new("/dev/null"), "to a device");
        // Names another account could guess are skipped, not written.
        let planted = d.join(format!(
            ".guess.json.wardenctl-{}-0-0.tmp",
            std::process::id()
        ));
        std::fs::write(&planted, "theirs")?;
        let beside = write_output(&d.join("guess.json"), "mine");
        let planted_text = std::fs::read_to_string(&planted)?;
        let guess_text = std::fs::read_to_string(d.join("guess.json"))?;
        let _ = std::fs::remove_dir_all(&d);
        assert!(first.is_ok(), "{first:?}");
        assert_eq!(text, "new\n");
        // 0644 less the umask: never group- or world-writable, no setuid.
        assert_eq!(mode & 0o7022, 0, "mode {mode:o}");
        let msg = through.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("symbolic link"), "{msg}");
        assert_eq!(victim_text, "precious");
        assert!(dir.is_err());
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(null.is_ok(), "{null:?}");
        assert!(beside.is_ok(), "{beside:?}");
        assert_eq!(
            (planted_text.as_str(), guess_text.as_str()),
            ("theirs", "mine")
        );
        Ok(())
    }
}
