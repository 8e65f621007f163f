//! `wardenctl policy explain`: what the policy decides, and which rule
//! decides it, offline (against a file) or live (against the broker).

use std::path::Path;

use serde_json::{json, Value};
use warden_client::Client;

use crate::error::Error;
use crate::output::Output;

/// A subject for `policy explain`: a user with their groups.
pub struct Subject {
    /// The user name.
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// The supplementary groups (the primary one left out).
    pub groups: Vec<u32>,
}

/// The user `user` (name or uid) with their groups and the `extra` ones.
pub fn subject(user: &str, extra: &[String]) -> Result<Subject, Error> {
    let info = match user.parse::<u32>() {
        Ok(uid) => warden_sys::user_by_uid(uid),
        Err(_) => warden_sys::user_by_name(user),
    }
    .map_err(|e| Error::Usage(format!("looking up user {user}: {e}")))?
    .ok_or_else(|| Error::Usage(format!("no such user: {user}")))?;
    let mut groups = warden_sys::groups_of_user(&info.name, info.gid)
        .map_err(|e| Error::Usage(format!("looking up the groups of {}: {e}", info.name)))?;
    for g in extra {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => warden_sys::group_by_name(g)
                .map_err(|e| Error::Usage(format!("looking up group {g}: {e}")))?
                .ok_or_else(|| Error::Usage(format!("no such group: {g}")))?,
        };
        groups.push(gid);
    }
    groups.retain(|&g| g != info.gid);
    groups.sort_unstable();
    groups.dedup();
    Ok(Subject {
        name: info.name,
        uid: info.uid,
        gid: info.gid,
        groups,
    })
}

/// What `policy explain` asks.
#[derive(Debug)]
pub struct Question<'a> {
    /// The user (name or uid).
    pub user: &'a str,
    /// Extra groups.
    pub groups: &'a [String],
    /// The action.
    pub action: &'a str,
    /// The method or topic name.
    pub name: &'a str,
}

/// `policy explain --config FILE`: offline, against that file.
pub fn explain_offline(out: Output, q: &Question<'_>, path: &Path) -> Result<(), Error> {
    let who = subject(q.user, q.groups)?;
    let act: warden_policy::Action = q.action.parse().map_err(Error::Usage)?;
    let config = warden_policy::Config::load(path, &warden_service::SystemResolver)?;
    let caller = warden_policy::Caller {
        uid: who.uid,
        gid: who.gid,
        groups: who.groups.clone(),
        host: None,
        role: None,
    };
    // The same rendering as the broker's `warden.explain`.
    let v = config.policy.decide(&caller, act, q.name).to_json();
    print_decision(out, &who, q, &v)
}

/// `policy explain`: live, against the running broker's policy.
pub async fn explain_live(client: &Client, out: Output, q: &Question<'_>) -> Result<(), Error> {
    let who = subject(q.user, q.groups)?;
    let params = json!({
        "uid": who.uid, "gid": who.gid, "groups": who.groups,
        "action": q.action, "name": q.name,
    });
    let v = client.call_json("warden.explain", params).await?;
    print_decision(out, &who, q, &v)
}

/// Prints a decision; returns the failure that sets exit status 1 for deny.
fn print_decision(out: Output, who: &Subject, q: &Question<'_>, v: &Value) -> Result<(), Error> {
    let allowed = v["allowed"].as_bool().unwrap_or(false);
    let mut full = v.clone();
    full["user"] = Value::from(who.name.clone());
    full["uid"] = Value::from(who.uid);
    full["action"] = Value::from(q.action);
    full["name"] = Value::from(q.name);
    out.emit(&full, |_| {
        println!(
            "{}: {} may {} {}: {}",
            if allowed { "allow" } else { "deny" },
            who.name,
            q.action,
            q.name,
            v["reason"].as_str().unwrap_or("?")
        );
    });
    if allowed {
        Ok(())
    } else {
        Err(Error::Denied)
    }
}
