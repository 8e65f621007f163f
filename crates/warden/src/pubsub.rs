//! Publish/subscribe with bounded per-subscriber queues.
//!
//! A publisher never waits for a subscriber: each event is offered to each
//! subscriber's event queue without blocking. A full queue (or a uid over
//! its queued-bytes limit) drops the event for that subscriber and counts
//! it; the next frame the subscriber gets (an event, or a `lagged` notice
//! when its queue drains) says how many it missed. With
//! `on_slow_subscriber = "disconnect"` the subscriber is closed instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use warden_policy::{Action, SlowSubscriber};
use warden_proto::{ErrorCode, Message, Payload, RequestId, TopicName};

use crate::connection::ConnState;
use crate::hub::{lock, Conn, Hub};
use crate::queue::QueuedFrame;

impl ConnState {
    async fn deny(
        &mut self,
        id: RequestId,
        action: Action,
        topic: &TopicName,
        reason: String,
    ) -> Result<(), ()> {
        self.audit_denied(action.as_str(), topic.as_str(), &reason);
        self.send(Message::error(
            Some(id),
            ErrorCode::Denied,
            format!(
                "uid {} may not {action} {topic} ({reason})",
                self.conn.identity.uid
            ),
        ))
        .await
    }

    pub(crate) async fn handle_subscribe(
        &mut self,
        id: RequestId,
        topic: TopicName,
    ) -> Result<(), ()> {
        if topic.as_str() == crate::monitor::MONITOR_TOPIC
            || topic.as_str() == crate::monitor::MONITOR_PAYLOADS_TOPIC
        {
            return self.start_monitor(id, topic).await;
        }
        let d = self.policy.decide(Action::Subscribe, topic.as_str());
        if !d.allowed {
            return self.deny(id, Action::Subscribe, &topic, d.reason()).await;
        }
        if !self.subscriptions.contains(&topic) {
            let max = self.hub.settings.limits.max_subscriptions_per_connection;
            if self.subscriptions.len() as u64 >= max {
                return self
                    .send(Message::error(
                        Some(id),
                        ErrorCode::LimitExceeded,
                        format!("this connection already has {max} subscriptions (max_subscriptions_per_connection)"),
                    ))
                    .await;
            }
            lock(&self.hub.topics)
                .entry(topic.clone())
                .or_default()
                .push(Arc::clone(&self.conn));
            self.subscriptions.insert(topic.clone());
        }
        self.send(Message::Reply {
            id,
            result: Payload::from_value(&serde_json::json!({ "topic": topic.as_str() }))
                .unwrap_or_default(),
        })
        .await
    }

    /// Subscribing to a monitor topic: policy `monitor` on `calls` (and on
    /// `payloads` for the payload topic).
    async fn start_monitor(&mut self, id: RequestId, topic: TopicName) -> Result<(), ()> {
        let payloads = topic.as_str() == crate::monitor::MONITOR_PAYLOADS_TOPIC;
        let needed: &[&str] = if payloads {
            &["calls", "payloads"]
        } else {
            &["calls"]
        };
        for what in needed {
            let d = self.policy.decide(Action::Monitor, what);
            if !d.allowed {
                return self.deny(id, Action::Monitor, &topic, d.reason()).await;
            }
        }
        if self.monitoring.is_none() {
            lock(&self.hub.monitors).push((Arc::clone(&self.conn), payloads));
            self.hub.monitor_count.fetch_add(1, Ordering::AcqRel);
            self.monitoring = Some(payloads);
        }
        tracing::info!(
            target: "warden::audit",
            uid = self.conn.identity.uid,
            pid = self.conn.identity.pid,
            comm = self.conn.comm.as_deref().unwrap_or("?"),
            conn = self.conn.id,
            action = "monitor",
            target = topic.as_str(),
            result = "started",
            "monitoring started"
        );
        self.send(Message::Reply {
            id,
            result: Payload::from_value(&serde_json::json!({ "topic": topic.as_str() }))
                .unwrap_or_default(),
        })
        .await
    }

    /// Stops monitoring (on unsubscribe or disconnect).
    pub(crate) fn stop_monitor(&mut self) {
        if self.monitoring.take().is_some() {
            lock(&self.hub.monitors).retain(|(c, _)| c.id != self.conn.id);
            self.hub.monitor_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) async fn handle_unsubscribe(
        &mut self,
        id: RequestId,
        topic: TopicName,
    ) -> Result<(), ()> {
        if topic.as_str() == crate::monitor::MONITOR_TOPIC
            || topic.as_str() == crate::monitor::MONITOR_PAYLOADS_TOPIC
        {
            self.stop_monitor();
        }
        if self.subscriptions.remove(&topic) {
            let mut topics = lock(&self.hub.topics);
            if let Some(subs) = topics.get_mut(&topic) {
                subs.retain(|c| c.id != self.conn.id);
                if subs.is_empty() {
                    topics.remove(&topic);
                }
            }
        }
        self.send(Message::Reply {
            id,
            result: Payload::from_value(&serde_json::json!({ "topic": topic.as_str() }))
                .unwrap_or_default(),
        })
        .await
    }

    pub(crate) async fn handle_publish(
        &mut self,
        id: RequestId,
        topic: TopicName,
        data: Payload,
    ) -> Result<(), ()> {
        let d = self.policy.decide(Action::Publish, topic.as_str());
        if !d.allowed {
            return self.deny(id, Action::Publish, &topic, d.reason()).await;
        }
        if topic.is_reserved() {
            return self
                .send(Message::error(
                    Some(id),
                    ErrorCode::Denied,
                    format!("{topic} is in the reserved warden.* namespace; only the broker publishes there"),
                ))
                .await;
        }
        let monitored = self.hub.monitoring().then(|| data.clone());
        let (delivered, dropped) =
            publish(&self.hub, &topic, data, Some(self.conn.identity.clone()));
        if let Some(data) = monitored {
            self.hub.monitor_publish(
                &self.conn,
                topic.as_str(),
                &d.reason(),
                delivered,
                dropped,
                &data,
            );
        }
        self.send(Message::Reply {
            id,
            result: Payload::from_value(
                &serde_json::json!({ "delivered": delivered, "dropped": dropped }),
            )
            .unwrap_or_default(),
        })
        .await
    }
}

/// Offers an event to every subscriber of `topic`. Returns (delivered,
/// dropped).
pub(crate) fn publish(
    hub: &Hub,
    topic: &TopicName,
    data: Payload,
    publisher: Option<warden_proto::Identity>,
) -> (u64, u64) {
    let subs: Vec<Conn> = match lock(&hub.topics).get(topic) {
        Some(v) => v.clone(),
        None => return (0, 0),
    };
    let mut event = Message::Event {
        topic: topic.clone(),
        data,
        missed: 0,
        publisher,
    };
    let max = hub.settings.max_frame;
    let Some(common) = event.to_frame(max) else {
        return (0, subs.len() as u64);
    };
    let max_queued = hub.settings.limits.max_queued_bytes_per_uid;
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
            if hub.settings.slow == SlowSubscriber::Disconnect {
                sub.kill_slow();
            }
        }
    }
    (delivered, dropped)
}
