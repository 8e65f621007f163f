//! Warden's configuration file and its policy function.
//!
//! This crate is pure: no runtime, no sockets, no system calls. The broker,
//! `wardenctl policy explain` and the tests all decide access with the very
//! same [`Policy::decide`], so an offline explanation cannot drift from what
//! the running broker does.
//!
//! # Model
//! A decision is a function of (caller identity, action, name). Rules are
//! evaluated in file order; the first rule whose principals include the
//! caller, whose actions include the action and whose name patterns match
//! the name decides (allow or deny). No match is a denial: the default is
//! deny. The decision names the rule (file and line) that made it.
//!
//! A connection that joined by invitation also holds a role: the rules
//! naming that role can add to what its identity is allowed, never take
//! away (`policy.rs`), and [`Policy::role_fits`] decides whether an inviter
//! may hand a role out at all: only if everything the role allows is
//! allowed to the inviter too (`containment.rs`).
//!
//! # Attacker model
//! The config file is trusted (it is root's); callers are not. The caller's
//! identity comes from the kernel, never from a payload. User and group
//! names in rules are resolved to ids when the config is loaded, through a
//! [`Resolver`] the caller of this crate supplies; a name that does not
//! resolve matches nobody (fail closed) and is reported as a warning.
#![forbid(unsafe_code)]

mod action;
mod config;
mod containment;
mod pattern;
mod policy;

pub use action::{Action, Effect};
pub use config::{
    BrokerSection, Config, ConfigError, HostScope, HostSection, InvitationsSection, LearnSection,
    Limits, SessionsSection, SlowSubscriber, DEFAULT_CONFIG, EMBEDDED_SOURCE, LEARN_TRACKING_TABLE,
};
pub use containment::{ContainmentError, RoleOverreach};
pub use pattern::{NamePattern, PatternError};
pub use policy::{
    Caller, CallerPolicy, Decision, Policy, Resolver, RoleDef, RuleRef, StaticResolver,
};
