//! What a rule decides on and what it decides: [`Action`] and [`Effect`].
//!
//! A leaf module: the config parser (`config.rs`) reads them from
//! rules and the policy function (`policy.rs`) decides with them, so
//! neither of those needs the other for these types.

use serde::Deserialize;
use std::fmt;

/// An action the policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Call a method.
    Call,
    /// Register as the provider of a method.
    Provide,
    /// Subscribe to a topic.
    Subscribe,
    /// Publish on a topic.
    Publish,
    /// Start a learning-mode capture (name: the capture kind).
    Learn,
    /// Watch the broker's traffic (name: `calls`, `events` or `payloads`).
    Monitor,
    /// Load, unload or reload modules in a child host (name: the host's
    /// configured name).
    Module,
    /// Send a call to another user's session instance of a per-session
    /// host, with the call's `target` (name: the method).
    Target,
    /// Create invitations for a role (name: the role's name).
    Invite,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 9] = [
        Action::Call,
        Action::Provide,
        Action::Subscribe,
        Action::Publish,
        Action::Learn,
        Action::Monitor,
        Action::Module,
        Action::Target,
        Action::Invite,
    ];

    /// The name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Call => "call",
            Action::Provide => "provide",
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::Learn => "learn",
            Action::Monitor => "monitor",
            Action::Module => "module",
            Action::Target => "target",
            Action::Invite => "invite",
        }
    }

    /// The action's bit in a rule's action set (one bit per entry of
    /// [`Action::ALL`], so the set's type must have at least that many).
    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

// A rule's action set is a u16 with one bit per action: adding a 17th
// action must widen it (this stops the build until then).
const _: () = assert!(Action::ALL.len() <= u16::BITS as usize);

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
                format!("unknown action {s:?}; known actions: {}", all.join(", "))
            })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The rule allows (the default).
    #[default]
    Allow,
    /// The rule denies, overriding rules below it.
    Deny,
}
