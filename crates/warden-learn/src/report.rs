//! A capture, summarised: the denials grouped by what was denied and to
//! whom, the processes seen, and what the capture may have missed.
//!
//! A denial is reported once per program image: denials with the same
//! syscall, errno and path(s) by the same executable (the one the process
//! ran *when* it was denied) are one group, whatever their pids and
//! thread names. The group is named by the program's name at its exec
//! (`comm` right after `execve`), so a denial does not show twice because
//! a thread renamed itself or a `comm` changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::event::{Denial, Event};

/// Denials with the same syscall, errno, path(s) and program image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// How many times.
    pub count: u64,
    /// Syscall name.
    pub syscall: String,
    /// `EACCES` or `EPERM`.
    pub errno: String,
    /// The path, or for signals `pid N`, or `-`.
    pub target: String,
    /// The second path (rename, link).
    pub target2: Option<String>,
    /// The program that was denied (the executable its process ran at
    /// the time).
    pub exe: Option<String>,
    /// The program's name: `comm` at its exec, or, if its exec was not
    /// seen, the `comm` of the first denial.
    pub comm: String,
    /// Pids that were denied, first seen first.
    pub pids: Vec<u32>,
}

/// A process the capture saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Its program, when known.
    pub exe: Option<String>,
    /// Its last `comm`.
    pub comm: String,
    /// Its parent, when it was forked under the capture.
    pub parent: Option<u32>,
    /// Exit status (`code << 8 | signal`), once it exited.
    pub status: Option<i32>,
    /// Why it left the capture, if it did.
    pub left: Option<String>,
}

/// Everything a capture reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Processes by pid.
    pub processes: BTreeMap<u32, Process>,
    /// The end record (counters, losses), once the stream ended.
    pub end: Option<serde_json::Value>,
    /// Events the broker could not deliver in time (the `missed` count of
    /// the event frames).
    pub missed: u64,
    /// Executable → its `comm` at the first exec of it seen.
    #[serde(skip)]
    names: BTreeMap<String, String>,
}

impl Report {
    /// Adds one event. A denial the broker could not name the program of
    /// gets its process's program as known at this point of the stream
    /// (not a later exec's).
    pub fn add(&mut self, mut e: Event) {
        match &mut e {
            Event::Exec { pid, exe, comm } => {
                let p = self.processes.entry(*pid).or_default();
                p.exe.clone_from(exe);
                p.comm.clone_from(comm);
                if let Some(x) = exe {
                    self.names.entry(x.clone()).or_insert_with(|| comm.clone());
                }
            }
            Event::Fork { pid, child } => {
                let parent = self.processes.get(pid).cloned().unwrap_or_default();
                self.processes.insert(
                    *child,
                    Process {
                        exe: parent.exe,
                        comm: parent.comm,
                        parent: Some(*pid),
                        status: None,
                        left: None,
                    },
                );
            }
            Event::Exit { pid, status } => {
                self.processes.entry(*pid).or_default().status = Some(*status);
            }
            Event::Left { pid, reason } => {
                self.processes.entry(*pid).or_default().left = Some(reason.clone());
            }
            Event::Denial(d) => {
                let p = self.processes.entry(d.pid).or_default();
                if p.comm.is_empty() {
                    p.comm.clone_from(&d.comm);
                }
                if p.exe.is_none() {
                    p.exe.clone_from(&d.exe);
                }
                if d.exe.is_none() {
                    d.exe.clone_from(&p.exe);
                }
            }
            Event::Access(_) => {}
        }
        self.events.push(e);
    }

    /// The denials, in order.
    pub fn denials(&self) -> impl Iterator<Item = &Denial> {
        self.events.iter().filter_map(|e| match e {
            Event::Denial(d) => Some(d),
            _ => None,
        })
    }

    /// Denials grouped, in order of first appearance.
    pub fn groups(&self) -> Vec<Group> {
        let mut out: Vec<Group> = Vec::new();
        for d in self.denials() {
            let target = match (&d.path, d.target_pid) {
                (Some(p), _) => p.clone(),
                (None, Some(pid)) => format!("pid {pid}"),
                (None, None) => "-".to_owned(),
            };
            let exe = d.exe.clone();
            if let Some(g) = out.iter_mut().find(|g| {
                g.syscall == d.syscall
                    && g.errno == d.errno
                    && g.target == target
                    && g.target2 == d.path2
                    && g.exe == exe
            }) {
                g.count += 1;
                if !g.pids.contains(&d.pid) {
                    g.pids.push(d.pid);
                }
                continue;
            }
            out.push(Group {
                count: 1,
                syscall: d.syscall.clone(),
                errno: d.errno.clone(),
                target,
                target2: d.path2.clone(),
                comm: exe
                    .as_ref()
                    .and_then(|x| self.names.get(x))
                    .unwrap_or(&d.comm)
                    .clone(),
                exe,
                pids: vec![d.pid],
            });
        }
        out
    }

    /// The report for people.
    pub fn render_text(&self) -> String {
        let groups = self.groups();
        let total: u64 = groups.iter().map(|g| g.count).sum();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "learn: {total} denied operation{} ({} distinct) in {} process{}",
            if total == 1 { "" } else { "s" },
            groups.len(),
            self.processes.len(),
            if self.processes.len() == 1 { "" } else { "es" }
        );
        if !groups.is_empty() {
            let _ = writeln!(
                s,
                "{:>6}  {:<12} {:<7} {:<40} PROCESS",
                "COUNT", "SYSCALL", "ERRNO", "PATH"
            );
            for g in &groups {
                let target = match &g.target2 {
                    Some(t2) => format!("{} -> {t2}", g.target),
                    None => g.target.clone(),
                };
                let pids: Vec<String> = g.pids.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    s,
                    "{:>6}  {:<12} {:<7} {:<40} {} {} ({})",
                    g.count,
                    g.syscall,
                    g.errno,
                    target,
                    pids.join(","),
                    g.comm,
                    g.exe.as_deref().unwrap_or("?")
                );
            }
        }
        let _ = writeln!(s, "processes:");
        for (pid, p) in &self.processes {
            let _ = writeln!(
                s,
                "  {pid:>7}  {:<16} {}{}{}",
                p.comm,
                p.exe.as_deref().unwrap_or("?"),
                p.parent
                    .map(|pp| format!("  (child of {pp})"))
                    .unwrap_or_default(),
                match (&p.left, p.status) {
                    (Some(r), _) => format!("  left the capture: {r}"),
                    (None, Some(st)) if st & 0x7f == 0 => format!("  exit {}", (st >> 8) & 0xff),
                    (None, Some(st)) => format!("  killed by signal {}", st & 0x7f),
                    (None, None) => String::new(),
                }
            );
        }
        if let Some(end) = &self.end {
            let e = &end["end"];
            let lost = e["lost_in_kernel"].as_u64().unwrap_or(0)
                + e["lost_in_broker"].as_u64().unwrap_or(0)
                + self.missed;
            if lost > 0 {
                let _ = writeln!(
                    s,
                    "warning: {lost} events were lost (buffers full); the report is incomplete"
                );
            }
            let untracked = e["untracked_children"].as_u64().unwrap_or(0);
            if untracked > 0 {
                let _ = writeln!(
                    s,
                    "warning: {untracked} child process{} not followed (your share of the \
                     tracking table, max_tracked_per_uid, was full); what they did is missing",
                    if untracked == 1 { " was" } else { "es were" }
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(pid: u32, path: &str) -> Event {
        Event::Denial(Denial {
            time_ns: 0,
            pid,
            tid: pid,
            comm: "t".into(),
            exe: Some("/bin/t".into()),
            uid: 1000,
            syscall: "openat".into(),
            nr: 257,
            errno: "EACCES".into(),
            path: Some(path.into()),
            path2: None,
            path_note: None,
            target_pid: None,
            args: [0; 4],
        })
    }

    #[test]
    fn groups_count_repeats_and_keep_order() {
        let mut r = Report::default();
        r.add(denial(1, "/b"));
        r.add(denial(2, "/a"));
        r.add(denial(1, "/b"));
        let g = r.groups();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].target.as_str(), g[0].count), ("/b", 2));
        assert_eq!(g[1].target, "/a");
        let text = r.render_text();
        assert!(text.contains("3 denied operations (2 distinct)"), "{text}");
        assert!(text.contains("/bin/t"), "{text}");
    }

    #[test]
    fn losses_and_untracked_children_are_warned_about() {
        let mut r = Report::default();
        r.add(denial(1, "/a"));
        r.end = Some(
            serde_json::json!({"end": {"lost_in_kernel": 0, "lost_in_broker": 5,
            "untracked_children": 3}}),
        );
        let text = r.render_text();
        assert!(text.contains("5 events were lost"), "{text}");
        assert!(
            text.contains("3 child processes were not followed"),
            "{text}"
        );
    }

    #[test]
    fn a_denial_is_one_group_per_program_image_named_at_exec() {
        let mut r = Report::default();
        r.add(Event::Exec {
            pid: 1,
            exe: Some("/bin/t".into()),
            comm: "t".into(),
        });
        r.add(denial(1, "/etc/shadow"));
        // The same denial from a thread that renamed itself.
        let Event::Denial(mut d) = denial(1, "/etc/shadow") else {
            return;
        };
        d.comm = "worker-3".into();
        d.tid = 5;
        r.add(Event::Denial(d));
        let g = r.groups();
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!((g[0].count, g[0].comm.as_str()), (2, "t"));
        // Before and after an exec: two programs, each named as itself.
        let mut r = Report::default();
        let Event::Denial(mut before) = denial(2, "/x") else {
            return;
        };
        before.exe = None;
        before.comm = "launcher".into();
        r.add(Event::Exec {
            pid: 2,
            exe: Some("/bin/launcher".into()),
            comm: "launcher".into(),
        });
        r.add(Event::Denial(before.clone()));
        r.add(Event::Exec {
            pid: 2,
            exe: Some("/bin/t".into()),
            comm: "t".into(),
        });
        before.comm = "t".into();
        r.add(Event::Denial(before));
        let g = r.groups();
        let progs: Vec<(Option<&str>, &str)> = g
            .iter()
            .map(|g| (g.exe.as_deref(), g.comm.as_str()))
            .collect();
        assert_eq!(
            progs,
            vec![(Some("/bin/launcher"), "launcher"), (Some("/bin/t"), "t")]
        );
    }

    #[test]
    fn forks_inherit_the_program() {
        let mut r = Report::default();
        r.add(Event::Exec {
            pid: 1,
            exe: Some("/bin/sh".into()),
            comm: "sh".into(),
        });
        r.add(Event::Fork { pid: 1, child: 2 });
        r.add(Event::Exit {
            pid: 2,
            status: 3 << 8,
        });
        assert_eq!(r.processes[&2].exe.as_deref(), Some("/bin/sh"));
        assert!(r.render_text().contains("exit 3"));
    }
}
