//! The threads that run requests in Python, fed from a bounded queue. Used by
//! event-driven servers (nginx) whose own threads must never run Python.
//!
//! Handing the GIL from thread to thread costs more than a small request, so the pool
//! runs as few threads as keep the queue moving: a submit wakes a thread only when none
//! is draining the queue, and a drainer keeps taking jobs without letting go of the GIL
//! (the `session` wrapper). When jobs wait longer than `WAIT_THRESHOLD` — the drainers
//! are blocked in sleep or I/O — a monitor wakes more threads. A full queue is reported
//! to the caller so the server can answer 503 instead of piling up work.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub type Job = Box<dyn FnOnce() + Send>;

/// Wraps a drain session, e.g. to hold the GIL across the jobs it runs.
pub type Session = fn(&mut dyn FnMut());

/// How long a queued job may wait before another thread is woken for it.
const WAIT_THRESHOLD: Duration = Duration::from_millis(1);
/// Monitor tick while there is work; it parks after `MONITOR_IDLE` without any.
const MONITOR_TICK: Duration = Duration::from_millis(1);
const MONITOR_IDLE: Duration = Duration::from_millis(200);
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
    queue: VecDeque<(Instant, Job)>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads woken but not yet draining.
    starting: usize,
    /// Threads draining the queue.
    running: usize,
    monitor_parked: bool,
}

impl WorkerPool {
    pub fn start(threads: usize, max_queue: usize, session: Session) -> std::io::Result<WorkerPool> {
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

    /// Queues a job; gives it back when `max_queue` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let mut state = self.shared.lock();
        if state.queue.len() >= self.shared.max_queue {
            return Err(job);
        }
        state.queue.push_back((Instant::now(), job));
        let wake = state.running + state.starting == 0 && state.idle > 0;
        if wake {
            state.starting += 1;
        }
        let wake_monitor = std::mem::take(&mut state.monitor_parked);
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        if wake_monitor {
            self.shared.monitor.notify_one();
        }
        Ok(())
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
            session(&mut || self.drain());
        }
    }

    /// Runs queued jobs until the queue is empty.
    fn drain(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                match state.queue.pop_front() {
                    Some((_, job)) => job,
                    None => {
                        state.running -= 1;
                        return;
                    }
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
            if let Some((queued_at, _)) = state.queue.front() {
                if now.duration_since(*queued_at) >= WAIT_THRESHOLD {
                    let wake = state.idle.saturating_sub(state.starting).min(state.queue.len());
                    state.starting += wake;
                    for _ in 0..wake {
                        self.work.notify_one();
                    }
                }
            }
            if now.duration_since(last_work) >= MONITOR_IDLE {
                state.monitor_parked = true;
                while state.monitor_parked {
                    state = self.monitor.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                last_work = Instant::now();
            } else {
                state = self
                    .monitor
                    .wait_timeout(state, MONITOR_TICK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
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
        assert!(start.elapsed() < Duration::from_millis(600), "{:?}", start.elapsed());
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
