//! The configuration file: TOML text → validated [`Config`].
//!
//! Parsing is strict: unknown sections and keys are errors, every value is
//! range-checked, and every error names the file, line, column and key so an
//! operator can fix it without guessing. The schema is documented in
//! `docs/config.md`.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

mod hosts;
mod invitations;

pub use hosts::{HostScope, HostSection, SessionsSection};
pub use invitations::InvitationsSection;

use crate::action::{Action, Effect};
use crate::pattern::NamePattern;
use crate::policy::{Policy, Principals, Resolver, Rule};

/// The embedded default configuration (`wardend --print-default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The `source` of the embedded default, in errors and rule references.
pub const EMBEDDED_SOURCE: &str = "<embedded default>";

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// 1-based line (0 if the error is not tied to a place in the file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, e.g. `limits.max_frame_bytes` or `rule[2].names[0]`.
    pub key: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

/// What the broker does with a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowSubscriber {
    /// Drop events for it and report the number dropped.
    #[default]
    Drop,
    /// Close its connection.
    Disconnect,
}

/// The `[learn]` section: learning mode (capturing a process's access
/// denials). Off by default; turning it on grants the broker the
/// privileges the capture needs (see `wardenctl dump`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnSection {
    /// Serve `learn.*` methods.
    #[serde(default)]
    pub enabled: bool,
    /// Learning sessions one uid may run at once.
    #[serde(default = "default_learn_sessions")]
    pub max_sessions_per_uid: usize,
    /// Processes one uid's learning sessions may track at once, together:
    /// its share of the kernel's tracking table
    /// ([`LEARN_TRACKING_TABLE`] processes for all sessions). Past it, that
    /// uid's new children are not tracked (and are counted).
    #[serde(default = "default_learn_tracked")]
    pub max_tracked_per_uid: u32,
}

/// Processes learning mode's kernel tracking table holds, all sessions
/// together (`WL_MAX_TRACKED` in warden-learn's eBPF half): the upper
/// bound of `[learn] max_tracked_per_uid`.
pub const LEARN_TRACKING_TABLE: u32 = 16_384;

fn default_learn_sessions() -> usize {
    4
}

/// A quarter of the table: four users at their share still leave room.
fn default_learn_tracked() -> u32 {
    4_096
}

impl Default for LearnSection {
    fn default() -> Self {
        LearnSection {
            enabled: false,
            max_sessions_per_uid: default_learn_sessions(),
            max_tracked_per_uid: default_learn_tracked(),
        }
    }
}

/// The `[broker]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSection {
    /// Socket path; `None` means the caller picks the default for its uid.
    pub socket: Option<PathBuf>,
    /// Mode of the socket file (e.g. `0o666`).
    pub socket_mode: u32,
    /// Group of the socket file: name and resolved gid.
    pub socket_group: Option<(String, u32)>,
    /// Administrators' group: name and resolved gid (`None` if unset or it
    /// did not resolve; then only root is an administrator).
    pub admin_group: Option<(String, Option<u32>)>,
    /// The broker's own uid is an administrator too (`owner_is_admin`;
    /// false unless the file says so, true for the embedded default, so
    /// that whoever runs a per-user broker administers it). Takes effect
    /// through [`Config::admit_owner`].
    pub owner_is_admin: bool,
    /// Slow subscriber handling.
    pub on_slow_subscriber: SlowSubscriber,
}

macro_rules! limits {
    ($( $(#[$doc:meta])* $name:ident: $default:expr, $min:expr, $max:expr; )*) => {
        /// The `[limits]` section: every limit the broker enforces.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Limits {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $name: $default, )* }
            }
        }

        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawLimits {
            $( #[serde(default)] $name: Option<Spanned<u64>>, )*
        }

        impl RawLimits {
            fn validate(self, ctx: &Ctx<'_>) -> Result<Limits, ConfigError> {
                let mut out = Limits::default();
                $(
                    if let Some(v) = self.$name {
                        let n = *v.get_ref();
                        if !($min..=$max).contains(&n) {
                            return Err(ctx.err(
                                Some(v.span()),
                                concat!("limits.", stringify!($name)),
                                format!("{} is out of range ({} ..= {})", n, $min, $max),
                            ));
                        }
                        out.$name = n;
                    }
                )*
                Ok(out)
            }
        }
    };
}

limits! {
    /// Largest frame body accepted or sent, in bytes.
    max_frame_bytes: warden_proto::DEFAULT_MAX_FRAME_LEN as u64, 1024, warden_proto::ABSOLUTE_MAX_FRAME_LEN as u64;
    /// Connections open at once, all users together.
    max_connections: 4096, 1, 1_000_000;
    /// Connections open at once per uid.
    max_connections_per_uid: 64, 1, 1_000_000;
    /// Calls a connection may have waiting for a reply.
    max_in_flight_per_connection: 64, 1, 65_536;
    /// Topics a connection may subscribe to.
    max_subscriptions_per_connection: 256, 0, 65_536;
    /// Methods a connection may provide.
    max_provided_per_connection: 64, 0, 65_536;
    /// Bytes waiting to be written to all connections of one uid.
    max_queued_bytes_per_uid: 16 * 1024 * 1024, 64 * 1024, 1u64 << 34;
    /// Bytes of one caller uid's routed calls waiting for the connections
    /// of one provider uid (default: a quarter of max_queued_bytes_per_uid).
    max_queued_bytes_per_caller_at_provider: 4 * 1024 * 1024, 4 * 1024, 1u64 << 34;
    /// Frames queued for one connection before events are dropped.
    subscriber_queue_len: 1024, 1, 1_000_000;
    /// Time a new connection has to complete the hello.
    hello_timeout_ms: 5_000, 10, 3_600_000;
    /// Time a frame may stay half-received.
    frame_timeout_ms: 10_000, 10, 3_600_000;
    /// Default deadline of a call.
    call_timeout_ms: 30_000, 10, 86_400_000;
    /// Time in-flight calls get to finish at shutdown.
    drain_timeout_ms: 5_000, 0, 3_600_000;
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    #[serde(default)]
    socket: Option<Spanned<String>>,
    #[serde(default)]
    socket_mode: Option<Spanned<String>>,
    #[serde(default)]
    socket_group: Option<Spanned<String>>,
    #[serde(default)]
    admin_group: Option<Spanned<String>>,
    #[serde(default)]
    owner_is_admin: Option<bool>,
    #[serde(default)]
    on_slow_subscriber: Option<SlowSubscriber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    effect: Effect,
    #[serde(default)]
    description: Option<String>,
    actions: Vec<Spanned<String>>,
    names: Vec<Spanned<String>>,
    #[serde(default)]
    everyone: bool,
    #[serde(default)]
    admins: bool,
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    learn: LearnSection,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default, rename = "host")]
    hosts: Vec<Spanned<hosts::RawHost>>,
    #[serde(default)]
    sessions: hosts::SessionsSection,
    #[serde(default, rename = "role")]
    roles: Vec<Spanned<invitations::RawRole>>,
    #[serde(default)]
    invitations: invitations::RawInvitations,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from: a path, or `<embedded default>`.
    pub source: String,
    /// The `[broker]` section.
    pub broker: BrokerSection,
    /// The `[limits]` section.
    pub limits: Limits,
    /// The `[learn]` section.
    pub learn: LearnSection,
    /// The `[[host]]` sections: child hosts to start.
    pub hosts: Vec<HostSection>,
    /// The `[sessions]` section (used when a host has `scope = "session"`).
    pub sessions: hosts::SessionsSection,
    /// The `[invitations]` section. (The `[[role]]`s are in the policy,
    /// so that a reload carries them with the rules that name them.)
    pub invitations: InvitationsSection,
    /// The compiled rules.
    pub policy: Arc<Policy>,
    /// Things that are valid but probably not what was meant (e.g. a user
    /// name that does not exist on this system).
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map(|s| self.line_col(s.start)).unwrap_or((0, 0));
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        (line, offset - line_start + 1)
    }

    fn line(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }
}

/// Finds the dotted key a toml error is about, from the text around its span
/// (toml reports the span of the offending key or value).
fn key_at(text: &str, span: &std::ops::Range<usize>) -> String {
    let start = span.start.min(text.len());
    let end = span.end.min(text.len()).max(start);
    let snippet = text.get(start..end).unwrap_or("").trim();
    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key_on_line = line.split('=').next().unwrap_or("").trim();
    // The enclosing table header, searching backwards.
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = if !key_on_line.is_empty() && !key_on_line.starts_with('[') {
        key_on_line.to_owned()
    } else {
        snippet.trim_matches(|c| c == '[' || c == ']').to_owned()
    };
    match table {
        Some(t) if !key.is_empty() && !key_on_line.starts_with('[') => format!("{t}.{key}"),
        Some(t) if key.is_empty() => t,
        _ => key,
    }
}

impl Config {
    /// The embedded default configuration.
    ///
    /// # Errors
    /// Only if the embedded text is invalid, which a test rules out.
    ///
    /// Unlike a file, the embedded default makes the broker's own uid an
    /// administrator (`broker.owner_is_admin`, implicitly: the key is not
    /// in the printed text, so a copy of it installed as a file does not
    /// carry it over): the user who runs a per-user broker administers it.
    pub fn embedded_default(resolver: &dyn Resolver) -> Result<Config, ConfigError> {
        Config::parse_with(DEFAULT_CONFIG, EMBEDDED_SOURCE, resolver, true)
    }

    /// Makes `uid` (the broker's own effective uid) an administrator if
    /// `broker.owner_is_admin` is on; otherwise returns the config as it
    /// is. Root is an administrator anyway.
    pub fn admit_owner(mut self, uid: u32) -> Config {
        if self.broker.owner_is_admin && uid != 0 {
            self.policy = Arc::new(self.policy.with_owner(uid));
        }
        self
    }

    /// Reads and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file (and line and key, where the
    /// problem is in the text).
    pub fn load(path: &Path, resolver: &dyn Resolver) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: "-".into(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, &file, resolver)
    }

    /// Validates config text. `file` is used in error messages and in the
    /// rule references of decisions.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first problem found.
    pub fn parse(text: &str, file: &str, resolver: &dyn Resolver) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, resolver, false)
    }

    /// [`Config::parse`], with the default of `broker.owner_is_admin`.
    fn parse_with(
        text: &str,
        file: &str,
        resolver: &dyn Resolver,
        owner_is_admin_default: bool,
    ) -> Result<Config, ConfigError> {
        let ctx = Ctx { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| key_at(text, &s)).unwrap_or_default();
            let key = if key.is_empty() { "-".to_owned() } else { key };
            ctx.err(e.span(), key, e.message().trim().to_owned())
        })?;
        let mut warnings = Vec::new();

        let b = raw.broker;
        let socket = match b.socket {
            None => None,
            Some(s) => {
                let p = PathBuf::from(s.get_ref());
                if !p.is_absolute() {
                    return Err(ctx.err(
                        Some(s.span()),
                        "broker.socket",
                        format!("{:?} is not an absolute path", s.get_ref()),
                    ));
                }
                Some(p)
            }
        };
        let socket_mode = match b.socket_mode {
            None => 0o666,
            Some(m) => {
                let t = m.get_ref().trim_start_matches("0o");
                match u32::from_str_radix(t, 8) {
                    Ok(v) if v <= 0o777 && v & 0o600 == 0o600 => v,
                    _ => {
                        return Err(ctx.err(
                            Some(m.span()),
                            "broker.socket_mode",
                            format!(
                                "{:?} is not a valid socket mode; write an octal string such as \"0660\" (the owner needs rw)",
                                m.get_ref()
                            ),
                        ))
                    }
                }
            }
        };
        let socket_group = match b.socket_group {
            None => None,
            Some(g) => match resolver.group_gid(g.get_ref()) {
                Some(gid) => Some((g.get_ref().clone(), gid)),
                None => {
                    return Err(ctx.err(
                        Some(g.span()),
                        "broker.socket_group",
                        format!(
                            "group {:?} does not exist on this system; create it or remove the key",
                            g.get_ref()
                        ),
                    ))
                }
            },
        };
        let owner_is_admin = b.owner_is_admin.unwrap_or(owner_is_admin_default);
        let admin_group = b.admin_group.map(|g| {
            let gid = resolver.group_gid(g.get_ref());
            if gid.is_none() {
                let who = if owner_is_admin {
                    "root and the broker's own user are"
                } else {
                    "root is"
                };
                let name = g.get_ref();
                warnings.push(format!(
                    "{file}:{}: broker.admin_group: group {name:?} does not exist, so only {who} \
                     administrators; create it with `groupadd {name}` and add administrators \
                     with `usermod -aG {name} USER` (they reconnect to pick it up)",
                    ctx.line(g.span().start),
                ));
            }
            (g.get_ref().clone(), gid)
        });
        let broker = BrokerSection {
            socket,
            socket_mode,
            socket_group,
            admin_group: admin_group.clone(),
            owner_is_admin,
            on_slow_subscriber: b.on_slow_subscriber.unwrap_or_default(),
        };
        let caller_at_provider_set = raw.limits.max_queued_bytes_per_caller_at_provider.is_some();
        let mut limits = raw.limits.validate(&ctx)?;
        if !caller_at_provider_set {
            limits.max_queued_bytes_per_caller_at_provider = limits.max_queued_bytes_per_uid / 4;
        }

        let tracked = raw.learn.max_tracked_per_uid;
        if !(1..=LEARN_TRACKING_TABLE).contains(&tracked) {
            return Err(ctx.err(
                key_span(text, "max_tracked_per_uid"),
                "learn.max_tracked_per_uid",
                format!("{tracked} is out of range (1 ..= {LEARN_TRACKING_TABLE})"),
            ));
        }

        let source: Arc<str> = Arc::from(file);
        let host_sections = hosts::parse_hosts(raw.hosts, &ctx, resolver)?;
        let sessions = raw.sessions;
        if sessions.classes.is_empty() || sessions.classes.iter().any(String::is_empty) {
            return Err(ctx.err(
                key_span(text, "classes"),
                "sessions.classes",
                "list at least one session class (logind's Class: user, greeter, lock-screen, background...)",
            ));
        }
        if !sessions.bus.starts_with("unix:") {
            return Err(ctx.err(
                key_span(text, "bus"),
                "sessions.bus",
                format!(
                    "{:?} is not a local D-Bus address: use unix:path=... (the system bus is unix:path=/run/dbus/system_bus_socket)",
                    sessions.bus
                ),
            ));
        }
        let roles = invitations::parse_roles(raw.roles, &ctx)?;
        let invitations = invitations::parse_invitations(raw.invitations, &ctx)?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, spanned) in raw.rules.into_iter().enumerate() {
            let line = ctx.line(spanned.span().start);
            let r = spanned.into_inner();
            let key = |k: &str| format!("rule[{}].{k}", i + 1);
            let mut actions = 0u16;
            if r.actions.is_empty() {
                return Err(ctx.err(
                    Some(line_span(text, line)),
                    key("actions"),
                    "a rule needs at least one action",
                ));
            }
            for (j, a) in r.actions.iter().enumerate() {
                let action: Action = a.get_ref().parse().map_err(|m: String| {
                    ctx.err(Some(a.span()), key(&format!("actions[{j}]")), m)
                })?;
                // An invitation's holder minting invitations would let a
                // role outlive and outgrow the one its inviter checked.
                if action == Action::Invite && !r.roles.is_empty() {
                    return Err(ctx.err(
                        Some(a.span()),
                        key(&format!("actions[{j}]")),
                        "a connection that joined by invitation cannot invite; remove invite \
                         from this rule or its roles",
                    ));
                }
                actions |= action.bit();
            }
            if r.names.is_empty() {
                return Err(ctx.err(
                    Some(line_span(text, line)),
                    key("names"),
                    "a rule needs at least one name pattern (use \"**\" for every name)",
                ));
            }
            let mut patterns = Vec::with_capacity(r.names.len());
            for (j, n) in r.names.iter().enumerate() {
                let p = NamePattern::parse(n.get_ref()).map_err(|e| {
                    ctx.err(
                        Some(n.span()),
                        key(&format!("names[{j}]")),
                        format!("{:?}: {e}", n.get_ref()),
                    )
                })?;
                patterns.push(p);
            }
            // An allow rule naming someone who does not resolve matches
            // nobody: it fails closed, so a warning is enough. A deny rule
            // that matches nobody lets the very users it should stop fall
            // through to a later allow, so it is an error, whatever the
            // cause (a typo, or a directory service that is down during a
            // reload: the broker then keeps the old policy).
            let deny = r.effect == Effect::Deny;
            let unresolved = |what: &str, span: std::ops::Range<usize>, field: &str, name: &str| {
                ctx.err(
                    Some(span),
                    key(field),
                    format!(
                        "{what} {name:?} not found or lookup failed; a deny rule must name only \
                         {what}s that resolve (matching nobody, it would let them through to a \
                         later allow): fix the name, create the {what}, or name it by id"
                    ),
                )
            };
            let mut uids = r.uids.clone();
            for u in &r.users {
                match resolver.user_uid(u.get_ref()) {
                    Some(uid) => uids.push(uid),
                    None if deny => return Err(unresolved("user", u.span(), "users", u.get_ref())),
                    None => warnings.push(format!(
                        "{file}:{}: {}: user {:?} does not exist; it matches nobody",
                        ctx.line(u.span().start),
                        key("users"),
                        u.get_ref()
                    )),
                }
            }
            let mut gids = r.gids.clone();
            for g in &r.groups {
                match resolver.group_gid(g.get_ref()) {
                    Some(gid) => gids.push(gid),
                    None if deny => {
                        return Err(unresolved("group", g.span(), "groups", g.get_ref()))
                    }
                    None => warnings.push(format!(
                        "{file}:{}: {}: group {:?} does not exist; it matches nobody",
                        ctx.line(g.span().start),
                        key("groups"),
                        g.get_ref()
                    )),
                }
            }
            let mut rule_hosts = Vec::new();
            for h in &r.hosts {
                if !host_sections.iter().any(|s| &s.name == h.get_ref()) {
                    return Err(ctx.err(
                        Some(h.span()),
                        key("hosts"),
                        format!(
                            "no [[host]] is named {:?}; name a configured host (a rule for a host that does not exist would match nothing)",
                            h.get_ref()
                        ),
                    ));
                }
                rule_hosts.push(h.get_ref().clone());
            }
            let mut rule_roles = Vec::new();
            for role in &r.roles {
                if !roles.iter().any(|d| &d.name == role.get_ref()) {
                    return Err(ctx.err(
                        Some(role.span()),
                        key("roles"),
                        format!(
                            "no [[role]] is named {:?}; name a configured role (a rule for a role that does not exist would match nothing)",
                            role.get_ref()
                        ),
                    ));
                }
                rule_roles.push(role.get_ref().clone());
            }
            if !r.everyone
                && !r.admins
                && r.users.is_empty()
                && r.uids.is_empty()
                && r.groups.is_empty()
                && r.gids.is_empty()
                && r.hosts.is_empty()
                && r.roles.is_empty()
            {
                return Err(ctx.err(
                    Some(line_span(text, line)),
                    format!("rule[{}]", i + 1),
                    "the rule names nobody; add everyone = true, admins = true, users, uids, groups, gids, hosts or roles",
                ));
            }
            rules.push(Rule {
                index: i + 1,
                line,
                effect: r.effect,
                description: r.description,
                actions,
                patterns,
                principals: Principals {
                    everyone: r.everyone,
                    admins: r.admins,
                    uids,
                    gids,
                    hosts: rule_hosts,
                    roles: rule_roles,
                },
            });
        }
        let admin_gid = admin_group.and_then(|(_, gid)| gid);
        Ok(Config {
            source: file.to_owned(),
            broker,
            limits,
            learn: raw.learn,
            hosts: host_sections,
            sessions,
            invitations,
            policy: Arc::new(Policy::new(rules, roles, admin_gid, source)),
            warnings,
        })
    }
}

/// Where `key = ...` starts in `text`, if it is there (for errors about a
/// value serde read without a span).
fn key_span(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            let start = at + (line.len() - t.len());
            return Some(start..start + key.len());
        }
        at += line.len();
    }
    None
}

fn line_span(text: &str, line: usize) -> std::ops::Range<usize> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    start..start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::StaticResolver;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let r = StaticResolver::default()
            .user("alice", 1001)
            .group("wtest", 2000)
            .group("warden-admin", 3000);
        Config::parse(text, "test.toml", &r)
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default(&StaticResolver::default());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.broker.socket_mode, 0o666);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.policy.rule_count(), 7);
        // `wardenctl learn -- CMD` works out of the box, for one's own
        // processes only; root may learn any.
        assert!(c.learn.enabled);
        assert_eq!(c.learn.max_sessions_per_uid, 4);
        assert_eq!(c.learn.max_tracked_per_uid, 4_096);
        let user = crate::Caller {
            uid: 1000,
            gid: 1000,
            groups: vec![],
            host: None,
            role: None,
        };
        let root = crate::Caller {
            uid: 0,
            gid: 0,
            groups: vec![],
            host: None,
            role: None,
        };
        assert!(c.policy.decide(&user, crate::Action::Learn, "own").allowed);
        assert!(!c.policy.decide(&user, crate::Action::Learn, "any").allowed);
        assert!(c.policy.decide(&root, crate::Action::Learn, "any").allowed);
        assert!(
            c.policy
                .decide(&user, crate::Action::Call, "learn.start")
                .allowed
        );
        // The invitation methods are open; with no role, nobody can invite.
        for m in [
            "warden.invite.create",
            "warden.invite.list",
            "warden.invite.revoke",
        ] {
            assert!(
                c.policy.decide(&user, crate::Action::Call, m).allowed,
                "{m}"
            );
        }
        assert!(c.policy.roles().is_empty());
        assert!(!c.policy.decide(&root, crate::Action::Invite, "any").allowed);
        assert_eq!(c.invitations, InvitationsSection::default());
    }

    /// The block under "## The embedded default" in docs/config.md.
    fn documented_default() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let section = doc
            .split_once("\n## The embedded default\n")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("{path} has no \"## The embedded default\" section"));
        let block = section
            .split_once("```toml\n")
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .map(|(block, _)| block)
            .unwrap_or_else(|| panic!("no ```toml block under \"## The embedded default\""));
        format!("{block}\n")
    }

    #[test]
    fn docs_show_the_embedded_default_as_printed() {
        assert_eq!(
            documented_default(),
            DEFAULT_CONFIG,
            "docs/config.md's \"The embedded default\" block differs from \
             crates/warden-policy/src/default.toml (`wardend --print-default-config`): copy it over"
        );
    }

    #[test]
    fn the_owner_administers_a_broker_on_the_embedded_default_only() {
        let owner = crate::Caller {
            uid: 1000,
            gid: 1000,
            groups: vec![],
            host: None,
            role: None,
        };
        let other = crate::Caller {
            uid: 1001,
            gid: 1001,
            groups: vec![],
            host: None,
            role: None,
        };
        let c = Config::embedded_default(&StaticResolver::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .admit_owner(1000);
        assert!(c.broker.owner_is_admin);
        assert!(!DEFAULT_CONFIG.contains("owner_is_admin"), "stays implicit");
        assert!(c.policy.is_admin(&owner));
        assert!(!c.policy.is_admin(&other));
        for m in ["warden.status", "warden.reload"] {
            assert!(
                c.policy.decide(&owner, crate::Action::Call, m).allowed,
                "{m}"
            );
            assert!(
                !c.policy.decide(&other, crate::Action::Call, m).allowed,
                "{m}"
            );
        }
        // The same text from a file: the owner gains nothing.
        let c = Config::parse(
            DEFAULT_CONFIG,
            "/etc/warden/warden.toml",
            &StaticResolver::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .admit_owner(1000);
        assert!(!c.broker.owner_is_admin);
        assert!(!c.policy.is_admin(&owner));
        // Unless the file says so.
        let c = parse("[broker]\nowner_is_admin = true\n")
            .unwrap_or_else(|e| panic!("{e}"))
            .admit_owner(1000);
        assert!(c.policy.is_admin(&owner));
        assert!(!c.policy.is_admin(&other));
        let e = parse("[broker]\nowner_is_admin = \"yes\"\n").err();
        assert_eq!(
            e.map(|e| (e.line, e.key)),
            Some((2, "broker.owner_is_admin".into()))
        );
    }

    #[test]
    fn a_missing_admin_group_warning_says_how_to_create_it() {
        let c =
            Config::embedded_default(&StaticResolver::default()).unwrap_or_else(|e| panic!("{e}"));
        let w: Vec<_> = c
            .warnings
            .iter()
            .filter(|w| w.contains("admin_group"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", c.warnings);
        assert!(w[0].contains("`groupadd warden-admin`"), "{}", w[0]);
        assert!(w[0].contains("broker's own user"), "{}", w[0]);
        let r = StaticResolver::default().group("warden-admin", 3000);
        let c = Config::embedded_default(&r).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn max_tracked_per_uid_is_checked_against_the_table() {
        let c = parse("[learn]\nmax_tracked_per_uid = 8\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.learn.max_tracked_per_uid, 8);
        for bad in ["0", "16385"] {
            let e = parse(&format!(
                "[learn]\nenabled = true\nmax_tracked_per_uid = {bad}\n"
            ))
            .err();
            let e = e.unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(e.line, 3, "{e}");
            assert_eq!(e.key, "learn.max_tracked_per_uid", "{e}");
            assert!(e.message.contains("out of range (1 ..= 16384)"), "{e}");
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse("[limits]\nmax_frame_bytes = 2048\nbogus = 1\n").err();
        let e = e.unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.key, "limits.bogus", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(e.to_string().starts_with("test.toml:3:"), "{e}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = parse("[brokr]\nsocket = \"/x\"\n").err();
        let e = e.unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.line, 1, "{e}");
        assert!(e.key.contains("brokr"), "{e}");
    }

    #[test]
    fn out_of_range_limit() {
        let e = parse("[limits]\n\nmax_frame_bytes = 1\n").err();
        let e = e.unwrap_or_else(|| panic!("accepted"));
        assert_eq!(
            (e.line, e.key.as_str()),
            (3, "limits.max_frame_bytes"),
            "{e}"
        );
    }

    #[test]
    fn bad_rule_pattern_and_action() {
        let text = "[[rule]]\nactions = [\"call\"]\nnames = [\"a\"]\neveryone = true\n\n[[rule]]\nactions = [\"call\"]\nnames = [\"ok\", \"a.**.b\"]\neveryone = true\n";
        let e = parse(text).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.line, e.key.as_str()), (8, "rule[2].names[1]"), "{e}");
        let e = parse("[[rule]]\nactions = [\"cal\"]\nnames = [\"a\"]\neveryone = true\n").err();
        let e = e.unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.line, e.key.as_str()), (2, "rule[1].actions[0]"), "{e}");
        assert!(e.message.contains("known actions"));
    }

    #[test]
    fn rule_without_principal_is_an_error() {
        let e = parse("[[rule]]\nactions = [\"call\"]\nnames = [\"a\"]\n").err();
        let e = e.unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("names nobody"));
        assert!(e.message.contains("hosts or roles"), "{e}");
    }

    const ROLE: &str = "[[role]]\nname = \"vpn-helper\"\n\n";

    #[test]
    fn a_rule_may_name_only_roles() {
        let c = parse(&format!(
            "{ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\"]\nroles = [\"vpn-helper\"]\n\n\
             [[rule]]\nactions = [\"invite\"]\nnames = [\"vpn-helper\"]\nusers = [\"alice\"]\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.policy.rule_count(), 2);
        let alice = crate::Caller {
            uid: 1001,
            gid: 1001,
            groups: vec![],
            host: None,
            role: None,
        };
        // Only the role's holders: not alice's identity.
        assert!(!c.policy.decide(&alice, Action::Call, "net.vpn.up").allowed);
        assert!(
            c.policy
                .decide(&alice, Action::Invite, "vpn-helper")
                .allowed
        );
        let holder = crate::Caller {
            role: Some("vpn-helper".into()),
            ..alice
        };
        assert!(c.policy.decide(&holder, Action::Call, "net.vpn.up").allowed);
        assert_eq!("invite".parse::<Action>(), Ok(Action::Invite));
        assert_eq!(Action::ALL.last(), Some(&Action::Invite));
    }

    #[test]
    fn a_rule_naming_a_role_nobody_configured_is_an_error() {
        let e = parse(&format!(
            "{ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"a\"]\nroles = [\"vpn-helper\",\n  \"vpn-helpr\"]\n"
        ))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.line, e.key.as_str()), (8, "rule[1].roles"), "{e}");
        assert!(
            e.message
                .starts_with("no [[role]] is named \"vpn-helpr\"; "),
            "{e}"
        );
        let e = parse("[[rule]]\nactions = [\"call\"]\nnames = [\"a\"]\nroles = [\"x\"]\n").err();
        assert_eq!(e.map(|e| e.line), Some(4));
    }

    #[test]
    fn a_role_cannot_be_given_the_invite_action() {
        let e = parse(&format!(
            "{ROLE}[[rule]]\nactions = [\"call\",\n  \"invite\"]\nnames = [\"**\"]\nroles = [\"vpn-helper\"]\nuids = [1]\n"
        ))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.line, e.key.as_str()), (6, "rule[1].actions[1]"), "{e}");
        assert_eq!(
            e.message,
            "a connection that joined by invitation cannot invite; remove invite from this rule or its roles"
        );
    }

    #[test]
    fn unknown_users_warn_and_match_nobody() {
        let c = parse("[[rule]]\nactions = [\"call\"]\nnames = [\"a\"]\nusers = [\"mallory\"]\n");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("mallory"));
    }

    /// A resolver whose every lookup fails, as during a directory outage.
    struct Outage;
    impl Resolver for Outage {
        fn user_uid(&self, _: &str) -> Option<u32> {
            None
        }
        fn group_gid(&self, _: &str) -> Option<u32> {
            None
        }
    }

    #[test]
    fn unresolved_names_in_deny_rules_are_errors() {
        let deny_user = "[[rule]]\neffect = \"deny\"\nactions = [\"call\"]\nnames = [\"a\"]\nusers = [\"mallory\"]\n";
        let e = parse(deny_user).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.line, e.key.as_str()), (5, "rule[1].users"), "{e}");
        assert!(
            e.message.contains("\"mallory\" not found or lookup failed"),
            "{e}"
        );
        let deny_group = "[[rule]]\neffect = \"deny\"\nactions = [\"call\"]\nnames = [\"a\"]\ngroups = [\"nope\"]\n";
        let e = parse(deny_group)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.key, "rule[1].groups", "{e}");
        // The same rules, with names that resolve normally, fail when every
        // lookup fails; allow rules still only warn.
        let r = StaticResolver::default()
            .user("alice", 1000)
            .group("wtest", 2000);
        let ok = "[[rule]]\neffect = \"deny\"\nactions = [\"call\"]\nnames = [\"a\"]\nusers = [\"alice\"]\ngroups = [\"wtest\"]\n\n[[rule]]\nactions = [\"call\"]\nnames = [\"**\"]\nusers = [\"alice\"]\n";
        assert!(Config::parse(ok, "t.toml", &r).is_ok());
        let e = Config::parse(ok, "t.toml", &Outage)
            .err()
            .unwrap_or_else(|| panic!("accepted during an outage"));
        assert_eq!(e.key, "rule[1].users", "{e}");
        let allow_only = "[[rule]]\nactions = [\"call\"]\nnames = [\"**\"]\nusers = [\"alice\"]\n";
        let c = Config::parse(allow_only, "t.toml", &Outage).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn socket_mode_and_group() {
        let c = parse("[broker]\nsocket_mode = \"0660\"\nsocket_group = \"wtest\"\n");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.broker.socket_mode, 0o660);
        assert_eq!(c.broker.socket_group, Some(("wtest".into(), 2000)));
        assert!(parse("[broker]\nsocket_mode = \"0999\"\n").is_err());
        assert!(parse("[broker]\nsocket_mode = \"0066\"\n").is_err());
        let e = parse("[broker]\nsocket_group = \"nope\"\n").err();
        assert_eq!(e.map(|e| e.line), Some(2));
        let e = parse("[broker]\nsocket = \"rel/x.sock\"\n").err();
        assert_eq!(e.map(|e| e.key), Some("broker.socket".to_owned()));
    }
}
