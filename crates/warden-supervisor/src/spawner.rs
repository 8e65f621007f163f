//! The one thread every child host is forked from.
//!
//! `PR_SET_PDEATHSIG` is tied to the thread that forked the child, so the
//! children are forked by a thread that lives as long as the [`Spawner`]
//! (and the broker): when the broker dies, the thread dies with it and the
//! kernel signals every child. Requests reach the thread over a channel;
//! the fork itself is quick, so one thread serves every host.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use warden_sys::{ChildSpec, SpawnError, SpawnedChild};

type Request = (ChildSpec, oneshot::Sender<Result<SpawnedChild, SpawnError>>);

/// A handle to the spawner thread; cheap to clone. The thread ends when
/// the last handle is dropped (and its children then get their
/// parent-death signal).
#[derive(Debug, Clone)]
pub struct Spawner {
    requests: mpsc::Sender<Request>,
    _thread: std::sync::Arc<ThreadGuard>,
}

#[derive(Debug)]
struct ThreadGuard(Option<JoinHandle<()>>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        // The sender in `Spawner` goes with it; the thread's loop ends.
        // Not joined: a drop must not block on a fork in progress.
        drop(self.0.take());
    }
}

impl Spawner {
    /// Starts the spawner thread.
    ///
    /// # Errors
    /// The OS refused a new thread.
    pub fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("warden-spawner".into())
            .spawn(move || {
                while let Ok((spec, reply)) = rx.recv() {
                    let _ = reply.send(warden_sys::spawn_child(spec));
                }
            })?;
        Ok(Spawner {
            requests: tx,
            _thread: std::sync::Arc::new(ThreadGuard(Some(thread))),
        })
    }

    /// Starts a child from the spawner thread.
    ///
    /// # Errors
    /// [`SpawnError`] from [`warden_sys::spawn_child`]; a spawner whose
    /// thread is gone answers [`SpawnError::Start`] saying so.
    pub async fn spawn(&self, spec: ChildSpec) -> Result<SpawnedChild, SpawnError> {
        let program = spec.program.clone();
        let gone = || SpawnError::Start {
            program: program.clone(),
            source: std::io::Error::other("the spawner thread is gone"),
        };
        let (tx, rx) = oneshot::channel();
        self.requests.send((spec, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
