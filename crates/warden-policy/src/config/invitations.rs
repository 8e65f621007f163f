//! The `[[role]]` sections and the `[invitations]` section.
//!
//! An already-running process can join the broker with an invitation
//! token; its connection then holds a role for its lifetime, which rules
//! name with `roles = ["NAME"]`. This file only reads what the operator
//! configured: the roles that exist (so a rule naming a role that does not
//! is an error, as with `hosts`) and the bounds the broker keeps on
//! invitations (how many, how long, how often used). Tokens, their storage
//! and the handshake are the broker's; how a role combines with an
//! identity is `policy.rs`'s, and whether an inviter may hand a role out is
//! `containment.rs`'s. See docs/config.md.

use std::collections::HashMap;
use std::path::{Component, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{hosts::is_segment, ConfigError, Ctx};
use crate::policy::RoleDef;

/// The `[invitations]` section: bounds on the invitations the broker keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationsSection {
    /// Keep invitations across a broker restart (in `state_dir`). Off by
    /// default: a restart invalidates every invitation.
    pub persist: bool,
    /// Where persisted invitations live (an absolute path); `None` lets
    /// the broker pick its default.
    pub state_dir: Option<PathBuf>,
    /// Invitations that may exist at once, all creators together.
    pub max_live: u64,
    /// Invitations one creating uid may have at once (at most `max_live`).
    pub max_per_creator: u64,
    /// The longest expiry an invitation may have, in seconds.
    pub max_ttl_secs: u64,
    /// The most uses one invitation may allow.
    pub max_uses: u64,
}

impl Default for InvitationsSection {
    fn default() -> Self {
        InvitationsSection {
            persist: false,
            state_dir: None,
            max_live: 1024,
            max_per_creator: 64,
            max_ttl_secs: 7 * 24 * 3600,
            max_uses: 1000,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInvitations {
    #[serde(default)]
    persist: Option<bool>,
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    max_live: Option<Spanned<u64>>,
    #[serde(default)]
    max_per_creator: Option<Spanned<u64>>,
    #[serde(default)]
    max_ttl_secs: Option<Spanned<u64>>,
    #[serde(default)]
    max_uses: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Validates the `[[role]]` sections, in file order.
pub(super) fn parse_roles(
    raw: Vec<Spanned<RawRole>>,
    ctx: &Ctx<'_>,
) -> Result<Vec<RoleDef>, ConfigError> {
    // Name → line of the first `[[role]]` with it.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut roles = Vec::with_capacity(raw.len());
    for (i, spanned) in raw.into_iter().enumerate() {
        let line = ctx.line(spanned.span().start);
        let r = spanned.into_inner();
        let key = format!("role[{}].name", i + 1);
        let name = r.name.get_ref().clone();
        // A role name is one segment of a dotted name: tools may use it
        // as one (in a method name or a path), and it can never be read as
        // a pattern.
        if !is_segment(&name) || warden_proto::name::validate_name(&name).is_err() {
            return Err(ctx.err(
                Some(r.name.span()),
                key,
                format!(
                    "{name:?} is not a valid role name: 1 to 64 ASCII letters, digits, '_' or '-'"
                ),
            ));
        }
        if let Some(first) = seen.get(&name) {
            return Err(ctx.err(
                Some(r.name.span()),
                key,
                format!(
                    "a role named {name:?} is already configured (line {first}); role names are unique"
                ),
            ));
        }
        seen.insert(name.clone(), line);
        roles.push(RoleDef {
            name,
            description: r.description,
            line,
        });
    }
    Ok(roles)
}

/// Validates the `[invitations]` section.
pub(super) fn parse_invitations(
    raw: RawInvitations,
    ctx: &Ctx<'_>,
) -> Result<InvitationsSection, ConfigError> {
    let defaults = InvitationsSection::default();
    let state_dir = match raw.state_dir {
        None => None,
        Some(d) => {
            let p = PathBuf::from(d.get_ref());
            let plain = p.is_absolute()
                && p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            if !plain {
                return Err(ctx.err(
                    Some(d.span()),
                    "invitations.state_dir",
                    format!(
                        "{:?} is not an absolute path without `.` or `..`",
                        d.get_ref()
                    ),
                ));
            }
            Some(p)
        }
    };
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
                format!("invitations.{k}"),
                format!("{} is out of range ({min} ..= {max})", s.get_ref()),
            )),
        }
    };
    let max_live = num(&raw.max_live, defaults.max_live, 1, 1_000_000, "max_live")?;
    let max_per_creator = num(
        &raw.max_per_creator,
        defaults.max_per_creator,
        1,
        1_000_000,
        "max_per_creator",
    )?;
    if max_per_creator > max_live {
        // Point at the key the operator wrote: max_per_creator if it is
        // there, else max_live (which made the default too large).
        let (span, what) = match (&raw.max_per_creator, &raw.max_live) {
            (Some(s), _) => (Some(s.span()), format!("{max_per_creator}")),
            (None, Some(l)) => (Some(l.span()), format!("{max_per_creator} (the default)")),
            (None, None) => (None, format!("{max_per_creator}")),
        };
        return Err(ctx.err(
            span,
            "invitations.max_per_creator",
            format!(
                "{what} is more than max_live ({max_live}): one creator cannot have more \
                 invitations than may exist at all; set max_per_creator to at most {max_live}"
            ),
        ));
    }
    Ok(InvitationsSection {
        persist: raw.persist.unwrap_or(defaults.persist),
        state_dir,
        max_live,
        max_per_creator,
        max_ttl_secs: num(
            &raw.max_ttl_secs,
            defaults.max_ttl_secs,
            60,
            31_536_000,
            "max_ttl_secs",
        )?,
        max_uses: num(&raw.max_uses, defaults.max_uses, 1, 1_000_000, "max_uses")?,
    })
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError, InvitationsSection, StaticResolver};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let r = StaticResolver::default().user("alice", 1001);
        Config::parse(text, "t.toml", &r)
    }

    fn refused(text: &str) -> ConfigError {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn invitations_default_to_not_persisted_with_the_documented_bounds() {
        let c = parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.invitations, InvitationsSection::default());
        assert!(!c.invitations.persist);
        assert_eq!(c.invitations.state_dir, None);
        assert_eq!(c.invitations.max_live, 1024);
        assert_eq!(c.invitations.max_per_creator, 64);
        assert_eq!(c.invitations.max_ttl_secs, 604_800);
        assert_eq!(c.invitations.max_uses, 1000);
        assert!(c.policy.roles().is_empty());
    }

    #[test]
    fn an_invitations_section_is_read() {
        let c = parse(
            "[invitations]\npersist = true\nstate_dir = \"/var/lib/warden\"\nmax_live = 10\n\
             max_per_creator = 10\nmax_ttl_secs = 60\nmax_uses = 1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.invitations,
            InvitationsSection {
                persist: true,
                state_dir: Some("/var/lib/warden".into()),
                max_live: 10,
                max_per_creator: 10,
                max_ttl_secs: 60,
                max_uses: 1,
            }
        );
    }

    #[test]
    fn bad_invitation_bounds_name_line_and_key() {
        for (body, key, needle) in [
            (
                "max_live = 0",
                "invitations.max_live",
                "out of range (1 ..= 1000000)",
            ),
            ("max_live = 1000001", "invitations.max_live", "out of range"),
            (
                "max_per_creator = 0",
                "invitations.max_per_creator",
                "out of range",
            ),
            (
                "max_ttl_secs = 59",
                "invitations.max_ttl_secs",
                "out of range (60 ..= 31536000)",
            ),
            (
                "max_ttl_secs = 31536001",
                "invitations.max_ttl_secs",
                "out of range",
            ),
            (
                "max_uses = 0",
                "invitations.max_uses",
                "out of range (1 ..= 1000000)",
            ),
            (
                "max_per_creator = 2000",
                "invitations.max_per_creator",
                "more than max_live (1024)",
            ),
            (
                "max_live = 10",
                "invitations.max_per_creator",
                "64 (the default) is more than max_live (10)",
            ),
            (
                "state_dir = \"var/lib\"",
                "invitations.state_dir",
                "not an absolute path",
            ),
            (
                "state_dir = \"/var/../tmp\"",
                "invitations.state_dir",
                "not an absolute path",
            ),
            ("persist = \"yes\"", "invitations.persist", ""),
            ("bogus = 1", "invitations.bogus", "unknown field"),
        ] {
            let e = refused(&format!("[invitations]\npersist = false\n{body}\n"));
            assert_eq!((e.line, e.key.as_str()), (3, key), "{body}: {e}");
            assert!(e.message.contains(needle), "{body}: {e}");
            assert!(e.to_string().starts_with("t.toml:3:"), "{e}");
        }
    }

    #[test]
    fn roles_are_read_in_file_order() {
        let c = parse(
            "[[role]]\nname = \"vpn-helper\"\ndescription = \"may drive the VPN\"\n\n\
             [[role]]\nname = \"backup_2\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let roles = c.policy.roles();
        assert_eq!(roles.len(), 2);
        assert_eq!(roles[0].name, "vpn-helper");
        assert_eq!(roles[0].description.as_deref(), Some("may drive the VPN"));
        assert_eq!(roles[0].line, 1);
        assert_eq!(roles[1].name, "backup_2");
        assert_eq!(roles[1].description, None);
        assert_eq!(roles[1].line, 5);
        assert_eq!(c.policy.role("backup_2"), Some(&roles[1]));
        assert_eq!(c.policy.role("backup"), None);
        // The owner's administration is added to the same roles.
        assert_eq!(c.admit_owner(1000).policy.roles().len(), 2);
    }

    #[test]
    fn bad_role_sections_name_line_and_key() {
        let long = "r".repeat(65);
        for (text, line, key, needle) in [
            (
                "[[role]]\nname = \"vpn.helper\"\n",
                2,
                "role[1].name",
                "not a valid role name",
            ),
            (
                "[[role]]\nname = \"\"\n",
                2,
                "role[1].name",
                "not a valid role name",
            ),
            (
                "[[role]]\nname = \"*\"\n",
                2,
                "role[1].name",
                "not a valid role name",
            ),
            (
                &format!("[[role]]\nname = \"{long}\"\n"),
                2,
                "role[1].name",
                "1 to 64",
            ),
            (
                "[[role]]\nname = \"a\"\n[[role]]\nname = \"a\"\n",
                4,
                "role[2].name",
                "already configured (line 1)",
            ),
            (
                "[[role]]\nname = \"a\"\nusers = [\"alice\"]\n",
                3,
                "role.users",
                "unknown field",
            ),
        ] {
            let e = refused(text);
            assert_eq!((e.line, e.key.as_str()), (line, key), "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
        let e = refused("[[role]]\ndescription = \"x\"\n");
        assert!(e.message.contains("missing field `name`"), "{e}");
        let ok = format!("[[role]]\nname = \"{}\"\n", "r".repeat(64));
        assert!(parse(&ok).is_ok());
    }
}
