//! Thread priorities for the open-model schedule.
//!
//! On a small machine the replay shares two cores with the targets. A due
//! request is late when the scheduler thread waits for a CPU, or when the
//! threads reading answers do (then no idle connection is free to send on).
//! Measured on a 2-core VM at 10,000 requests/s: the Parquet encoder and the
//! plan decoder ran for 1-3 ms at a stretch and the request threads queued
//! behind them, which was most of the schedule lag's p99. So the scheduler
//! asks to wake on time, and the bulk threads step aside while they are not
//! behind.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Make the calling (scheduler) thread wake on time: a timer slack of 1 µs
/// instead of Linux's default 50 µs, and a short EEVDF time slice (Linux
/// 6.12 and later) so that on waking it preempts a busy thread instead of
/// queueing behind it. With CAP_SYS_NICE it also gets nice -10. (Real-time
/// priority was tried: the scheduler was punctual but starved the threads
/// reading answers, and lag grew tenfold.)
pub fn precise_sleeps() {
    // SAFETY: plain syscall with integer arguments on the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    if !set_normal(0, -10, Some(100_000)) {
        set_normal(0, 0, Some(100_000));
    }
}

/// A bulk thread (results encoder, plan decoder) with a queue between it
/// and the request path. While that queue has slack the thread runs as
/// SCHED_IDLE: the kernel lets any normal thread preempt it at once. When the
/// queue nears the point where the request path would wait for it, the side
/// that notices (the consumer for a producer, or the producer for a
/// consumer) makes it urgent: normal priority until it has caught up. The
/// other side must do it, because a starved idle thread cannot notice.
/// Leaving SCHED_IDLE needs CAP_SYS_NICE (or RLIMIT_NICE); without it the
/// thread runs at nice 10 throughout.
#[derive(Default)]
pub struct Background {
    tid: AtomicI32,
    idle: AtomicBool,
    switching: AtomicBool,
}

impl Background {
    /// Called on the bulk thread itself, once. With `may_idle` false (the
    /// closed loop, where the CPU is meant to be saturated) it only lowers
    /// the thread to nice 10. The thread stays registered until the
    /// returned guard drops (its id must not be used once it has ended).
    #[must_use = "the guard marks the thread's end"]
    pub fn enter(&self, may_idle: bool) -> Entered<'_> {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        self.tid.store(tid, Ordering::Relaxed);
        if may_idle && may_raise_priority() && set_policy(0, libc::SCHED_IDLE, 0, None) {
            self.idle.store(true, Ordering::Relaxed);
            self.switching.store(true, Ordering::Release);
        } else {
            set_normal(0, 10, None);
        }
        Entered(self)
    }

    /// Switch the thread's priority when `urgent` differs from what it has
    /// (one system call per change). Callable from any thread.
    pub fn set_urgent(&self, urgent: bool) {
        if !self.switching.load(Ordering::Acquire) || self.idle.load(Ordering::Relaxed) != urgent {
            return;
        }
        if self.idle.swap(!urgent, Ordering::AcqRel) != urgent {
            return; // another thread made this change
        }
        let tid = self.tid.load(Ordering::Relaxed);
        let done = if urgent {
            set_normal(tid, 0, None)
        } else {
            set_policy(tid, libc::SCHED_IDLE, 0, None)
        };
        if !done {
            // Refused after all: normal priority from now on.
            self.switching.store(false, Ordering::Release);
            set_normal(tid, 0, None);
        }
    }
}

/// See [`Background::enter`].
pub struct Entered<'a>(&'a Background);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.switching.store(false, Ordering::Release);
    }
}

/// Whether this process may lower a thread's nice value again (leave
/// SCHED_IDLE): CAP_SYS_NICE in the effective set, or RLIMIT_NICE allowing
/// nice 0.
fn may_raise_priority() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let cap = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
    // SAFETY: getrlimit writes into the struct we pass.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    let rlimit_ok =
        unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut lim) } == 0 && lim.rlim_cur >= 20;
    cap || rlimit_ok
}

/// SCHED_OTHER with `nice`, and a time slice in ns when given, for thread
/// `tid` (0: the calling thread). Returns whether the kernel accepted it (a
/// negative nice needs CAP_SYS_NICE).
fn set_normal(tid: i32, nice: i32, slice_ns: Option<u64>) -> bool {
    set_policy(tid, libc::SCHED_OTHER, nice, slice_ns)
}

fn set_policy(tid: i32, policy: libc::c_int, nice: i32, slice_ns: Option<u64>) -> bool {
    // SAFETY: sched_attr is plain data; all-zero is a valid value for it.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_policy = policy as u32;
    attr.sched_nice = nice;
    // For SCHED_OTHER the kernel reads sched_runtime as the slice it should
    // use (clamped to 0.1-100 ms); 0 means its default.
    attr.sched_runtime = slice_ns.unwrap_or(0);
    // SAFETY: the syscall reads `attr`, valid for its whole declared size,
    // and changes only thread `tid` of this process.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &attr as *const libc::sched_attr,
            0,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy of the calling thread, as the kernel reports it.
    fn policy() -> libc::c_int {
        // SAFETY: plain syscall on the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn background_steps_aside_and_is_called_back() {
        let bg = std::sync::Arc::new(Background::default());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<libc::c_int>();
        let bg2 = bg.clone();
        let t = std::thread::spawn(move || {
            let _entered = bg2.enter(true);
            back_tx.send(policy()).unwrap();
            // Woken by the test thread after it changed our priority.
            while rx.recv().is_ok() {
                back_tx.send(policy()).unwrap();
            }
        });
        let first = back_rx.recv().unwrap();
        if !may_raise_priority() {
            // Unprivileged: nice 10 throughout, never SCHED_IDLE.
            assert_eq!(first, libc::SCHED_OTHER);
        } else {
            assert_eq!(first, libc::SCHED_IDLE);
            // Another thread makes it urgent, then lets it rest again.
            bg.set_urgent(true);
            tx.send(()).unwrap();
            assert_eq!(back_rx.recv().unwrap(), libc::SCHED_OTHER);
            bg.set_urgent(false);
            tx.send(()).unwrap();
            assert_eq!(back_rx.recv().unwrap(), libc::SCHED_IDLE);
        }
        drop(tx);
        t.join().unwrap();
    }
}
