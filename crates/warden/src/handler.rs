//! Methods served inside the broker by feature code: the [`Handler`]
//! trait and what a handler gets with each call.
//!
//! A handler is asynchronous. The broker runs each call as a task of its
//! own, off the caller's read loop, under the caller's in-flight limit, so
//! a slow handler delays only its own answer; work that blocks (loading a
//! BPF object, reading `/proc`, waiting on a thread) belongs in
//! `tokio::task::spawn_blocking`. A panic while the future is polled is
//! caught and becomes an `internal` error for that call only.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use warden_policy::Policy;
use warden_proto::{Identity, Payload, WireError};

/// What [`Handler::call`] returns: the answer, later.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Payload, WireError>> + Send + 'static>>;

/// Context a [`Handler`] gets with each call.
#[derive(Debug, Clone)]
pub struct HandlerContext {
    /// The caller's identity, as the kernel reported it at connect.
    pub caller: Identity,
    /// The role the caller holds because it joined by invitation.
    pub role: Option<String>,
    /// The caller's connection id.
    pub connection: u64,
    /// True if the caller is an administrator under the current policy.
    pub is_admin: bool,
    /// The policy in force when the call arrived, for handlers that make
    /// further decisions (e.g. learning mode's `learn` action).
    pub policy: Arc<Policy>,
    /// The caller's connection: events to it, its close, its pidfd.
    pub channel: crate::CallerChannel,
    /// The broker, for calls into connections that provide methods
    /// ([`crate::BrokerHandle::call`]).
    pub broker: crate::BrokerHandle,
}

impl HandlerContext {
    /// Decides `action` on `name` for the caller under [`Self::policy`],
    /// with the identity the kernel reported at connect and its role.
    pub fn decide(&self, action: warden_policy::Action, name: &str) -> warden_policy::Decision {
        let mut caller = warden_policy::Caller::from(&self.caller);
        caller.role = self.role.clone();
        self.policy.decide(&caller, action, name)
    }
}

/// A method served inside the broker (other than the `warden.*` built-ins),
/// e.g. by a feature crate. Policy is checked before the handler runs.
pub trait Handler: Send + Sync + 'static {
    /// Starts serving one call; the broker awaits the future in a task of
    /// its own. The error is sent to the caller as is.
    fn call(&self, ctx: HandlerContext, params: Payload) -> HandlerFuture;

    /// What the method does, in one line, for `warden.introspect`.
    fn description(&self) -> Option<&str> {
        None
    }
}

/// Polls a future, turning a panic into `Err(())`.
pub(crate) struct CatchPanic<F>(pub(crate) Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        // The future is never polled again after a panic (its task ends
        // with the error), so no broken state is observed.
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
