//! The kernel writer: netlink transactions and conntrack deletions run on
//! a thread of their own, one after another, so the proxy goes on taking
//! watch events while one runs; whatever queued meanwhile is one
//! transaction. The queue holds at most what the proxy produced during one
//! transaction. A failed transaction is reported through `take_failure`,
//! and the proxy answers it with a rewrite of the whole table.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::claims::FrontendKey;
use crate::netlink::{Batch, NetlinkError, Socket};
use crate::nftables::ops::TableOp;
use crate::nftables::{conntrack, encode};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables over netlink: {0}")]
    Netlink(NetlinkError),
    #[error("the kernel refused `{op}`: {error}")]
    Refused { op: String, error: NetlinkError },
}

/// Runs one transaction: every operation or none.
pub fn run(socket: &mut Socket, ops: &[TableOp]) -> Result<(), NftError> {
    let mut batch = Batch::default();
    let owners = encode::ops(&mut batch, ops);
    match socket.send(batch) {
        Ok(()) => Ok(()),
        Err(error @ NetlinkError::Refused { index, .. }) => {
            // Message n (from 1) is owners[n - 1]; 0 is the batch itself.
            let op =
                index.checked_sub(1).and_then(|i| owners.get(i)).map_or_else(|| "the transaction".to_string(), |&i| ops[i].to_string());
            Err(NftError::Refused { op, error })
        }
        Err(e) => Err(NftError::Netlink(e)),
    }
}

/// Runs one transaction on a socket of its own.
pub fn run_once(ops: &[TableOp]) -> Result<(), NftError> {
    let mut socket = Socket::open().map_err(|e| NftError::Netlink(e.into()))?;
    run(&mut socket, ops)
}

/// One sync for the kernel.
pub struct Job {
    /// Operations, in order (may be none).
    pub ops: Vec<TableOp>,
    /// The operations rebuild the whole table: earlier queued jobs are moot.
    pub replaces_all: bool,
    /// Flows to delete from conntrack once the operations are in.
    pub forget: Vec<(FrontendKey, SocketAddr)>,
}

pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
}

impl Writer {
    pub fn start() -> std::io::Result<Writer> {
        let sockets = (Socket::open()?, Socket::open()?);
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new().name("wharf-nft".into()).spawn(move || write_jobs(sockets, rx, &flag))?;
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

/// `sockets`: one for nf_tables, one for conntrack (a dump's answers
/// must not mix with a transaction's).
fn write_jobs((mut tables, mut flows): (Socket, Socket), jobs: mpsc::Receiver<Job>, failed: &AtomicBool) {
    while let Ok(first) = jobs.recv() {
        let (ops, forget) = coalesce(std::iter::once(first).chain(jobs.try_iter()).collect());
        if !ops.is_empty() {
            if let Err(e) = run(&mut tables, &ops) {
                tracing::warn!(error = %e, "nftables sync failed; the table will be rewritten");
                failed.store(true, Ordering::SeqCst);
                continue;
            }
        }
        if !forget.is_empty() {
            if let Err(e) = conntrack::forget(&mut flows, &forget) {
                tracing::warn!(error = %e, flows = forget.len(), "cannot delete conntrack entries: flows to a removed endpoint keep going to it");
            }
        }
    }
}

/// Queued jobs as one transaction and the flows to forget after it;
/// what a later rewrite replaces is left out.
fn coalesce(mut batch: Vec<Job>) -> (Vec<TableOp>, Vec<(FrontendKey, SocketAddr)>) {
    if let Some(last) = batch.iter().rposition(|j| j.replaces_all) {
        batch.drain(..last);
    }
    let mut ops = Vec::new();
    let mut forget = Vec::new();
    for job in batch {
        ops.extend(job.ops);
        forget.extend(job.forget);
    }
    (ops, forget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::nftables::ops::Op;
    use wharf_api::ipfamily::IpFamily;

    fn job(chain: &str, replaces_all: bool) -> Job {
        Job { ops: vec![Op::FlushChain(chain.into()).on(IpFamily::V4)], replaces_all, forget: Vec::new() }
    }

    fn chains(ops: &[TableOp]) -> Vec<String> {
        ops.iter().map(|op| op.to_string().rsplit(' ').next().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn queued_jobs_run_as_one_transaction_from_the_last_rewrite_on() {
        let (ops, _) = coalesce(vec![job("a", false), job("b", false)]);
        assert_eq!(chains(&ops), ["a", "b"]);
        let flow = (("127.96.0.5:53".parse().unwrap(), Protocol::Udp), "127.0.0.2:53".parse().unwrap());
        let mut with_flow = job("c", false);
        with_flow.forget.push(flow);
        let (ops, forget) = coalesce(vec![job("a", false), job("all", true), with_flow, job("d", false)]);
        assert_eq!((chains(&ops), forget), (vec!["all".to_string(), "c".into(), "d".into()], vec![flow]));
    }
}
