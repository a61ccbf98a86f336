//! The kernel writer: `nft` transactions and conntrack deletions run on a
//! thread of their own, one after another, so the proxy goes on taking
//! watch events while one runs; whatever queued meanwhile is one
//! transaction. The queue holds at most what the proxy produced during one
//! `nft` run. A failed transaction is reported through `take_failure`,
//! and the proxy answers it with a rewrite of the whole table.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::claims::FrontendKey;
use crate::model::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft refused the transaction: {0}")]
    Refused(String),
}

/// Runs one transaction: every command or none.
pub fn run(commands: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(String::from_utf8_lossy(&output.stderr).trim().to_string()))
    }
}

/// Deletes the conntrack entries of flows from `frontend` to `endpoint`:
/// a UDP flow's next datagram is balanced again; a TCP connection's next
/// segment finds no endpoint that knows it and is reset.
pub fn forget_flows((frontend, protocol): FrontendKey, endpoint: SocketAddr) {
    let (f_ip, f_port, e_ip, e_port) =
        (frontend.ip().to_string(), frontend.port().to_string(), endpoint.ip().to_string(), endpoint.port().to_string());
    let proto = if protocol == Protocol::Udp { "udp" } else { "tcp" };
    let args = ["-D", "-p", proto, "--orig-dst", &f_ip, "--orig-port-dst", &f_port, "--reply-src", &e_ip, "--reply-port-src", &e_port];
    // It exits 1 when there was no such flow, which is the common case.
    match Command::new("conntrack").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, %frontend, %endpoint, "cannot run conntrack: flows to a removed endpoint keep going to it"),
    }
}

/// One sync for the kernel.
pub struct Job {
    /// `nft` commands, one per line (may be empty).
    pub commands: String,
    /// The commands rebuild the whole table: earlier queued jobs are moot.
    pub replaces_all: bool,
    /// Flows to delete from conntrack once the commands are in.
    pub forget: Vec<(FrontendKey, SocketAddr)>,
}

pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
}

impl Writer {
    pub fn start() -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new().name("wharf-nft".into()).spawn(move || write_jobs(rx, &flag))?;
        Ok(Writer { jobs: Some(tx), thread: Some(thread), failed })
    }

    pub fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // Only fails when the thread is gone, which `finish` does last.
            let _ = jobs.send(job);
        }
    }

    /// Whether a transaction failed since the last call.
    pub fn take_failure(&self) -> bool {
        self.failed.swap(false, Ordering::SeqCst)
    }

    /// Waits until every job sent is done.
    pub fn finish(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_jobs(jobs: mpsc::Receiver<Job>, failed: &AtomicBool) {
    while let Ok(first) = jobs.recv() {
        let (commands, forget) = coalesce(std::iter::once(first).chain(jobs.try_iter()).collect());
        if !commands.is_empty() {
            if let Err(e) = run(&commands) {
                tracing::warn!(error = %e, "nftables sync failed; the table will be rewritten");
                failed.store(true, Ordering::SeqCst);
                continue;
            }
        }
        for (frontend, endpoint) in forget {
            forget_flows(frontend, endpoint);
        }
    }
}

/// Queued jobs as one transaction and the flows to forget after it;
/// what a later rewrite replaces is left out.
fn coalesce(mut batch: Vec<Job>) -> (String, Vec<(FrontendKey, SocketAddr)>) {
    if let Some(last) = batch.iter().rposition(|j| j.replaces_all) {
        batch.drain(..last);
    }
    let commands = batch.iter().map(|j| j.commands.as_str()).collect();
    (commands, batch.into_iter().flat_map(|j| j.forget).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(commands: &str, replaces_all: bool) -> Job {
        Job { commands: commands.into(), replaces_all, forget: Vec::new() }
    }

    #[test]
    fn queued_jobs_run_as_one_transaction_from_the_last_rewrite_on() {
        let (commands, _) = coalesce(vec![job("a\n", false), job("b\n", false)]);
        assert_eq!(commands, "a\nb\n");
        let flow = (("127.96.0.5:53".parse().unwrap(), Protocol::Udp), "127.0.0.2:53".parse().unwrap());
        let mut with_flow = job("c\n", false);
        with_flow.forget.push(flow);
        let (commands, forget) = coalesce(vec![job("a\n", false), job("all\n", true), with_flow, job("d\n", false)]);
        assert_eq!((commands.as_str(), forget), ("all\nc\nd\n", vec![flow]));
    }
}
