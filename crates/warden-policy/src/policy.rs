//! The policy function: (caller, action, name) → [`Decision`].
//!
//! [`Policy::decide`] is the whole of it. [`CallerPolicy`] is the same
//! function with the principal test done once, at connect time: it keeps
//! only the rules that name the caller, so each later check is a walk over
//! a few patterns, and it caches decisions per (action, name).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::action::{Action, Effect};
use crate::pattern::NamePattern;

/// Maps user and group names in rules to ids. The broker supplies one
/// backed by the system database; tests supply a [`StaticResolver`].
pub trait Resolver {
    /// The uid of a user name, if it exists.
    fn user_uid(&self, name: &str) -> Option<u32>;
    /// The gid of a group name, if it exists.
    fn group_gid(&self, name: &str) -> Option<u32>;
}

/// A fixed table of names, for tests and offline tools.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
}

impl StaticResolver {
    /// Adds a user.
    pub fn user(mut self, name: &str, uid: u32) -> Self {
        self.users.insert(name.to_owned(), uid);
        self
    }
    /// Adds a group.
    pub fn group(mut self, name: &str, gid: u32) -> Self {
        self.groups.insert(name.to_owned(), gid);
        self
    }
}

impl Resolver for StaticResolver {
    fn user_uid(&self, name: &str) -> Option<u32> {
        self.users.get(name).copied()
    }
    fn group_gid(&self, name: &str) -> Option<u32> {
        self.groups.get(name).copied()
    }
}

/// Who is asking: the kernel's view of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
    /// The child host whose connection this is (see
    /// [`warden_proto::Identity::host`]): such a caller is matched only by
    /// rules for `everyone` or naming it in `hosts`, never by its uid, gid
    /// or as an administrator.
    pub host: Option<String>,
    /// The role the connection holds because it joined by invitation
    /// (`None` for every other connection): rules naming it in `roles`
    /// add to what the caller's own identity is allowed.
    pub role: Option<String>,
}

impl From<&warden_proto::Identity> for Caller {
    /// The identity the broker attached at connect, as the policy sees it.
    fn from(id: &warden_proto::Identity) -> Self {
        Caller {
            uid: id.uid,
            gid: id.gid,
            groups: id.groups.clone(),
            host: id.host.clone(),
            role: None,
        }
    }
}

impl Caller {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Points at the rule that made a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// Config file the rule is in.
    pub file: Arc<str>,
    /// Line of the rule's `[[rule]]` header.
    pub line: usize,
    /// 1-based position among the rules.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} at {}:{}", self.index, self.file, self.line)
    }
}

/// The outcome of a policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True if the action is allowed.
    pub allowed: bool,
    /// The deciding rule, or `None` for the default deny.
    pub rule: Option<RuleRef>,
}

impl Decision {
    /// Text for logs and `denied` errors: the rule or the default.
    pub fn reason(&self) -> String {
        match &self.rule {
            Some(r) if self.allowed => format!("allowed by {r}"),
            Some(r) => format!("denied by {r}"),
            None => "no rule matched: default deny".to_owned(),
        }
    }

    /// The decision as `warden.explain` answers it, and as `wardenctl
    /// policy explain --config` renders it offline: `{"allowed": bool,
    /// "rule": {"file", "line", "index"} or null, "reason":`
    /// [`Decision::reason`]`}`. One rendering, so the live and the offline
    /// explanation cannot differ in shape.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "allowed": self.allowed,
            "rule": self.rule.as_ref().map(|r| serde_json::json!({
                "file": r.file.as_ref(),
                "line": r.line,
                "index": r.index,
            })),
            "reason": self.reason(),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Principals {
    pub(crate) everyone: bool,
    pub(crate) admins: bool,
    pub(crate) uids: Vec<u32>,
    pub(crate) gids: Vec<u32>,
    /// Child hosts (by configured name) whose connections the rule names.
    pub(crate) hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) index: usize,
    pub(crate) line: usize,
    pub(crate) effect: Effect,
    pub(crate) description: Option<String>,
    pub(crate) actions: u8,
    pub(crate) patterns: Vec<NamePattern>,
    pub(crate) principals: Principals,
}

/// A compiled rule set.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    admin_gid: Option<u32>,
    /// The broker's own uid, when `broker.owner_is_admin` makes it an
    /// administrator (see [`crate::Config::admit_owner`]).
    owner: Option<u32>,
    source: Arc<str>,
}

impl Policy {
    pub(crate) fn new(rules: Vec<Rule>, admin_gid: Option<u32>, source: Arc<str>) -> Policy {
        Policy {
            rules,
            admin_gid,
            owner: None,
            source,
        }
    }

    /// The same rules, with `uid` (the broker's own) an administrator.
    pub(crate) fn with_owner(&self, uid: u32) -> Policy {
        Policy {
            rules: self.rules.clone(),
            admin_gid: self.admin_gid,
            owner: Some(uid),
            source: Arc::clone(&self.source),
        }
    }

    /// The uid made an administrator by `broker.owner_is_admin`, if any.
    pub fn owner_admin(&self) -> Option<u32> {
        self.owner
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// True if the caller is an administrator: root, a member of the
    /// configured admin group, or the broker's own uid when
    /// `broker.owner_is_admin` is on.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        if caller.host.is_some() {
            return false;
        }
        caller.uid == 0
            || self.owner == Some(caller.uid)
            || self.admin_gid.is_some_and(|g| caller.in_group(g))
    }

    fn names_caller(&self, rule: &Rule, caller: &Caller) -> bool {
        let p = &rule.principals;
        if let Some(host) = &caller.host {
            return p.everyone || p.hosts.iter().any(|h| h == host);
        }
        p.everyone
            || (p.admins && self.is_admin(caller))
            || p.uids.contains(&caller.uid)
            || p.gids.iter().any(|&g| caller.in_group(g))
    }

    fn evaluate<'a>(
        &self,
        rules: impl Iterator<Item = &'a Rule>,
        action: Action,
        name: &str,
    ) -> Decision {
        for rule in rules {
            if rule.actions & action.bit() != 0 && rule.patterns.iter().any(|p| p.matches(name)) {
                return Decision {
                    allowed: rule.effect == Effect::Allow,
                    rule: Some(RuleRef {
                        file: self.source.clone(),
                        line: rule.line,
                        index: rule.index,
                    }),
                };
            }
        }
        Decision {
            allowed: false,
            rule: None,
        }
    }

    /// Decides whether `caller` may perform `action` on `name`.
    pub fn decide(&self, caller: &Caller, action: Action, name: &str) -> Decision {
        self.evaluate(
            self.rules.iter().filter(|r| self.names_caller(r, caller)),
            action,
            name,
        )
    }

    /// The description of rule `index` (1-based), if it has one.
    pub fn rule_description(&self, index: usize) -> Option<&str> {
        self.rules
            .get(index.checked_sub(1)?)
            .and_then(|r| r.description.as_deref())
    }

    /// Compiles the policy for one caller (at connect time).
    pub fn for_caller(self: &Arc<Self>, caller: &Caller) -> CallerPolicy {
        let rules = (0..self.rules.len())
            .filter(|&i| self.names_caller(&self.rules[i], caller))
            .collect();
        CallerPolicy {
            policy: Arc::clone(self),
            rules,
            admin: self.is_admin(caller),
            cache: Default::default(),
            cached: 0,
        }
    }
}

/// Cache entries per connection; past this, decisions are computed each time.
const CALLER_CACHE_MAX: usize = 1024;

/// The policy as it applies to one caller: [`Policy::decide`] with the
/// principal test already done. Owned by one connection task.
#[derive(Debug)]
pub struct CallerPolicy {
    policy: Arc<Policy>,
    rules: Vec<usize>,
    admin: bool,
    /// One map per action, so a lookup borrows the name (no allocation).
    cache: [HashMap<String, Decision>; Action::ALL.len()],
    cached: usize,
}

impl CallerPolicy {
    /// Decides an action on a name for this caller.
    pub fn decide(&mut self, action: Action, name: &str) -> Decision {
        let slot = action as usize;
        if let Some(d) = self.cache[slot].get(name) {
            return d.clone();
        }
        let policy = &self.policy;
        let d = policy.evaluate(self.rules.iter().map(|&i| &policy.rules[i]), action, name);
        if self.cached < CALLER_CACHE_MAX {
            self.cached += 1;
            self.cache[slot].insert(name.to_owned(), d.clone());
        }
        d
    }

    /// True if the caller is an administrator.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// The policy this snapshot was compiled from.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const TEXT: &str = r#"
[broker]
admin_group = "admins"

[[rule]]
effect = "deny"
actions = ["call"]
names = ["svc.secret.**"]
users = ["bob"]

[[rule]]
actions = ["call", "subscribe"]
names = ["svc.**"]
groups = ["staff"]

[[rule]]
actions = ["provide"]
names = ["svc.*"]
uids = [1001]

[[rule]]
actions = ["call"]
names = ["admin.*"]
admins = true
"#;

    fn policy() -> Arc<Policy> {
        let r = StaticResolver::default()
            .user("alice", 1001)
            .user("bob", 1002)
            .group("staff", 500)
            .group("admins", 600);
        match Config::parse(TEXT, "p.toml", &r) {
            Ok(c) => c.policy,
            Err(e) => panic!("{e}"),
        }
    }

    fn who(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: groups.to_vec(),
            host: None,
            role: None,
        }
    }

    #[test]
    fn a_decision_renders_as_warden_explain_answers() {
        let p = policy();
        let d = p.decide(&who(1002, &[500]), Action::Call, "svc.secret.get");
        assert_eq!(
            d.to_json(),
            serde_json::json!({
                "allowed": false,
                "rule": {"file": "p.toml", "line": 5, "index": 1},
                "reason": "denied by rule 1 at p.toml:5",
            })
        );
        // Byte for byte what `warden.explain` and `wardenctl policy explain
        // --config` each built by hand before (key order included).
        let d = p.decide(&who(1003, &[]), Action::Call, "svc.x");
        let by_hand = serde_json::json!({
            "allowed": d.allowed,
            "rule": d.rule.as_ref().map(|r| serde_json::json!({"file": r.file.as_ref(), "line": r.line, "index": r.index})),
            "reason": d.reason(),
        });
        assert_eq!(d.to_json().to_string(), by_hand.to_string());
        assert_eq!(d.to_json()["rule"], serde_json::Value::Null);
        assert_eq!(d.to_json()["reason"], "no rule matched: default deny");
    }

    #[test]
    fn first_match_wins_and_default_denies() {
        let p = policy();
        let alice = who(1001, &[500]);
        let bob = who(1002, &[500]);
        let eve = who(1003, &[]);
        let d = p.decide(&alice, Action::Call, "svc.secret.get");
        assert!(d.allowed);
        assert_eq!(d.rule.as_ref().map(|r| (r.index, r.line)), Some((2, 11)));
        let d = p.decide(&bob, Action::Call, "svc.secret.get");
        assert!(!d.allowed);
        assert_eq!(d.rule.as_ref().map(|r| r.index), Some(1));
        assert!(d.reason().contains("p.toml:5"), "{}", d.reason());
        let d = p.decide(&eve, Action::Call, "svc.x");
        assert_eq!(
            d,
            Decision {
                allowed: false,
                rule: None
            }
        );
        assert_eq!(d.reason(), "no rule matched: default deny");
        assert!(p.decide(&alice, Action::Provide, "svc.x").allowed);
        assert!(!p.decide(&bob, Action::Provide, "svc.x").allowed);
        assert!(!p.decide(&alice, Action::Publish, "svc.x").allowed);
    }

    #[test]
    fn admins_are_root_and_group_members() {
        let p = policy();
        assert!(p.decide(&who(0, &[]), Action::Call, "admin.x").allowed);
        assert!(p.decide(&who(7, &[600]), Action::Call, "admin.x").allowed);
        let mut primary = who(8, &[]);
        primary.gid = 600;
        assert!(p.decide(&primary, Action::Call, "admin.x").allowed);
        assert!(!p.decide(&who(9, &[]), Action::Call, "admin.x").allowed);
    }

    #[test]
    fn caller_snapshot_agrees_with_decide() {
        let p = policy();
        let callers = [
            who(0, &[]),
            who(1001, &[500]),
            who(1002, &[500]),
            who(5, &[600]),
            who(6, &[]),
        ];
        let names = ["svc.a", "svc.secret.b", "admin.x", "other", "svc.a.b"];
        for c in &callers {
            let mut snap = p.for_caller(c);
            for a in Action::ALL {
                for n in names {
                    assert_eq!(snap.decide(a, n), p.decide(c, a, n), "{c:?} {a} {n}");
                    assert_eq!(snap.decide(a, n), p.decide(c, a, n), "cached {c:?} {a} {n}");
                }
            }
        }
    }
}
