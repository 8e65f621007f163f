//! Arbitrary UTF-8 as a config file (`warden_policy::Config::parse`), with
//! a fixed table of users and groups.
//!
//! Checked, for every input:
//! - parsing never panics;
//! - every error names the file and a place inside the text: line 1 ..=
//!   the number of lines (the line after a final newline included) and a
//!   1-based byte column within that line (at most one past its end), or
//!   line 0 and column 0 for an error not tied to a place; its key and
//!   message are not empty;
//! - every warning starts with `FILE:LINE:` for a line inside the text.
//!
//! For every config it accepts, over a few callers (root, a user, an
//! administrator, a child host's connection, and each of those holding
//! each role) x every action x a set of names (fixed ones, and names made
//! from the quoted strings in the text, so the rules' own patterns are
//! hit):
//! - `Policy::decide` never panics, and a decision names a rule that
//!   exists, in this file, at a line inside the text; a child host's
//!   connection decides the same with or without a role;
//! - `CallerPolicy::decide` (the per-connection, cached form) decides
//!   exactly as `Policy::decide`, asked twice (the second from its cache);
//! - `role_fits` for each role and each inviter (for configs of at most 16
//!   rules: the containment search is exact, not cheap) never answers
//!   `UnknownRole` for a configured role and does answer it for an unknown
//!   one; an `Overreach` names a valid name, an action other than
//!   `invite`, an inviter decision that is the inviter's real decision and
//!   a denial, and a role rule that really allows it to the role's holder;
//!   and when the role fits, no sampled (action, name) the role's holder
//!   gets only through the role is denied to the inviter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_policy::{Action, Caller, Config, ContainmentError, StaticResolver};

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let resolver = StaticResolver::default()
        .user("root", 0)
        .user("alice", 1001)
        .user("bob", 1002)
        .user("warden-agent", 990)
        .group("wtest", 2000)
        .group("netdev", 108)
        .group("warden-admin", 3000);
    let lines = text.split('\n').collect::<Vec<_>>();
    match Config::parse(text, FILE, &resolver) {
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(e.file, FILE);
            assert!(!e.key.is_empty(), "{e}");
            assert!(!e.message.is_empty(), "{e}");
            if e.line == 0 {
                assert_eq!(e.column, 0, "{e}");
            } else {
                assert!(
                    e.line <= lines.len(),
                    "{e}: the text has {} lines",
                    lines.len()
                );
                let line_len = lines[e.line - 1].len();
                assert!(
                    (1..=line_len + 1).contains(&e.column),
                    "{e}: line {} is {line_len} bytes",
                    e.line
                );
            }
        }
        Ok(config) => check_config(&config, text, lines.len()),
    }
});

fn check_config(config: &Config, text: &str, lines: usize) {
    for w in &config.warnings {
        let line = w
            .strip_prefix(FILE)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("warning without FILE:LINE: {w}"));
        assert!((1..=lines).contains(&line), "{w}");
    }
    let policy = &config.policy;
    let roles: Vec<String> = policy.roles().iter().map(|r| r.name.clone()).collect();
    let hosts: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();

    let user = |uid, gid, groups: &[u32]| Caller {
        uid,
        gid,
        groups: groups.to_vec(),
        host: None,
        role: None,
    };
    let mut inviters = vec![
        user(0, 0, &[]),
        user(1001, 1001, &[2000, 108]),
        user(1003, 1003, &[3000]),
        user(4242, 4242, &[]),
    ];
    if let Some(owner) = policy.owner_admin() {
        inviters.push(user(owner, owner, &[]));
    }
    let mut callers = inviters.clone();
    for h in hosts.iter().take(2) {
        callers.push(Caller {
            host: Some(h.clone()),
            // A host's connection never holds a role, whatever it claims.
            role: roles.first().cloned(),
            ..user(0, 0, &[])
        });
    }
    for role in roles.iter().take(3) {
        for inv in &inviters {
            callers.push(Caller {
                role: Some(role.clone()),
                ..inv.clone()
            });
        }
    }

    let names = sample_names(text, &roles, &hosts);
    for caller in &callers {
        let mut cp = policy.for_caller(caller);
        assert_eq!(cp.is_admin(), policy.is_admin(caller));
        for action in Action::ALL {
            for name in &names {
                let d = policy.decide(caller, action, name);
                if let Some(r) = &d.rule {
                    assert_eq!(&*r.file, FILE);
                    assert!((1..=lines).contains(&r.line), "{r}");
                    assert!((1..=policy.rule_count()).contains(&r.index), "{r}");
                }
                let _ = d.reason();
                if caller.host.is_some() {
                    let plain = Caller {
                        role: None,
                        ..caller.clone()
                    };
                    assert_eq!(
                        policy.decide(&plain, action, name),
                        d,
                        "a host's role counted"
                    );
                }
                assert_eq!(cp.decide(action, name), d, "{caller:?} {action} {name}");
                assert_eq!(
                    cp.decide(action, name),
                    d,
                    "cached: {caller:?} {action} {name}"
                );
            }
        }
    }

    assert!(
        matches!(
            policy.role_fits(&inviters[0], "no-such-role-xyz"),
            Err(ContainmentError::UnknownRole(_))
        ) || roles.iter().any(|r| r == "no-such-role-xyz")
    );
    if policy.rule_count() > 16 {
        return;
    }
    for role in roles.iter().take(3) {
        for inviter in &inviters {
            let holder = Caller {
                role: Some(role.clone()),
                ..inviter.clone()
            };
            match policy.role_fits(inviter, role) {
                Ok(()) => {
                    for action in Action::ALL {
                        if action == Action::Invite {
                            continue;
                        }
                        for name in &names {
                            if warden_proto::name::validate_name(name).is_err() {
                                continue;
                            }
                            if policy.decide(&holder, action, name).allowed {
                                assert!(
                                    policy.decide(inviter, action, name).allowed,
                                    "role {role} fits {inviter:?}, yet gives {action} on {name}\n{text}"
                                );
                            }
                        }
                    }
                }
                Err(ContainmentError::UnknownRole(r)) => {
                    panic!("role_fits: {r} is configured, not unknown")
                }
                Err(ContainmentError::Overreach(o)) => {
                    let _ = o.to_string();
                    assert_eq!(&o.role, role);
                    assert_ne!(o.action, Action::Invite);
                    assert!(
                        warden_proto::name::validate_name(&o.name).is_ok(),
                        "witness {:?} is not a valid name",
                        o.name
                    );
                    let by_inviter = policy.decide(inviter, o.action, &o.name);
                    assert!(!by_inviter.allowed, "{o}");
                    assert_eq!(by_inviter, o.inviter, "{o}");
                    let by_holder = policy.decide(&holder, o.action, &o.name);
                    assert!(by_holder.allowed, "{o}: the role does not allow it");
                    assert_eq!(by_holder.rule.as_ref(), Some(&o.role_rule), "{o}");
                }
            }
        }
    }
}

/// Names to decide on: a few fixed ones, the roles and hosts, and every
/// quoted string of the text with `**` and `*` filled in (so `a.*.c`
/// gives `a.x.c`, and `a.**` gives `a.x` and `a.x.y`). At most 24.
fn sample_names(text: &str, roles: &[String], hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = [
        "warden.ping",
        "warden.status",
        "a",
        "a.b",
        "net.vpn.up",
        "net.vpn.secret",
        "calls",
        "payloads",
        "own",
        "any",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.extend(roles.iter().take(3).cloned());
    names.extend(hosts.iter().take(2).cloned());
    for (i, quoted) in text.split('"').enumerate() {
        if i % 2 == 0 || quoted.is_empty() || quoted.len() > 64 {
            continue;
        }
        if names.len() >= 24 {
            break;
        }
        let one = quoted.replace("**", "x").replace('*', "x");
        let two = quoted.replace("**", "x.y").replace('*', "x");
        for n in [one, two] {
            if !names.contains(&n) && names.len() < 24 {
                names.push(n);
            }
        }
    }
    names
}
