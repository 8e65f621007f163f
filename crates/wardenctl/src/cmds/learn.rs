//! `wardenctl learn`: run a command (or watch a running process) under the
//! broker's learning-mode capture and report what it was denied.
//!
//! Capture from the first instruction: wardenctl starts a helper (itself,
//! `wardenctl learn-exec`) that waits on a pipe, asks the broker to capture
//! the helper's pid, then lets the helper exec the command. The helper is
//! already tracked when it execs, so nothing the command does escapes the
//! capture, and the command runs as the calling user with wardenctl's
//! environment, terminal and working directory.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use warden_client::{Client, Event as ClientEvent};
use warden_learn::profile::LandlockProfile;
use warden_learn::report::Report;
use warden_learn::{Event, EVENTS_TOPIC};

use crate::error::Error;

/// What `learn` prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnFormat {
    /// The denials, grouped (or the full event list with --json).
    Report,
    /// A Landlock ruleset for the command (JSON; --verify takes it).
    LandlockJson,
    /// systemd unit sandboxing directives.
    Systemd,
}

/// Options of `wardenctl learn`.
#[derive(Debug)]
pub struct LearnArgs<'a> {
    pub pid: Option<u32>,
    pub duration: Option<Duration>,
    pub format: LearnFormat,
    pub save_profile: Option<&'a Path>,
    pub verify: Option<&'a Path>,
    pub command: &'a [String],
    pub json: bool,
}

/// `wardenctl learn-exec`: in the helper process. Waits for the gate,
/// applies the Landlock profile if any, then becomes the command.
pub fn exec_helper(
    gate_fd: i32,
    landlock: Option<&Path>,
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
    let err = std::process::Command::new(program).args(args).exec();
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

/// Runs `learn`. `client` is connected.
pub async fn run(client: &Client, args: &LearnArgs<'_>) -> Result<ExitCode, Error> {
    let wants_profile = args.format != LearnFormat::Report || args.save_profile.is_some();
    let mut report = Report::default();
    let (status, label) = if let Some(pid) = args.pid {
        attach(client, pid, args, wants_profile, &mut report).await?;
        (None, format!("pid {pid}"))
    } else {
        let st = launch(client, args, wants_profile, &mut report).await?;
        (Some(st), args.command.join(" "))
    };
    if let Some(path) = args.save_profile {
        let p = warden_learn::profile::landlock(&report);
        let text = serde_json::to_string_pretty(&p).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            return Err(Error::capture(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        LearnFormat::Report if args.json => {
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
            let _ = writeln!(out, "{}", serde_json::to_string(&v).unwrap_or_default());
        }
        LearnFormat::Report => {
            let _ = write!(out, "{}", crate::term::escape_text(&report.render_text()));
        }
        LearnFormat::LandlockJson => {
            let p = warden_learn::profile::landlock(&report);
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&p).unwrap_or_default()
            );
            eprint!("{}", crate::term::escape_text(&report.render_text()));
        }
        LearnFormat::Systemd => {
            let text = warden_learn::profile::systemd(&report, &label);
            let _ = write!(out, "{}", crate::term::escape_text(&text));
            eprint!("{}", crate::term::escape_text(&report.render_text()));
        }
    }
    let _ = out.flush();
    Ok(status.map_or(ExitCode::SUCCESS, exit_of))
}

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
    accesses: bool,
    report: &mut Report,
) -> Result<std::process::ExitStatus, Error> {
    if args.command.is_empty() {
        return Err(Error::capture("give a command after --, or --pid PID"));
    }
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
    cmd.arg("--").args(args.command);
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
        Report {
            events,
            end: Some(json!({ "session": 1, "end": end })),
            ..Report::default()
        }
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
}
