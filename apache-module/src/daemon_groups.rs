//! The daemon process groups as Apache's children use them: where each group listens,
//! its secret, which apps it runs, who may use it, and the cap on the Apache threads it
//! may hold in one child.
//!
//! The parent builds the table in post_config, after the supervisor answered, and every
//! child it forks inherits it; each child counts its own threads per group. The table is
//! ordinary Rust memory, not the configuration pool: it is replaced by the next
//! post_config, never freed under a child.

use crate::daemon_conf::Home;
use rwsgi::daemon::SECRET_LEN;
use rwsgi::AppTarget;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub struct Group {
    pub name: String,
    pub socket: PathBuf,
    pub secret: [u8; SECRET_LEN],
    /// The apps (script, callable) the group's processes run; anything else is refused
    /// before connecting.
    pub apps: Vec<(AppTarget, String)>,
    pub home: Home,
    /// The most Apache threads of one child that may wait on the group at once:
    /// processes x threads, what the group can serve at a time. More would only queue
    /// in its socket while holding threads other sites need.
    pub cap: usize,
    pub connect_timeout: Duration,
    pub socket_timeout: Duration,
    /// Threads of this child on the group now.
    held: AtomicUsize,
}

/// One of a group's threads, taken by [`Group::enter`] and given back when dropped.
pub struct Held<'a>(&'a Group);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Group {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        socket: PathBuf,
        secret: [u8; SECRET_LEN],
        apps: Vec<(AppTarget, String)>,
        home: Home,
        cap: usize,
        connect_timeout: Duration,
        socket_timeout: Duration,
    ) -> Group {
        Group {
            name,
            socket,
            secret,
            apps,
            home,
            cap: cap.max(1),
            connect_timeout,
            socket_timeout,
            held: AtomicUsize::new(0),
        }
    }

    /// Takes one of the group's threads in this child, None when all are taken.
    pub fn enter(&self) -> Option<Held<'_>> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Held(self))
    }

    pub fn runs(&self, target: &AppTarget, callable: &str) -> bool {
        self.apps.iter().any(|(t, c)| t == target && c == callable)
    }
}

/// What the configuration decided for this generation of children.
#[derive(Default)]
pub struct Table {
    pub groups: Vec<Group>,
    /// WSGIRestrictEmbedded On.
    pub restrict_embedded: bool,
    /// Whether the children start Python (see daemon_conf::children_need_python).
    pub python: bool,
}

impl Table {
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// The parent's latest table.
static PUBLISHED: Mutex<Option<Arc<Table>>> = Mutex::new(None);
/// The table this child was forked with.
static CHILD: OnceLock<Arc<Table>> = OnceLock::new();

/// In the parent, at post_config: the table the next children get.
pub fn publish(table: Table) {
    *PUBLISHED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(table));
}

/// In a child, at child_init: fixes the table it inherited.
pub fn child_init() {
    let table = PUBLISHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    let _ = CHILD.set(table);
}

/// This child's table (an empty one before child_init).
pub fn current() -> &'static Table {
    static EMPTY: OnceLock<Table> = OnceLock::new();
    CHILD
        .get()
        .map(|t| &**t)
        .unwrap_or_else(|| EMPTY.get_or_init(Table::default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_bounds_threads_held_at_once() {
        let g = Group::new(
            "g".into(),
            PathBuf::from("/x/g.sock"),
            [0; SECRET_LEN],
            vec![(AppTarget::Script("/a.wsgi".into()), "application".into())],
            Home::Main,
            2,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let a = g.enter().expect("first");
        let b = g.enter().expect("second");
        assert!(g.enter().is_none(), "a third thread is over the cap");
        drop(a);
        let c = g.enter().expect("a freed thread can be taken again");
        drop((b, c));
        assert!(g.runs(&AppTarget::Script("/a.wsgi".into()), "application"));
        assert!(!g.runs(&AppTarget::Script("/a.wsgi".into()), "app"));
        assert!(!g.runs(&AppTarget::Script("/b.wsgi".into()), "application"));
    }
}
