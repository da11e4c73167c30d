//! The threads that run requests in Python, fed from a bounded queue. Used by
//! event-driven servers (nginx) whose own threads must never run Python.
//!
//! Handing the GIL from thread to thread costs more than a small request, so the pool
//! runs as few threads as keep the queue moving: a submit wakes a thread only when none
//! is draining the queue, and a drainer keeps taking jobs without letting go of the GIL
//! (the `session` wrapper). When jobs are waiting and no drainer has taken one for
//! `STALL_THRESHOLD` — the drainers are blocked in sleep or I/O, or stuck in a long
//! request — a monitor wakes more threads. A full queue is reported
//! to the caller so the server can answer 503 instead of piling up work.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub type Job = Box<dyn FnOnce() + Send>;

/// Wraps a drain session, e.g. to hold the GIL across the jobs it runs.
pub type Session = fn(&mut dyn FnMut());

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
    monitor_parked: bool,
}

impl WorkerPool {
    pub fn start(
        threads: usize,
        max_queue: usize,
        session: Session,
    ) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            monitor: Condvar::new(),
            max_queue,
        });
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("rwsgi-{i}"))
                .stack_size(STACK_SIZE)
                .spawn(move || shared.run(session))?;
        }
        let monitor = shared.clone();
        thread::Builder::new()
            .name("rwsgi-monitor".into())
            .spawn(move || monitor.monitor())?;
        Ok(WorkerPool { shared })
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

    fn run(&self, session: Session) {
        loop {
            let mut state = self.lock();
            while state.queue.is_empty() {
                state.idle += 1;
                state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                state.idle -= 1;
                state.starting = state.starting.saturating_sub(1);
            }
            state.running += 1;
            drop(state);
            // Stay "running" until the session has let go of the GIL and the queue is
            // still empty: a thread woken earlier would only wait for our GIL.
            loop {
                session(&mut || self.drain());
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

    /// Wakes more threads while queued jobs wait too long.
    fn monitor(&self) {
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

    #[test]
    fn runs_every_job() {
        let pool = WorkerPool::start(4, 10_000, plain).unwrap();
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
        let pool = WorkerPool::start(4, 100, plain).unwrap();
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
    fn full_queue_gives_the_job_back() {
        let pool = WorkerPool::start(1, 1, plain).unwrap();
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
