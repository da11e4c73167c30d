//! A fixed set of threads that run requests in Python, fed from a bounded queue. Used by
//! event-driven servers (nginx) whose own threads must never run Python; a full queue is
//! reported to the caller so the server can answer 503 instead of piling up work.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

pub type Job = Box<dyn FnOnce() + Send>;

pub struct WorkerPool {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    max_queue: usize,
}

/// Stack size of pool threads: deep Python recursion needs more than Rust's 2 MiB default.
const STACK_SIZE: usize = 8 * 1024 * 1024;

impl WorkerPool {
    pub fn start(threads: usize, max_queue: usize) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            max_queue,
        });
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("rwsgi-{i}"))
                .stack_size(STACK_SIZE)
                .spawn(move || shared.run())?;
        }
        Ok(WorkerPool { shared })
    }

    /// Queues a job; gives it back when the queue already holds `max_queue` jobs.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.shared.max_queue {
            return Err(job);
        }
        queue.push_back(job);
        drop(queue);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    match queue.pop_front() {
                        Some(job) => break job,
                        None => queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            // A panicking job must not take the thread (and its queue slot) with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}
