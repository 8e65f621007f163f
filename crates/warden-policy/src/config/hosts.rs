//! The `[[host]]` sections: child hosts the broker starts and supervises.
//!
//! A host is a process the broker spawns as the configured account, with
//! nothing inherited but an environment allowlist and its channel; it
//! loads the listed modules and serves their methods. Rules name a host's
//! connection with `hosts = ["NAME"]` (its uid never grants anything), and
//! the `module` action (names: host names) decides who may load, unload
//! or reload modules in it. See docs/config.md.

use std::collections::HashSet;
use std::path::{Component, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};
use crate::policy::Resolver;

/// Where a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostScope {
    /// One instance for the whole system.
    System,
    /// One instance per logind session of a class in `[sessions].classes`,
    /// running as that session's user.
    Session,
}

/// The `[sessions]` section: where logind is, and which sessions get
/// session hosts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// The D-Bus address of the bus logind is on.
    #[serde(default = "default_bus")]
    pub bus: String,
    /// Session classes (logind's `Class`) that get session hosts.
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
}

impl Default for SessionsSection {
    fn default() -> Self {
        SessionsSection {
            bus: default_bus(),
            classes: default_classes(),
        }
    }
}

fn default_bus() -> String {
    "unix:path=/run/dbus/system_bus_socket".into()
}

fn default_classes() -> Vec<String> {
    vec!["user".into()]
}

/// A validated `[[host]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSection {
    /// Its name (one name segment), unique among hosts.
    pub name: String,
    /// Where it runs.
    pub scope: HostScope,
    /// The account a system host runs as (`root` only when written so);
    /// `None` for a session host, which runs as its session's user.
    pub user: Option<String>,
    /// The module files it loads (absolute paths; each is checked again
    /// when loaded: root's, writable by nobody else).
    pub modules: Vec<PathBuf>,
    /// A directory whose modules (its direct entries, each checked like
    /// `modules`) may also be loaded at run time (`wardenctl module load`).
    pub module_dir: Option<PathBuf>,
    /// Environment variables copied from the broker's environment.
    pub env: Vec<String>,
    /// The delay before the first restart after an exit.
    pub restart_delay_ms: u64,
    /// The longest restart delay.
    pub restart_max_delay_ms: u64,
    /// This many exits within `crash_window_ms` mark the host failed.
    pub crash_limit: u32,
    /// See `crash_limit`.
    pub crash_window_ms: u64,
    /// A run this long resets the restart delay.
    pub stable_after_ms: u64,
    /// Time between SIGTERM and SIGKILL when the host is stopped.
    pub stop_timeout_ms: u64,
    /// Landlock: paths the host may read and execute beneath (with what it
    /// needs to start: see docs/config.md). With `write_paths` empty too:
    /// no Landlock.
    pub read_paths: Vec<PathBuf>,
    /// Landlock: paths the host may also write beneath.
    pub write_paths: Vec<PathBuf>,
    /// System calls refused with `EPERM` (seccomp), by x86-64 name.
    pub deny_syscalls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    name: Spanned<String>,
    #[serde(default)]
    scope: Option<Spanned<String>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    modules: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    module_dir: Option<Spanned<String>>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    #[serde(default)]
    restart_delay_ms: Option<Spanned<u64>>,
    #[serde(default)]
    restart_max_delay_ms: Option<Spanned<u64>>,
    #[serde(default)]
    crash_limit: Option<Spanned<u32>>,
    #[serde(default)]
    crash_window_ms: Option<Spanned<u64>>,
    #[serde(default)]
    stable_after_ms: Option<Spanned<u64>>,
    #[serde(default)]
    stop_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    read_paths: Vec<Spanned<String>>,
    #[serde(default)]
    write_paths: Vec<Spanned<String>>,
    #[serde(default)]
    deny_syscalls: Vec<Spanned<String>>,
}

/// A valid name segment: what a host (or role) name must be.
pub(super) fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_env_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

pub(super) fn parse_hosts(
    raw: Vec<Spanned<RawHost>>,
    ctx: &Ctx<'_>,
    resolver: &dyn Resolver,
) -> Result<Vec<HostSection>, ConfigError> {
    let mut seen = HashSet::new();
    let mut hosts = Vec::new();
    for (i, h) in raw.into_iter().enumerate() {
        let h = h.into_inner();
        let key = |k: &str| format!("host[{}].{k}", i + 1);
        let name = h.name.get_ref().clone();
        if !is_segment(&name) {
            return Err(ctx.err(
                Some(h.name.span()),
                key("name"),
                format!(
                    "{name:?} is not a valid host name: 1 to 64 ASCII letters, digits, '_' or '-'"
                ),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(ctx.err(
                Some(h.name.span()),
                key("name"),
                format!("a host named {name:?} is already configured; host names are unique"),
            ));
        }
        let scope = match h.scope.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("system") => HostScope::System,
            Some("session") => HostScope::Session,
            Some(other) => {
                return Err(ctx.err(
                    h.scope.as_ref().map(|s| s.span()),
                    key("scope"),
                    format!("{other:?} is not a scope; use \"system\" or \"session\""),
                ))
            }
        };
        let user = match (scope, &h.user) {
            (HostScope::System, None) => {
                return Err(ctx.err(
                    Some(h.name.span()),
                    key("user"),
                    "a system host needs `user`, the account it runs as",
                ))
            }
            (HostScope::System, Some(u)) => {
                let user = u.get_ref().clone();
                if resolver.user_uid(&user).is_none() {
                    return Err(ctx.err(
                        Some(u.span()),
                        key("user"),
                        format!(
                            "user {user:?} does not exist; create the account the host runs as \
                             (e.g. useradd --system --no-create-home --shell /usr/sbin/nologin {user})"
                        ),
                    ));
                }
                Some(user)
            }
            (HostScope::Session, Some(u)) => {
                return Err(ctx.err(
                    Some(u.span()),
                    key("user"),
                    "a session host runs as its session's user: leave `user` out",
                ))
            }
            (HostScope::Session, None) => None,
        };
        let paths = |list: &[Spanned<String>], k: &str| -> Result<Vec<PathBuf>, ConfigError> {
            let mut out = Vec::new();
            for m in list {
                let p = PathBuf::from(m.get_ref());
                let plain = p.is_absolute()
                    && p.components()
                        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
                if !plain {
                    return Err(ctx.err(
                        Some(m.span()),
                        key(k),
                        format!(
                            "{:?} is not an absolute path without `.` or `..`",
                            m.get_ref()
                        ),
                    ));
                }
                out.push(p);
            }
            Ok(out)
        };
        let modules = paths(h.modules.get_ref(), "modules")?;
        let module_dir = match &h.module_dir {
            None => None,
            Some(d) => paths(std::slice::from_ref(d), "module_dir")?.pop(),
        };
        let read_paths = paths(&h.read_paths, "read_paths")?;
        let write_paths = paths(&h.write_paths, "write_paths")?;
        let mut deny_syscalls = Vec::new();
        for d in &h.deny_syscalls {
            let n = d.get_ref();
            if n.parse::<syscalls::Sysno>().is_err() {
                return Err(ctx.err(
                    Some(d.span()),
                    key("deny_syscalls"),
                    format!("{n:?} is not an x86-64 system call name (as in syscall(2))"),
                ));
            }
            if matches!(n.as_str(), "execve" | "execveat") {
                return Err(ctx.err(
                    Some(d.span()),
                    key("deny_syscalls"),
                    format!(
                        "{n} cannot be denied: the filter is installed before the host itself is started by exec"
                    ),
                ));
            }
            deny_syscalls.push(n.clone());
        }
        if modules.is_empty() {
            return Err(ctx.err(
                Some(h.modules.span()),
                key("modules"),
                "a host needs at least one module",
            ));
        }
        let mut env = Vec::new();
        for e in &h.env {
            let n = e.get_ref();
            if !is_env_name(n) {
                return Err(ctx.err(
                    Some(e.span()),
                    key("env"),
                    format!("{n:?} is not an environment variable name"),
                ));
            }
            if n.starts_with("LD_") {
                return Err(ctx.err(
                    Some(e.span()),
                    key("env"),
                    format!("{n} changes which code the host loads; LD_* variables are never passed to hosts"),
                ));
            }
            env.push(n.clone());
        }
        let num = |v: &Option<Spanned<u64>>,
                   default: u64,
                   min: u64,
                   max: u64,
                   k: &str|
         -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) if (min..=max).contains(s.get_ref()) => Ok(*s.get_ref()),
                Some(s) => Err(ctx.err(
                    Some(s.span()),
                    key(k),
                    format!("{} is out of range ({min} to {max})", s.get_ref()),
                )),
            }
        };
        let restart_delay_ms = num(&h.restart_delay_ms, 250, 10, 600_000, "restart_delay_ms")?;
        let restart_max_delay_ms = num(
            &h.restart_max_delay_ms,
            30_000,
            restart_delay_ms,
            3_600_000,
            "restart_max_delay_ms",
        )?;
        let crash_limit = match &h.crash_limit {
            None => 5,
            Some(s) if (1..=1000).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                return Err(ctx.err(
                    Some(s.span()),
                    key("crash_limit"),
                    format!("{} is out of range (1 to 1000)", s.get_ref()),
                ))
            }
        };
        hosts.push(HostSection {
            name,
            scope,
            user,
            modules,
            module_dir,
            env,
            restart_delay_ms,
            restart_max_delay_ms,
            crash_limit,
            crash_window_ms: num(
                &h.crash_window_ms,
                60_000,
                100,
                86_400_000,
                "crash_window_ms",
            )?,
            stable_after_ms: num(&h.stable_after_ms, 10_000, 0, 86_400_000, "stable_after_ms")?,
            stop_timeout_ms: num(&h.stop_timeout_ms, 5_000, 0, 600_000, "stop_timeout_ms")?,
            read_paths,
            write_paths,
            deny_syscalls,
        });
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use crate::{Action, Caller, Config, StaticResolver};

    fn parse(text: &str) -> Result<Config, crate::ConfigError> {
        let r = StaticResolver::default()
            .user("wdn-agent", 4242)
            .user("root", 0);
        Config::parse(text, "t.toml", &r)
    }

    const HOST: &str = r#"
[[host]]
name = "agent"
user = "wdn-agent"
modules = ["/usr/lib/warden/modules/libwarden_example_echo.so"]
env = ["LANG", "TZ"]
crash_limit = 3
"#;

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_host_section_is_read_with_its_defaults() {
        let c = parse(HOST).unwrap_or_else(|e| panic!("{e}"));
        let h = &c.hosts[0];
        assert_eq!(h.name, "agent");
        assert_eq!(h.user.as_deref(), Some("wdn-agent"));
        assert_eq!(h.env, ["LANG", "TZ"]);
        assert_eq!(h.crash_limit, 3);
        assert_eq!(h.restart_delay_ms, 250);
        assert_eq!(h.stop_timeout_ms, 5_000);
        assert_eq!(h.module_dir, None);
        assert_eq!(h.scope, crate::HostScope::System);
        assert_eq!(c.sessions, crate::SessionsSection::default());
        let session = HOST.replace("user = \"wdn-agent\"\n", "scope = \"session\"\n");
        let c = parse(&format!(
            "{session}[sessions]\nbus = \"unix:path=/run/t.sock\"\nclasses = [\"user\", \"greeter\"]\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.hosts[0].scope, crate::HostScope::Session);
        assert_eq!(c.hosts[0].user, None);
        assert_eq!(c.sessions.classes, ["user", "greeter"]);
        assert_eq!(c.sessions.bus, "unix:path=/run/t.sock");
        for (bad, needle) in [
            ("[sessions]\nclasses = []\n", "at least one session class"),
            (
                "[sessions]\nbus = \"tcp:host=x\"\n",
                "not a local D-Bus address",
            ),
        ] {
            let e = match parse(&format!("{session}{bad}")) {
                Ok(_) => panic!("accepted {bad}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(needle), "{e}");
        }
        let c = parse(&format!("{HOST}module_dir = \"/usr/lib/warden/modules\"\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.hosts[0].module_dir.as_deref(),
            Some(std::path::Path::new("/usr/lib/warden/modules"))
        );
        assert!(parse("").unwrap_or_else(|e| panic!("{e}")).hosts.is_empty());
    }

    #[test]
    fn bad_host_sections_are_refused_with_file_line_and_key() {
        let dup = format!("{HOST}{HOST}");
        for (text, needle) in [
            (dup.as_str(), "already configured"),
            (
                &HOST.replace("agent\"", "a.b\"") as &str,
                "not a valid host name",
            ),
            (
                &HOST.replace("wdn-agent", "nosuchuser"),
                "does not exist; create the account",
            ),
            (
                &HOST.replace("\"LANG\"", "\"LD_PRELOAD\""),
                "LD_* variables are never passed",
            ),
            (
                &HOST.replace("/usr/lib/warden/modules/", "modules/"),
                "not an absolute path",
            ),
            (&HOST.replace("/modules/", "/../"), "not an absolute path"),
            (&format!("{HOST}scope = \"session\"\n"), "leave `user` out"),
            (&HOST.replace("user = \"wdn-agent\"\n", ""), "needs `user`"),
            (&format!("{HOST}seccomp = 1\n"), "unknown field"),
            (
                &format!("{HOST}deny_syscalls = [\"nosuchcall\"]\n"),
                "not an x86-64 system call",
            ),
            (
                &format!("{HOST}deny_syscalls = [\"execve\"]\n"),
                "cannot be denied",
            ),
            (
                &format!("{HOST}read_paths = [\"etc\"]\n"),
                "not an absolute path",
            ),
            (
                &format!("{HOST}module_dir = \"/usr/lib/../tmp\"\n"),
                "not an absolute path",
            ),
        ] {
            let e = err(text);
            assert!(
                e.contains(needle) && e.starts_with("t.toml:"),
                "{needle:?}: {e}"
            );
            assert!(e.contains("host"), "{e}");
        }
        let e = err(&format!(
            "{HOST}[[rule]]\nactions = [\"provide\"]\nnames = [\"x.**\"]\nhosts = [\"agnet\"]\n"
        ));
        assert!(e.contains("no [[host]] is named \"agnet\""), "{e}");
    }

    #[test]
    fn a_host_connection_is_matched_by_hosts_never_by_its_uid() {
        let c = parse(&format!(
            "{}{}",
            HOST.replace("wdn-agent", "root"),
            r#"
[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["agent"]

[[rule]]
actions = ["call", "provide", "module"]
names = ["**"]
uids = [0]
"#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        // Even running as root, the host's connection is only the host.
        let host = Caller {
            uid: 0,
            gid: 0,
            groups: vec![],
            host: Some("agent".into()),
            role: None,
        };
        let root = Caller {
            uid: 0,
            gid: 0,
            groups: vec![],
            host: None,
            role: None,
        };
        assert!(
            c.policy
                .decide(&host, Action::Provide, "example.echo")
                .allowed
        );
        assert!(!c.policy.decide(&host, Action::Provide, "net.vpn").allowed);
        assert!(!c.policy.decide(&host, Action::Module, "agent").allowed);
        assert!(!c.policy.is_admin(&host));
        assert!(c.policy.is_admin(&root));
        assert!(c.policy.decide(&root, Action::Module, "agent").allowed);
        // Another host of the same name elsewhere is not a thing; a
        // connection of a host not named is not matched.
        let other = Caller {
            host: Some("other".into()),
            ..host
        };
        assert!(
            !c.policy
                .decide(&other, Action::Provide, "example.echo")
                .allowed
        );
    }
}
