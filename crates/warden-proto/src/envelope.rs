//! The envelope: one JSON object per frame, discriminated by `kind`.
//!
//! Payloads (`params`, `result`, `data`) are kept as raw JSON text
//! ([`Payload`]): the broker routes them without re-parsing them into a tree,
//! and hands them to handlers that parse them into their own types.
//!
//! Decoding is strict: unknown kinds, unknown fields, fields that do not
//! belong to the kind, missing fields, invalid names and out-of-range ids are
//! all `bad_request`. When the frame carried a usable `id`, the error names
//! it so the sender can match the failure to its request.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

use crate::depth::nesting_depth;
use crate::error::{truncate_utf8, ErrorCode, WireError};
use crate::handshake::{Hello, Identity, Welcome, WelcomeLimits};
use crate::limits::{
    FRAME_HEADER_LEN, MAX_DESCRIPTION_LEN, MAX_GROUPS, MAX_NESTING_DEPTH, MAX_REQUEST_ID,
    MAX_TEXT_LEN,
};
use crate::name::{MethodName, TopicName};

/// A request id: 1 ..= 2^53-1. Each side numbers its own requests; ids are
/// unique per direction on a connection, so a reply always refers to a
/// request sent the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RequestId(u64);

impl RequestId {
    /// Validates an id.
    pub fn new(id: u64) -> Option<RequestId> {
        (1..=MAX_REQUEST_ID).contains(&id).then_some(RequestId(id))
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hands out one side's request ids: 1, 2, 3, ... and back to 1 after
/// 2^53-1. Shared by reference between the tasks of that side.
#[derive(Debug)]
pub struct IdSequence(std::sync::atomic::AtomicU64);

impl IdSequence {
    /// A sequence starting at 1.
    pub fn new() -> IdSequence {
        IdSequence(std::sync::atomic::AtomicU64::new(1))
    }

    /// The next id.
    pub fn next_id(&self) -> RequestId {
        use std::sync::atomic::Ordering;
        loop {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = RequestId::new(n) {
                return id;
            }
            // Past 2^53-1 (after ~9e15 requests): start again at 1.
            let _ = self
                .0
                .compare_exchange(n + 1, 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

impl Default for IdSequence {
    fn default() -> Self {
        IdSequence::new()
    }
}

/// A JSON value carried verbatim (params, result, event data).
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Payload {}

impl Payload {
    /// JSON `null`.
    pub fn null() -> Payload {
        Payload::from_raw_json("null").unwrap_or_else(|_| unreachable!("null is valid JSON"))
    }

    /// Wraps JSON text after checking that it is valid JSON within the
    /// nesting limit.
    ///
    /// # Errors
    /// Returns a message saying why the text is not acceptable.
    pub fn from_raw_json(text: &str) -> Result<Payload, String> {
        if nesting_depth(text.as_bytes(), MAX_NESTING_DEPTH - 1).is_none() {
            return Err(format!(
                "payload nested deeper than {}",
                MAX_NESTING_DEPTH - 1
            ));
        }
        RawValue::from_string(text.trim().to_owned())
            .map(Payload)
            .map_err(|e| format!("payload is not valid JSON: {e}"))
    }

    /// Serializes any value as a payload.
    ///
    /// # Errors
    /// Fails only if `value`'s `Serialize` implementation fails.
    pub fn from_value<T: Serialize>(value: &T) -> Result<Payload, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Payload)
    }

    /// Parses the payload into `T`.
    ///
    /// # Errors
    /// Returns the parse error if the JSON does not match `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// True for JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0.get() == "null"
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", self.0.get())
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → broker, first frame only.
    Hello(Hello),
    /// Broker → client, answer to `hello`.
    Welcome(Welcome),
    /// Invoke a method. From a client to the broker, or from the broker to
    /// a provider; in the latter case `caller` is the identity of the
    /// original caller, attached by the broker.
    Call {
        /// The sender's id for this request.
        id: RequestId,
        /// Method to invoke.
        method: MethodName,
        /// Parameters (`null` if absent).
        params: Payload,
        /// Set only by the broker on calls it routes to a provider.
        caller: Option<Identity>,
        /// Client → broker only: which session instance of a per-session
        /// host should serve the call.
        target: Option<CallTarget>,
    },
    /// Successful answer to a request (`call`, `subscribe`, `unsubscribe`,
    /// `publish`, `provide`).
    Reply {
        /// Id of the request being answered.
        id: RequestId,
        /// The result (`null` if absent).
        result: Payload,
    },
    /// Failed answer to a request, or (without `id`) a connection-level
    /// error sent just before the broker closes the connection.
    Error {
        /// Id of the request that failed, if the failure belongs to one.
        id: Option<RequestId>,
        /// Code and message.
        error: WireError,
    },
    /// A published event, delivered to a subscriber.
    Event {
        /// Topic it was published on.
        topic: TopicName,
        /// Event data.
        data: Payload,
        /// Events for this connection dropped since the previous frame that
        /// reported drops (0 if none).
        missed: u64,
        /// Identity of the publisher, attached by the broker.
        publisher: Option<Identity>,
    },
    /// Broker → subscriber: events were dropped because the subscriber did
    /// not keep up, and no event frame has reported them yet.
    Lagged {
        /// Number of events dropped.
        missed: u64,
    },
    /// Subscribe to a topic.
    Subscribe {
        /// Request id.
        id: RequestId,
        /// The topic.
        topic: TopicName,
    },
    /// Cancel a subscription.
    Unsubscribe {
        /// Request id.
        id: RequestId,
        /// The topic.
        topic: TopicName,
    },
    /// Publish an event.
    Publish {
        /// Request id.
        id: RequestId,
        /// The topic.
        topic: TopicName,
        /// Event data.
        data: Payload,
    },
    /// Register as the provider of a method on this connection.
    Provide {
        /// Request id.
        id: RequestId,
        /// The method this connection will serve.
        method: MethodName,
        /// What it does, in one line (shown by `warden.introspect`): at
        /// most [`MAX_DESCRIPTION_LEN`] bytes, no control characters.
        description: Option<String>,
    },
    /// Stop providing a method this connection provides: new calls to it
    /// get `unknown_method`; calls already routed here still take their
    /// answers.
    Unprovide {
        /// Request id.
        id: RequestId,
        /// The method.
        method: MethodName,
    },
    /// Cancel an outstanding call this side sent.
    Cancel {
        /// Id of the call to cancel.
        id: RequestId,
    },
}

/// Why an envelope could not be decoded. Always `bad_request` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The request id, if one could be read from the frame.
    pub id: Option<RequestId>,
    /// What is wrong, for the error message.
    pub reason: String,
}

impl DecodeError {
    fn new(id: Option<RequestId>, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        truncate_utf8(&mut reason, MAX_TEXT_LEN);
        DecodeError { id, reason }
    }

    /// The wire error for this failure.
    pub fn to_wire(&self) -> WireError {
        WireError::new(ErrorCode::BadRequest, self.reason.clone())
    }
}

/// A struct that must be spelled as a JSON object. serde's derived structs
/// also accept a JSON array of their fields in declaration order
/// (`["cancel",5]` would be a cancel of request 5); the protocol has one
/// spelling, an object, so the envelope and every struct inside it are read
/// through this (found by the `decode` fuzz target's checks).
struct ObjectOnly<T>(T);

impl<T> ObjectOnly<T> {
    fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for ObjectOnly<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// The flat wire shape of every envelope. Every field is optional here; the
/// per-kind rules are applied in [`Message::decode`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    kind: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ObjectOnly<WireError>>,
    #[serde(default)]
    caller: Option<ObjectOnly<Identity>>,
    #[serde(default)]
    publisher: Option<ObjectOnly<Identity>>,
    #[serde(default)]
    missed: Option<u64>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    invitation: Option<crate::invitation::InvitationText>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    identity: Option<ObjectOnly<Identity>>,
    #[serde(default)]
    limits: Option<ObjectOnly<WelcomeLimits>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    target: Option<serde_json::Value>,
}

impl RawEnvelope {
    /// Names of the fields present, other than `kind`.
    fn present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        macro_rules! p {
            ($($f:ident),*) => { $( if self.$f.is_some() { v.push(stringify!($f)); } )* };
        }
        p!(
            id,
            method,
            topic,
            params,
            result,
            data,
            error,
            caller,
            publisher,
            missed,
            version,
            client,
            invitation,
            role,
            server,
            identity,
            limits,
            description,
            target
        );
        v
    }
}

/// The request id of a frame that cannot be decoded, if its `id` field can
/// still be read: the body is a JSON object whose top level has exactly one
/// `id` key, and its value is a JSON integer in range. The rest of the
/// frame may be invalid or nested too deeply to parse: the scan is linear,
/// keeps no stack and never recurses, so the sender of a bad request still
/// learns which of its requests failed.
pub fn top_level_id(body: &[u8]) -> Option<RequestId> {
    let ws = |mut i: usize| {
        while body.get(i).is_some_and(|b| b" \t\r\n".contains(b)) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    let mut key_next = true;
    let mut found: Option<RequestId> = None;
    let mut seen = false;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', body.get(i..)?) {
                        None => return None,
                        Some(off) if body[i + off] == b'\\' => i += off + 2,
                        Some(off) => {
                            i += off + 1;
                            break;
                        }
                    }
                }
                if depth == 1 && key_next {
                    key_next = false;
                    let key: Option<String> = serde_json::from_slice(body.get(start..i)?).ok();
                    let colon = ws(i);
                    if body.get(colon) != Some(&b':') {
                        return None;
                    }
                    if key.as_deref() == Some("id") {
                        if seen {
                            return None;
                        }
                        seen = true;
                        let v = ws(colon + 1);
                        let end = v + body[v..].iter().take_while(|b| b.is_ascii_digit()).count();
                        let number_ends = body
                            .get(end)
                            .is_none_or(|b| !matches!(b, b'.' | b'e' | b'E'));
                        found = std::str::from_utf8(&body[v..end])
                            .ok()
                            .filter(|d| number_ends && !d.is_empty())
                            .filter(|d| d.len() == 1 || !d.starts_with('0'))
                            .and_then(|d| d.parse::<u64>().ok())
                            .and_then(RequestId::new);
                        i = end;
                    } else {
                        i = colon + 1;
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => key_next = true,
            _ => {}
        }
        i += 1;
    }
    found
}

/// Every kind, with its required and optional fields.
const KINDS: &[(&str, &[&str], &[&str])] = &[
    ("hello", &["version"], &["client", "invitation"]),
    (
        "welcome",
        &["version", "server", "identity", "limits"],
        &["role"],
    ),
    ("call", &["id", "method"], &["params", "caller", "target"]),
    ("reply", &["id"], &["result"]),
    ("error", &["error"], &["id"]),
    ("event", &["topic"], &["data", "missed", "publisher"]),
    ("lagged", &["missed"], &[]),
    ("subscribe", &["id", "topic"], &[]),
    ("unsubscribe", &["id", "topic"], &[]),
    ("publish", &["id", "topic"], &["data"]),
    ("provide", &["id", "method"], &["description"]),
    ("unprovide", &["id", "method"], &[]),
    ("cancel", &["id"], &[]),
];

impl Message {
    /// The `kind` string of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Call { .. } => "call",
            Message::Reply { .. } => "reply",
            Message::Error { .. } => "error",
            Message::Event { .. } => "event",
            Message::Lagged { .. } => "lagged",
            Message::Subscribe { .. } => "subscribe",
            Message::Unsubscribe { .. } => "unsubscribe",
            Message::Publish { .. } => "publish",
            Message::Provide { .. } => "provide",
            Message::Unprovide { .. } => "unprovide",
            Message::Cancel { .. } => "cancel",
        }
    }

    /// The request id the message carries, if any.
    pub fn id(&self) -> Option<RequestId> {
        match self {
            Message::Call { id, .. }
            | Message::Reply { id, .. }
            | Message::Subscribe { id, .. }
            | Message::Unsubscribe { id, .. }
            | Message::Publish { id, .. }
            | Message::Provide { id, .. }
            | Message::Unprovide { id, .. }
            | Message::Cancel { id } => Some(*id),
            Message::Error { id, .. } => *id,
            _ => None,
        }
    }

    /// Builds an error answer.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error {
            id,
            error: WireError::new(code, message),
        }
    }

    /// Decodes one frame body.
    ///
    /// # Errors
    /// Returns a [`DecodeError`] (wire code `bad_request`) for anything that
    /// is not a valid envelope: invalid UTF-8 or JSON, nesting deeper than
    /// [`MAX_NESTING_DEPTH`], unknown kind or field, a missing field or a
    /// field that does not belong to the kind, an invalid name or id.
    pub fn decode(body: &[u8]) -> Result<Message, DecodeError> {
        if nesting_depth(body, MAX_NESTING_DEPTH).is_none() {
            return Err(DecodeError::new(
                top_level_id(body),
                format!("envelope nested deeper than {MAX_NESTING_DEPTH} levels"),
            ));
        }
        let raw: RawEnvelope = match serde_json::from_slice::<ObjectOnly<RawEnvelope>>(body) {
            Ok(raw) => raw.into_inner(),
            Err(e) => {
                return Err(DecodeError::new(
                    top_level_id(body),
                    format!("invalid envelope: {e}"),
                ));
            }
        };
        let id = match raw.id {
            None => None,
            Some(n) => match RequestId::new(n) {
                Some(id) => Some(id),
                None => {
                    return Err(DecodeError::new(
                        None,
                        format!("id {n} out of range (1 ..= {MAX_REQUEST_ID})"),
                    ))
                }
            },
        };
        let Some((kind, required, optional)) =
            KINDS.iter().find(|(k, _, _)| *k == raw.kind).copied()
        else {
            let known: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
            return Err(DecodeError::new(
                id,
                format!(
                    "unknown kind {:?}; known kinds: {}",
                    raw.kind,
                    known.join(", ")
                ),
            ));
        };
        let present = raw.present();
        for field in &present {
            if !required.contains(field) && !optional.contains(field) {
                return Err(DecodeError::new(
                    id,
                    format!("field {field:?} does not belong to a {kind:?} message"),
                ));
            }
        }
        for field in required {
            if !present.contains(field) {
                return Err(DecodeError::new(
                    id,
                    format!("a {kind:?} message needs the field {field:?}"),
                ));
            }
        }
        for ident in [&raw.caller, &raw.publisher, &raw.identity]
            .into_iter()
            .flatten()
        {
            if ident.groups.len() > MAX_GROUPS {
                return Err(DecodeError::new(id, "identity lists too many groups"));
            }
        }
        let invitation = raw.invitation.as_ref().map(|t| t.expose());
        let error_message = raw.error.as_ref().map(|e| e.message.as_str());
        for text in [
            raw.client.as_deref(),
            raw.server.as_deref(),
            invitation,
            raw.role.as_deref(),
            error_message,
        ]
        .into_iter()
        .flatten()
        {
            if text.len() > MAX_TEXT_LEN {
                return Err(DecodeError::new(
                    id,
                    format!(
                        "text field too long ({} bytes, max {MAX_TEXT_LEN})",
                        text.len()
                    ),
                ));
            }
        }
        // The table above guarantees every `required` field is present, so
        // the `missing` fallbacks below are unreachable in practice but keep
        // decoding total.
        let missing = |f: &str| DecodeError::new(id, format!("a {kind:?} message needs {f:?}"));
        let req_id = || id.ok_or_else(|| missing("id"));
        let method = |m: Option<String>| -> Result<MethodName, DecodeError> {
            let m = m.ok_or_else(|| missing("method"))?;
            crate::name::validate_name(&m)
                .map_err(|e| DecodeError::new(id, format!("invalid method name {m:?}: {e}")))?;
            MethodName::try_from(m).map_err(|e| DecodeError::new(id, e.to_string()))
        };
        let topic = |t: Option<String>| -> Result<TopicName, DecodeError> {
            let t = t.ok_or_else(|| missing("topic"))?;
            crate::name::validate_name(&t)
                .map_err(|e| DecodeError::new(id, format!("invalid topic name {t:?}: {e}")))?;
            TopicName::try_from(t).map_err(|e| DecodeError::new(id, e.to_string()))
        };
        let payload = |p: Option<Box<RawValue>>| p.map(Payload).unwrap_or_default();
        let msg = match kind {
            "hello" => Message::Hello(Hello {
                version: raw.version.ok_or_else(|| missing("version"))?,
                client: raw.client,
                invitation: raw.invitation,
            }),
            "welcome" => Message::Welcome(Welcome {
                version: raw.version.ok_or_else(|| missing("version"))?,
                server: raw.server.ok_or_else(|| missing("server"))?,
                identity: raw
                    .identity
                    .map(ObjectOnly::into_inner)
                    .ok_or_else(|| missing("identity"))?,
                limits: raw
                    .limits
                    .map(ObjectOnly::into_inner)
                    .ok_or_else(|| missing("limits"))?,
                role: raw.role,
            }),
            "call" => Message::Call {
                id: req_id()?,
                method: method(raw.method)?,
                params: payload(raw.params),
                caller: raw.caller.map(ObjectOnly::into_inner),
                target: match raw.target {
                    None => None,
                    Some(t) => Some(call_target(t).map_err(|m| DecodeError::new(id, m))?),
                },
            },
            "reply" => Message::Reply {
                id: req_id()?,
                result: payload(raw.result),
            },
            "error" => Message::Error {
                id,
                error: raw
                    .error
                    .map(ObjectOnly::into_inner)
                    .ok_or_else(|| missing("error"))?,
            },
            "event" => Message::Event {
                topic: topic(raw.topic)?,
                data: payload(raw.data),
                missed: raw.missed.unwrap_or(0),
                publisher: raw.publisher.map(ObjectOnly::into_inner),
            },
            "lagged" => Message::Lagged {
                missed: raw.missed.ok_or_else(|| missing("missed"))?,
            },
            "subscribe" => Message::Subscribe {
                id: req_id()?,
                topic: topic(raw.topic)?,
            },
            "unsubscribe" => Message::Unsubscribe {
                id: req_id()?,
                topic: topic(raw.topic)?,
            },
            "publish" => Message::Publish {
                id: req_id()?,
                topic: topic(raw.topic)?,
                data: payload(raw.data),
            },
            "unprovide" => Message::Unprovide {
                id: req_id()?,
                method: method(raw.method)?,
            },
            "provide" => Message::Provide {
                id: req_id()?,
                method: method(raw.method)?,
                description: match raw.description {
                    None => None,
                    Some(d) if d.len() > MAX_DESCRIPTION_LEN => {
                        return Err(DecodeError::new(
                            id,
                            format!(
                                "description too long ({} bytes, max {MAX_DESCRIPTION_LEN})",
                                d.len()
                            ),
                        ))
                    }
                    Some(d) if d.chars().any(char::is_control) => {
                        return Err(DecodeError::new(
                            id,
                            "description contains control characters; write one plain line",
                        ))
                    }
                    Some(d) => Some(d),
                },
            },
            "cancel" => Message::Cancel { id: req_id()? },
            other => {
                return Err(DecodeError::new(id, format!("unknown kind {other:?}")));
            }
        };
        Ok(msg)
    }

    /// Encodes the envelope as JSON (the frame body).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_json(&mut out);
        out
    }

    /// Encodes the envelope as a complete frame (length prefix + JSON).
    /// Returns `None` if it would exceed `max_frame` bytes.
    pub fn to_frame(&self, max_frame: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        self.write_json(&mut out);
        let len = out.len() - FRAME_HEADER_LEN;
        if len > max_frame {
            return None;
        }
        let prefix = u32::try_from(len).ok()?.to_be_bytes();
        out[..FRAME_HEADER_LEN].copy_from_slice(&prefix);
        Some(out)
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing strings, integers and pre-validated raw JSON into a
        // Vec cannot fail; write an internal error rather than panic if it
        // ever does.
        let start = out.len();
        if serde_json::to_writer(&mut *out, &self.to_wire()).is_err() {
            out.truncate(start);
            out.extend_from_slice(
                br#"{"kind":"error","error":{"code":"internal","message":"encoding failed"}}"#,
            );
        }
    }

    fn to_wire(&self) -> WireEnvelope<'_> {
        let mut r = WireEnvelope {
            kind: self.kind(),
            id: self.id().map(RequestId::get),
            ..WireEnvelope::default()
        };
        match self {
            Message::Hello(h) => {
                r.version = Some(h.version);
                r.client = h.client.as_deref();
                r.invitation = h.invitation.as_ref().map(|t| t.expose());
            }
            Message::Welcome(w) => {
                r.version = Some(w.version);
                r.server = Some(&w.server);
                r.identity = Some(&w.identity);
                r.limits = Some(&w.limits);
                r.role = w.role.as_deref();
            }
            Message::Call {
                method,
                params,
                caller,
                target,
                ..
            } => {
                r.method = Some(method.as_str());
                r.params = Some(&params.0);
                r.caller = caller.as_ref();
                r.target = target.as_ref();
            }
            Message::Reply { result, .. } => r.result = Some(&result.0),
            Message::Error { error, .. } => r.error = Some(error),
            Message::Event {
                topic,
                data,
                missed,
                publisher,
            } => {
                r.topic = Some(topic.as_str());
                r.data = Some(&data.0);
                r.missed = (*missed > 0).then_some(*missed);
                r.publisher = publisher.as_ref();
            }
            Message::Lagged { missed } => r.missed = Some(*missed),
            Message::Subscribe { topic, .. } | Message::Unsubscribe { topic, .. } => {
                r.topic = Some(topic.as_str())
            }
            Message::Publish { topic, data, .. } => {
                r.topic = Some(topic.as_str());
                r.data = Some(&data.0);
            }
            Message::Provide {
                method,
                description,
                ..
            } => {
                r.method = Some(method.as_str());
                r.description = description.as_deref();
            }
            Message::Unprovide { method, .. } => r.method = Some(method.as_str()),
            Message::Cancel { .. } => {}
        }
        r
    }
}

/// A call's `target`: which session instance of a per-session host serves
/// it. On the wire `{"session": "ID"}` or `{"uid": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum CallTarget {
    /// The instance of this logind session.
    Session(String),
    /// The instance in the one session of this user that has one.
    Uid(u32),
}

/// The longest session id a `target` may name.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// The encoding side of [`RawEnvelope`]: same fields, same order, borrowed.
#[derive(Default, Serialize)]
struct WireEnvelope<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a WireError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<&'a Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publisher: Option<&'a Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invitation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<&'a WelcomeLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a CallTarget>,
}

/// A `target` value, checked: one key, `session` (an id of at most
/// [`MAX_SESSION_ID_LEN`] printable ASCII characters) or `uid`.
fn call_target(v: serde_json::Value) -> Result<CallTarget, String> {
    let usage = "target must be {\"session\": \"ID\"} or {\"uid\": N}";
    let t: CallTarget = serde_json::from_value(v).map_err(|e| format!("{usage}: {e}"))?;
    if let CallTarget::Session(id) = &t {
        if id.is_empty()
            || id.len() > MAX_SESSION_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "{usage}: a session id is 1 to {MAX_SESSION_ID_LEN} printable ASCII characters"
            ));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId::new(n).unwrap_or_else(|| unreachable!())
    }

    fn roundtrip(m: Message) {
        let bytes = m.encode();
        let back = Message::decode(&bytes);
        assert_eq!(back, Ok(m), "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn a_call_target_is_one_session_or_one_uid() {
        let call = |t: &str| {
            Message::decode(
                format!(r#"{{"kind":"call","id":1,"method":"a.b","target":{t}}}"#).as_bytes(),
            )
        };
        assert!(matches!(
            call(r#"{"session":"c2"}"#),
            Ok(Message::Call { target: Some(CallTarget::Session(s)), .. }) if s == "c2"
        ));
        assert!(matches!(
            call(r#"{"uid":1000}"#),
            Ok(Message::Call {
                target: Some(CallTarget::Uid(1000)),
                ..
            })
        ));
        for bad in [
            r#"{"session":"c2","uid":1}"#,
            r#"{"seat":"seat0"}"#,
            r#"{"session":""}"#,
            r#"{"session":"a\u001b[2J"}"#,
            r#"{"uid":-1}"#,
            r#""c2""#,
        ] {
            match call(bad) {
                Err(e) => assert!(e.to_string().contains("target must be"), "{bad}: {e}"),
                Ok(m) => panic!("{bad} accepted: {m:?}"),
            }
        }
        let long = format!(r#"{{"session":"{}"}}"#, "x".repeat(MAX_SESSION_ID_LEN + 1));
        assert!(call(&long).is_err());
    }

    #[test]
    fn every_kind_roundtrips() {
        let ident = Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 27],
            pid: 42,
            host: None,
            session: None,
        };
        let p = Payload::from_raw_json(r#"{"x":[1,2,"three"]}"#).unwrap_or_default();
        roundtrip(Message::Hello(Hello {
            version: 1,
            client: Some("t/1".into()),
            invitation: None,
        }));
        roundtrip(Message::Hello(Hello {
            version: 1,
            client: None,
            invitation: Some(crate::invitation::InvitationText::new("wdn_inv_1x".into())),
        }));
        for role in [None, Some("vpn-helper".to_owned())] {
            roundtrip(Message::Welcome(Welcome {
                version: 1,
                server: "wardend/0.1.0".into(),
                identity: ident.clone(),
                limits: WelcomeLimits {
                    max_frame: 1 << 20,
                    max_in_flight: 64,
                    call_timeout_ms: 30_000,
                },
                role,
            }));
        }
        roundtrip(Message::Call {
            id: id(1),
            method: "a.b".parse().unwrap_or_else(|_| unreachable!()),
            params: p.clone(),
            caller: Some(ident.clone()),
            target: None,
        });
        for target in [CallTarget::Session("c2".into()), CallTarget::Uid(1000)] {
            roundtrip(Message::Call {
                id: id(3),
                method: "a.b".parse().unwrap_or_else(|_| unreachable!()),
                params: p.clone(),
                caller: None,
                target: Some(target),
            });
        }
        roundtrip(Message::Reply {
            id: id(1),
            result: p.clone(),
        });
        roundtrip(Message::error(Some(id(2)), ErrorCode::Denied, "no"));
        roundtrip(Message::error(None, ErrorCode::TooLarge, "big"));
        roundtrip(Message::Event {
            topic: "t.x".parse().unwrap_or_else(|_| unreachable!()),
            data: p.clone(),
            missed: 3,
            publisher: Some(ident),
        });
        roundtrip(Message::Lagged { missed: 9 });
        roundtrip(Message::Subscribe {
            id: id(3),
            topic: "t.x".parse().unwrap_or_else(|_| unreachable!()),
        });
        roundtrip(Message::Unsubscribe {
            id: id(4),
            topic: "t.x".parse().unwrap_or_else(|_| unreachable!()),
        });
        roundtrip(Message::Publish {
            id: id(5),
            topic: "t.x".parse().unwrap_or_else(|_| unreachable!()),
            data: p,
        });
        roundtrip(Message::Provide {
            id: id(6),
            method: "svc.m".parse().unwrap_or_else(|_| unreachable!()),
            description: None,
        });
        roundtrip(Message::Provide {
            id: id(8),
            method: "svc.m".parse().unwrap_or_else(|_| unreachable!()),
            description: Some("Does m, in one line".into()),
        });
        roundtrip(Message::Unprovide {
            id: id(9),
            method: "svc.m".parse().unwrap_or_else(|_| unreachable!()),
        });
        roundtrip(Message::Cancel { id: id(7) });
    }

    #[test]
    fn a_provide_description_is_one_short_plain_line() {
        let long = "x".repeat(MAX_DESCRIPTION_LEN + 1);
        for (d, needle) in [
            (long.as_str(), "too long"),
            ("two\nlines", "control characters"),
            ("\u{1b}[2J", "control characters"),
        ] {
            let body =
                serde_json::json!({"kind": "provide", "id": 3, "method": "a.b", "description": d})
                    .to_string();
            let e = err(&body);
            assert!(e.reason.contains(needle), "{d:?}: {}", e.reason);
            assert_eq!(e.id.map(RequestId::get), Some(3));
        }
    }

    fn err(body: &str) -> DecodeError {
        match Message::decode(body.as_bytes()) {
            Err(e) => e,
            Ok(m) => panic!("decoded {m:?}"),
        }
    }

    #[test]
    fn rejects_with_reason_and_id() {
        let e = err(r#"{"kind":"nope","id":4}"#);
        assert_eq!(e.id, Some(id(4)));
        assert!(e.reason.contains("unknown kind"), "{}", e.reason);

        let e = err(r#"{"kind":"call","id":5,"method":"a..b"}"#);
        assert_eq!(e.id, Some(id(5)));
        assert!(e.reason.contains("invalid method name"));

        let e = err(r#"{"kind":"call","id":6}"#);
        assert!(e.reason.contains("\"method\""));

        let e = err(r#"{"kind":"call","id":6,"method":"a","topic":"b"}"#);
        assert!(e.reason.contains("does not belong"));

        let e = err(r#"{"kind":"call","id":7,"method":"a","bogus":1}"#);
        assert_eq!(e.id, Some(id(7)));

        let e = err(r#"{"kind":"call","id":0,"method":"a"}"#);
        assert!(e.reason.contains("out of range"));
        let e = err(r#"{"kind":"call","id":9007199254740992,"method":"a"}"#);
        assert!(e.reason.contains("out of range"));

        assert!(err("\u{0}garbage").id.is_none());
        assert!(err("[1,2]").reason.contains("invalid envelope"));
    }

    #[test]
    fn rejects_deep_nesting_before_parsing() {
        let deep = format!(
            r#"{{"kind":"call","id":1,"method":"a","params":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(err(&deep).reason.contains("nested deeper"));
    }

    #[test]
    fn undecodable_frames_keep_a_readable_id() {
        // Nested one level too deep, with a valid id: the id is echoed.
        let deep = format!(
            r#"{{"kind":"call","id":9,"method":"a","params":{}1{}}}"#,
            "[".repeat(MAX_NESTING_DEPTH),
            "]".repeat(MAX_NESTING_DEPTH)
        );
        let e = err(&deep);
        assert!(e.reason.contains("nested deeper"), "{}", e.reason);
        assert_eq!(e.id, Some(id(9)));
        // The id after the deep part, or far deeper than serde's own limit.
        let deeper = format!(
            r#"{{"kind":"call","params":{}1{},"method":"a", "id" : 12}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(err(&deeper).id, Some(id(12)));
        // Invalid JSON after a readable id; an escaped key.
        assert_eq!(err(r#"{"kind":"call","id":5,"method":"#).id, Some(id(5)));
        assert_eq!(err(r#"{"\u0069d":6,"kind":1}"#).id, Some(id(6)));
        // Not an id: nested, a string, a fraction, negative, out of range,
        // leading zeros, twice, a key-looking value.
        for body in [
            r#"{"kind":"call","params":{"id":5},"x":[}"#,
            r#"{"kind":"call","id":"5","x":[}"#,
            r#"{"kind":"call","id":5.0,"x":[}"#,
            r#"{"kind":"call","id":5e0,"x":[}"#,
            r#"{"kind":"call","id":-5,"x":[}"#,
            r#"{"kind":"call","id":0,"x":[}"#,
            r#"{"kind":"call","id":9007199254740992,"x":[}"#,
            r#"{"kind":"call","id":05,"x":[}"#,
            r#"{"kind":"call","id":5,"id":6}"#,
            r#"{"kind":"id","x":5,"y":[}"#,
            r#"[{"id":5}]"#,
        ] {
            assert_eq!(err(body).id, None, "{body}");
        }
    }

    #[test]
    fn hello_versions_up_to_u64_max() {
        let hello =
            |v: &str| Message::decode(format!(r#"{{"kind":"hello","version":{v}}}"#).as_bytes());
        for (text, want) in [
            ("1", 1),
            ("4294967296", 1u64 << 32),
            ("18446744073709551615", u64::MAX),
        ] {
            match hello(text) {
                Ok(Message::Hello(h)) => assert_eq!(h.version, want),
                other => panic!("{text}: {other:?}"),
            }
        }
        // Version 0 decodes (the broker refuses it); these do not.
        assert!(matches!(hello("0"), Ok(Message::Hello(_))));
        for text in [
            "18446744073709551616",
            "-1",
            "1.5",
            "1.0",
            "1e0",
            "\"1\"",
            "null",
            "true",
        ] {
            assert!(hello(text).is_err(), "{text}");
        }
    }

    #[test]
    fn to_frame_matches_encode_and_respects_the_limit() {
        let m = Message::Reply {
            id: id(3),
            result: Payload::from_raw_json("[1,2]").unwrap_or_default(),
        };
        let body = m.encode();
        let frame = m.to_frame(1024).unwrap_or_default();
        assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], &body[..]);
        assert!(m.to_frame(body.len() - 1).is_none());
        assert!(m.to_frame(body.len()).is_some());
    }

    #[test]
    fn id_sequence_wraps_to_one() {
        let seq = IdSequence::new();
        assert_eq!(seq.next_id().get(), 1);
        assert_eq!(seq.next_id().get(), 2);
        seq.0
            .store(MAX_REQUEST_ID, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(seq.next_id().get(), MAX_REQUEST_ID);
        assert_eq!(seq.next_id().get(), 1);
    }

    #[test]
    fn payload_checks() {
        assert!(Payload::from_raw_json("{").is_err());
        assert!(Payload::from_raw_json(&"[".repeat(100)).is_err());
        assert!(Payload::null().is_null());
    }

    /// Found by the `decode` fuzz target's check: an `error.message`
    /// longer than the documented 4096 bytes decoded.
    #[test]
    fn an_error_message_over_the_text_limit_is_refused() {
        let frame = |n: usize| {
            format!(
                r#"{{"kind":"error","id":1,"error":{{"code":"internal","message":"{}"}}}}"#,
                "x".repeat(n)
            )
        };
        assert!(Message::decode(frame(MAX_TEXT_LEN).as_bytes()).is_ok());
        let e = Message::decode(frame(MAX_TEXT_LEN + 1).as_bytes()).err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.to_string().contains("text field too long")),
            "{e:?}"
        );
    }

    #[test]
    fn only_a_json_object_spells_an_envelope_or_a_struct_in_it() {
        // serde's derived structs take an array of their fields in order;
        // the protocol does not.
        for body in [
            r#"["cancel",5]"#,
            r#"{"kind":"error","id":1,"error":["denied","no"]}"#,
            r#"{"kind":"event","topic":"a.b","publisher":[0,0,[],1]}"#,
            r#"{"kind":"call","id":1,"method":"a.b","caller":[0,0,[],1]}"#,
            r#"{"kind":"welcome","version":1,"server":"s","identity":[0,0,[],1],"limits":{"max_frame":1,"max_in_flight":1,"call_timeout_ms":1}}"#,
            r#"{"kind":"welcome","version":1,"server":"s","identity":{"uid":0,"gid":0,"groups":[],"pid":1},"limits":[1,1,1]}"#,
        ] {
            let e = Message::decode(body.as_bytes()).err();
            assert!(
                e.as_ref()
                    .is_some_and(|e| e.to_string().contains("expected a JSON object")),
                "{body}: {e:?}"
            );
        }
        // The object spellings of the same messages decode.
        for body in [
            r#"{"kind":"cancel","id":5}"#,
            r#"{"kind":"error","id":1,"error":{"code":"denied","message":"no"}}"#,
            r#"{"kind":"welcome","version":1,"server":"s","identity":{"uid":0,"gid":0,"groups":[],"pid":1},"limits":{"max_frame":1,"max_in_flight":1,"call_timeout_ms":1}}"#,
        ] {
            assert!(Message::decode(body.as_bytes()).is_ok(), "{body}");
        }
    }
}
