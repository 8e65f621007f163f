//! The policy function: (caller, action, name) → [`Decision`].
//!
//! [`Policy::decide`] is the whole of it. [`CallerPolicy`] is the same
//! function with the principal test done once, at connect time: it keeps
//! only the rules that name the caller, so each later check is a walk over
//! a few patterns, and it caches decisions per (action, name).
//!
//! # Roles
//! A connection that joined by invitation holds a role ([`Caller::role`])
//! besides its identity. Its decision is made twice: once over the rules
//! that name its identity (as for any connection), once over only the
//! rules that name its role in `roles`, and the first allow of the two
//! wins. So a role only ever adds to what the identity may do, and what it
//! adds is exactly what its own rules say: `everyone` rules are the
//! identity's, not the role's, which keeps a role's reach readable from its
//! rules alone and lets [`Policy::role_fits`] (see `containment.rs`) check
//! it against an inviter. The `invite` action is never granted by a role,
//! so an invitation cannot be used to mint further invitations. A child
//! host's connection never holds a role.

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
    /// Roles (by `[[role]]` name) whose holders the rule names; see the
    /// module docs for how that combines with the identity's rules.
    pub(crate) roles: Vec<String>,
}

/// A configured `[[role]]`: what an invitation can hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDef {
    /// Its name (one name segment), unique among roles.
    pub name: String,
    /// Free text, shown by tools.
    pub description: Option<String>,
    /// Line of its `[[role]]` header.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) index: usize,
    pub(crate) line: usize,
    pub(crate) effect: Effect,
    pub(crate) description: Option<String>,
    pub(crate) actions: u16,
    pub(crate) patterns: Vec<NamePattern>,
    pub(crate) principals: Principals,
}

/// A compiled rule set.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    roles: Vec<RoleDef>,
    admin_gid: Option<u32>,
    /// The broker's own uid, when `broker.owner_is_admin` makes it an
    /// administrator (see [`crate::Config::admit_owner`]).
    owner: Option<u32>,
    source: Arc<str>,
}

impl Policy {
    pub(crate) fn new(
        rules: Vec<Rule>,
        roles: Vec<RoleDef>,
        admin_gid: Option<u32>,
        source: Arc<str>,
    ) -> Policy {
        Policy {
            rules,
            roles,
            admin_gid,
            owner: None,
            source,
        }
    }

    /// The same rules, with `uid` (the broker's own) an administrator.
    pub(crate) fn with_owner(&self, uid: u32) -> Policy {
        Policy {
            rules: self.rules.clone(),
            roles: self.roles.clone(),
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

    /// The configured `[[role]]`s, in file order.
    pub fn roles(&self) -> &[RoleDef] {
        &self.roles
    }

    /// The `[[role]]` named `name`, if there is one.
    pub fn role(&self, name: &str) -> Option<&RoleDef> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// The rules, in file order (for `containment.rs`).
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
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

    /// True if `rule` names the caller's identity (never its role).
    pub(crate) fn names_caller(&self, rule: &Rule, caller: &Caller) -> bool {
        let p = &rule.principals;
        if let Some(host) = &caller.host {
            return p.everyone || p.hosts.iter().any(|h| h == host);
        }
        p.everyone
            || (p.admins && self.is_admin(caller))
            || p.uids.contains(&caller.uid)
            || p.gids.iter().any(|&g| caller.in_group(g))
    }

    /// True if `rule` names `role` in `roles`.
    pub(crate) fn names_role(rule: &Rule, role: &str) -> bool {
        rule.principals.roles.iter().any(|r| r == role)
    }

    /// The role whose rules count for `caller`, if any: a child host's
    /// connection is only the host, whatever it claims.
    fn role_of(caller: &Caller) -> Option<&str> {
        match caller.host {
            Some(_) => None,
            None => caller.role.as_deref(),
        }
    }

    /// The reference to `rule` that a decision carries.
    pub(crate) fn rule_ref(&self, rule: &Rule) -> RuleRef {
        RuleRef {
            file: self.source.clone(),
            line: rule.line,
            index: rule.index,
        }
    }

    /// First match over `rules`; no match is the default deny.
    pub(crate) fn evaluate<'a>(
        &self,
        rules: impl Iterator<Item = &'a Rule>,
        action: Action,
        name: &str,
    ) -> Decision {
        for rule in rules {
            if rule.actions & action.bit() != 0 && rule.patterns.iter().any(|p| p.matches(name)) {
                return Decision {
                    allowed: rule.effect == Effect::Allow,
                    rule: Some(self.rule_ref(rule)),
                };
            }
        }
        Decision {
            allowed: false,
            rule: None,
        }
    }

    /// The decision over only the rules that name `role` (`everyone`
    /// rules are not among them).
    pub(crate) fn decide_for_role(&self, role: &str, action: Action, name: &str) -> Decision {
        self.evaluate(
            self.rules.iter().filter(|r| Policy::names_role(r, role)),
            action,
            name,
        )
    }

    /// Decides whether `caller` may perform `action` on `name`: by its
    /// identity's rules, or else by its role's (see the module docs).
    pub fn decide(&self, caller: &Caller, action: Action, name: &str) -> Decision {
        let by_identity = self.evaluate(
            self.rules.iter().filter(|r| self.names_caller(r, caller)),
            action,
            name,
        );
        match Policy::role_of(caller) {
            Some(role) if !by_identity.allowed && action != Action::Invite => {
                either_allows(by_identity, self.decide_for_role(role, action, name))
            }
            _ => by_identity,
        }
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
        let role_rules = match Policy::role_of(caller) {
            Some(role) => (0..self.rules.len())
                .filter(|&i| Policy::names_role(&self.rules[i], role))
                .collect(),
            None => Vec::new(),
        };
        CallerPolicy {
            policy: Arc::clone(self),
            rules,
            role_rules,
            admin: self.is_admin(caller),
            cache: Default::default(),
            cached: 0,
        }
    }
}

/// The identity's decision if it allows, else the role's if that allows,
/// else the identity's (whose deny names the rule an operator looks at).
fn either_allows(by_identity: Decision, by_role: Decision) -> Decision {
    if !by_identity.allowed && by_role.allowed {
        by_role
    } else {
        by_identity
    }
}

/// Cache entries per connection; past this, decisions are computed each time.
const CALLER_CACHE_MAX: usize = 1024;

/// The policy as it applies to one caller: [`Policy::decide`] with the
/// principal test already done. Owned by one connection task.
#[derive(Debug)]
pub struct CallerPolicy {
    policy: Arc<Policy>,
    /// Indices of the rules that name the caller's identity.
    rules: Vec<usize>,
    /// Indices of the rules that name its role (empty without one).
    role_rules: Vec<usize>,
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
        let by_identity =
            policy.evaluate(self.rules.iter().map(|&i| &policy.rules[i]), action, name);
        let d = if by_identity.allowed || action == Action::Invite || self.role_rules.is_empty() {
            by_identity
        } else {
            let by_role = policy.evaluate(
                self.role_rules.iter().map(|&i| &policy.rules[i]),
                action,
                name,
            );
            either_allows(by_identity, by_role)
        };
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

[[role]]
name = "helper"

[[rule]]
effect = "deny"
actions = ["call"]
names = ["helper.blocked"]
everyone = true

[[rule]]
effect = "deny"
actions = ["call"]
names = ["helper.no"]
roles = ["helper"]

[[rule]]
actions = ["call"]
names = ["svc.secret.**", "helper.*"]
roles = ["helper"]

[[rule]]
actions = ["subscribe"]
names = ["pub.*"]
everyone = true

[[rule]]
actions = ["invite"]
names = ["helper"]
uids = [1001]
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

    fn holding(role: &str, caller: Caller) -> Caller {
        Caller {
            role: Some(role.into()),
            ..caller
        }
    }

    #[test]
    fn a_role_adds_what_its_own_rules_allow() {
        let p = policy();
        let eve = holding("helper", who(1003, &[]));
        let d = p.decide(&eve, Action::Call, "helper.x");
        assert!(d.allowed);
        assert_eq!(d.rule.as_ref().map(|r| (r.index, r.line)), Some((7, 41)));
        assert!(!p.decide(&who(1003, &[]), Action::Call, "helper.x").allowed);
        // What the identity allows stays allowed, decided by its rule.
        let d = p.decide(&eve, Action::Subscribe, "pub.x");
        assert_eq!(d.rule.as_ref().map(|r| r.index), Some(8));
        // The role's deny refuses only the role: the answer is the
        // identity's (here the default).
        let d = p.decide(&eve, Action::Call, "helper.no");
        assert_eq!(
            d,
            Decision {
                allowed: false,
                rule: None
            }
        );
        // Nothing beyond the role's rules, for any action.
        assert!(!p.decide(&eve, Action::Call, "helper.x.y").allowed);
        assert!(!p.decide(&eve, Action::Provide, "helper.x").allowed);
    }

    #[test]
    fn an_identitys_denials_do_not_take_away_what_the_role_allows() {
        let p = policy();
        // bob's own deny rule (rule 1) and an everyone deny (rule 5) stop
        // bob and eve, not the role they hold: `everyone` rules are not
        // part of the role's evaluation.
        let bob = holding("helper", who(1002, &[500]));
        assert!(
            !p.decide(&who(1002, &[500]), Action::Call, "svc.secret.get")
                .allowed
        );
        let d = p.decide(&bob, Action::Call, "svc.secret.get");
        assert!(d.allowed);
        assert_eq!(d.rule.as_ref().map(|r| r.index), Some(7));
        let eve = holding("helper", who(1003, &[]));
        assert!(
            !p.decide(&who(1003, &[]), Action::Call, "helper.blocked")
                .allowed
        );
        assert!(p.decide(&eve, Action::Call, "helper.blocked").allowed);
    }

    #[test]
    fn a_role_never_invites_and_a_host_never_holds_one() {
        let p = policy();
        assert!(p.decide(&who(1001, &[]), Action::Invite, "helper").allowed);
        assert!(!p.decide(&who(1003, &[]), Action::Invite, "helper").allowed);
        let eve = holding("helper", who(1003, &[]));
        assert!(!p.decide(&eve, Action::Invite, "helper").allowed);
        let host = Caller {
            host: Some("agent".into()),
            ..eve.clone()
        };
        assert!(!p.decide(&host, Action::Call, "helper.x").allowed);
        assert!(p.decide(&host, Action::Subscribe, "pub.x").allowed);
        // A role no `[[role]]` has (any more, after a reload) adds nothing.
        let gone = holding("gone", who(1003, &[]));
        assert!(!p.decide(&gone, Action::Call, "helper.x").allowed);
        assert_eq!(p.role("helper").map(|r| r.line), Some(26));
        assert_eq!(p.roles().len(), 1);
    }

    #[test]
    fn caller_snapshot_agrees_with_decide() {
        let p = policy();
        let host = Caller {
            host: Some("agent".into()),
            ..who(1001, &[500])
        };
        let callers = [
            who(0, &[]),
            who(1001, &[500]),
            who(1002, &[500]),
            who(5, &[600]),
            who(6, &[]),
            holding("helper", who(6, &[])),
            holding("helper", who(1002, &[500])),
            holding("helper", who(0, &[])),
            holding("gone", who(1001, &[500])),
            holding("helper", host.clone()),
            host,
        ];
        let names = [
            "svc.a",
            "svc.secret.b",
            "admin.x",
            "other",
            "svc.a.b",
            "helper",
            "helper.x",
            "helper.no",
            "helper.blocked",
            "pub.x",
        ];
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
