//! Shared fixtures for the root-free runtime tests: an in-process broker on
//! a socket in a private temporary directory, started from a config text,
//! plus raw frame helpers for what the client library hides.
//!
//! Everything runs as the current user (root or not): rules name the
//! current uid ([`my_uid`]) or `everyone`.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warden::{
    Broker, BrokerBuilder, Handler, HandlerContext, HandlerFuture, Shutdown, ShutdownTrigger,
};
use warden_client::{Client, ConnectOptions};
use warden_policy::{Config, Policy, StaticResolver};
use warden_proto::{ErrorCode, Payload, WireError};

/// Bound on anything the tests wait for. Generous: the machine is shared
/// and loaded; this is a liveness bound, never a speed assertion.
pub const LIVENESS: Duration = Duration::from_secs(20);

/// The effective uid of this process: the owner of a file it creates.
pub fn my_uid() -> u32 {
    static UID: OnceLock<u32> = OnceLock::new();
    *UID.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("warden-rt-uid-{}", std::process::id()));
        let _ = std::fs::write(&path, b"");
        let uid = std::fs::metadata(&path)
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        let _ = std::fs::remove_file(&path);
        uid
    })
}

/// True when the tests run as root (an administrator, whatever the config).
pub fn is_root() -> bool {
    my_uid() == 0
}

/// Rules that let everyone do everything on `test.**` and call the
/// harmless built-ins.
pub const OPEN_RULES: &str = r#"
[[rule]]
actions = ["call"]
names = ["warden.ping", "warden.echo", "warden.whoami", "warden.version", "warden.explain"]
everyone = true

[[rule]]
actions = ["call", "provide", "subscribe", "publish"]
names = ["test.**"]
everyone = true
"#;

/// Parses a config text (file name `t.toml`).
pub fn config(text: &str) -> anyhow::Result<Config> {
    Ok(Config::parse(text, "t.toml", &StaticResolver::default())?)
}

/// The policy of a config text, for `Broker::set_policy`.
pub fn policy(text: &str) -> anyhow::Result<Arc<Policy>> {
    Ok(config(text)?.policy)
}

/// A broker serving on a socket in a private directory.
pub struct Running {
    pub socket: PathBuf,
    pub broker: Broker,
    pub trigger: ShutdownTrigger,
    pub task: Option<tokio::task::JoinHandle<Result<(), warden::ServeError>>>,
    dir: PathBuf,
}

impl Running {
    /// Fires the shutdown and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.trigger.trigger();
        let task = self.task.take().context("already stopped")?;
        let served = tokio::time::timeout(LIVENESS, task)
            .await
            .context("serve() did not return after the shutdown")??;
        served?;
        Ok(())
    }

    /// Waits (bounded) until the broker counts `n` connections.
    pub async fn wait_connections(&self, n: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + LIVENESS;
        while self.broker.connection_count() != n {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the broker counts {} connections, expected {n}",
                    self.broker.connection_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.trigger.trigger();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a broker from a config text.
pub async fn start(text: &str) -> anyhow::Result<Running> {
    start_with(text, Ok).await
}

/// Starts a broker from a config text, letting `extra` register handlers.
pub async fn start_with(
    text: &str,
    extra: impl FnOnce(BrokerBuilder) -> Result<BrokerBuilder, warden::BrokerError>,
) -> anyhow::Result<Running> {
    start_resolved(text, &StaticResolver::default(), extra).await
}

/// As [`start_with`], resolving user and group names with `resolver`.
pub async fn start_resolved(
    text: &str,
    resolver: &StaticResolver,
    extra: impl FnOnce(BrokerBuilder) -> Result<BrokerBuilder, warden::BrokerError>,
) -> anyhow::Result<Running> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warden-rt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("b.sock");
    let config = Config::parse(text, "t.toml", resolver)?;
    let broker = extra(Broker::builder(&config))?.build();
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let (trigger, shutdown) = Shutdown::new();
    let serving = broker.clone();
    let task = tokio::spawn(async move { serving.serve(listener, shutdown).await });
    Ok(Running {
        socket,
        broker,
        trigger,
        task: Some(task),
        dir,
    })
}

/// Connects a client-library client.
pub async fn client(r: &Running) -> anyhow::Result<Client> {
    Ok(Client::connect(ConnectOptions::new(r.socket.display().to_string())).await?)
}

/// Awaits `fut` for at most [`LIVENESS`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(LIVENESS, fut)
        .await
        .with_context(|| format!("{what}: nothing within {LIVENESS:?}"))
}

/// The wire code of a client-library error.
pub fn code_of(e: &warden_client::CallError) -> Option<ErrorCode> {
    e.code()
}

/// A raw connection speaking frames (4-byte big-endian length + JSON).
pub struct Raw {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects without sending anything.
    pub async fn connect(socket: &Path) -> anyhow::Result<Raw> {
        Ok(Raw {
            stream: UnixStream::connect(socket).await?,
            buf: Vec::new(),
        })
    }

    /// Connects and performs the hello; returns the connection and the
    /// welcome.
    pub async fn open(socket: &Path) -> anyhow::Result<(Raw, Value)> {
        let mut c = Raw::connect(socket).await?;
        let w = c.hello().await?;
        Ok((c, w))
    }

    /// Sends the hello and returns the welcome.
    pub async fn hello(&mut self) -> anyhow::Result<Value> {
        self.send(&json!({"kind":"hello","version":1,"client":"rt-test"}))
            .await?;
        let w = self.recv_some().await?;
        if w["kind"] != "welcome" {
            bail!("expected a welcome, got {w}");
        }
        Ok(w)
    }

    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends one JSON envelope as a frame.
    pub async fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        let body = serde_json::to_vec(v)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.send_bytes(&frame).await
    }

    /// The next frame, or `None` at EOF (a reset counts as EOF). Bounded
    /// by [`LIVENESS`].
    pub async fn recv(&mut self) -> anyhow::Result<Option<Value>> {
        within("waiting for a frame", self.recv_unbounded()).await?
    }

    async fn recv_unbounded(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= 4 + n {
                    let body: Vec<u8> = self.buf.drain(..4 + n).skip(4).collect();
                    return Ok(Some(serde_json::from_slice(&body)?));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match self.stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!(
                    "EOF in the middle of a frame ({} bytes buffered)",
                    self.buf.len()
                );
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame; EOF is an error.
    pub async fn recv_some(&mut self) -> anyhow::Result<Value> {
        self.recv()
            .await?
            .context("the broker closed the connection")
    }

    /// The next frame if one arrives within `d` (for "nothing more came").
    pub async fn recv_within(&mut self, d: Duration) -> anyhow::Result<Option<Value>> {
        match tokio::time::timeout(d, self.recv_unbounded()).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    /// Reads until EOF; returns every frame read. Bounded.
    pub async fn recv_to_eof(&mut self) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        while let Some(v) = self.recv().await? {
            all.push(v);
        }
        Ok(all)
    }

    /// Sends a request and returns its answer (skipping events, lagged
    /// frames and anything for other ids).
    pub async fn request(&mut self, v: Value) -> anyhow::Result<Value> {
        let id = v["id"].clone();
        self.send(&v).await?;
        loop {
            let r = self.recv_some().await?;
            if r["id"] == id && (r["kind"] == "reply" || r["kind"] == "error") {
                return Ok(r);
            }
        }
    }

    /// Calls a method and returns the answer envelope.
    pub async fn call(&mut self, id: u64, method: &str, params: Value) -> anyhow::Result<Value> {
        self.request(json!({"kind":"call","id":id,"method":method,"params":params}))
            .await
    }
}

/// A handler that waits until the test opens its gate (one permit per
/// call), then answers `{"done": true}`.
#[derive(Clone)]
pub struct Gated(pub Arc<tokio::sync::Semaphore>);

impl Gated {
    pub fn new() -> Gated {
        Gated(Arc::new(tokio::sync::Semaphore::new(0)))
    }
    /// Lets `n` waiting (or future) calls finish.
    pub fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
}

impl Handler for Gated {
    fn call(&self, _: HandlerContext, _: Payload) -> HandlerFuture {
        let gate = Arc::clone(&self.0);
        Box::pin(async move {
            let permit = gate
                .acquire()
                .await
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
            permit.forget();
            Payload::from_value(&json!({"done": true}))
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
        })
    }
}

/// The error code of an answer envelope (`None` for a reply).
pub fn err_code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}
