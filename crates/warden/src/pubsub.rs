//! Publish/subscribe with bounded per-subscriber queues.
//!
//! A publisher never waits for a subscriber: each event is offered to each
//! subscriber's event queue without blocking. A full queue (or a uid over
//! its queued-bytes limit) drops the event for that subscriber and counts
//! it; the count is reported once, in the `missed` field of the next
//! event queued for that subscriber or, if its queue empties first, in a
//! `lagged` frame. With `on_slow_subscriber = "disconnect"` the subscriber
//! is closed instead.

use std::sync::atomic::Ordering;

use warden_policy::{Action, SlowSubscriber};
use warden_proto::{ErrorCode, Identity, Message, Payload, RequestId, TopicName};

use crate::monitor::{MONITOR_PAYLOADS_TOPIC, MONITOR_TOPIC};
use crate::queue::QueuedFrame;
use crate::registry::Registry;
use crate::view::{audit_denied, CallerView, Outcome};

/// Refuses a subscription or publication: audited, shown to monitors
/// (`subscribe_denied` / `publish_denied`), answered `denied`.
fn deny(
    reg: &Registry,
    view: &CallerView<'_>,
    id: RequestId,
    action: Action,
    topic: &TopicName,
    reason: String,
) -> Outcome {
    audit_denied(view.peer, action.as_str(), topic.as_str(), &reason);
    crate::monitor::denied(reg, view.peer, action, topic.as_str(), &reason);
    Outcome::Answer(Message::error(
        Some(id),
        ErrorCode::Denied,
        format!(
            "uid {} may not {action} {topic} ({reason})",
            view.peer.identity.uid
        ),
    ))
}

fn topic_reply(id: RequestId, topic: &TopicName) -> Outcome {
    Outcome::Answer(Message::Reply {
        id,
        result: Payload::from_value(&serde_json::json!({ "topic": topic.as_str() }))
            .unwrap_or_default(),
    })
}

fn is_monitor_topic(topic: &TopicName) -> bool {
    topic.as_str() == MONITOR_TOPIC || topic.as_str() == MONITOR_PAYLOADS_TOPIC
}

pub(crate) fn subscribe(
    reg: &Registry,
    view: CallerView<'_>,
    id: RequestId,
    topic: TopicName,
) -> Outcome {
    if is_monitor_topic(&topic) {
        return start_monitor(reg, view, id, topic);
    }
    let d = view.policy.decide(Action::Subscribe, topic.as_str());
    if !d.allowed {
        return deny(reg, &view, id, Action::Subscribe, &topic, d.reason());
    }
    if let Err(max) = reg.subscribe(view.peer.id, &topic) {
        return Outcome::Answer(Message::error(
            Some(id),
            ErrorCode::LimitExceeded,
            format!("this connection already has {max} subscriptions (max_subscriptions_per_connection)"),
        ));
    }
    topic_reply(id, &topic)
}

/// Subscribing to a monitor topic: policy `monitor` on `calls` (and on
/// `payloads` for the payload topic).
fn start_monitor(reg: &Registry, view: CallerView<'_>, id: RequestId, topic: TopicName) -> Outcome {
    let payloads = topic.as_str() == MONITOR_PAYLOADS_TOPIC;
    let needed: &[&str] = if payloads {
        &["calls", "payloads"]
    } else {
        &["calls"]
    };
    let mut rule = String::new();
    for what in needed {
        let d = view.policy.decide(Action::Monitor, what);
        if !d.allowed {
            return deny(reg, &view, id, Action::Monitor, &topic, d.reason());
        }
        rule = d.reason();
    }
    reg.start_monitor(view.peer.id, payloads);
    crate::audit::record(crate::audit::Record {
        actor: &crate::audit::Actor::of_peer(view.peer),
        action: "monitor",
        target: topic.as_str().into(),
        rule: Some(&rule),
        result: "started",
        message: "monitoring started",
        extra: serde_json::Value::Null,
    });
    topic_reply(id, &topic)
}

pub(crate) fn unsubscribe(
    reg: &Registry,
    view: CallerView<'_>,
    id: RequestId,
    topic: TopicName,
) -> Outcome {
    if is_monitor_topic(&topic) {
        reg.stop_monitor(view.peer.id);
    }
    reg.unsubscribe(view.peer.id, &topic);
    topic_reply(id, &topic)
}

pub(crate) fn publish_request(
    reg: &Registry,
    view: CallerView<'_>,
    id: RequestId,
    topic: TopicName,
    data: Payload,
) -> Outcome {
    let d = view.policy.decide(Action::Publish, topic.as_str());
    if !d.allowed {
        return deny(reg, &view, id, Action::Publish, &topic, d.reason());
    }
    if topic.is_reserved() {
        return Outcome::Answer(Message::error(
            Some(id),
            ErrorCode::Denied,
            format!(
                "{topic} is in the reserved warden.* namespace; only the broker publishes there"
            ),
        ));
    }
    let monitored = reg.monitoring().then(|| data.clone());
    let (delivered, dropped) = publish(reg, &topic, data, Some(view.peer.identity.clone()));
    if let Some(data) = monitored {
        crate::monitor::publish(
            reg,
            view.peer,
            topic.as_str(),
            &d.reason(),
            delivered,
            dropped,
            &data,
        );
    }
    Outcome::Answer(Message::Reply {
        id,
        result: Payload::from_value(
            &serde_json::json!({ "delivered": delivered, "dropped": dropped }),
        )
        .unwrap_or_default(),
    })
}

/// Replaces the policy: invitations whose role no longer fits their
/// creator are revoked first (their connections drop the role when they
/// recompile), then every connection recompiles its snapshot, and the
/// revocations are announced.
pub(crate) fn set_policy(reg: &Registry, policy: std::sync::Arc<warden_policy::Policy>) {
    let events = reg.invitations.revalidate(&policy);
    reg.policy_tx.send_replace(policy);
    publish_invitation_events(reg, events);
}

/// Publishes invitation events on `warden.invitations`, each only to
/// subscribers that are its invitation's creator (by uid, not itself
/// invited) or administrators.
pub(crate) fn publish_invitation_events(
    reg: &Registry,
    events: Vec<crate::invitations::InvitationEvent>,
) {
    if events.is_empty() {
        return;
    }
    let Ok(topic) = TopicName::try_from(crate::invitations::TOPIC) else {
        return;
    };
    let policy = reg.current_policy();
    for (data, creator) in events {
        let Ok(data) = Payload::from_value(&data) else {
            continue;
        };
        publish_to(reg, &topic, data, None, |sub| {
            sub.identity.host.is_none()
                && ((sub.identity.uid == creator && sub.grant().is_none())
                    || policy.is_admin(&warden_policy::Caller::from(&sub.identity)))
        });
    }
}

/// Offers an event to every subscriber of `topic`. Returns (delivered,
/// dropped).
pub(crate) fn publish(
    reg: &Registry,
    topic: &TopicName,
    data: Payload,
    publisher: Option<Identity>,
) -> (u64, u64) {
    publish_to(reg, topic, data, publisher, |_| true)
}

/// [`publish`], to the subscribers `to` admits.
fn publish_to(
    reg: &Registry,
    topic: &TopicName,
    data: Payload,
    publisher: Option<Identity>,
    to: impl Fn(&crate::peer::Peer) -> bool,
) -> (u64, u64) {
    let mut subs = reg.subscribers(topic);
    subs.retain(|s| to(s));
    if subs.is_empty() {
        return (0, 0);
    }
    let mut event = Message::Event {
        topic: topic.clone(),
        data,
        missed: 0,
        publisher,
    };
    let max = reg.settings.max_frame;
    let Some(common) = event.to_frame(max) else {
        // Too large for anyone: a drop for every subscriber, reported to
        // each like any other.
        for sub in &subs {
            sub.missed.fetch_add(1, Ordering::AcqRel);
        }
        return (0, subs.len() as u64);
    };
    let max_queued = reg.settings.limits.max_queued_bytes_per_uid;
    let (mut delivered, mut dropped) = (0u64, 0u64);
    for sub in subs {
        let missed = sub.missed.swap(0, Ordering::AcqRel);
        let bytes = if missed == 0 {
            Some(common.clone())
        } else {
            if let Message::Event { missed: m, .. } = &mut event {
                *m = missed;
            }
            event.to_frame(max)
        };
        let queued = bytes.and_then(|b| QueuedFrame::charge(b, &sub.account, max_queued));
        let ok = match queued {
            Some(f) => match sub.ev_tx.try_send(f) {
                Ok(()) => true,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    sub.missed.fetch_add(missed, Ordering::AcqRel);
                    continue;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => false,
            },
            None => false,
        };
        if ok {
            delivered += 1;
        } else {
            dropped += 1;
            sub.missed.fetch_add(missed + 1, Ordering::AcqRel);
            if reg.settings.slow == SlowSubscriber::Disconnect {
                sub.kill.kill_slow();
            }
        }
    }
    (delivered, dropped)
}
