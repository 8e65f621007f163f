//! Publish/subscribe without root: slow subscribers, lag accounting, and
//! the "disconnect" rule for slow subscribers.

mod common;

use common::*;
use serde_json::{json, Value};

/// Reads until `n` events are accounted for (received, or reported missed
/// in an event's `missed` or a `lagged` frame); returns (received, missed).
async fn drain_events(conn: &mut Raw, n: u64) -> anyhow::Result<(u64, u64)> {
    let (mut got, mut missed) = (0, 0);
    while got + missed < n {
        let v = conn.recv_some().await?;
        match v["kind"].as_str() {
            Some("event") => {
                got += 1;
                missed += v["missed"].as_u64().unwrap_or(0);
            }
            Some("lagged") => missed += v["missed"].as_u64().unwrap_or(0),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    Ok((got, missed))
}

async fn subscribed(r: &Running, topic: &str) -> anyhow::Result<Raw> {
    let (mut c, _) = Raw::open(&r.socket).await?;
    let v = c
        .request(json!({"kind":"subscribe","id":1,"topic":topic}))
        .await?;
    assert_eq!(v["result"]["topic"], topic, "{v}");
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_told_exactly_how_many_events_it_missed() -> anyhow::Result<()> {
    let r = start(&format!("[limits]\nsubscriber_queue_len = 8\n{OPEN_RULES}")).await?;
    const N: u64 = 1500;
    let mut stalled = subscribed(&r, "test.news").await?;
    // A second subscriber that reads all along.
    let mut reader = subscribed(&r, "test.news").await?;
    let reading = tokio::spawn(async move {
        let counts = drain_events(&mut reader, N).await;
        (reader, counts)
    });
    let (mut publisher, _) = Raw::open(&r.socket).await?;
    let pad = "x".repeat(1024);
    let (mut delivered, mut dropped) = (0, 0);
    // Pipelined batches: the publisher never waits for a subscriber, only
    // for its own replies.
    for batch in 0..N / 100 {
        for i in 1..=100 {
            let n = batch * 100 + i;
            publisher
                .send(
                    &json!({"kind":"publish","id":n,"topic":"test.news","data":{"n":n,"pad":pad}}),
                )
                .await?;
        }
        for _ in 0..100 {
            let v = publisher.recv_some().await?;
            assert_eq!(v["kind"], "reply", "{v}");
            delivered += v["result"]["delivered"].as_u64().unwrap_or(0);
            dropped += v["result"]["dropped"].as_u64().unwrap_or(0);
        }
    }
    assert_eq!(delivered + dropped, 2 * N);
    assert!(dropped > 0, "the stalled subscriber's queue never filled");
    let (mut reader, counts) = within("the reader", reading).await??;
    let (r_got, r_missed) = counts?;
    assert_eq!(r_got + r_missed, N);
    // The stalled subscriber now reads: every event is either received or
    // reported missed, and the missed counts of both add up to `dropped`.
    let (s_got, s_missed) = drain_events(&mut stalled, N).await?;
    assert_eq!(s_got + s_missed, N);
    assert!(
        s_missed > 0,
        "the stalled subscriber was not told what it missed"
    );
    assert_eq!(s_missed + r_missed, dropped);
    assert_eq!(s_got + r_got, delivered);
    // Nothing else is owed to it: a fresh event arrives with no missed count.
    let v = publisher
        .request(json!({"kind":"publish","id":N + 1,"topic":"test.news","data":"fresh"}))
        .await?;
    assert_eq!(v["result"], json!({"delivered": 2, "dropped": 0}), "{v}");
    for c in [&mut stalled, &mut reader] {
        let e = c.recv_some().await?;
        assert_eq!(
            (e["kind"].clone(), e["data"].clone()),
            (json!("event"), json!("fresh")),
            "{e}"
        );
        assert!(e.get("missed").is_none(), "{e}");
    }
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_reports_missed_and_lagged_counts() -> anyhow::Result<()> {
    let r = start(&format!("[limits]\nsubscriber_queue_len = 4\n{OPEN_RULES}")).await?;
    let sub = client(&r).await?;
    sub.subscribe("test.news").await?;
    // The client library reads into its own inbox all along; whether the
    // broker's 4-event queue for it overflows depends on scheduling. What
    // must hold either way: every event is received or reported missed,
    // and the missed counts add up to the publisher's `dropped`.
    let (mut publisher, _) = Raw::open(&r.socket).await?;
    const N: u64 = 3000;
    let pad = "z".repeat(2048);
    let mut dropped = 0;
    for batch in 0..N / 100 {
        for i in 1..=100 {
            let n = batch * 100 + i;
            publisher
                .send(
                    &json!({"kind":"publish","id":n,"topic":"test.news","data":{"n":n,"pad":pad}}),
                )
                .await?;
        }
        for _ in 0..100 {
            let v = publisher.recv_some().await?;
            dropped += v["result"]["dropped"].as_u64().unwrap_or(0);
        }
    }
    let (mut got, mut missed) = (0, 0);
    while got + missed < N {
        match within("an event", sub.next_event()).await? {
            Some(warden_client::Event::Event { missed: m, .. }) => {
                got += 1;
                missed += m;
            }
            Some(warden_client::Event::Lagged { missed: m }) => missed += m,
            None => anyhow::bail!("the connection closed"),
        }
    }
    assert_eq!(got + missed, N);
    assert_eq!(missed, dropped);
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_disconnect_a_slow_subscriber_is_closed_with_limit_exceeded_and_others_go_on(
) -> anyhow::Result<()> {
    let r = start(&format!(
        "[broker]\non_slow_subscriber = \"disconnect\"\n[limits]\nsubscriber_queue_len = 8\n{OPEN_RULES}"
    ))
    .await?;
    let mut stalled = subscribed(&r, "test.news").await?;
    let reader = client(&r).await?;
    reader.subscribe("test.news").await?;
    let (mut publisher, _) = Raw::open(&r.socket).await?;
    r.wait_connections(3).await?;
    let pad = "y".repeat(4096);
    let mut dropped = 0;
    let mut published = 0u64;
    // In lockstep with the reader (it gets each event before the next is
    // published), so only the stalled subscriber can fall behind.
    for id in 1..=5000u64 {
        let v = publisher
            .request(
                json!({"kind":"publish","id":id,"topic":"test.news","data":{"n":id,"pad":pad}}),
            )
            .await?;
        assert_eq!(v["kind"], "reply", "{v}");
        published += 1;
        match within("the reader's event", reader.next_event()).await? {
            Some(warden_client::Event::Event { data, missed, .. }) => {
                assert_eq!(data.parse::<Value>()?["n"], id);
                assert_eq!(missed, 0);
            }
            other => panic!("the reader got {other:?}"),
        }
        dropped += v["result"]["dropped"].as_u64().unwrap_or(0);
        if dropped > 0 {
            break;
        }
    }
    assert_eq!(dropped, 1, "the queue never filled in {published} events");
    // The stalled subscriber finds the events it had, then the reason,
    // then EOF.
    let frames = stalled.recv_to_eof().await?;
    let errors: Vec<&Value> = frames.iter().filter(|v| v["kind"] == "error").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error"]["code"], "limit_exceeded", "{errors:?}");
    assert!(errors[0].get("id").is_none(), "{errors:?}");
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("on_slow_subscriber"),
        "{errors:?}"
    );
    assert_eq!(
        frames.last().map(|v| v["kind"].clone()),
        Some(json!("error"))
    );
    assert!(
        frames.len() as u64 <= published,
        "more events than were published"
    );
    r.wait_connections(2).await?;
    // The other subscriber and the publisher carry on.
    for id in 10_001..=10_005u64 {
        let v = publisher
            .request(json!({"kind":"publish","id":id,"topic":"test.news","data":{"n":id}}))
            .await?;
        assert_eq!(v["result"], json!({"delivered": 1, "dropped": 0}), "{v}");
        match within("the reader's event", reader.next_event()).await? {
            Some(warden_client::Event::Event { data, .. }) => {
                assert_eq!(data.parse::<Value>()?["n"], id)
            }
            other => panic!("the reader got {other:?}"),
        }
    }
    let v = publisher.call(99_999, "warden.ping", Value::Null).await?;
    assert_eq!(v["result"]["pong"], true, "{v}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_counts_subscribers_and_reserved_topics_are_refused() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let a = client(&r).await?;
    let b = client(&r).await?;
    a.subscribe("test.t").await?;
    b.subscribe("test.t").await?;
    let p = client(&r).await?;
    let v = p
        .publish("test.t", warden_proto::Payload::from_value(&1)?)
        .await?;
    assert_eq!(v, json!({"delivered": 2, "dropped": 0}));
    b.unsubscribe("test.t").await?;
    let v = p
        .publish("test.t", warden_proto::Payload::from_value(&2)?)
        .await?;
    assert_eq!(v, json!({"delivered": 1, "dropped": 0}));
    let v = p
        .publish("test.none", warden_proto::Payload::null())
        .await?;
    assert_eq!(v, json!({"delivered": 0, "dropped": 0}));
    let e = p
        .publish("warden.policy.revoked", warden_proto::Payload::null())
        .await
        .err();
    assert_eq!(
        e.and_then(|e| e.code()),
        Some(warden_proto::ErrorCode::Denied)
    );
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_once_addressed_is_reported_to_its_subscriber_as_missed(
) -> anyhow::Result<()> {
    let r = start(&format!("[limits]\nmax_frame_bytes = 4096\n{OPEN_RULES}")).await?;
    let mut sub = subscribed(&r, "test.big").await?;
    let (mut publisher, _) = Raw::open(&r.socket).await?;
    // The publish frame fits; the event, which adds the publisher's
    // identity, may not. Find a size where it does not.
    let mut dropped = 0u64;
    let mut id = 1u64;
    for len in (3900..4030).step_by(4) {
        id += 1;
        let v = publisher
            .request(json!({"kind":"publish","id":id,"topic":"test.big","data":"x".repeat(len)}))
            .await?;
        if v["kind"] == "reply" && v["result"]["dropped"] == 1 {
            dropped = 1;
            break;
        }
    }
    assert_eq!(
        dropped, 1,
        "no size made the event too large but not the publish"
    );
    // Everything published before the drop was delivered; the drop is
    // reported with the next frame the subscriber gets.
    let v = publisher
        .request(json!({"kind":"publish","id":id + 1,"topic":"test.big","data":"small"}))
        .await?;
    assert_eq!(v["result"]["delivered"], 1, "{v}");
    let (mut got, mut missed) = (0u64, 0u64);
    while missed == 0 {
        let v = within("the subscriber's frames", sub.recv_some()).await??;
        match v["kind"].as_str() {
            Some("event") => {
                got += 1;
                missed += v["missed"].as_u64().unwrap_or(0);
            }
            Some("lagged") => missed += v["missed"].as_u64().unwrap_or(0),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    assert_eq!(missed, 1, "exactly the one oversized event is reported");
    assert!(got >= 1);
    r.stop().await
}
