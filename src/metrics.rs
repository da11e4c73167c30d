//! Counters shared by every worker process of a server, for its status page
//! (metrics_render.rs). The server module provides the memory — nginx a shared zone,
//! Apache an apr_shm segment made in the parent — and this file lays it out and counts in
//! it: a `#[repr(C)]` block of AtomicU64 arrays, valid when all zero, so fresh anonymous
//! shared memory is ready as it is. Counting is a few relaxed atomic adds, done by the
//! server where a request ends, not on the Python thread.
//!
//! Apps (mounts) get a slot each by name, claimed on first use by whichever process sees
//! them first (a compare-and-swap), so that no process needs another's config: up to
//! [`MAX_APPS`] names; requests of apps beyond that are not counted.
//!
//! Gauges of threads are per process ([`ProcessGauges`], a slot claimed by pid): a worker
//! that dies without a word (a crash, a kill -9) would otherwise leave its threads counted
//! for ever, so a slot counts only while its process lives, and is taken over once it
//! does not. Per-app gauges (in flight, waiting) are plain shared counters: a crash
//! mid-request leaves its requests counted until the server restarts.

use std::collections::HashMap;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Apps (mounts) a server can count.
pub const MAX_APPS: usize = 64;
/// Worker processes whose threads a server can count at once (Apache's prefork runs a
/// process per request in flight).
pub const MAX_PROCESSES: usize = 1024;
/// Bytes of an app's name kept (longer names are cut).
const NAME_WORDS: usize = 16;
const NAME_MAX: usize = NAME_WORDS * 8;
/// Upper bounds of the request-duration histogram, in seconds (Prometheus' defaults).
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Written last when the block is first set up; also tells an old layout from this one.
const MAGIC: u64 = 0x7277_7367_6930_0002;

const FREE: u64 = 0;
const CLAIMING: u64 = 1;
const NAMED: u64 = 2;

/// One app's counters.
#[repr(C)]
#[derive(Debug)]
pub struct AppCounters {
    state: AtomicU64,
    name_len: AtomicU64,
    name: [AtomicU64; NAME_WORDS],
    /// Responses by status class: [1xx, 2xx, 3xx, 4xx, 5xx].
    requests: [AtomicU64; 5],
    in_flight: AtomicU64,
    /// Requests of `in_flight` that wait to run: for a pool thread (nginx), to enter
    /// Python (Apache).
    waiting: AtomicU64,
    /// Per-bucket counts (not cumulative); the last is +Inf.
    duration: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_micros: AtomicU64,
    bytes_out: AtomicU64,
    client_aborts: AtomicU64,
    queue_full: AtomicU64,
    import_failures: AtomicU64,
}

/// The whole shared block.
#[repr(C)]
pub struct Shared {
    magic: AtomicU64,
    start_time: AtomicU64,
    worker_starts: AtomicU64,
    apps: [AppCounters; MAX_APPS],
    processes: [ProcessGauges; MAX_PROCESSES],
}

/// A slot's pid while a process is claiming it (never a live pid).
const CLAIMING_PID: u64 = u64::MAX;

/// One worker process's threads, as the server sees them.
#[repr(C)]
#[derive(Debug)]
pub struct ProcessGauges {
    /// The process holding the slot; 0 when free.
    pid: AtomicU64,
    /// Threads that can run requests.
    threads: AtomicU64,
    /// Of those, threads running a request (in Python, or its I/O).
    busy: AtomicU64,
    /// Of those, threads holding a request that wait to enter Python (the GIL).
    waiting: AtomicU64,
}

/// What a thread of [`ProcessGauges`] is doing, when it is not idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    Busy,
    Waiting,
}

/// How a request ended, as the server saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestEnd {
    /// The status sent, or None if none was (the client left first).
    pub status: Option<u16>,
    pub duration: Duration,
    pub bytes_out: u64,
    pub client_aborted: bool,
}

/// A process's handle on the shared block, with a cache of the slots it has looked up.
pub struct Metrics {
    shared: &'static Shared,
    slots: RwLock<HashMap<String, usize>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Metrics {
    /// Bytes the server must provide.
    pub const SIZE: usize = std::mem::size_of::<Shared>();

    /// Sets up a block in fresh (all-zero) or reused memory: a block of another layout is
    /// cleared. Call once, where the memory is made (before the workers exist).
    ///
    /// # Safety
    /// `base` points to at least [`Metrics::SIZE`] bytes of writable memory, aligned to 8,
    /// that stay mapped (at this address in every process sharing them) for as long as
    /// any handle on them is used, and that nothing else writes.
    pub unsafe fn init(base: *mut u8) {
        // SAFETY: the contract; all-zero bytes are a valid Shared (atomics only).
        let shared = unsafe { &*(base as *const Shared) };
        if shared.magic.load(Acquire) != MAGIC {
            // SAFETY: the contract: nothing else uses the memory while it is set up.
            unsafe { std::ptr::write_bytes(base, 0, Self::SIZE) };
            shared.start_time.store(now_unix(), Relaxed);
            shared.magic.store(MAGIC, Release);
        }
    }

    /// A handle on a block set up by [`Metrics::init`].
    ///
    /// # Safety
    /// As for init; init ran on the memory.
    pub unsafe fn attach(base: *mut u8) -> Metrics {
        Metrics {
            // SAFETY: the contract.
            shared: unsafe { &*(base as *const Shared) },
            slots: RwLock::new(HashMap::new()),
        }
    }

    /// A worker process started.
    pub fn worker_started(&self) {
        self.shared.worker_starts.fetch_add(1, Relaxed);
    }

    /// This process's thread gauges: a free slot, or one whose process is gone, claimed
    /// for the calling process (call once, in the process, after fork). None when
    /// MAX_PROCESSES live processes hold every slot.
    pub fn claim_process(&self) -> Option<&'static ProcessGauges> {
        let me = u64::from(std::process::id());
        for slot in &self.shared.processes {
            let pid = slot.pid.load(Acquire);
            let takeable = pid == 0 || (pid != CLAIMING_PID && !alive(pid));
            if takeable
                && slot
                    .pid
                    .compare_exchange(pid, CLAIMING_PID, Acquire, Relaxed)
                    .is_ok()
            {
                slot.threads.store(0, Relaxed);
                slot.busy.store(0, Relaxed);
                slot.waiting.store(0, Relaxed);
                slot.pid.store(me, Release);
                return Some(slot);
            }
        }
        None
    }

    /// The counters of app `name`, its slot claimed if it has none yet; None when every
    /// slot is taken by other names.
    pub fn app(&self, name: &str) -> Option<&AppCounters> {
        if let Some(&i) = self.slots.read().ok()?.get(name) {
            return Some(&self.shared.apps[i]);
        }
        let i = self.find_or_claim(name)?;
        if let Ok(mut slots) = self.slots.write() {
            slots.insert(name.to_string(), i);
        }
        Some(&self.shared.apps[i])
    }

    fn find_or_claim(&self, name: &str) -> Option<usize> {
        let name = cut(name);
        for (i, slot) in self.shared.apps.iter().enumerate() {
            // A slot being named is done within a few stores; one whose process died in
            // between stays unusable, and is passed over instead of waited for forever.
            let mut spins = 0u32;
            loop {
                match slot.state.load(Acquire) {
                    NAMED if slot.name() == name => return Some(i),
                    NAMED => break,
                    CLAIMING if spins > 100_000 => break,
                    CLAIMING => {
                        spins += 1;
                        std::hint::spin_loop();
                    }
                    _ => {
                        if slot
                            .state
                            .compare_exchange(FREE, CLAIMING, Acquire, Relaxed)
                            .is_ok()
                        {
                            slot.set_name(name);
                            slot.state.store(NAMED, Release);
                            return Some(i);
                        }
                    }
                }
            }
        }
        None
    }

    /// What the renderers show.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.shared;
        let apps = s
            .apps
            .iter()
            .filter(|a| a.state.load(Acquire) == NAMED)
            .map(AppCounters::snapshot)
            .collect();
        let mut threads = ThreadsSnapshot::default();
        for slot in &s.processes {
            let pid = slot.pid.load(Acquire);
            if pid == 0 || pid == CLAIMING_PID || !alive(pid) {
                continue;
            }
            let (total, busy, waiting) = (
                slot.threads.load(Relaxed),
                slot.busy.load(Relaxed),
                slot.waiting.load(Relaxed),
            );
            threads.processes += 1;
            threads.busy += busy;
            threads.waiting += waiting;
            threads.idle += total.saturating_sub(busy + waiting);
        }
        Snapshot {
            start_time: s.start_time.load(Relaxed),
            now: now_unix(),
            worker_starts: s.worker_starts.load(Relaxed),
            threads,
            apps,
        }
    }
}

/// The process `pid` exists (a process of another user counts: kill says EPERM).
fn alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl ProcessGauges {
    /// A pool-based server (nginx): `total` threads, `idle` of them waiting for work.
    pub fn set_pool(&self, total: usize, idle: usize) {
        self.threads.store(total as u64, Relaxed);
        self.busy.store(total.saturating_sub(idle) as u64, Relaxed);
    }

    /// A server whose threads each take a request (Apache): how many the process has.
    pub fn set_threads(&self, total: usize) {
        self.threads.store(total as u64, Relaxed);
    }

    /// A thread took up `state` (undone by [`ProcessGauges::leave`]).
    pub fn enter(&self, state: ThreadState) {
        self.gauge(state).fetch_add(1, Relaxed);
    }

    pub fn leave(&self, state: ThreadState) {
        // Never below zero, whatever a bug elsewhere did.
        let _ = self
            .gauge(state)
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    fn gauge(&self, state: ThreadState) -> &AtomicU64 {
        match state {
            ThreadState::Busy => &self.busy,
            ThreadState::Waiting => &self.waiting,
        }
    }

    /// The process is exiting: the slot is free for another.
    pub fn release(&self) {
        let me = u64::from(std::process::id());
        let _ = self.pid.compare_exchange(me, 0, Release, Relaxed);
    }
}

/// The name as stored: at most NAME_MAX bytes, cut at a character boundary.
fn cut(name: &str) -> &str {
    if name.len() <= NAME_MAX {
        return name;
    }
    let mut end = NAME_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl AppCounters {
    fn set_name(&self, name: &str) {
        let bytes = name.as_bytes();
        for (i, word) in self.name.iter().enumerate() {
            let mut w = [0u8; 8];
            let from = (i * 8).min(bytes.len());
            let to = (i * 8 + 8).min(bytes.len());
            w[..to - from].copy_from_slice(&bytes[from..to]);
            word.store(u64::from_le_bytes(w), Relaxed);
        }
        self.name_len.store(bytes.len() as u64, Relaxed);
    }

    fn name(&self) -> String {
        let len = (self.name_len.load(Relaxed) as usize).min(NAME_MAX);
        let bytes: Vec<u8> = self
            .name
            .iter()
            .flat_map(|w| w.load(Relaxed).to_le_bytes())
            .take(len)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A request of this app went to Python.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request of this app (in flight already) waits to run: for a thread (nginx's
    /// queue) or to enter Python (Apache).
    pub fn wait(&self) {
        self.waiting.fetch_add(1, Relaxed);
    }

    /// A request counted by [`AppCounters::wait`] runs now (or never will).
    pub fn stop_waiting(&self) {
        let _ = self
            .waiting
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// A request started with [`AppCounters::start`] ended.
    pub fn end(&self, end: RequestEnd) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.count(end);
    }

    /// A request answered without running the app (not in flight).
    pub fn count(&self, end: RequestEnd) {
        if let Some(status) = end.status {
            let class = (usize::from(status / 100)).clamp(1, 5) - 1;
            self.requests[class].fetch_add(1, Relaxed);
        }
        let seconds = end.duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration[bucket].fetch_add(1, Relaxed);
        self.duration_micros
            .fetch_add(end.duration.as_micros() as u64, Relaxed);
        if end.bytes_out > 0 {
            self.bytes_out.fetch_add(end.bytes_out, Relaxed);
        }
        if end.client_aborted {
            self.client_aborts.fetch_add(1, Relaxed);
        }
    }

    /// A request refused with 503 because the queue for Python threads was full.
    pub fn queue_full(&self) {
        self.queue_full.fetch_add(1, Relaxed);
    }

    /// Loading the app failed (at a worker's start, or retried by a request).
    pub fn import_failed(&self) {
        self.import_failures.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> AppSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut cumulative = 0;
        let buckets = self
            .duration
            .iter()
            .map(|b| {
                cumulative += load(b);
                cumulative
            })
            .collect();
        AppSnapshot {
            name: self.name(),
            requests: self.requests.each_ref().map(load),
            // A request ending in a process whose start was counted elsewhere cannot
            // happen, but a wrapped value must never show as 2^64.
            in_flight: load(&self.in_flight).min(i64::MAX as u64),
            waiting: load(&self.waiting),
            duration_buckets: buckets,
            duration_count: cumulative,
            duration_sum: load(&self.duration_micros) as f64 / 1e6,
            bytes_out: load(&self.bytes_out),
            client_aborts: load(&self.client_aborts),
            queue_full: load(&self.queue_full),
            import_failures: load(&self.import_failures),
        }
    }
}

/// The counters at one moment, for rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Unix seconds when the block was set up (the server started).
    pub start_time: u64,
    pub now: u64,
    pub worker_starts: u64,
    pub threads: ThreadsSnapshot,
    pub apps: Vec<AppSnapshot>,
}

/// The threads of every live worker process, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadsSnapshot {
    /// Worker processes counted.
    pub processes: u64,
    /// Running a request.
    pub busy: u64,
    /// Holding a request that waits to enter Python (the GIL).
    pub waiting: u64,
    /// The rest: waiting for work (nginx's pool), or serving nothing of an app (Apache).
    pub idle: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppSnapshot {
    pub name: String,
    pub requests: [u64; 5],
    pub in_flight: u64,
    pub waiting: u64,
    /// Cumulative counts for DURATION_BUCKETS, then +Inf.
    pub duration_buckets: Vec<u64>,
    pub duration_count: u64,
    pub duration_sum: f64,
    pub bytes_out: u64,
    pub client_aborts: u64,
    pub queue_full: u64,
    pub import_failures: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> &'static mut [u64] {
        Box::leak(vec![0u64; Metrics::SIZE / 8 + 1].into_boxed_slice())
    }

    #[test]
    fn counts_by_app_across_handles() {
        let mem = block();
        let base = mem.as_mut_ptr() as *mut u8;
        // SAFETY: zeroed, aligned, leaked memory of the right size.
        let (a, b) = unsafe {
            Metrics::init(base);
            (Metrics::attach(base), Metrics::attach(base))
        };
        a.worker_started();
        b.worker_started();
        let end = RequestEnd {
            status: Some(200),
            duration: Duration::from_millis(30),
            bytes_out: 5,
            client_aborted: false,
        };
        a.app("/x").unwrap().start();
        a.app("/x").unwrap().end(end);
        b.app("/y").unwrap().count(RequestEnd {
            status: Some(503),
            ..end
        });
        b.app("/x").unwrap().start();
        b.app("/x").unwrap().end(RequestEnd {
            status: None,
            client_aborted: true,
            ..end
        });
        let s = a.snapshot();
        assert_eq!(s.worker_starts, 2);
        assert_eq!(s.apps.len(), 2);
        let x = &s.apps[0];
        assert_eq!(x.name, "/x");
        assert_eq!(x.requests, [0, 1, 0, 0, 0]);
        assert_eq!(x.in_flight, 0);
        assert_eq!(x.duration_count, 2);
        assert_eq!(x.duration_buckets[2], 0); // <= 0.025
        assert_eq!(x.duration_buckets[3], 2); // <= 0.05
        assert_eq!(x.bytes_out, 10);
        assert_eq!(x.client_aborts, 1);
        assert_eq!(s.apps[1].requests, [0, 0, 0, 0, 1]);
        // init again (a reload reusing the memory) keeps the counts
        // SAFETY: as above.
        unsafe { Metrics::init(base) };
        assert_eq!(a.snapshot().worker_starts, 2);
    }

    #[test]
    fn thread_gauges_count_live_processes_only() {
        let mem = block();
        let base = mem.as_mut_ptr() as *mut u8;
        // SAFETY: as above.
        let m = unsafe {
            Metrics::init(base);
            Metrics::attach(base)
        };
        let mine = m.claim_process().unwrap();
        mine.set_pool(16, 15);
        let apache_like = m.claim_process().unwrap();
        apache_like.set_threads(4);
        apache_like.enter(ThreadState::Busy);
        apache_like.enter(ThreadState::Waiting);
        apache_like.enter(ThreadState::Waiting);
        apache_like.leave(ThreadState::Waiting);
        let t = m.snapshot().threads;
        assert_eq!((t.processes, t.busy, t.waiting, t.idle), (2, 2, 1, 17));
        // A slot of a process that is gone counts no more, and is taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = u64::from(child.id());
        child.wait().unwrap();
        apache_like.pid.store(dead, Relaxed);
        assert_eq!(m.snapshot().threads.processes, 1);
        let again = m.claim_process().unwrap();
        assert!(std::ptr::eq(again, apache_like));
        assert_eq!(m.snapshot().threads.busy, 1);
        again.release();
        mine.leave(ThreadState::Busy);
        mine.release();
        assert_eq!(m.snapshot().threads, ThreadsSnapshot::default());
    }

    #[test]
    fn waiting_never_goes_below_zero() {
        let mem = block();
        let base = mem.as_mut_ptr() as *mut u8;
        // SAFETY: as above.
        let m = unsafe {
            Metrics::init(base);
            Metrics::attach(base)
        };
        let a = m.app("/w").unwrap();
        a.wait();
        a.wait();
        a.stop_waiting();
        assert_eq!(m.snapshot().apps[0].waiting, 1);
        a.stop_waiting();
        a.stop_waiting();
        assert_eq!(m.snapshot().apps[0].waiting, 0);
    }

    #[test]
    fn slots_run_out_and_long_names_are_cut() {
        let mem = block();
        let base = mem.as_mut_ptr() as *mut u8;
        // SAFETY: as above.
        let m = unsafe {
            Metrics::init(base);
            Metrics::attach(base)
        };
        for i in 0..MAX_APPS {
            assert!(m.app(&format!("/a{i}")).is_some());
        }
        assert!(m.app("/one-more").is_none());
        assert!(m.app("/a3").is_some());
        let long = "é".repeat(100);
        let mem2 = block();
        // SAFETY: as above.
        let m2 = unsafe {
            Metrics::init(mem2.as_mut_ptr() as *mut u8);
            Metrics::attach(mem2.as_mut_ptr() as *mut u8)
        };
        m2.app(&long).unwrap();
        assert_eq!(m2.snapshot().apps[0].name, cut(&long));
    }
}
