//! Per-worker-process state, created in init_process (after fork, never in the master):
//! the interpreter, the imported apps, the Python thread pool and the loop bridge.

use crate::config::MainConf;
use crate::log::write;
use ngx::ffi::*;
use rwsgi::metrics::{AppCounters, Metrics, ProcessGauges};
use rwsgi::pool::WorkerPool;
use rwsgi::{LogLabel, LogLevel, Runtime, ServerTraits};
use std::sync::OnceLock;

pub struct Worker {
    pub runtime: Runtime,
    pub pool: WorkerPool,
    pub threads: usize,
    pub max_queue: usize,
    /// wsgi_stuck_after, in seconds.
    pub stuck_after: u64,
}

static WORKER: OnceLock<Worker> = OnceLock::new();
/// This worker's handle on the status counters in the shared zone (config.rs).
static METRICS: OnceLock<Metrics> = OnceLock::new();
/// This worker's slot for its thread gauges.
static PROCESS: OnceLock<&'static ProcessGauges> = OnceLock::new();

pub fn metrics() -> Option<&'static Metrics> {
    METRICS.get()
}

/// The counters of the app mounted as `name` (None without a zone, or all slots taken).
pub fn app_metrics(name: &str) -> Option<&'static AppCounters> {
    metrics()?.app(name)
}

/// Attaches this worker to the status counters and counts its start.
///
/// # Safety
/// Once per worker, from init_process, after nginx has mapped and initialized the zones.
pub unsafe fn attach_metrics(mc: &MainConf) {
    let Some(zone) = mc.zone else { return };
    // SAFETY: the zone is this config's, initialized by config::init_zone, which set data
    // to the counters' block (or left it null if it failed).
    let base = unsafe { (*zone.as_ptr()).data } as *mut u8;
    if base.is_null() {
        return;
    }
    // SAFETY: base is the block init_zone set up, mapped for the worker's whole life.
    let metrics = unsafe { Metrics::attach(base) };
    metrics.worker_started();
    // Every configured app shows on the page from the start, requests or not.
    for (name, _) in &mc.mounts {
        let _ = metrics.app(name);
    }
    if let Some(slot) = metrics.claim_process() {
        let _ = PROCESS.set(slot);
    }
    let _ = METRICS.set(metrics);
}

/// The worker is exiting: its thread gauges count no more.
pub fn release_metrics() {
    if let Some(slot) = PROCESS.get() {
        slot.release();
    }
}

pub fn get() -> Option<&'static Worker> {
    WORKER.get()
}

/// Starts Python and the pool in this worker. Failures are logged; the worker keeps
/// serving its other locations and WSGI requests get a 500.
///
/// # Safety
/// Runs once per worker on the event-loop thread, from init_process, with nginx's live
/// cycle.
pub unsafe fn start(cycle: *mut ngx_cycle_t, mc: &MainConf) {
    // SAFETY: cycle is live (caller).
    let log = unsafe { (*cycle).log };
    let process = LogLabel::process();
    // SAFETY: the cycle's log is live, on the event loop (caller).
    let emerg = |message: &dyn std::fmt::Display| unsafe {
        crate::log::write_at(log, NGX_LOG_EMERG, &process, message)
    };
    tune_malloc();
    let home = mc.python_home.as_deref().map(std::path::Path::new);
    let (threads, max_queue) = (mc.threads(), mc.max_queue());
    let traits = ServerTraits {
        multithread: threads.max > 1,
        // SAFETY: cycle is live (caller).
        multiprocess: unsafe { ngx_ccf_worker_processes(cycle) } > 1,
    };
    let runtime = match Runtime::start(home, traits) {
        Ok(runtime) => runtime,
        Err(e) => {
            emerg(&e);
            return;
        }
    };
    // SAFETY: once per worker, on the event loop, from init_process (caller).
    if let Err(e) = unsafe { crate::bridge::start(cycle) } {
        emerg(&e);
        return;
    }
    // Import every configured app now, once per worker, so errors show at start-up.
    for spec in &mc.apps {
        let mounts: Vec<&str> = (mc.mounts.iter())
            .filter(|(_, s)| s == spec)
            .map(|(name, _)| name.as_str())
            .collect();
        // An app mounted at several locations is named by all of them.
        let label = LogLabel::app(&mounts.join(","));
        // SAFETY: the cycle's log is live, on the event loop (caller).
        let say =
            |level, message: &dyn std::fmt::Display| unsafe { write(log, level, &label, message) };
        match runtime.preload(spec) {
            Ok(()) => say(LogLevel::Info, &format_args!("loaded {}", spec.describe())),
            Err(error) => {
                say(
                    LogLevel::Error,
                    &format_args!(
                        "cannot load {}; its requests get 500 until it loads:",
                        spec.describe()
                    ),
                );
                error
                    .traceback
                    .lines()
                    .for_each(|line| say(LogLevel::Error, &line));
                for app in mounts.iter().filter_map(|name| app_metrics(name)) {
                    app.import_failed();
                }
            }
        }
    }
    let pool = match runtime.start_pool(threads, max_queue) {
        Ok(pool) => pool,
        Err(e) => {
            emerg(&format_args!("cannot start Python threads: {e}"));
            return;
        }
    };
    if let Some(slot) = PROCESS.get() {
        pool.report_threads(slot);
    }
    let _ = WORKER.set(Worker {
        runtime,
        pool,
        threads: threads.max,
        max_queue,
        stuck_after: mc.stuck_after(),
    });
}

/// Tunes glibc's malloc for this worker, before it starts any thread:
/// - at most MALLOC_ARENAS arenas. glibc gives each new thread its own arena (up to 8 per
///   core), and bodies freed on the event loop stay cached in the arena of whichever
///   Python thread allocated them, so RSS creeps up as load moves between threads. The
///   GIL lets only one pool thread allocate at a time, so a shared arena costs no
///   contention. Measured on 2 cores with 1 MiB uploads then 10 MiB streams: worker RSS
///   went from 107-111 MiB (growing by round) to a flat 78-86 MiB, with the same req/s.
/// - bodies up to MMAP_THRESHOLD come from the heap, and the heap is not shrunk under
///   TRIM_THRESHOLD of free space. glibc's own thresholds kept handing 1 MiB bodies'
///   pages back and faulting them in again (a tenth of the CPU of a 1 MiB upload); with
///   these, uploads went from 920 to 1,004 req/s and 1.10 to 0.88 ms of CPU each. The
///   memory is given back when the pool goes idle (rwsgi::pool), except the top of the
///   pool threads' arena, which malloc_trim does not shrink: hence a trim threshold of
///   8 MiB, not more (32 MiB left idle workers 10-15 MiB bigger, varying run to run).
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before this worker starts
    // any thread, so no allocation runs concurrently.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// The event loop's arena plus one that the pool threads share.
const MALLOC_ARENAS: libc::c_int = 2;
/// Larger allocations get their own mapping (returned to the OS as soon as freed).
const MMAP_THRESHOLD: libc::c_int = 4 << 20;
const TRIM_THRESHOLD: libc::c_int = 8 << 20;

/// worker_processes from the core module's conf.
///
/// # Safety
/// cycle is nginx's live cycle; on nginx's main thread.
unsafe fn ngx_ccf_worker_processes(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: a live cycle's conf_ctx has a slot per core module, the core module's
    // holding its ngx_core_conf_t (or null); ngx_core_module is only written while nginx
    // loads modules, before this runs.
    unsafe {
        let ccf = *(*cycle).conf_ctx.add(ngx_core_module.index) as *mut ngx_core_conf_t;
        if ccf.is_null() {
            1
        } else {
            (*ccf).worker_processes
        }
    }
}

/// Response chunks that kept the app's bytes objects alive (rwsgi::chunk) were dropped
/// here, off the GIL: queue a job that attaches to Python, which frees them now instead of
/// whenever the next request comes.
///
/// # Safety
/// Event-loop thread only (wake_pool_soon).
pub unsafe fn free_dropped_chunks_soon() {
    let Some(worker) = get() else { return };
    if !worker.runtime.chunks_dropped_off_gil() {
        return;
    }
    // A full queue means requests are coming, and each of them attaches anyway.
    let job = worker.runtime.free_dropped_chunks_job();
    if worker.pool.enqueue(job).is_ok() {
        // SAFETY: on the event loop (caller).
        unsafe { wake_pool_soon() };
    }
}

/// Posted once per event-loop iteration that queued requests, so one pool thread is woken
/// for all of them instead of one wake-up per request.
static mut WAKE_EVENT: std::mem::MaybeUninit<ngx_event_t> = std::mem::MaybeUninit::zeroed();

/// Asks for the pool to be woken after the current batch of events.
///
/// # Safety
/// Event-loop thread only (WAKE_EVENT is only touched there).
pub unsafe fn wake_pool_soon() {
    // SAFETY: WAKE_EVENT is only touched on the event-loop thread (caller), so this is
    // the only access to it now; a zeroed ngx_event_t is a valid, unposted event.
    let ev = unsafe { (*std::ptr::addr_of_mut!(WAKE_EVENT)).as_mut_ptr() };
    // SAFETY: as above; ngx_cycle and ngx_posted_events are the loop's, which we are on.
    unsafe {
        if (*ev).posted() != 0 {
            return;
        }
        (*ev).handler = Some(wake_pool);
        (*ev).log = (*ngx_cycle).log;
        ngx_post_event(ev, std::ptr::addr_of_mut!(ngx_posted_events));
    }
}

extern "C" fn wake_pool(_ev: *mut ngx_event_t) {
    crate::no_unwind(crate::Site::PROCESS, "pool wake-up", (), || {
        if let Some(worker) = get() {
            worker.pool.wake();
        }
    });
}
