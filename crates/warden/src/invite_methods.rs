//! The `warden.invite.*` built-ins: create, list and revoke invitations
//! (`wardenctl invite`). The table itself is [`crate::invitations`].
//!
//! Anyone the policy lets call them may, but `create` also needs the
//! `invite` action on the role, the role must fit the caller's own
//! permissions, and a connection that joined by invitation cannot invite.
//! `list` shows the caller's own invitations (an administrator's: all),
//! never a secret; `revoke` is for the creator and administrators. Every
//! request is one audit record. They run as tasks of their own: with
//! `persist = true` a change writes the state file.

use std::sync::Arc;

use serde_json::json;
use warden_policy::{Action, ContainmentError};
use warden_proto::invitation::InvitationId;
use warden_proto::{ErrorCode, Payload, WireError};

use crate::invitations::{CreateError, CreateRequest, Creator};
use crate::peer::PeerRef;
use crate::registry::Registry;

/// What the names of these built-ins start with.
pub(crate) const PREFIX: &str = crate::invitations::METHOD_PREFIX;
/// Creates an invitation and answers its token, once.
pub(crate) const CREATE: &str = "warden.invite.create";
/// Lists invitations (no secrets).
pub(crate) const LIST: &str = "warden.invite.list";
/// Revokes an invitation.
pub(crate) const REVOKE: &str = "warden.invite.revoke";

/// One line on what each does, for `warden.introspect`.
pub(crate) fn description(name: &str) -> &'static str {
    match name {
        CREATE => "Creates an invitation for a role and answers its token (once)",
        LIST => "Lists your invitations (an administrator's: all), without secrets",
        REVOKE => "Revokes an invitation; connections that joined with it lose the role",
        _ => "",
    }
}

fn payload(v: serde_json::Value) -> Result<Payload, WireError> {
    Payload::from_value(&v).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}

/// Serves one of them, as a task of its own.
pub(crate) fn call(
    reg: Arc<Registry>,
    peer: PeerRef,
    method: String,
    params: Payload,
    rule: String,
) -> crate::HandlerFuture {
    Box::pin(async move {
        match method.as_str() {
            CREATE => create(reg, peer, params, rule).await,
            LIST => list(&reg, &peer, &params),
            REVOKE => revoke(&reg, &peer, &params, &rule),
            _ => Err(WireError::new(
                ErrorCode::UnknownMethod,
                format!("no built-in serves {method}"),
            )),
        }
    })
}

fn audit(
    peer: &PeerRef,
    action: &str,
    target: serde_json::Value,
    rule: Option<&str>,
    result: &str,
    message: &str,
    extra: serde_json::Value,
) {
    crate::audit::record(crate::audit::Record {
        actor: &crate::audit::Actor::of_peer(peer),
        action,
        target,
        rule,
        result,
        message,
        extra,
    });
}

async fn create(
    reg: Arc<Registry>,
    peer: PeerRef,
    params: Payload,
    rule: String,
) -> Result<Payload, WireError> {
    let req: CreateRequest = params.parse().map_err(|e| {
        WireError::new(
            ErrorCode::BadRequest,
            format!(
                "warden.invite.create takes {{\"role\", \"expires_secs\", \"uses\", \"for_uid\" or \"for_gid\", \"label\"}}: {e}"
            ),
        )
    })?;
    let role = req.role.clone();
    let refuse = |code: ErrorCode, rule: Option<&str>, text: String| {
        audit(
            &peer,
            "invitation.create",
            role.as_str().into(),
            rule,
            "denied",
            "invitation refused at creation",
            json!({"error": text}),
        );
        Err(WireError::new(code, text))
    };
    if peer.grant().is_some() {
        return refuse(
            ErrorCode::Denied,
            None,
            "a connection that joined by invitation cannot invite; ask the one who invited you"
                .into(),
        );
    }
    if peer.identity.host.is_some() {
        return refuse(ErrorCode::Denied, None, "a child host cannot invite".into());
    }
    let policy = reg.current_policy();
    if policy.role(&role).is_none() {
        let known: Vec<&str> = policy.roles().iter().map(|r| r.name.as_str()).collect();
        return refuse(
            ErrorCode::BadRequest,
            None,
            format!(
                "no [[role]] is named {role:?}; configured roles: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
    let caller = peer.caller();
    let d = policy.decide(&caller, Action::Invite, &role);
    if !d.allowed {
        let reason = d.reason();
        return refuse(
            ErrorCode::Denied,
            Some(&reason),
            format!(
                "uid {} may not invite for role {role} ({reason}); that needs the `invite` action on {role}",
                peer.identity.uid
            ),
        );
    }
    if let Err(e) = policy.role_fits(&caller, &role) {
        let text = match e {
            ContainmentError::Overreach(_) => format!(
                "the role is wider than your own permissions, so you cannot hand it out: {e}"
            ),
            ContainmentError::UnknownRole(_) => e.to_string(),
        };
        return refuse(ErrorCode::Denied, Some(&d.reason()), text);
    }
    let creator = Creator {
        uid: peer.identity.uid,
        gid: peer.identity.gid,
        groups: peer.identity.groups.clone(),
        pid: peer.identity.pid,
    };
    let store = Arc::clone(&reg);
    let made = tokio::task::spawn_blocking(move || store.invitations.create(creator, req))
        .await
        .map_err(|e| {
            WireError::new(
                ErrorCode::Internal,
                format!("creating the invitation failed unexpectedly: {e}"),
            )
        })?;
    match made {
        Ok((token, view)) => {
            audit(
                &peer,
                "invitation.create",
                view["id"].clone(),
                Some(&rule),
                "ok",
                "invitation created",
                json!({"role": view["role"], "expires": view["expires"], "uses": view["uses"], "bound": view["bound"], "label": view["label"]}),
            );
            let mut answer = view;
            answer["token"] = json!(token.expose().as_str());
            payload(answer)
        }
        Err(e) => {
            let code = match e {
                CreateError::Bad(_) => ErrorCode::BadRequest,
                CreateError::Full(_) => ErrorCode::LimitExceeded,
                CreateError::Random(_) | CreateError::Persist(_) => ErrorCode::Unavailable,
            };
            refuse(code, Some(&rule), e.to_string())
        }
    }
}

fn list(reg: &Registry, peer: &PeerRef, params: &Payload) -> Result<Payload, WireError> {
    let empty = params.is_null()
        || params
            .parse::<serde_json::Map<String, serde_json::Value>>()
            .is_ok_and(|m| m.is_empty());
    if !empty {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "warden.invite.list takes no params",
        ));
    }
    let admin = reg
        .current_policy()
        .is_admin(&warden_policy::Caller::from(&peer.identity));
    let all = admin && peer.grant().is_none();
    payload(json!({ "invitations": reg.invitations.list(peer.identity.uid, all), "all": all }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    id: String,
}

fn revoke(
    reg: &Registry,
    peer: &PeerRef,
    params: &Payload,
    rule: &str,
) -> Result<Payload, WireError> {
    let p: RevokeParams = params.parse().map_err(|e| {
        WireError::new(
            ErrorCode::BadRequest,
            format!("warden.invite.revoke takes {{\"id\": ID}}: {e}"),
        )
    })?;
    let id: InvitationId =
        p.id.parse()
            .map_err(|e: String| WireError::new(ErrorCode::BadRequest, e))?;
    let admin = reg
        .current_policy()
        .is_admin(&warden_policy::Caller::from(&peer.identity))
        && peer.grant().is_none();
    let mine = peer.grant().is_none();
    let revoked = if mine {
        reg.invitations.revoke(id, peer.identity.uid, admin)
    } else {
        None
    };
    let Some((view, event)) = revoked else {
        audit(
            peer,
            "invitation.revoke",
            id.to_string().into(),
            Some(rule),
            "denied",
            "no such invitation for this caller",
            serde_json::Value::Null,
        );
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "no invitation {id} that you may revoke (only its creator and administrators may); see `wardenctl invite list`"
            ),
        ));
    };
    audit(
        peer,
        "invitation.revoke",
        id.to_string().into(),
        Some(rule),
        "ok",
        "invitation revoked",
        json!({"role": view["role"], "holders": view["holders"]}),
    );
    // Connections that joined with it drop the role as they recompile.
    reg.reapply_policy();
    crate::pubsub::publish_invitation_events(reg, vec![event]);
    payload(json!({"id": id, "role": view["role"], "holders": view["holders"]}))
}
