//! `wardenctl monitor`: calls, answers and publications, and the
//! subscriptions and publications policy refused, live.

use serde_json::{json, Value};
use warden_client::{Client, Event};
use warden_policy::NamePattern;

use super::{closed, policy::subject, revoked};
use crate::error::Error;
use crate::output::Output;
use crate::term;

/// What `monitor` shows.
#[derive(Debug)]
pub struct Filter<'a> {
    /// Only methods matching this pattern.
    pub method: Option<&'a str>,
    /// Only publications on topics matching this pattern.
    pub topic: Option<&'a str>,
    /// Only this user's traffic.
    pub user: Option<&'a str>,
    /// Show payloads.
    pub payloads: bool,
    /// Exit after this many events.
    pub count: Option<u64>,
}

/// `wardenctl monitor`: one line (or JSON object) per event.
pub async fn monitor(client: &Client, out: Output, f: &Filter<'_>) -> Result<(), Error> {
    let pattern = |p: Option<&str>| -> Result<Option<NamePattern>, Error> {
        p.map(NamePattern::parse)
            .transpose()
            .map_err(|e| Error::Usage(format!("invalid pattern: {e}")))
    };
    let (method_p, topic_p) = (pattern(f.method)?, pattern(f.topic)?);
    let uid = match f.user {
        Some(u) => Some(subject(u, &[])?.uid),
        None => None,
    };
    let monitor_topic = if f.payloads {
        "warden.monitor.payloads"
    } else {
        "warden.monitor"
    };
    client.subscribe(monitor_topic).await?;
    let mut seen = 0u64;
    while f.count.is_none_or(|c| seen < c) {
        let Some(ev) = client.next_event().await else {
            return Err(closed(client));
        };
        if let Some(e) = revoked(&ev, monitor_topic) {
            return Err(e);
        }
        let (v, missed) = match ev {
            Event::Event {
                topic,
                data,
                missed,
                ..
            } if topic.as_str().starts_with("warden.monitor") => {
                (data.parse::<Value>().unwrap_or(Value::Null), missed)
            }
            Event::Event { .. } => continue,
            Event::Lagged { missed } => (Value::Null, missed),
        };
        if missed > 0 {
            out.emit(&json!({ "lagged": missed }), |_| {
                println!("-- {missed} events missed (this monitor did not keep up) --");
            });
        }
        if v.is_null() {
            continue;
        }
        if uid.is_some_and(|u| v["uid"].as_u64() != Some(u64::from(u))) {
            continue;
        }
        let name_ok = |p: &Option<NamePattern>, key: &str| {
            p.as_ref()
                .is_none_or(|p| v[key].as_str().is_some_and(|n| p.matches(n)))
        };
        // Publications and refused subscriptions or publications are
        // about topics; everything else about methods.
        let on_topic = v.get("topic").is_some_and(Value::is_string);
        if (on_topic && (method_p.is_some() || !name_ok(&topic_p, "topic")))
            || (!on_topic && (topic_p.is_some() || !name_ok(&method_p, "method")))
        {
            continue;
        }
        seen += 1;
        out.emit(&v, print_monitor_line);
    }
    Ok(())
}

fn print_monitor_line(v: &Value) {
    let uid = v["uid"].as_u64().unwrap_or(u64::MAX);
    let name = u32::try_from(uid)
        .ok()
        .and_then(|u| warden_sys::user_by_uid(u).ok().flatten())
        .map(|u| u.name);
    println!("{}", monitor_line(v, name.as_deref()));
}

/// Width of the user-name column: longer names are cut (ending in `+`),
/// so the columns after it stay put whatever the names.
const USER_WIDTH: usize = 12;
/// Width of the `comm` column (the kernel keeps at most 15 bytes).
const COMM_WIDTH: usize = 15;

/// Cuts `s` to `width` characters, marking a cut with `+`, and pads it.
fn column(s: &str, width: usize) -> String {
    if s.chars().count() > width {
        let cut: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}+")
    } else {
        format!("{s:<width$}")
    }
}

/// One event as a line: time, uid, user name, pid and comm in fixed
/// columns, then the kind, the name, the details and the rule. Escaped
/// for the terminal (the comm, names and payloads are peers' choice).
fn monitor_line(v: &Value, user: Option<&str>) -> String {
    let time = v["time_ms"].as_u64().unwrap_or(0);
    let (secs, ms) = (time / 1000, time % 1000);
    let clock = format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
    let uid = v["uid"].as_u64().map_or("?".to_owned(), |u| u.to_string());
    // Padded, never cut: a comm is at most 15 bytes, and one that escaping
    // made longer (a hostile name) is shown whole.
    let comm = term::escape(v["comm"].as_str().unwrap_or("?"));
    let pid = v["pid"].as_u64().map_or("?".to_owned(), |p| p.to_string());
    let user = column(&term::escape(user.unwrap_or("-")), USER_WIDTH);
    let who = format!("{uid:>10} {user} pid={pid:<7} {comm:<COMM_WIDTH$}");
    let kind = v["kind"].as_str().unwrap_or("?");
    let name = v["method"].as_str().or(v["topic"].as_str()).unwrap_or("?");
    let detail = match kind {
        "call" => String::new(),
        "publish" => format!("delivered={} dropped={}", v["delivered"], v["dropped"]),
        "subscribe_denied" | "publish_denied" => "denied".to_owned(),
        _ => format!(
            "{} {} µs",
            v["code"].as_str().unwrap_or("?"),
            v["latency_us"]
        ),
    };
    let rule = v["rule"].as_str().unwrap_or("");
    let payload = ["params", "result", "data"]
        .iter()
        .find_map(|k| {
            v.get(*k)
                .filter(|p| !p.is_null())
                .map(|p| format!(" {k}={p}"))
        })
        .unwrap_or_default();
    let rest = format!("{kind:<16} {name:<28} {detail} [{rule}]{payload}");
    let rest = term::escape(&rest);
    format!("{clock} {who} {rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_stay_put_whatever_the_user_name() {
        let event = |uid: u32, pid: u32, comm: &str| {
            json!({
                "time_ms": 1_000, "kind": "subscribe_denied", "topic": "news.x", "uid": uid,
                "pid": pid, "comm": comm, "code": "denied", "rule": "no rule matched: default deny",
            })
        };
        let lines = [
            monitor_line(&event(7, 42, "sh"), Some("al")),
            monitor_line(
                &event(4_000_000_123, 4_194_304, "a-long-comm-nam"),
                Some("a-very-long-user-name-indeed"),
            ),
            monitor_line(&event(0, 1, "x"), None),
        ];
        let at = |l: &str| l.find("subscribe_denied").unwrap_or_else(|| panic!("{l}"));
        assert_eq!(at(&lines[0]), at(&lines[1]), "{lines:#?}");
        assert_eq!(at(&lines[0]), at(&lines[2]), "{lines:#?}");
        assert!(lines[1].contains("a-very-long+ "), "{}", lines[1]);
        assert!(
            lines[0].contains("news.x") && lines[0].contains(" denied "),
            "{}",
            lines[0]
        );
    }
}
