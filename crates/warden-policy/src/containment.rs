//! Role containment: may this inviter hand out this role?
//!
//! An invitation gives whoever redeems it a role (see `policy.rs`), whose
//! rules then add to what that connection may do. Creating one must not
//! be a way to pass on more than one has: [`Policy::role_fits`] says
//! whether every (action, name) the role's rules allow is allowed to the
//! inviter too, and if not, names one that is not (a concrete name, so the
//! operator sees what to fix). It has to be exact: a heuristic that is
//! sometimes too lenient is a privilege escalation, one that is sometimes
//! too strict refuses invitations nobody can explain.
//!
//! # What is compared
//! For every action but `invite` (which a role never grants): is there a
//! valid name `n` such that the role's own evaluation (first match over
//! the rules naming the role, default deny; `everyone` rules are not the
//! role's) allows `n` while the inviter's decision (as [`Policy::decide`]
//! makes it for the inviter's identity, without any role it holds itself)
//! denies it? Deny rules on either side count exactly as they decide,
//! first match and all.
//!
//! # Why a finite search decides it
//! Names are unbounded, but what a pattern says about a name depends only
//! on the name's length and, at each position, on whether the segment
//! there is one of the literals the patterns have at that position or some
//! other segment (all other segments look alike: only `*` and `**` take
//! them). Past the longest pattern's length nothing changes any more: only
//! trailing `**` patterns still match, and identically for every longer
//! name. So it is enough to try, position by position, each literal of the
//! patterns still in play plus one fresh segment that is none of them,
//! down to one position past the longest pattern (and never past
//! [`warden_proto::MAX_NAME_SEGMENTS`]).
//!
//! The search is depth first. Its state is the depth and, per pattern of
//! the two rule lists (the role's and the inviter's rules for the action),
//! whether the name so far is still a prefix of what it matches ("alive")
//! or already inside its trailing `**` ("satisfied"); every other pattern
//! is dead. At each depth from 1 the name ending there is checked (role
//! allows and inviter denies: a witness). A branch where no role pattern
//! is alive or satisfied is abandoned: the role allows nothing below it.
//! States are memoized with the shortest witness below them, so the search
//! visits each distinct state once and the witness it returns is the
//! shortest in bytes among names that behave alike; if even that one is
//! longer than [`warden_proto::MAX_NAME_LEN`] (it is checked with
//! [`warden_proto::name::validate_name`]), no name that can actually occur
//! is a witness, and the role fits.
//!
//! The number of states is bounded by the patterns, not the names; it
//! grows only when many patterns with `*` at different positions combine,
//! which configs written by hand do not do at any scale that matters.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::action::{Action, Effect};
use crate::pattern::Segment;
use crate::policy::{Caller, Decision, Policy, Rule, RuleRef};

/// Why a role may not be handed out by an inviter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainmentError {
    /// No `[[role]]` has this name.
    #[error("no [[role]] is named {0:?}")]
    UnknownRole(String),
    /// The role allows something the inviter may not do.
    #[error("{0}")]
    Overreach(RoleOverreach),
}

/// Something a role allows that its inviter may not do: one concrete
/// (action, name) and the rules on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleOverreach {
    /// The role.
    pub role: String,
    /// The action the role allows on `name`.
    pub action: Action,
    /// A name the role allows and the inviter may not use (a valid name:
    /// one that could actually occur).
    pub name: String,
    /// The role's rule that allows it.
    pub role_rule: RuleRef,
    /// The inviter's decision on it (a denial).
    pub inviter: Decision,
}

impl fmt::Display for RoleOverreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "role {} allows {} on {} ({}), which you may not ({})",
            self.role,
            self.action,
            self.name,
            self.role_rule,
            self.inviter.reason()
        )
    }
}

impl Policy {
    /// Ok if every (action, name) the role's rules allow is allowed to
    /// `inviter` too (by its identity; a role the inviter holds itself does
    /// not count). The `invite` action is not compared: a role never
    /// grants it.
    ///
    /// # Errors
    /// [`ContainmentError::UnknownRole`] if no `[[role]]` is named `role`;
    /// [`ContainmentError::Overreach`] with the first action (in
    /// [`Action::ALL`] order) and a shortest name the role allows but the
    /// inviter may not.
    #[expect(
        clippy::result_large_err,
        reason = "asked once per invitation created, used or reloaded, never per message; \
                  the overreach is the answer, not an exceptional path"
    )]
    pub fn role_fits(&self, inviter: &Caller, role: &str) -> Result<(), ContainmentError> {
        if self.role(role).is_none() {
            return Err(ContainmentError::UnknownRole(role.to_owned()));
        }
        let inviter = Caller {
            role: None,
            ..inviter.clone()
        };
        for action in Action::ALL {
            if action == Action::Invite {
                continue;
            }
            let has_action = |r: &&Rule| r.actions & action.bit() != 0;
            let role_rules: Vec<&Rule> = self
                .rules()
                .iter()
                .filter(has_action)
                .filter(|r| Policy::names_role(r, role))
                .collect();
            if role_rules.is_empty() {
                continue;
            }
            let inviter_rules: Vec<&Rule> = self
                .rules()
                .iter()
                .filter(has_action)
                .filter(|r| self.names_caller(r, &inviter))
                .collect();
            let Some((name, role_rule)) = Search::new(&role_rules, &inviter_rules).witness() else {
                continue;
            };
            let by_role = self.decide_for_role(role, action, &name);
            let by_inviter = self.decide(&inviter, action, &name);
            // The search and the matcher agree (the tests compare them);
            // were they ever not to, a release build still refuses.
            debug_assert!(
                by_role.allowed && !by_inviter.allowed,
                "the containment search disagrees with decide on {action} {name}"
            );
            return Err(ContainmentError::Overreach(RoleOverreach {
                role: role.to_owned(),
                action,
                name,
                role_rule: self.rule_ref(role_rule),
                inviter: by_inviter,
            }));
        }
        Ok(())
    }
}

/// A set of pattern ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PatternSet(Vec<u64>);

impl PatternSet {
    fn empty(patterns: usize) -> PatternSet {
        PatternSet(vec![0; patterns.div_ceil(64)])
    }
    fn contains(&self, id: usize) -> bool {
        self.0
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
    fn insert(&mut self, id: usize) {
        if let Some(w) = self.0.get_mut(id / 64) {
            *w |= 1 << (id % 64);
        }
    }
}

/// Where the name built so far stands, for every pattern (see the module
/// docs): alive, satisfied by its `**`, or (in neither set) dead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    depth: usize,
    alive: PatternSet,
    satisfied: PatternSet,
}

/// One side's rules, in order, each with the ids of its patterns.
type Side<'r> = Vec<(&'r Rule, Vec<usize>)>;

/// A shortest witness below a state: its segments, and the role's rule
/// that allows the whole name.
type Suffix<'r> = (Vec<String>, &'r Rule);

struct Search<'r> {
    /// Every pattern of both sides, by id.
    patterns: Vec<&'r [Segment]>,
    role: Side<'r>,
    inviter: Side<'r>,
    /// Names this deep behave like every deeper one (or are the longest
    /// that can occur).
    max_depth: usize,
    memo: HashMap<State, Option<Suffix<'r>>>,
}

impl<'r> Search<'r> {
    fn new(role_rules: &[&'r Rule], inviter_rules: &[&'r Rule]) -> Search<'r> {
        let mut patterns = Vec::new();
        let mut side = |rules: &[&'r Rule]| -> Side<'r> {
            rules
                .iter()
                .map(|&rule| {
                    let ids = rule
                        .patterns
                        .iter()
                        .map(|p| {
                            patterns.push(p.segments());
                            patterns.len() - 1
                        })
                        .collect();
                    (rule, ids)
                })
                .collect()
        };
        let role = side(role_rules);
        let inviter = side(inviter_rules);
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        Search {
            max_depth: (longest + 1).min(warden_proto::MAX_NAME_SEGMENTS),
            patterns,
            role,
            inviter,
            memo: HashMap::new(),
        }
    }

    /// A shortest valid name the role allows and the inviter does not,
    /// with the role's rule that allows it.
    fn witness(mut self) -> Option<(String, &'r Rule)> {
        let everything =
            (0..self.patterns.len()).fold(PatternSet::empty(self.patterns.len()), |mut set, id| {
                set.insert(id);
                set
            });
        let start = State {
            depth: 0,
            alive: everything,
            satisfied: PatternSet::empty(self.patterns.len()),
        };
        let (segments, rule) = self.shortest_below(start)?;
        let name = segments.join(".");
        // Too long to occur (the shortest alike is): no witness at all.
        warden_proto::name::validate_name(&name).ok()?;
        Some((name, rule))
    }

    /// True if pattern `id` matches the name that ends at `state`.
    fn matches_here(&self, id: usize, state: &State) -> bool {
        if state.satisfied.contains(id) {
            return true;
        }
        state.alive.contains(id)
            && self
                .patterns
                .get(id)
                .is_some_and(|p| p.len() == state.depth && !matches!(p.last(), Some(Segment::Rest)))
    }

    /// The rule of `side` that decides the name ending at `state`.
    fn first_match(&self, side: &Side<'r>, state: &State) -> Option<&'r Rule> {
        side.iter()
            .find(|(_, ids)| ids.iter().any(|&id| self.matches_here(id, state)))
            .map(|(rule, _)| *rule)
    }

    /// The shortest (in bytes) witness suffix below `state`, if any.
    fn shortest_below(&mut self, state: State) -> Option<Suffix<'r>> {
        if state.depth > 0 {
            let by_role = self
                .first_match(&self.role, &state)
                .filter(|r| r.effect == Effect::Allow);
            let inviter_allows = self
                .first_match(&self.inviter, &state)
                .is_some_and(|r| r.effect == Effect::Allow);
            if let (Some(rule), false) = (by_role, inviter_allows) {
                return Some((Vec::new(), rule));
            }
        }
        if state.depth >= self.max_depth {
            return None;
        }
        let role_in_play = self
            .role
            .iter()
            .flat_map(|(_, ids)| ids)
            .any(|&id| state.alive.contains(id) || state.satisfied.contains(id));
        if !role_in_play {
            return None;
        }
        if let Some(known) = self.memo.get(&state) {
            return known.clone();
        }
        let literals: BTreeSet<&'r str> = (0..self.patterns.len())
            .filter(|&id| state.alive.contains(id))
            .filter_map(|id| match self.patterns[id].get(state.depth) {
                Some(Segment::Literal(l)) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        let fresh = fresh_segment(&literals);
        let mut best: Option<Suffix<'r>> = None;
        let cost = |s: &[String]| s.iter().map(|seg| seg.len() + 1).sum::<usize>();
        let candidates = literals
            .iter()
            .map(|&l| (l.to_owned(), true))
            .chain(std::iter::once((fresh, false)));
        for (segment, is_literal) in candidates {
            let next = self.step(&state, is_literal.then_some(segment.as_str()));
            if let Some((mut suffix, rule)) = self.shortest_below(next) {
                suffix.insert(0, segment);
                if best.as_ref().is_none_or(|(b, _)| cost(&suffix) < cost(b)) {
                    best = Some((suffix, rule));
                }
            }
        }
        self.memo.insert(state, best.clone());
        best
    }

    /// The state after one more segment: `literal`, or (`None`) a segment
    /// that is no literal of any pattern alive at this depth.
    fn step(&self, state: &State, literal: Option<&str>) -> State {
        let mut alive = PatternSet::empty(self.patterns.len());
        let mut satisfied = state.satisfied.clone();
        for (id, pattern) in self.patterns.iter().enumerate() {
            if !state.alive.contains(id) {
                continue;
            }
            match pattern.get(state.depth) {
                Some(Segment::Literal(l)) if Some(l.as_str()) == literal => alive.insert(id),
                Some(Segment::One) => alive.insert(id),
                Some(Segment::Rest) => satisfied.insert(id),
                // Another literal, or an exact pattern already matched in
                // full: the longer name is not its.
                Some(Segment::Literal(_)) | None => {}
            }
        }
        State {
            depth: state.depth + 1,
            alive,
            satisfied,
        }
    }
}

/// Characters of fresh segments, the nicest first.
const SEGMENT_CHARS: &[u8; 64] =
    b"xyzabcdefghijklmnopqrstuvwABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";

/// The shortest valid segment that is none of `taken` ("x" when free).
fn fresh_segment(taken: &BTreeSet<&str>) -> String {
    // Segments in order of length, as bijective base-64 numerals: `taken`
    // is finite, so one of the first `taken.len() + 1` is free.
    (0usize..)
        .map(|mut n| {
            let mut chars = Vec::new();
            loop {
                chars.push(char::from(SEGMENT_CHARS[n % SEGMENT_CHARS.len()]));
                n /= SEGMENT_CHARS.len();
                if n == 0 {
                    break;
                }
                n -= 1;
            }
            chars.into_iter().rev().collect::<String>()
        })
        .find(|s| !taken.contains(s.as_str()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, StaticResolver};

    const ALICE: u32 = 1000;

    fn policy(text: &str) -> Policy {
        let r = StaticResolver::default()
            .user("alice", ALICE)
            .user("bob", 2000)
            .group("admins", 600);
        match Config::parse(text, "f", &r) {
            Ok(c) => match std::sync::Arc::try_unwrap(c.policy) {
                Ok(p) => p,
                Err(_) => panic!("policy shared"),
            },
            Err(e) => panic!("{e}\n{text}"),
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

    fn overreach(p: &Policy, inviter: &Caller, role: &str) -> RoleOverreach {
        match p.role_fits(inviter, role) {
            Err(ContainmentError::Overreach(o)) => o,
            other => panic!("expected an overreach, got {other:?}"),
        }
    }

    const VPN_ROLE: &str = "[[role]]\nname = \"vpn-helper\"\n\n";

    #[test]
    fn a_role_within_the_inviter_fits() {
        let p = policy(&format!(
            "{VPN_ROLE}[[rule]]\nactions = [\"call\", \"subscribe\"]\nnames = [\"net.**\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\", \"net.wifi.up\"]\nroles = [\"vpn-helper\"]\n\n\
             [[rule]]\nactions = [\"subscribe\"]\nnames = [\"net.vpn.state\"]\nroles = [\"vpn-helper\"]\n"
        ));
        assert_eq!(p.role_fits(&who(ALICE, &[]), "vpn-helper"), Ok(()));
        // A role the inviter holds itself does not lend it anything.
        let mut holder = who(ALICE + 1, &[]);
        holder.role = Some("vpn-helper".into());
        assert!(p.role_fits(&holder, "vpn-helper").is_err());
    }

    #[test]
    fn a_wider_role_is_refused_with_a_shortest_witness() {
        let p = policy(&format!(
            "{VPN_ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"net.**\"]\nroles = [\"vpn-helper\"]\n"
        ));
        let o = overreach(&p, &who(ALICE, &[]), "vpn-helper");
        assert_eq!(o.action, Action::Call);
        assert_eq!(o.name, "net.x");
        assert_eq!((o.role_rule.index, o.role_rule.line), (2, 9));
        assert_eq!(
            o.inviter,
            Decision {
                allowed: false,
                rule: None
            }
        );
        assert_eq!(
            ContainmentError::Overreach(o).to_string(),
            "role vpn-helper allows call on net.x (rule 2 at f:9), which you may not \
             (no rule matched: default deny)"
        );
    }

    #[test]
    fn an_inviters_deny_carve_out_counts() {
        let text = format!(
            "{VPN_ROLE}[[rule]]\neffect = \"deny\"\nactions = [\"call\"]\nnames = [\"net.vpn.secret\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"net.**\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\"]\nroles = [\"vpn-helper\"]\n"
        );
        let p = policy(&text);
        let o = overreach(&p, &who(ALICE, &[]), "vpn-helper");
        assert_eq!(o.name, "net.vpn.secret");
        assert_eq!(o.role_rule.index, 3);
        assert_eq!(o.inviter.rule.as_ref().map(|r| r.index), Some(1));
        assert_eq!(
            ContainmentError::Overreach(o).to_string(),
            "role vpn-helper allows call on net.vpn.secret (rule 3 at f:15), which you may not \
             (denied by rule 1 at f:4)"
        );
        // The role's own carve-out of the same name makes it fit.
        let fixed = text.replace(
            "[[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\"]",
            "[[rule]]\neffect = \"deny\"\nactions = [\"call\"]\nnames = [\"net.vpn.secret\"]\nroles = [\"vpn-helper\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\"]",
        );
        assert_eq!(
            policy(&fixed).role_fits(&who(ALICE, &[]), "vpn-helper"),
            Ok(())
        );
    }

    #[test]
    fn one_segment_star_does_not_cover_a_double_star() {
        let p = policy(&format!(
            "{VPN_ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"a.*\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"a.**\"]\nroles = [\"vpn-helper\"]\n"
        ));
        let o = overreach(&p, &who(ALICE, &[]), "vpn-helper");
        assert_eq!(o.name, "a.x.x");
        // And the other way round it fits.
        let p = policy(&format!(
            "{VPN_ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"a.**\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"a.*\"]\nroles = [\"vpn-helper\"]\n"
        ));
        assert_eq!(p.role_fits(&who(ALICE, &[]), "vpn-helper"), Ok(()));
    }

    #[test]
    fn every_action_but_invite_is_compared() {
        let p = policy(&format!(
            "{VPN_ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"net.**\"]\nusers = [\"alice\"]\n\n\
             [[rule]]\nactions = [\"call\", \"subscribe\"]\nnames = [\"net.vpn.state\"]\nroles = [\"vpn-helper\"]\n"
        ));
        let o = overreach(&p, &who(ALICE, &[]), "vpn-helper");
        assert_eq!(
            (o.action, o.name.as_str()),
            (Action::Subscribe, "net.vpn.state")
        );
        assert!(o
            .to_string()
            .starts_with("role vpn-helper allows subscribe on net.vpn.state"));
    }

    #[test]
    fn an_administrator_inviter_is_matched_by_admins_rules() {
        let p = policy(&format!(
            "[broker]\nadmin_group = \"admins\"\n\n{VPN_ROLE}\
             [[rule]]\nactions = [\"call\", \"provide\"]\nnames = [\"**\"]\nadmins = true\n\n\
             [[rule]]\nactions = [\"provide\"]\nnames = [\"svc.*\"]\nroles = [\"vpn-helper\"]\n"
        ));
        assert_eq!(p.role_fits(&who(0, &[]), "vpn-helper"), Ok(()));
        assert_eq!(p.role_fits(&who(7, &[600]), "vpn-helper"), Ok(()));
        let o = overreach(&p, &who(ALICE, &[]), "vpn-helper");
        assert_eq!((o.action, o.name.as_str()), (Action::Provide, "svc.x"));
    }

    #[test]
    fn everyone_rules_are_the_inviters_not_the_roles() {
        let p = policy(&format!(
            "{VPN_ROLE}[[rule]]\nactions = [\"call\"]\nnames = [\"warden.ping\"]\neveryone = true\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"warden.ping\"]\nroles = [\"vpn-helper\"]\n"
        ));
        // Alice may call it through the everyone rule: the role fits.
        assert_eq!(p.role_fits(&who(ALICE, &[]), "vpn-helper"), Ok(()));
    }

    #[test]
    fn an_unknown_role_is_refused_by_name() {
        let p = policy(VPN_ROLE);
        let e = p.role_fits(&who(ALICE, &[]), "vpn");
        assert_eq!(e, Err(ContainmentError::UnknownRole("vpn".into())));
        assert_eq!(
            e.err().map(|e| e.to_string()),
            Some("no [[role]] is named \"vpn\"".into())
        );
        assert_eq!(p.role_fits(&who(ALICE, &[]), "vpn-helper"), Ok(()));
    }

    #[test]
    fn a_witness_must_be_a_name_that_can_occur() {
        // 4 × 63 bytes and 3 dots: 255, the longest name. One more segment
        // would be needed, so no name the role allows can occur.
        let seg = "s".repeat(63);
        let long = format!("{seg}.{seg}.{seg}.{seg}");
        let role_only = |names: &str| {
            policy(&format!(
                "{VPN_ROLE}[[rule]]\nactions = [\"call\"]\nnames = [{names}]\nroles = [\"vpn-helper\"]\n"
            ))
        };
        let p = role_only(&format!("\"{long}.**\""));
        assert_eq!(p.role_fits(&who(ALICE, &[]), "vpn-helper"), Ok(()));
        let p = role_only(&format!("\"{long}\""));
        assert_eq!(overreach(&p, &who(ALICE, &[]), "vpn-helper").name, long);
        // More segments than a name may have.
        let p = role_only(&format!("\"{}\"", ["a"; 17].join(".")));
        assert_eq!(p.role_fits(&who(ALICE, &[]), "vpn-helper"), Ok(()));
        let p = role_only(&format!("\"{}.**\"", ["a"; 15].join(".")));
        let o = overreach(&p, &who(ALICE, &[]), "vpn-helper");
        assert_eq!(o.name, format!("{}.x", ["a"; 15].join(".")));
    }

    /// The fenced blocks of the section of docs/config.md under `heading`.
    fn documented_blocks(heading: &str) -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let section = doc
            .split_once(&format!("\n{heading}\n"))
            .map(|(_, rest)| rest.split("\n### ").next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("{path} has no {heading:?}"));
        section
            .split("```")
            .skip(1)
            .step_by(2)
            .map(|b| b.split_once('\n').map_or("", |(_, body)| body).to_owned())
            .collect()
    }

    #[test]
    fn the_documented_carve_out_example_is_what_role_fits_says() {
        let blocks = documented_blocks("### Containment: may this inviter hand out this role?");
        let [file, message, fix, ..] = blocks.as_slice() else {
            panic!("expected the example, its message and its fix: {blocks:?}");
        };
        let r = StaticResolver::default().user("alice", ALICE);
        let parse = |text: &str| match Config::parse(text, "warden.toml", &r) {
            Ok(c) => c.policy,
            Err(e) => panic!("{e}"),
        };
        let alice = who(ALICE, &[]);
        let p = parse(file);
        assert!(p.decide(&alice, Action::Invite, "vpn-helper").allowed);
        let e = p.role_fits(&alice, "vpn-helper").err();
        assert_eq!(e.map(|e| format!("{e}\n")), Some(message.clone()));
        let role_rule = "[[rule]]\nactions = [\"call\"]\nnames = [\"net.vpn.*\"]";
        assert_eq!(file.matches(role_rule).count(), 1);
        let fixed = file.replace(role_rule, &format!("{fix}\n{role_rule}"));
        assert_eq!(parse(&fixed).role_fits(&alice, "vpn-helper"), Ok(()));
    }

    #[test]
    fn a_fresh_segment_differs_from_every_literal() {
        let taken: BTreeSet<&str> = ["x", "y", "z"].into_iter().collect();
        assert_eq!(fresh_segment(&taken), "a");
        assert_eq!(fresh_segment(&BTreeSet::new()), "x");
        let all: Vec<String> = SEGMENT_CHARS
            .iter()
            .map(|&c| char::from(c).to_string())
            .collect();
        let taken: BTreeSet<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(fresh_segment(&taken), "xx");
    }

    /// xorshift64*: deterministic, so a failing case can be replayed.
    struct Prng(u64);
    impl Prng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len() as u64) as usize]
        }
    }

    fn random_pattern(rng: &mut Prng) -> String {
        let len = 1 + rng.below(3) as usize;
        (0..len)
            .map(|i| {
                if i + 1 == len {
                    rng.pick(&["a", "b", "*", "**"])
                } else {
                    rng.pick(&["a", "b", "*"])
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A few rules over two actions for alice, the role, everyone, another
    /// user, in any mix, allow or deny. Sometimes alice may also use every
    /// name of up to 3 segments, from a random place among the rules: then
    /// only longer names can tell her and the role apart.
    fn random_config(rng: &mut Prng) -> String {
        let mut text = String::from("[[role]]\nname = \"r\"\n");
        let rules = 1 + rng.below(6);
        let short_names_at = rng.below(2 * rules);
        for i in 0..rules {
            if i == short_names_at {
                text.push_str(
                    "\n[[rule]]\nactions = [\"call\", \"subscribe\"]\nnames = [\"*\", \"*.*\", \"*.*.*\"]\nuids = [1000]\n",
                );
            }
            text.push_str("\n[[rule]]\n");
            if rng.below(3) == 0 {
                text.push_str("effect = \"deny\"\n");
            }
            let actions = match rng.below(3) {
                0 => "\"call\"",
                1 => "\"subscribe\"",
                _ => "\"call\", \"subscribe\"",
            };
            text.push_str(&format!("actions = [{actions}]\n"));
            let names: Vec<String> = (0..1 + rng.below(2))
                .map(|_| format!("\"{}\"", random_pattern(rng)))
                .collect();
            text.push_str(&format!("names = [{}]\n", names.join(", ")));
            let mut principals = Vec::new();
            while principals.is_empty() {
                for line in [
                    "uids = [1000]",
                    "roles = [\"r\"]",
                    "everyone = true",
                    "users = [\"bob\"]",
                ] {
                    if rng.below(3) == 0 {
                        principals.push(line);
                    }
                }
            }
            text.push_str(&principals.join("\n"));
            text.push('\n');
        }
        text
    }

    /// Every name of 1 to 4 segments over {a, b, c}: with patterns of at
    /// most 3 segments over {a, b}, every behaviour a name can have.
    fn all_small_names() -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|p| {
                    ["a", "b", "c"].map(|s| {
                        if p.is_empty() {
                            s.to_owned()
                        } else {
                            format!("{p}.{s}")
                        }
                    })
                })
                .collect();
            names.extend(next.iter().cloned());
            last = next;
        }
        names
    }

    #[test]
    fn role_fits_agrees_with_enumerating_every_name() {
        let names = all_small_names();
        assert_eq!(names.len(), 3 + 9 + 27 + 81);
        let alice = who(ALICE, &[]);
        let mut rng = Prng(0x9e37_79b9_7f4a_7c15);
        // Refusals whose shortest witness has 4 segments: only names past
        // the longest pattern show those.
        let (mut fits, mut refused, mut deepest) = (0, 0, 0);
        for case in 0..2000 {
            let text = random_config(&mut rng);
            let p = policy(&text);
            let brute = [Action::Call, Action::Subscribe].into_iter().find_map(|a| {
                names
                    .iter()
                    .find(|n| {
                        p.decide_for_role("r", a, n).allowed && !p.decide(&alice, a, n).allowed
                    })
                    .map(|n| (a, n.clone()))
            });
            match (p.role_fits(&alice, "r"), brute) {
                (Ok(()), None) => fits += 1,
                (Err(ContainmentError::Overreach(o)), Some((action, example))) => {
                    refused += 1;
                    if example.split('.').count() == 4 {
                        deepest += 1;
                    }
                    assert_eq!(o.action, action, "case {case}: {text}");
                    // The witness is a real one, if not the same name.
                    let by_role = p.decide_for_role("r", o.action, &o.name);
                    let by_alice = p.decide(&alice, o.action, &o.name);
                    assert!(
                        by_role.allowed && !by_alice.allowed,
                        "case {case}: {o:?}\n{text}"
                    );
                    assert_eq!(Some(o.role_rule), by_role.rule, "case {case}: {text}");
                    assert_eq!(o.inviter, by_alice, "case {case}: {text}");
                    // And a shortest one.
                    assert!(
                        o.name.len() <= example.len(),
                        "case {case}: {} vs {example}",
                        o.name
                    );
                }
                (got, brute) => {
                    panic!("case {case}: role_fits {got:?}, enumeration {brute:?}\n{text}")
                }
            }
        }
        // Both outcomes are well represented.
        assert!(
            fits > 300 && refused > 300 && deepest > 30,
            "fits {fits}, refused {refused}, 4 segments deep {deepest}"
        );
    }
}
