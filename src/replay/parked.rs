//! Idle HTTP/1 connections parked on tasks of their own (the open model:
//! `--rate` and `--speed`).
//!
//! The scheduler thread writes each due request itself, so its send time
//! is exact. Before this, it then spawned a task to read the answer: the
//! spawn woke a tokio worker, which found nothing to read yet and went back
//! to sleep, only to be woken again by the answer. On a 2-core VM at 10,000
//! requests/s a context switch cost more than reading the answer, and that
//! wake-up was one of the four per request (`perf`: 112,000 switches per
//! 30,000 requests, against oha's 1.5 per request).
//!
//! Here a task waits on each idle connection's readiness. The scheduler
//! leaves the request's job in the connection's slot, then writes the
//! request on the socket; no task is woken until the answer arrives, and
//! the task the answer wakes is the one that reads it.
//!
//! Invariants, all under the slot's lock:
//! - the scheduler writes only on a parked connection whose slot is not
//!   `closed`, so the descriptor it writes to is the connection's own;
//! - the task probes the socket for an end of file only when no job is
//!   posted, so the probe never takes a byte of an answer.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::{now_ns, still_open, Presend};
use super::tls::Conn;
use super::{count_in, Job, Outgoing, Shared, TaskCtx};

/// One target's parked connections, the most recently parked last.
#[derive(Default)]
pub(super) struct Parking {
    lanes: Mutex<Vec<Arc<Lane>>>,
}

impl Parking {
    fn push(&self, lane: Arc<Lane>) {
        lock(&self.lanes).push(lane);
    }

    fn pop(&self) -> Option<Arc<Lane>> {
        lock(&self.lanes).pop()
    }
}

/// A connection's task as the scheduler sees it.
struct Lane {
    slot: Mutex<Slot>,
    /// Woken only when the scheduler could not write the whole request
    /// (the task then writes the rest).
    wake: Notify,
}

struct Slot {
    fd: RawFd,
    closed: bool,
    posted: Option<Posted>,
}

/// A request written (`written` bytes of it, at `sent_ts`) on the
/// connection, waiting for its answer to be read.
struct Posted {
    job: Job,
    sent: (i64, Instant),
    written: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Park every idle plain connection the targets opened ahead of the run.
pub(super) fn start_all(shared: &Shared) {
    for (ti, (target, _)) in shared.targets.iter().enumerate() {
        for stream in target.take_idle_plain() {
            start(shared, ti, stream);
        }
    }
}

fn start(shared: &Shared, ti: usize, stream: TcpStream) {
    let lane = Arc::new(Lane {
        slot: Mutex::new(Slot {
            fd: stream.as_raw_fd(),
            closed: false,
            posted: None,
        }),
        wake: Notify::new(),
    });
    shared.parked[ti].push(Arc::clone(&lane));
    let ctx = TaskCtx::new(shared);
    let parked = Arc::clone(&shared.parked);
    tokio::spawn(run(lane, Conn::Plain(stream), ctx, parked, ti));
}

/// Write `job`'s request now on a parked connection of target `ti` and
/// leave the job to that connection's task. Gives the job back when no
/// parked connection (or no permit) is free.
pub(super) fn post(shared: &Shared, ti: usize, job: Job) -> Option<Job> {
    if !matches!(job.request, Outgoing::Http1(_)) {
        return Some(job);
    }
    let target = Arc::clone(&job.target);
    let Ok(permit) = target.permits.try_acquire() else {
        return Some(job);
    };
    loop {
        let Some(lane) = shared.parked[ti].pop() else {
            return Some(job);
        };
        // The task may be woken by the answer before the slot is filled
        // in: it waits on this lock, held until the slot says what was
        // written.
        let mut slot = lock(&lane.slot);
        if slot.closed {
            continue;
        }
        permit.forget();
        count_in(&job, &shared.counters);
        let sent = (now_ns(), Instant::now());
        let (written, whole) = match &job.request {
            Outgoing::Http1(bytes) => {
                let n = send_now(slot.fd, bytes);
                (n, n == bytes.len())
            }
            // Never posted (see the check above).
            Outgoing::Http2(_) | Outgoing::Unsendable(_) => (0, false),
        };
        slot.posted = Some(Posted { job, sent, written });
        drop(slot);
        if !whole {
            lane.wake.notify_one();
        }
        return None;
    }
}

/// Write what the socket takes without blocking: 0 on any error (the
/// task's write then meets the error, or the stale-connection resend).
fn send_now(fd: RawFd, bytes: &[u8]) -> usize {
    // SAFETY: `fd` is the open socket of a parked connection: its task
    // closes it only after marking the slot closed, under the lock the
    // caller holds. The buffer is valid for its length.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// How a parked connection's task was woken.
enum Woke {
    /// An answer, an end of file, a request to finish writing, or the
    /// time to look at the slot.
    Look,
    /// The run is over.
    Stop,
}

/// The connection's task: wait for an answer (or an end of file) on the
/// idle connection, read it for the posted job, park again.
async fn run(lane: Arc<Lane>, conn: Conn, mut ctx: TaskCtx, parked: Arc<Vec<Parking>>, ti: usize) {
    let mut own = Some(conn);
    let mut cancel = ctx.cancel.clone();
    // A target that never answers wakes nobody: the task also looks at its
    // slot this often, so a posted job is found before its deadline (the
    // wait for its answer then ends there, as for any request).
    let look = ctx.opts.timeout.min(ctx.opts.shadow_timeout);
    while let Some(Conn::Plain(stream)) = &own {
        let wait = async {
            tokio::select! {
                r = stream.readable() => if r.is_ok() { Woke::Look } else { Woke::Stop },
                () = lane.wake.notified() => Woke::Look,
                _ = cancel.wait_for(|c| *c) => Woke::Stop,
            }
        };
        let timer = ctx.clock.within(Instant::now() + look, wait).await;
        if matches!(timer, Some(Woke::Stop)) {
            break;
        }
        let posted = {
            let mut slot = lock(&lane.slot);
            match slot.posted.take() {
                Some(posted) => posted,
                // Only the time to look: nothing to probe.
                None if timer.is_none() => continue,
                // An end of file, bytes nobody asked for, or readiness left
                // over from the last answer (then the probe clears it).
                None if own.as_mut().is_some_and(still_open) => continue,
                None => {
                    slot.closed = true;
                    return;
                }
            }
        };
        answer(posted, &mut own, &mut ctx).await;
        match &own {
            Some(Conn::Plain(s)) => {
                lock(&lane.slot).fd = s.as_raw_fd();
                parked[ti].push(Arc::clone(&lane));
            }
            _ => break,
        }
    }
    // Closed for the scheduler; a job it posted meanwhile is still
    // answered (or recorded as interrupted), so none is lost.
    let left = {
        let mut slot = lock(&lane.slot);
        slot.closed = true;
        slot.posted.take()
    };
    if let Some(posted) = left {
        answer(posted, &mut own, &mut ctx).await;
    }
}

/// Read the answer to `posted` on `own` (finishing the write if needed);
/// `own` keeps the connection if it can carry another request.
async fn answer(posted: Posted, own: &mut Option<Conn>, ctx: &mut TaskCtx) {
    let Posted {
        mut job,
        sent,
        written,
    } = posted;
    match own.take() {
        Some(conn) => {
            job.pre = Some(Presend::new(conn, sent, written));
            ctx.perform(job, Some(own)).await;
        }
        // Not reached (a lane without a connection is never parked). If it
        // were, the job would go over a new connection, taking a permit
        // again like any job without a connection.
        None => {
            job.target.permits.add_permits(1);
            ctx.perform(job, Some(own)).await;
        }
    }
}
