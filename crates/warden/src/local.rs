//! The in-process call API: feature code in the broker calls a method
//! that a connection provides, and awaits the answer.
//!
//! The call goes through the same routing table as a connection's call
//! ([`crate::calls`]): the provider sees an ordinary routed call whose
//! `caller` is the identity the feature code acts for, the answer is
//! delivered once, a deadline turns into `timeout` (and a `cancel` to the
//! provider), a provider that disconnects gives `unavailable`, and
//! dropping the future before the answer withdraws the call (the provider
//! gets a `cancel`). Policy is not consulted: the feature code that holds
//! a [`BrokerHandle`] decides, for the identity it acts for, what it may
//! ask (it was itself reached through a policy-checked call or is the
//! broker's own logic).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use warden_proto::{ErrorCode, Identity, MethodName, Payload, WireError};

use crate::calls::{self, Forward};
use crate::registry::{Answerer, CallKey, Registry, Route};

/// A handle on a running broker for feature code (handlers get one in
/// [`crate::HandlerContext::broker`]; [`crate::Broker::handle`] gives
/// one). Cheap to clone; does not keep the broker serving.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    reg: Arc<Registry>,
}

/// How an in-process call is made.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The identity the provider sees as the caller: the user the feature
    /// code acts for.
    pub acting_for: Identity,
    /// How long to wait for the answer; the broker's `call_timeout_ms`
    /// when `None`.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Calls acting for `identity`, with the broker's call timeout.
    pub fn acting_for(identity: Identity) -> CallOptions {
        CallOptions {
            acting_for: identity,
            timeout: None,
        }
    }

    /// Sets the deadline.
    pub fn timeout(mut self, t: Duration) -> CallOptions {
        self.timeout = Some(t);
        self
    }
}

/// Withdraws the call if the future is dropped before its answer.
struct WithdrawOnDrop<'a> {
    reg: &'a Registry,
    key: Option<CallKey>,
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            calls::withdraw(self.reg, key, |_| {
                WireError::new(ErrorCode::Cancelled, "the in-process caller gave up")
            });
        }
    }
}

impl BrokerHandle {
    pub(crate) fn new(reg: Arc<Registry>) -> BrokerHandle {
        BrokerHandle { reg }
    }

    /// True if a connection currently provides `method`.
    pub fn is_provided(&self, method: &str) -> bool {
        self.reg.has_provider(method)
    }

    /// Calls `method` on the connection that provides it and waits for the
    /// answer. Cancel-safe: dropping the future withdraws the call.
    ///
    /// # Errors
    /// - `bad_request`: `method` is not a valid name;
    /// - `unknown_method`: no connection provides it;
    /// - `shutting_down`: the broker is draining;
    /// - `timeout`: no answer within the deadline (the provider is sent a
    ///   `cancel`);
    /// - `unavailable`: the provider disconnected before answering;
    /// - `too_large`: the call does not fit in a frame;
    /// - any error the provider answers.
    pub async fn call(
        &self,
        method: &str,
        params: Payload,
        opts: CallOptions,
    ) -> Result<Payload, WireError> {
        let method = self.accepting(method)?;
        let provider = match self.reg.route(&method, &opts.acting_for) {
            Route::To(p) => p,
            Route::Unknown => {
                return Err(WireError::new(
                    ErrorCode::UnknownMethod,
                    format!("no connection provides {method}"),
                ))
            }
            other => {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    crate::registry::unroutable(&method, opts.acting_for.uid, &other),
                ))
            }
        };
        self.call_peer(&provider, method, params, opts).await
    }

    /// Calls `method` on the connection of the child host `host` (the name
    /// [`crate::Broker::adopt`] gave it), whether or not it provides the
    /// method: this is how the broker commands its hosts. `method` may be
    /// in the reserved `warden.*` namespace, which no other connection can
    /// provide, so a host knows such a call comes from the broker.
    /// Cancel-safe, like [`BrokerHandle::call`].
    ///
    /// # Errors
    /// As [`BrokerHandle::call`]; `unavailable` when the host is not
    /// connected (not started yet, restarting, or failed).
    pub async fn call_host(
        &self,
        host: &str,
        method: &str,
        params: Payload,
        opts: CallOptions,
    ) -> Result<Payload, WireError> {
        self.call_host_in(host, None, method, params, opts).await
    }

    /// As [`BrokerHandle::call_host`], on the instance of the per-session
    /// host `host` that serves the logind session `session`: how the
    /// broker calls into a particular user's session. The provider sees
    /// `opts.acting_for` as the caller.
    ///
    /// # Errors
    /// As [`BrokerHandle::call_host`]; `unavailable` when no instance of
    /// `host` runs for `session`.
    pub async fn call_session_host(
        &self,
        host: &str,
        session: &str,
        method: &str,
        params: Payload,
        opts: CallOptions,
    ) -> Result<Payload, WireError> {
        self.call_host_in(host, Some(session), method, params, opts)
            .await
    }

    /// `method` as a name, if the broker takes new calls.
    fn accepting(&self, method: &str) -> Result<MethodName, WireError> {
        let name = MethodName::try_from(method)
            .map_err(|e| WireError::new(ErrorCode::BadRequest, format!("{method:?}: {e}")))?;
        if self.reg.is_draining() {
            return Err(WireError::new(
                ErrorCode::ShuttingDown,
                "the broker is shutting down and takes no new calls",
            ));
        }
        Ok(name)
    }

    async fn call_host_in(
        &self,
        host: &str,
        session: Option<&str>,
        method: &str,
        params: Payload,
        opts: CallOptions,
    ) -> Result<Payload, WireError> {
        let method = self.accepting(method)?;
        let Some(conn) = self.reg.host_connection(host, session) else {
            let which = match session {
                Some(s) => format!("the host {host} of session {s}"),
                None => format!("the host {host}"),
            };
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!("{which} is not connected (no such session, starting, restarting or failed: see wardenctl hosts)"),
            ));
        };
        self.call_peer(&conn, method, params, opts).await
    }

    async fn call_peer(
        &self,
        provider: &crate::peer::PeerRef,
        method: MethodName,
        params: Payload,
        opts: CallOptions,
    ) -> Result<Payload, WireError> {
        let started = Instant::now();
        let timeout = opts.timeout.unwrap_or(self.reg.settings.call_timeout);
        let (tx, rx) = oneshot::channel();
        let key = calls::forward(
            &self.reg,
            provider,
            Forward {
                answerer: Answerer::Local(tx),
                method,
                params,
                identity: opts.acting_for,
                started,
                deadline: started + timeout,
                rule: None,
            },
            None,
        )?;
        let mut guard = WithdrawOnDrop {
            reg: &self.reg,
            key: Some(key),
        };
        let answer = rx.await;
        guard.key = None;
        answer.unwrap_or_else(|_| {
            Err(WireError::new(
                ErrorCode::Internal,
                "the call was dropped without an answer",
            ))
        })
    }
}
