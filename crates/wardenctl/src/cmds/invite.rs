//! `wardenctl invite create|list|revoke`: invitations (`warden.invite.*`).
//!
//! The token is shown once: printed, or written to a file that is created
//! (never replaced, never through a symlink) with mode 0600 in a directory
//! only the user or root can write. It is never logged, and never part of
//! an error message.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use warden_client::Client;
use zeroize::Zeroizing;

use super::{group_name, user_name};
use crate::error::Error;
use crate::output::{cell, table, Align, Output};
use crate::term;

/// What `invite create` was asked.
#[derive(Debug)]
pub struct CreateArgs<'a> {
    pub role: &'a str,
    pub expires: Duration,
    pub uses: u64,
    pub for_user: Option<&'a str>,
    pub for_group: Option<&'a str>,
    pub label: Option<&'a str>,
    pub output: Option<&'a Path>,
}

fn uid_of(user: &str) -> Result<u32, Error> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    warden_sys::user_by_name(user)
        .map_err(|e| Error::Usage(format!("looking up user {user}: {e}")))?
        .map(|u| u.uid)
        .ok_or_else(|| Error::Usage(format!("no such user: {user}")))
}

fn gid_of(group: &str) -> Result<u32, Error> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    warden_sys::group_by_name(group)
        .map_err(|e| Error::Usage(format!("looking up group {group}: {e}")))?
        .ok_or_else(|| Error::Usage(format!("no such group: {group}")))
}

/// Where the token goes, checked before anything is asked of the broker:
/// `None` prints it.
struct Destination<'a> {
    dir: warden_sys::Dir,
    name: &'a OsStr,
    path: &'a Path,
}

fn destination(output: Option<&Path>) -> Result<Option<Destination<'_>>, Error> {
    let Some(path) = output.filter(|p| p.as_os_str() != "-") else {
        return Ok(None);
    };
    let bad = |why: String| Error::Usage(format!("--output {}: {why}", path.display()));
    let name = path
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| bad("name a file".into()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::env::current_dir().map_err(|e| bad(format!("the current directory: {e}")))?,
    };
    let parent = if parent.is_absolute() {
        parent
    } else {
        std::env::current_dir()
            .map_err(|e| bad(format!("the current directory: {e}")))?
            .join(parent)
    };
    let dir = warden_sys::open_private_dir(&parent, false).map_err(|e| {
        bad(format!(
            "{e}; write the token into a directory only you (or root) can write, such as your home"
        ))
    })?;
    match dir.stat_at(name) {
        Ok(None) => {}
        Ok(Some(m)) => {
            return Err(bad(format!(
                "something is already there (a {}, owner uid {}); choose a new file name",
                m.kind.describe(),
                m.uid
            )))
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    Ok(Some(Destination { dir, name, path }))
}

fn when(secs: &Value) -> String {
    let Some(s) = secs.as_u64() else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if s <= now {
        return format!("expired {} ago", human(now - s));
    }
    format!("in {}", human(s - now))
}

fn human(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn bound(v: &Value) -> String {
    if let Some(u) = v["uid"].as_u64() {
        return format!("user {}", user_name(u));
    }
    if let Some(g) = v["gid"].as_u64() {
        return format!("group {}", group_name(g));
    }
    "-".into()
}

/// `wardenctl invite create`.
pub async fn create(client: &Client, out: Output, a: &CreateArgs<'_>) -> Result<(), Error> {
    let dest = destination(a.output)?;
    let mut params = json!({
        "role": a.role,
        "expires_secs": a.expires.as_secs().max(1),
        "uses": a.uses,
    });
    if let Some(u) = a.for_user {
        params["for_uid"] = uid_of(u)?.into();
    }
    if let Some(g) = a.for_group {
        params["for_gid"] = gid_of(g)?.into();
    }
    if let Some(l) = a.label {
        params["label"] = l.into();
    }
    let mut answer = client.call_json("warden.invite.create", params).await?;
    let token = Zeroizing::new(
        answer
            .get_mut("token")
            .map(Value::take)
            .and_then(|t| t.as_str().map(str::to_owned))
            .ok_or_else(|| Error::Operation("the broker's answer has no token".into()))?,
    );
    if let Some(obj) = answer.as_object_mut() {
        obj.remove("token");
    }
    match dest {
        Some(d) => {
            let mut bytes = Zeroizing::new(token.as_bytes().to_vec());
            bytes.push(b'\n');
            if let Err(e) = d.dir.create_file_atomic(d.name, &bytes, 0o600) {
                // Something appeared at the name since it was checked, or
                // the write failed: the token is not kept anywhere, so the
                // invitation is revoked rather than left usable by nobody.
                let id = answer["id"].as_str().unwrap_or("?").to_owned();
                let revoked = client
                    .call_json("warden.invite.revoke", json!({ "id": id }))
                    .await
                    .is_ok();
                return Err(Error::Operation(format!(
                    "--output {}: {e}; {}",
                    d.path.display(),
                    if revoked {
                        format!("the invitation {id} was revoked again, nothing is usable")
                    } else {
                        format!("revoke the invitation with `wardenctl invite revoke {id}`")
                    }
                )));
            }
            answer["file"] = json!(d.path.display().to_string());
            out.emit(&answer, |r| {
                println!(
                    "invitation {} for role {} written to {} (mode 0600); it expires {} and can be used {} time(s)",
                    cell(&r["id"]),
                    cell(&r["role"]),
                    term::escape(&d.path.display().to_string()),
                    when(&r["expires"]),
                    r["uses"]
                );
            });
        }
        None => {
            if out.json {
                let mut v = answer.clone();
                v["token"] = json!(token.as_str());
                out.emit(&v, |_| {});
                if let Some(t) = v.get_mut("token") {
                    if let Value::String(s) = t.take() {
                        drop(Zeroizing::new(s));
                    }
                }
            } else {
                println!("{}", token.as_str());
                eprintln!(
                    "invitation {} for role {}: expires {}, {} use(s){}. The token is shown only this once.",
                    cell(&answer["id"]),
                    cell(&answer["role"]),
                    when(&answer["expires"]),
                    answer["uses"],
                    match bound(&answer["bound"]).as_str() {
                        "-" => String::new(),
                        b => format!(", only for {b}"),
                    }
                );
            }
        }
    }
    Ok(())
}

/// `wardenctl invite list`.
pub async fn list(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("warden.invite.list", Value::Null).await?;
    out.emit(&r, |r| {
        let empty = Vec::new();
        let list = r["invitations"].as_array().unwrap_or(&empty);
        if list.is_empty() {
            println!("no invitations");
            return;
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|i| {
                vec![
                    cell(&i["id"]),
                    cell(&i["role"]),
                    when(&i["expires"]),
                    format!("{}/{}", i["uses_left"], i["uses"]),
                    bound(&i["bound"]),
                    i["creator"]["uid"].as_u64().map_or("-".into(), user_name),
                    cell(&i["holders"]),
                    cell(&i["label"]),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    ("ID", Align::Left),
                    ("ROLE", Align::Left),
                    ("EXPIRES", Align::Left),
                    ("USES LEFT", Align::Right),
                    ("FOR", Align::Left),
                    ("CREATOR", Align::Left),
                    ("HOLDERS", Align::Right),
                    ("LABEL", Align::Left),
                ],
                &rows
            )
        );
    });
    Ok(())
}

/// `wardenctl invite revoke ID`.
pub async fn revoke(client: &Client, out: Output, id: &str) -> Result<(), Error> {
    let r = client
        .call_json("warden.invite.revoke", json!({ "id": id }))
        .await?;
    out.emit(&r, |r| {
        println!(
            "revoked invitation {} (role {}); {} connection(s) lost the role",
            cell(&r["id"]),
            cell(&r["role"]),
            r["holders"]
        );
    });
    Ok(())
}
