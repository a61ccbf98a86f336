//! The process's life: one root cancellation token that every server and
//! loop follows, the named tasks that make up a command, and shutdown.
//! SIGTERM or SIGINT cancels the token: servers stop accepting, watches end,
//! work in flight finishes within its grace; then the process exits 0. A
//! second signal exits at once. A task that ends on its own is a failure:
//! the others are stopped and the process exits with its error.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Lifecycle {
    pub token: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

/// Exit status when a second signal cuts shutdown short.
const INTERRUPTED: i32 = 130;

/// SIGTERM and SIGINT, listened to for the whole life of the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

impl Lifecycle {
    /// A root token, cancelled by the first SIGTERM/SIGINT.
    pub fn new() -> Self {
        let token = CancellationToken::new();
        let on_signal = token.clone();
        match Signals::new() {
            Ok(mut signals) => {
                tokio::spawn(async move {
                    let name = signals.next().await;
                    tracing::info!(signal = name, "shutting down; a second signal stops at once");
                    on_signal.cancel();
                    let name = signals.next().await;
                    tracing::warn!(signal = name, "second signal: exiting now");
                    std::process::exit(INTERRUPTED);
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for signals"),
        }
        Self { token, tasks: Vec::new() }
    }

    /// Runs a part of the command; it must end when the token is cancelled.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Waits for the signal or the first failure, then for every task to
    /// end (at most `grace` plus a second).
    pub async fn run(self, grace: Duration) -> anyhow::Result<()> {
        let Lifecycle { token, tasks } = self;
        let (mut names, mut handles): (Vec<&'static str>, Vec<_>) = tasks.into_iter().unzip();
        let ended = tokio::select! {
            // A part that ends once shutdown began is no failure.
            biased;
            _ = token.cancelled() => None,
            (result, i, _) = futures::future::select_all(handles.iter_mut()) => Some((i, result)),
        };
        let failure = ended.map(|(i, result)| {
            // That handle is done: it must not be polled again.
            let name = names.remove(i);
            drop(handles.remove(i));
            token.cancel();
            match result {
                Ok(Ok(())) => anyhow::anyhow!("{name} stopped"),
                Ok(Err(e)) => e.context(format!("{name} failed")),
                Err(e) => anyhow::Error::new(e).context(format!("{name} panicked")),
            }
        });
        let all = futures::future::join_all(handles);
        if tokio::time::timeout(grace + Duration::from_secs(1), all).await.is_err() {
            tracing::warn!(?grace, "parts still running after the shutdown grace; exiting anyway");
        }
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}
