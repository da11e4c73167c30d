//! The threads that run requests in Python, fed from a bounded queue. Used by
//! event-driven servers (nginx) whose own threads must never run Python.
//!
//! Handing the GIL from thread to thread costs more than a small request, so the pool
//! runs as few threads as keep the queue moving: a submit wakes a thread only when none
//! is draining the queue, and a drainer keeps taking jobs without letting go of the GIL
//! (the `session` wrapper). When jobs are waiting and no drainer has taken one for
//! `STALL_THRESHOLD` — the drainers are blocked in sleep or I/O, or stuck in a long
//! request — a monitor wakes more threads, and starts new ones up to the pool's maximum
//! when none is idle: an app that waits on a database or an HTTP call needs a thread per
//! request in flight. Threads beyond the minimum that stay idle for `RETIRE_AFTER` exit.
//! A full queue is reported to the caller so the server can answer 503 instead of piling
//! up work. The pool's threads, and how many wait for work, go to the status page's
//! gauges when the server asks ([`WorkerPool::report_threads`]).

use crate::metrics::ProcessGauges;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub type Job = Box<dyn FnOnce() + Send>;

/// Wraps a drain session, e.g. to hold the GIL across the jobs it runs.
pub type Session = fn(&mut dyn FnMut());

/// Runs on a thread that is about to exit (retired), e.g. to free its Python state.
pub type Farewell = fn();

/// How many threads a pool runs: `min` always, up to `max` while requests block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    pub min: usize,
    pub max: usize,
}

impl Threads {
    /// Exactly `n` threads.
    pub fn fixed(n: usize) -> Threads {
        Threads { min: n, max: n }
    }
}

/// How long the queue may make no progress before another thread is woken: well above
/// what a small request takes (tens of microseconds), so a busy drainer is not mistaken
/// for a blocked one. Measured on 2 cores: 1 ms cost the 10 ms-sleep benchmark 4%
/// against 500 us; 200 us misfired under CPU contention (a merely preempted drainer
/// looked stalled and the woken threads fought over the GIL).
const STALL_THRESHOLD: Duration = Duration::from_micros(500);
/// Monitor tick while there is work; it parks after `MONITOR_IDLE` without any.
const MONITOR_TICK: Duration = Duration::from_millis(1);
const MONITOR_IDLE: Duration = Duration::from_millis(200);
/// The monitor's shortest sleep, so threads just woken have time to take their jobs.
const MIN_CHECK: Duration = Duration::from_micros(50);
/// Stack size of pool threads: deep Python recursion needs more than Rust's 2 MiB default.
const STACK_SIZE: usize = 8 * 1024 * 1024;
/// An idle thread beyond the minimum exits after this long without work (granian keeps
/// its idle blocking threads as long; the unit tests wait less).
const RETIRE_AFTER: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(30)
};

pub struct WorkerPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Idle threads wait here.
    work: Condvar,
    /// The monitor waits here.
    monitor: Condvar,
    max_queue: usize,
    threads: Threads,
    session: Session,
    farewell: Farewell,
    /// Where the thread counts go, once the server says (report_threads).
    gauges: OnceLock<&'static ProcessGauges>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// When a thread last took a job from the queue.
    last_take: Option<Instant>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads woken but not yet draining.
    starting: usize,
    /// Threads draining the queue.
    running: usize,
    /// Threads alive (or being started).
    total: usize,
    monitor_parked: bool,
}

impl WorkerPool {
    pub fn start(
        threads: Threads,
        max_queue: usize,
        session: Session,
        farewell: Farewell,
    ) -> std::io::Result<WorkerPool> {
        let min = threads.min.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            monitor: Condvar::new(),
            max_queue,
            threads: Threads {
                min,
                max: threads.max.max(min),
            },
            session,
            farewell,
            gauges: OnceLock::new(),
        });
        for _ in 0..min {
            shared.lock().total += 1;
            shared.spawn(false)?;
        }
        let monitor = shared.clone();
        thread::Builder::new()
            .name("rwsgi-monitor".into())
            .spawn(move || monitor.monitor())?;
        Ok(WorkerPool { shared })
    }

    /// Keeps `gauges` up to date with the pool's threads and how many of them wait for
    /// work, from now on.
    pub fn report_threads(&self, gauges: &'static ProcessGauges) {
        let state = self.shared.lock();
        let _ = self.shared.gauges.set(gauges);
        self.shared.publish(&state);
    }

    /// Queues a job and wakes a thread if none is draining the queue. Gives the job back
    /// when `max_queue` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.enqueue(job)?;
        self.wake();
        Ok(())
    }

    /// Queues a job without waking anyone: an event loop that queues several jobs per
    /// iteration calls [`WorkerPool::wake`] once at the end, so one thread drains them all.
    pub fn enqueue(&self, job: Job) -> Result<(), Job> {
        let mut state = self.shared.lock();
        if state.queue.len() >= self.shared.max_queue {
            return Err(job);
        }
        state.queue.push_back(job);
        let wake_monitor = std::mem::take(&mut state.monitor_parked);
        drop(state);
        if wake_monitor {
            self.shared.monitor.notify_one();
        }
        Ok(())
    }

    /// Queues a job of a request already admitted (a parked response going on) ahead of
    /// new requests and regardless of `max_queue`: it must not be refused halfway.
    pub fn enqueue_admitted(&self, job: Job) {
        let mut state = self.shared.lock();
        state.queue.push_front(job);
        let wake_monitor = std::mem::take(&mut state.monitor_parked);
        drop(state);
        if wake_monitor {
            self.shared.monitor.notify_one();
        }
    }

    /// Wakes a thread when jobs wait and no thread is draining or about to, or when the
    /// drainers have stalled (see the monitor).
    pub fn wake(&self) {
        let mut state = self.shared.lock();
        let wake = state.idle > state.starting
            && state.queue.len() > state.starting
            && (state.running + state.starting == 0 || state.stalled(Instant::now()));
        if wake {
            state.starting += 1;
        }
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
    }
}

impl State {
    /// How long the monitor may sleep: until waiting jobs would count as stalled (so a
    /// blocked drainer is relieved STALL_THRESHOLD after its last take, not up to a tick
    /// later), else a tick.
    fn next_check(&self, now: Instant) -> Duration {
        match self.last_take {
            Some(t) if !self.queue.is_empty() => (t + STALL_THRESHOLD)
                .saturating_duration_since(now)
                .clamp(MIN_CHECK, MONITOR_TICK),
            _ => MONITOR_TICK,
        }
    }

    /// Jobs wait while no thread has taken one for STALL_THRESHOLD.
    fn stalled(&self, now: Instant) -> bool {
        !self.queue.is_empty()
            && self
                .last_take
                .is_none_or(|t| now.duration_since(t) >= STALL_THRESHOLD)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the thread counts to the gauges, if any; the caller holds the lock, so that
    /// counts from two threads are not stored out of order.
    fn publish(&self, state: &State) {
        if let Some(gauges) = self.gauges.get() {
            gauges.set_pool(state.total, state.idle);
        }
    }

    /// Starts one more thread (already counted in `total`, and in `starting` when it is
    /// started for waiting jobs).
    fn spawn(self: &Arc<Self>, starting: bool) -> std::io::Result<()> {
        let shared = self.clone();
        let started = thread::Builder::new()
            .name("rwsgi".into())
            .stack_size(STACK_SIZE)
            .spawn(move || shared.run(starting));
        if started.is_err() {
            let mut state = self.lock();
            state.total -= 1;
            if starting {
                state.starting -= 1;
            }
            self.publish(&state);
        }
        started.map(|_| ())
    }

    fn run(&self, mut starting: bool) {
        loop {
            let mut state = self.lock();
            if std::mem::take(&mut starting) {
                state.starting = state.starting.saturating_sub(1);
            }
            while state.queue.is_empty() {
                state.idle += 1;
                self.publish(&state);
                let (next, waited) = self
                    .work
                    .wait_timeout(state, RETIRE_AFTER)
                    .unwrap_or_else(|e| e.into_inner());
                state = next;
                state.idle -= 1;
                state.starting = state.starting.saturating_sub(1);
                if waited.timed_out() && state.queue.is_empty() && state.total > self.threads.min {
                    state.total -= 1;
                    self.publish(&state);
                    drop(state);
                    (self.farewell)();
                    return;
                }
            }
            state.running += 1;
            self.publish(&state);
            drop(state);
            // Stay "running" until the session has let go of the GIL and the queue is
            // still empty: a thread woken earlier would only wait for our GIL.
            loop {
                (self.session)(&mut || self.drain());
                let mut state = self.lock();
                if state.queue.is_empty() {
                    state.running -= 1;
                    break;
                }
            }
        }
    }

    /// Runs queued jobs until the queue is empty.
    fn drain(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                match state.queue.pop_front() {
                    Some(job) => {
                        state.last_take = Some(Instant::now());
                        job
                    }
                    None => return,
                }
            };
            // A panicking job must not take the thread with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }

    /// Wakes more threads while queued jobs wait too long, starting new ones when none
    /// is idle.
    fn monitor(self: &Arc<Self>) {
        let mut last_work = Instant::now();
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            if !state.queue.is_empty() || state.running > 0 {
                last_work = now;
            }
            if state.stalled(now) {
                // Threads already woken will take a job each.
                let uncovered = state.queue.len().saturating_sub(state.starting);
                let wake = state.idle.saturating_sub(state.starting).min(uncovered);
                state.starting += wake;
                for _ in 0..wake {
                    self.work.notify_one();
                }
                // Every thread is busy (blocked): one more per check, so a burst grows
                // the pool step by step rather than all at once.
                if uncovered > wake && state.total < self.threads.max {
                    state.total += 1;
                    state.starting += 1;
                    self.publish(&state);
                    drop(state);
                    // A thread that cannot start leaves the jobs to the others.
                    let _ = self.spawn(true);
                    state = self.lock();
                }
            }
            if now.duration_since(last_work) >= MONITOR_IDLE {
                state.monitor_parked = true;
                drop(state);
                release_free_memory();
                state = self.lock();
                while state.monitor_parked {
                    state = self.monitor.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                last_work = Instant::now();
            } else {
                let timeout = state.next_check(now);
                state = self
                    .monitor
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// The pool has gone idle: give the memory that requests freed back to the OS. glibc
/// keeps freed heap memory for reuse, so without this a worker stays at the size of its
/// busiest moment (1 MiB uploads at 32 connections left nginx's two workers at 86 MiB;
/// trimmed, they go back to about 40 MiB once idle). Costs one pass over the free lists.
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages to the kernel; callable from any thread.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn plain(f: &mut dyn FnMut()) {
        f()
    }

    fn nothing() {}

    #[test]
    fn runs_every_job() {
        let pool = WorkerPool::start(Threads::fixed(4), 10_000, plain, nothing).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..1000 {
            let done = done.clone();
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                done.fetch_add(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            }))
            .unwrap_or_else(|_| panic!("queue full"));
        }
        for _ in 0..1000 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 1000);
    }

    #[test]
    fn blocked_jobs_get_more_threads() {
        // Four jobs that each block 200 ms must run side by side, not one after another.
        let pool = WorkerPool::start(Threads::fixed(4), 100, plain, nothing).unwrap();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        for _ in 0..4 {
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                thread::sleep(Duration::from_millis(200));
                tx.send(()).unwrap();
            }))
            .unwrap_or_else(|_| panic!("queue full"));
        }
        for _ in 0..4 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn grows_while_jobs_block_then_retires_to_min() {
        // 40 jobs blocking 300 ms on a pool of 2 growing to 64 run side by side: all done
        // in well under 40 x 300 ms / 2 = 6 s.
        let pool = WorkerPool::start(Threads { min: 2, max: 64 }, 1000, plain, nothing).unwrap();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        for _ in 0..40 {
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                thread::sleep(Duration::from_millis(300));
                tx.send(()).unwrap();
            }))
            .unwrap_or_else(|_| panic!("queue full"));
        }
        for _ in 0..40 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        let grown = pool.shared.lock().total;
        assert!(grown > 2 && grown <= 64, "{grown} threads");
        // Idle for RETIRE_AFTER: back to the minimum, and it still serves.
        let retired = (0..50).any(|_| {
            thread::sleep(Duration::from_millis(100));
            pool.shared.lock().total == 2
        });
        assert!(retired, "{} threads left", pool.shared.lock().total);
        pool.submit(Box::new(move || tx.send(()).unwrap()))
            .unwrap_or_else(|_| panic!("queue full"));
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_fixed_pool_never_grows() {
        let pool = WorkerPool::start(Threads::fixed(2), 1000, plain, nothing).unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..6 {
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                thread::sleep(Duration::from_millis(100));
                tx.send(()).unwrap();
            }))
            .unwrap_or_else(|_| panic!("queue full"));
        }
        for _ in 0..6 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(pool.shared.lock().total, 2);
    }

    #[test]
    fn reports_busy_and_idle_threads() {
        use crate::metrics::Metrics;
        let mem = Box::leak(vec![0u64; Metrics::SIZE / 8 + 1].into_boxed_slice());
        let base = mem.as_mut_ptr() as *mut u8;
        // SAFETY: zeroed, aligned, leaked memory of the right size.
        let metrics = unsafe {
            Metrics::init(base);
            Metrics::attach(base)
        };
        let pool = WorkerPool::start(Threads::fixed(3), 10, plain, nothing).unwrap();
        pool.report_threads(metrics.claim_process().unwrap());
        let threads = || metrics.snapshot().threads;
        let settled = |busy, idle| {
            (0..200).any(|_| {
                let t = threads();
                thread::sleep(Duration::from_millis(10));
                (t.busy, t.idle) == (busy, idle)
            })
        };
        assert!(settled(0, 3), "{:?}", threads());
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel();
        pool.submit(Box::new(move || {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv();
        }))
        .unwrap_or_else(|_| panic!("queue full"));
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(settled(1, 2), "{:?}", threads());
        drop(release_tx);
        assert!(settled(0, 3), "{:?}", threads());
    }

    #[test]
    fn full_queue_gives_the_job_back() {
        let pool = WorkerPool::start(Threads::fixed(1), 1, plain, nothing).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        pool.submit(Box::new(move || {
            started_tx.send(()).unwrap();
            let _ = rx.recv();
        }))
        .unwrap_or_else(|_| panic!("queue full"));
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(pool.submit(Box::new(|| {})).is_ok());
        assert!(pool.submit(Box::new(|| {})).is_err());
        drop(tx);
    }
}
