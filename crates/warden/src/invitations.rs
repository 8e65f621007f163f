//! Invitations: an already-running process joins with a bounded role, for
//! a bounded time.
//!
//! An inviter (a connection with the `invite` action on a role, whose own
//! permissions contain the role's: [`warden_policy::Policy::role_fits`])
//! creates an invitation with `warden.invite.create` and gets a token
//! (`warden_proto::invitation`) once. A process presents it in
//! `hello.invitation`; its connection then holds the role, in addition to
//! what its uid allows, for its lifetime.
//!
//! # What is kept
//! Only SHA-256 of each secret (the secret is 256 random bits, so a fast
//! hash is enough: there is nothing to brute-force), with the role,
//! expiry, uses left, the optional binding to a joiner uid or group, a
//! label and the creator. With `[invitations] persist = true` that table
//! is also written, mode 0600, to `invitations.json` in the state
//! directory, reached and checked like the socket directory
//! ([`warden_sys::open_private_dir`]); otherwise a restart invalidates
//! every invitation.
//!
//! # Joining
//! [`Invitations::redeem`] takes a parsed token and decides in one code
//! path: the id's entry, or a dummy hash when the id is unknown, so the
//! work is the same; the secret's hash compared in constant time; then
//! expiry, uses, binding, and whether the creator may still hand the role
//! out under the current policy. Every failure gives the joiner the same
//! answer ([`REFUSED`]); the audit log says which check failed. Failures
//! are throttled per uid ([`Throttle`]): past a burst, that uid's attempts
//! are refused without being checked until the bucket refills; other uids
//! are unaffected.
//!
//! # Losing the role
//! A live connection shares its invitation's [`Grant`]. Revoking the
//! invitation, or a reload after which the role no longer exists or no
//! longer fits its creator, marks the grant revoked and has every
//! connection recompile its policy: those holding a revoked grant drop
//! the role and are told on `warden.policy.revoked`. Expiry and spent uses
//! stop new joins only.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warden_policy::{Action, Caller, InvitationsSection, Policy};
use warden_proto::invitation::{InvitationId, Secret, Token, ID_BYTES, SECRET_BYTES};
use warden_proto::Identity;

/// Locks a mutex, taking over a poisoned one (its data are plain tables
/// that no panic leaves half-changed).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reserved topic of invitation events (`used`, `expired`, `revoked`,
/// `exhausted`), delivered only to each invitation's creator and to
/// administrators.
pub(crate) const TOPIC: &str = "warden.invitations";

/// The one answer a joiner gets for every refusal that is not a malformed
/// token.
pub(crate) const REFUSED: &str = "invitation refused: it is unknown, revoked, expired, used up, \
     not for this user, or its role is no longer available; ask for a new one";

/// What the names of the `warden.invite.*` built-ins start with (their
/// answers carry tokens: a monitor never sees them).
pub(crate) const METHOD_PREFIX: &str = "warden.invite.";

/// The file the table is persisted in, in the state directory.
const STATE_FILE: &str = "invitations.json";
/// Largest state file read back.
const STATE_FILE_MAX: u64 = 16 << 20;
/// Longest label, in characters.
pub(crate) const MAX_LABEL_CHARS: usize = 128;

/// Failed joins a uid may make at once before it is throttled.
pub(crate) const THROTTLE_BURST: f64 = 10.0;
/// Failed joins a uid regains per second.
pub(crate) const THROTTLE_REFILL_PER_SEC: f64 = 0.5;
/// Uids the throttle tracks; past this, full buckets are forgotten.
const THROTTLE_KEYS: usize = 4096;

/// Who may join with an invitation, beyond holding its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Binding {
    /// Only this uid.
    Uid(u32),
    /// Only members of this group (primary or supplementary).
    Gid(u32),
}

impl Binding {
    fn admits(&self, who: &Identity) -> bool {
        match *self {
            Binding::Uid(u) => who.uid == u,
            Binding::Gid(g) => who.gid == g || who.groups.contains(&g),
        }
    }
}

/// The creator, as it was when it created the invitation: the identity
/// the policy is asked about again at every join and reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Creator {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
    pub(crate) pid: u32,
}

impl Creator {
    fn caller(&self) -> Caller {
        Caller {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            host: None,
            role: None,
        }
    }
}

/// What a connection that joined holds: shared with its invitation, so
/// revoking the invitation reaches every connection that used it.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) id: InvitationId,
    pub(crate) role: String,
    pub(crate) creator_uid: u32,
    revoked: AtomicBool,
}

impl Grant {
    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

/// One invitation as stored (and persisted).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    id: InvitationId,
    /// SHA-256 of the secret, hex.
    #[serde(with = "hex32")]
    hash: [u8; 32],
    role: String,
    created: u64,
    expires: u64,
    uses: u32,
    uses_left: u32,
    bound: Option<Binding>,
    label: Option<String>,
    creator: Creator,
    /// `expired` was announced.
    #[serde(default)]
    expired_announced: bool,
    #[serde(skip, default = "no_grant")]
    grant: Option<Arc<Grant>>,
}

fn no_grant() -> Option<Arc<Grant>> {
    None
}

impl Entry {
    fn grant(&mut self) -> Arc<Grant> {
        Arc::clone(self.grant.get_or_insert_with(|| {
            Arc::new(Grant {
                id: self.id,
                role: self.role.clone(),
                creator_uid: self.creator.uid,
                revoked: AtomicBool::new(false),
            })
        }))
    }

    /// Live connections that joined with it.
    fn holders(&self) -> usize {
        self.grant
            .as_ref()
            .map_or(0, |g| Arc::strong_count(g).saturating_sub(1))
    }

    fn view(&self, now: u64) -> serde_json::Value {
        json!({
            "id": self.id,
            "role": self.role,
            "created": self.created,
            "expires": self.expires,
            "expired": now >= self.expires,
            "uses": self.uses,
            "uses_left": self.uses_left,
            "bound": match self.bound {
                Some(Binding::Uid(u)) => json!({"uid": u}),
                Some(Binding::Gid(g)) => json!({"gid": g}),
                None => serde_json::Value::Null,
            },
            "label": self.label,
            "creator": {"uid": self.creator.uid, "pid": self.creator.pid},
            "holders": self.holders(),
        })
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut t = String::with_capacity(64);
        for x in b {
            t.push_str(&format!("{x:02x}"));
        }
        s.serialize_str(&t)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let t = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("a hash is 64 hex digits");
        if t.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = t.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *o = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(out)
    }
}

/// What `warden.invite.create` asks for (already checked against the
/// policy by the caller of [`Invitations::create`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    pub(crate) role: String,
    pub(crate) expires_secs: u64,
    #[serde(default = "one")]
    pub(crate) uses: u64,
    #[serde(default)]
    pub(crate) for_uid: Option<u32>,
    #[serde(default)]
    pub(crate) for_gid: Option<u32>,
    #[serde(default)]
    pub(crate) label: Option<String>,
}

fn one() -> u64 {
    1
}

/// Why an invitation could not be created (each maps to one wire code in
/// the built-in).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    /// A request the limits or the grammar refuse.
    #[error("{0}")]
    Bad(String),
    /// Too many invitations.
    #[error("{0}")]
    Full(String),
    /// The OS random source failed.
    #[error("cannot create an invitation: the system's random source failed ({0}); try again")]
    Random(getrandom::Error),
    /// The table could not be saved (`persist = true`): nothing was
    /// created.
    #[error("cannot create an invitation: saving the invitation table failed ({0}); nothing was created")]
    Persist(String),
}

/// Why a join was refused, for the audit log only: the joiner always gets
/// [`REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unknown,
    WrongSecret,
    Expired,
    UsedUp,
    NotForYou,
    RoleGone,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown id",
            Refusal::WrongSecret => "wrong secret",
            Refusal::Expired => "expired",
            Refusal::UsedUp => "used up",
            Refusal::NotForYou => "bound to another user or group",
            Refusal::RoleGone => "its role no longer exists or no longer fits its creator",
        }
    }
}

/// An event to publish on [`TOPIC`]: (data, creator uid).
pub(crate) type InvitationEvent = (serde_json::Value, u32);

/// A successful join: the grant the connection holds, and the events to
/// publish.
pub(crate) type Joined = (Arc<Grant>, Vec<InvitationEvent>);

/// Failed joins per uid, as token buckets.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    buckets: HashMap<u32, (f64, Instant)>,
}

impl Throttle {
    fn refill(level: f64, since: Instant, now: Instant) -> f64 {
        (level + now.duration_since(since).as_secs_f64() * THROTTLE_REFILL_PER_SEC)
            .min(THROTTLE_BURST)
    }

    /// Takes one attempt from `uid`'s bucket, or `Err(wait)` if it has none
    /// left now. Taken before the token is checked (so attempts racing on
    /// many connections cannot all pass one bucket); a success gives it
    /// back ([`Throttle::refund`]).
    fn take(&mut self, uid: u32, now: Instant) -> Result<(), Duration> {
        let level = match self.buckets.get(&uid) {
            Some(&(level, since)) => Throttle::refill(level, since, now),
            None => THROTTLE_BURST,
        };
        if level < 1.0 {
            return Err(Duration::from_secs_f64(
                (1.0 - level) / THROTTLE_REFILL_PER_SEC,
            ));
        }
        if self.buckets.len() >= THROTTLE_KEYS && !self.buckets.contains_key(&uid) {
            // Forget the uids whose buckets are full again; if every key
            // is still live, this uid goes unthrottled rather than letting
            // the table grow (it would take thousands of uids failing at
            // once).
            self.buckets
                .retain(|_, (l, since)| Throttle::refill(*l, *since, now) < THROTTLE_BURST);
            if self.buckets.len() >= THROTTLE_KEYS {
                return Ok(());
            }
        }
        self.buckets.insert(uid, (level - 1.0, now));
        Ok(())
    }

    /// Gives back the attempt a successful join took.
    fn refund(&mut self, uid: u32, now: Instant) {
        if let Some(b) = self.buckets.get_mut(&uid) {
            b.0 = (Throttle::refill(b.0, b.1, now) + 1.0).min(THROTTLE_BURST);
            b.1 = now;
        }
    }
}

/// The invitation table. See the module docs.
#[derive(Debug)]
pub(crate) struct Invitations {
    section: InvitationsSection,
    /// Where the table is persisted (`persist = true`).
    state_dir: Option<PathBuf>,
    entries: Mutex<HashMap<InvitationId, Entry>>,
    throttle: Mutex<Throttle>,
    /// Compared against when the id is unknown, so that path does the same
    /// work as a known id with a wrong secret.
    dummy: [u8; 32],
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256(secret: &Secret) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The default state directory: the one systemd gave the service
/// (`$STATE_DIRECTORY`, from the unit's `StateDirectory=warden`), else
/// `/var/lib/warden` for root, else `$XDG_STATE_HOME/warden` (or
/// `~/.local/state/warden`).
pub(crate) fn default_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|p| p.is_absolute())
    {
        return Some(d);
    }
    if warden_sys::effective_uid() == 0 {
        return Some(PathBuf::from("/var/lib/warden"));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })?;
    Some(base.join("warden"))
}

impl Invitations {
    /// An empty table, or (with `persist = true`) the one saved in the
    /// state directory, without its expired entries. A state file that
    /// cannot be read or trusted is logged and ignored: its invitations
    /// are invalid (fail closed), and it is replaced at the next change.
    pub(crate) fn new(section: InvitationsSection) -> Invitations {
        let state_dir = section
            .persist
            .then(|| section.state_dir.clone().or_else(default_state_dir))
            .flatten();
        if section.persist && state_dir.is_none() {
            tracing::error!(
                "[invitations] persist = true, but there is no state directory (set state_dir); \
                 invitations will not survive a restart"
            );
        }
        let mut dummy = [0u8; 32];
        if getrandom::fill(&mut dummy).is_err() {
            // Only the timing of unknown ids depends on it; a fixed value
            // is still a hash no secret has.
            dummy = [0x5a; 32];
        }
        let inv = Invitations {
            section,
            state_dir,
            entries: Mutex::default(),
            throttle: Mutex::default(),
            dummy,
        };
        if let Some(dir) = &inv.state_dir {
            match load(dir) {
                Ok(list) => {
                    let now = now_secs();
                    let mut map = lock(&inv.entries);
                    for e in list.into_iter().filter(|e| e.expires > now) {
                        map.insert(e.id, e);
                    }
                    tracing::info!(count = map.len(), dir = %dir.display(), "invitations loaded");
                }
                Err(e) => tracing::error!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot load the saved invitations; they are not valid until created again"
                ),
            }
        }
        inv
    }

    /// Saves the table (with `persist = true`). Blocking: file I/O.
    fn save(&self, map: &HashMap<InvitationId, Entry>) -> Result<(), String> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let list: Vec<&Entry> = map.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
        let d = warden_sys::open_private_dir(dir, true).map_err(|e| e.to_string())?;
        d.write_file_atomic(OsStr::new(STATE_FILE), &bytes, 0o600)
            .map_err(|e| e.to_string())
    }

    /// Creates an invitation for `creator`. The caller has checked that
    /// the creator may invite for the role and that the role fits it.
    /// Blocking with `persist = true` (the table is saved before the
    /// token is returned).
    pub(crate) fn create(
        &self,
        creator: Creator,
        req: CreateRequest,
    ) -> Result<(Token, serde_json::Value), CreateError> {
        let s = &self.section;
        if req.expires_secs == 0 || req.expires_secs > s.max_ttl_secs {
            return Err(CreateError::Bad(format!(
                "expires_secs must be 1 ..= {} ([invitations] max_ttl_secs)",
                s.max_ttl_secs
            )));
        }
        if req.uses == 0 || req.uses > s.max_uses {
            return Err(CreateError::Bad(format!(
                "uses must be 1 ..= {} ([invitations] max_uses)",
                s.max_uses
            )));
        }
        let bound = match (req.for_uid, req.for_gid) {
            (Some(_), Some(_)) => {
                return Err(CreateError::Bad(
                    "bind an invitation to a user or to a group, not both".into(),
                ))
            }
            (Some(u), None) => Some(Binding::Uid(u)),
            (None, Some(g)) => Some(Binding::Gid(g)),
            (None, None) => None,
        };
        if let Some(l) = &req.label {
            if l.chars().count() > MAX_LABEL_CHARS || l.chars().any(char::is_control) {
                return Err(CreateError::Bad(format!(
                    "a label is at most {MAX_LABEL_CHARS} characters, none of them control characters"
                )));
            }
        }
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(CreateError::Random)?;
        let secret = Secret::from_bytes(secret);
        let now = now_secs();
        let mut map = lock(&self.entries);
        let live = map.len() as u64;
        if live >= s.max_live {
            return Err(CreateError::Full(format!(
                "the broker holds {live} invitations ([invitations] max_live = {}); revoke some or wait for them to expire",
                s.max_live
            )));
        }
        let mine = map
            .values()
            .filter(|e| e.creator.uid == creator.uid)
            .count() as u64;
        if mine >= s.max_per_creator {
            return Err(CreateError::Full(format!(
                "uid {} already has {mine} invitations ([invitations] max_per_creator = {}); revoke some with `wardenctl invite revoke ID`",
                creator.uid, s.max_per_creator
            )));
        }
        let id = loop {
            let mut b = [0u8; ID_BYTES];
            getrandom::fill(&mut b).map_err(CreateError::Random)?;
            let id = InvitationId::from_bytes(b);
            if !map.contains_key(&id) {
                break id;
            }
        };
        let uses = u32::try_from(req.uses).unwrap_or(u32::MAX);
        let entry = Entry {
            id,
            hash: sha256(&secret),
            role: req.role,
            created: now,
            expires: now.saturating_add(req.expires_secs),
            uses,
            uses_left: uses,
            bound,
            label: req.label,
            creator,
            expired_announced: false,
            grant: None,
        };
        let view = entry.view(now);
        map.insert(id, entry);
        if let Err(e) = self.save(&map) {
            map.remove(&id);
            return Err(CreateError::Persist(e));
        }
        Ok((Token::new(id, secret), view))
    }

    /// Checks a token for `joiner` under `policy`; on success uses it up
    /// once and returns the grant (and the events to publish). One code
    /// path for every outcome; see the module docs.
    pub(crate) fn redeem(
        &self,
        policy: &Policy,
        token: &Token,
        joiner: &Identity,
    ) -> Result<Joined, (Refusal, Option<InvitationId>)> {
        let now = now_secs();
        let offered = sha256(&token.secret);
        let mut map = lock(&self.entries);
        let entry = map.get_mut(&token.id);
        let stored = entry.as_ref().map_or(&self.dummy, |e| &e.hash);
        let secret_ok: bool = offered.ct_eq(stored).into();
        let Some(entry) = entry else {
            return Err((Refusal::Unknown, None));
        };
        let refusal = if !secret_ok {
            Some(Refusal::WrongSecret)
        } else if now >= entry.expires {
            Some(Refusal::Expired)
        } else if entry.uses_left == 0 {
            Some(Refusal::UsedUp)
        } else if entry.bound.is_some_and(|b| !b.admits(joiner)) {
            Some(Refusal::NotForYou)
        } else if !still_fits(policy, &entry.creator, &entry.role) {
            Some(Refusal::RoleGone)
        } else {
            None
        };
        if let Some(r) = refusal {
            return Err((r, Some(entry.id)));
        }
        entry.uses_left -= 1;
        let grant = entry.grant();
        let creator = entry.creator.uid;
        let mut events = vec![(
            event("used", entry, json!({"uid": joiner.uid, "pid": joiner.pid})),
            creator,
        )];
        if entry.uses_left == 0 {
            events.push((event("exhausted", entry, json!({})), creator));
        }
        if let Err(e) = self.save(&map) {
            tracing::warn!(error = %e, "cannot save the invitation table after a join");
        }
        Ok((grant, events))
    }

    /// Takes one join attempt from `uid`'s bucket: `Err(wait)` if it is
    /// throttled. Call before [`Invitations::redeem`].
    pub(crate) fn attempt(&self, uid: u32) -> Result<(), Duration> {
        lock(&self.throttle).take(uid, Instant::now())
    }

    /// Gives back the attempt of a join that succeeded.
    pub(crate) fn succeeded(&self, uid: u32) {
        lock(&self.throttle).refund(uid, Instant::now());
    }

    /// The invitations `uid` created, or all for an administrator.
    pub(crate) fn list(&self, uid: u32, admin: bool) -> Vec<serde_json::Value> {
        let now = now_secs();
        let map = lock(&self.entries);
        let mut v: Vec<&Entry> = map
            .values()
            .filter(|e| admin || e.creator.uid == uid)
            .collect();
        v.sort_by_key(|e| (e.created, e.id));
        v.into_iter().map(|e| e.view(now)).collect()
    }

    /// Revokes `id` for `uid` (its creator, or an administrator): removes
    /// it and marks its grant revoked. `None` if there is no such
    /// invitation the caller may see.
    pub(crate) fn revoke(
        &self,
        id: InvitationId,
        uid: u32,
        admin: bool,
    ) -> Option<(serde_json::Value, InvitationEvent)> {
        let mut map = lock(&self.entries);
        if !map.get(&id).is_some_and(|e| admin || e.creator.uid == uid) {
            return None;
        }
        let e = map.remove(&id)?;
        let view = e.view(now_secs());
        if let Some(g) = &e.grant {
            g.revoked.store(true, Ordering::Release);
        }
        if let Err(err) = self.save(&map) {
            tracing::warn!(error = %err, "cannot save the invitation table after a revoke");
        }
        let creator = e.creator.uid;
        let ev = event("revoked", &e, json!({"by_uid": uid}));
        Some((view, (ev, creator)))
    }

    /// After a reload: revokes the invitations whose role is gone or no
    /// longer fits its creator. Returns their events.
    pub(crate) fn revalidate(&self, policy: &Policy) -> Vec<InvitationEvent> {
        let mut map = lock(&self.entries);
        let gone: Vec<InvitationId> = map
            .values()
            .filter(|e| !still_fits(policy, &e.creator, &e.role))
            .map(|e| e.id)
            .collect();
        let mut events = Vec::new();
        for id in gone {
            if let Some(e) = map.remove(&id) {
                if let Some(g) = &e.grant {
                    g.revoked.store(true, Ordering::Release);
                }
                tracing::info!(id = %e.id, role = %e.role, "invitation revoked: after the reload its role no longer fits its creator");
                events.push((
                    event("revoked", &e, json!({"reason": "policy"})),
                    e.creator.uid,
                ));
            }
        }
        if !events.is_empty() {
            if let Err(err) = self.save(&map) {
                tracing::warn!(error = %err, "cannot save the invitation table after a reload");
            }
        }
        events
    }

    /// Announces invitations that expired since the last sweep, and
    /// forgets expired ones no live connection holds. Returns the events.
    pub(crate) fn sweep(&self) -> Vec<InvitationEvent> {
        let now = now_secs();
        let mut map = lock(&self.entries);
        let mut events = Vec::new();
        for e in map.values_mut() {
            if now >= e.expires && !e.expired_announced {
                e.expired_announced = true;
                events.push((event("expired", e, json!({})), e.creator.uid));
            }
        }
        let before = map.len();
        map.retain(|_, e| now < e.expires || e.holders() > 0);
        if map.len() != before {
            if let Err(err) = self.save(&map) {
                tracing::warn!(error = %err, "cannot save the invitation table after expiry");
            }
        }
        events
    }

    /// True if an expired invitation no connection holds is still kept.
    pub(crate) fn has_expired_unheld(&self) -> bool {
        let now = now_secs();
        lock(&self.entries)
            .values()
            .any(|e| now >= e.expires && e.holders() == 0)
    }

    /// The soonest expiry not yet announced.
    pub(crate) fn next_expiry(&self) -> Option<SystemTime> {
        lock(&self.entries)
            .values()
            .filter(|e| !e.expired_announced)
            .map(|e| UNIX_EPOCH + Duration::from_secs(e.expires))
            .min()
    }
}

/// Whether the creator may still hand out `role` under `policy`: the role
/// exists, the creator has `invite` on it, and the role fits it.
pub(crate) fn still_fits(policy: &Policy, creator: &Creator, role: &str) -> bool {
    let c = creator.caller();
    policy.role(role).is_some()
        && policy.decide(&c, Action::Invite, role).allowed
        && policy.role_fits(&c, role).is_ok()
}

fn event(kind: &str, e: &Entry, extra: serde_json::Value) -> serde_json::Value {
    let mut v = json!({
        "event": kind,
        "id": e.id,
        "role": e.role,
        "creator_uid": e.creator.uid,
        "label": e.label,
    });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in x {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

fn load(dir: &std::path::Path) -> Result<Vec<Entry>, String> {
    let d = match warden_sys::open_private_dir(dir, false) {
        Ok(d) => d,
        Err(warden_sys::EndpointError::MissingDir { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let Some((bytes, meta)) = d
        .read_file(OsStr::new(STATE_FILE), STATE_FILE_MAX)
        .map_err(|e| e.to_string())?
    else {
        return Ok(Vec::new());
    };
    let me = warden_sys::effective_uid();
    if meta.uid != me || meta.mode & 0o077 != 0 {
        return Err(format!(
            "{}/{STATE_FILE} is owned by uid {} with mode {:04o}; it must be the broker's (uid {me}) and mode 0600",
            dir.display(),
            meta.uid,
            meta.mode
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{}/{STATE_FILE}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_refuses_past_the_burst_and_refills() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..THROTTLE_BURST as usize {
            assert!(t.take(7, t0).is_ok());
        }
        assert!(t.take(7, t0).is_err());
        // Another uid is not affected.
        assert!(t.take(8, t0).is_ok());
        let later = t0 + Duration::from_secs_f64(1.0 / THROTTLE_REFILL_PER_SEC + 0.01);
        assert!(t.take(7, later).is_ok());
        assert!(t.take(7, later).is_err());
        // A success gives its attempt back.
        t.refund(7, later);
        assert!(t.take(7, later).is_ok());
    }

    #[test]
    fn bindings_admit_their_user_or_group_members_only() {
        let who = |uid, gid, groups: &[u32]| Identity {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: 1,
            host: None,
            session: None,
        };
        assert!(Binding::Uid(5).admits(&who(5, 5, &[])));
        assert!(!Binding::Uid(5).admits(&who(6, 5, &[5])));
        assert!(Binding::Gid(9).admits(&who(6, 9, &[])));
        assert!(Binding::Gid(9).admits(&who(6, 6, &[9])));
        assert!(!Binding::Gid(9).admits(&who(6, 6, &[8])));
    }
}
