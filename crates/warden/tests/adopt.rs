//! Connections the broker made itself (a child host's socketpair) carry
//! the identity the broker assigned, never the socketpair's credentials,
//! and are matched by the `hosts` principal, never by their uid.

mod common;

use common::{start_resolved, within};
use serde_json::{json, Value};
use warden_client::{Client, ConnectOptions};
use warden_policy::StaticResolver;
use warden_sys::PeerIdentity;

const CONFIG: &str = r#"
[[host]]
name = "agent"
user = "wdn-agent"
modules = ["/usr/lib/warden/modules/libwarden_example_echo.so"]

[[rule]]
actions = ["call"]
names = ["warden.whoami"]
everyone = true

[[rule]]
actions = ["call"]
names = ["test.uid-4242"]
uids = [4242]

[[rule]]
actions = ["call"]
names = ["test.host-only"]
hosts = ["agent"]
"#;

fn code(e: Option<warden_client::CallError>) -> Option<String> {
    e.and_then(|e| e.code()).map(|c| c.as_str().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_connection_has_the_identity_the_broker_assigned() -> anyhow::Result<()> {
    let resolver = StaticResolver::default().user("wdn-agent", 4242);
    let r = start_resolved(CONFIG, &resolver, Ok).await?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    // The socketpair's SO_PEERCRED names this process; the broker is told
    // the child's identity instead.
    let me = std::process::id();
    r.broker
        .adopt(
            theirs,
            PeerIdentity {
                uid: 4242,
                gid: 4243,
                groups: vec![4244, 4245],
                pid: me,
                pidfd: Some(warden_sys::pidfd_open(me)?),
            },
            "agent",
        )
        .await?;
    let c = within(
        "the hello over the adopted channel",
        Client::over_stream(ours, ConnectOptions::new("socketpair")),
    )
    .await??;
    let who = c.call_json("warden.whoami", Value::Null).await?;
    assert_eq!(who["uid"], 4242, "{who}");
    assert_eq!(who["gid"], 4243, "{who}");
    assert_eq!(who["groups"], json!([4244, 4245]), "{who}");
    assert_eq!(who["host"], "agent", "{who}");
    // Its uid grants nothing: the uid rule does not match a host.
    let e = c.call_json("test.uid-4242", Value::Null).await.err();
    assert_eq!(code(e).as_deref(), Some("denied"));
    // The hosts rule does (the method is allowed; nobody serves it).
    let e = c.call_json("test.host-only", Value::Null).await.err();
    assert_eq!(code(e).as_deref(), Some("unknown_method"));
    // And an ordinary connection is not a host.
    let mine = common::client(&r).await?;
    let e = mine.call_json("test.host-only", Value::Null).await.err();
    assert_eq!(code(e).as_deref(), Some("denied"));
    r.stop().await
}
