//! The narrow view of a caller that the semantic layer works with, and
//! what it answers.
//!
//! Built-ins, pub/sub and the router take a [`CallerView`] (the caller's
//! peer handle and policy snapshot) rather than a connection's state, and
//! return an [`Outcome`]; only the transport turns that into bytes.

use warden_policy::CallerPolicy;
use warden_proto::Message;

use crate::peer::PeerRef;

/// The caller, as the semantic layer sees it.
pub(crate) struct CallerView<'a> {
    pub(crate) peer: &'a PeerRef,
    pub(crate) policy: &'a mut CallerPolicy,
}

/// What to send the caller for one request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// This frame, now (in the caller's batch).
    Answer(Message),
    /// Nothing now: the answer comes later (routed or at a handler) or
    /// none is due.
    Later,
}

/// Records a denied request in the audit log (see [`crate::audit`]):
/// who (uid, gid, pid, comm, exe, connection), what (action, target),
/// the deciding rule, and the result.
pub(crate) fn audit_denied(peer: &PeerRef, action: &str, target: &str, rule: &str) {
    // Checked first: a denial the rate limit holds back costs no read of
    // the caller's executable.
    if !crate::audit::admitted(Some(peer.identity.uid), action) {
        return;
    }
    crate::audit::write(&crate::audit::Record {
        actor: &crate::audit::Actor::of_peer(peer),
        action,
        target: target.into(),
        rule: Some(rule),
        result: "denied",
        message: "request denied",
        extra: serde_json::Value::Null,
    });
}
