//! Connections the broker made itself (a child host's socketpair) carry
//! the identity the broker assigned, never the socketpair's credentials.

mod common;

use common::{start, within};
use serde_json::{json, Value};
use warden_client::{Client, ConnectOptions};
use warden_sys::PeerIdentity;

const RULES: &str = r#"
[[rule]]
actions = ["call"]
names = ["warden.whoami"]
everyone = true

[[rule]]
actions = ["call"]
names = ["test.only-4242"]
uids = [4242]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_connection_has_the_identity_the_broker_assigned() -> anyhow::Result<()> {
    let r = start(RULES).await?;
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
    // Policy sees it too: a rule for uid 4242 lets it through to the
    // (unprovided) method: unknown, where an ordinary connection of ours
    // is denied.
    let e = c.call_json("test.only-4242", Value::Null).await.err();
    let code = e
        .as_ref()
        .and_then(|e| e.code())
        .map(|c| c.as_str().to_string());
    assert_eq!(code.as_deref(), Some("unknown_method"), "{e:?}");
    let mine = common::client(&r).await?;
    let e = mine.call_json("test.only-4242", Value::Null).await.err();
    let code = e
        .as_ref()
        .and_then(|e| e.code())
        .map(|c| c.as_str().to_string());
    assert_eq!(code.as_deref(), Some("denied"), "{e:?}");
    r.stop().await
}
