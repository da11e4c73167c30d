//! [`Req`]: safe reads of a request_rec that httpd handed to a hook, so code that only
//! looks at the request (copying it for the engine, choosing a status) needs no unsafe
//! block of its own. The one unsafe step is [`Req::new`], where the caller vouches that
//! the request is live for as long as the `Req` is used.

use crate::apr::bytes;
use crate::bindings::*;
use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;

/// A request httpd passed to a hook, live for `'a`.
///
/// Only reads go through a `Req`, always through the raw pointer (no Rust reference to
/// the request_rec is ever formed), so code that later writes to the request through
/// [`Req::ptr`] does not conflict with it.
#[derive(Clone, Copy)]
pub struct Req<'a> {
    r: *mut request_rec,
    _live: PhantomData<&'a request_rec>,
}

impl<'a> Req<'a> {
    /// # Safety
    /// `r` points to a request_rec that stays live (its pool not cleared) for `'a`, whose
    /// connection and server are live too; httpd guarantees this for the request passed
    /// to a hook, for the hook's duration. And no other thread writes to the request
    /// while this `Req` (or a copy) reads it: the content handler shares the request
    /// with other threads only through [`crate::live::Live`], and reads nothing through
    /// its `Req` while it does.
    pub unsafe fn new(r: *mut request_rec) -> Req<'a> {
        Req {
            r,
            _live: PhantomData,
        }
    }

    pub fn ptr(self) -> *mut request_rec {
        self.r
    }

    /// The server (virtual host) the request was mapped to.
    pub fn server(self) -> *mut server_rec {
        // SAFETY: the request is live (Req::new); reading a pointer field.
        unsafe { (*self.r).server }
    }

    pub fn connection(self) -> *mut conn_rec {
        // SAFETY: as in server.
        unsafe { (*self.r).connection }
    }

    pub fn pool(self) -> *mut apr_pool_t {
        // SAFETY: as in server.
        unsafe { (*self.r).pool }
    }

    /// The request that led here by an internal redirect, if any.
    pub fn prev(self) -> Option<Req<'a>> {
        // SAFETY: as in server.
        let prev = unsafe { (*self.r).prev };
        if prev.is_null() {
            return None;
        }
        // SAFETY: r->prev is an earlier request of the same connection, kept (with its
        // pool) at least until this one is done.
        Some(unsafe { Req::new(prev) })
    }

    pub fn method_number(self) -> c_int {
        // SAFETY: the request is live (Req::new); reading a plain field.
        unsafe { (*self.r).method_number }
    }

    /// A HEAD request (no body goes out).
    pub fn header_only(self) -> bool {
        // SAFETY: as in method_number.
        unsafe { (*self.r).header_only != 0 }
    }

    pub fn request_time(self) -> apr_time_t {
        // SAFETY: as in method_number.
        unsafe { (*self.r).request_time }
    }

    pub fn used_path_info(self) -> c_int {
        // SAFETY: as in method_number.
        unsafe { (*self.r).used_path_info }
    }

    /// What httpd's directory walk found at r->filename.
    pub fn filetype(self) -> apr_filetype_e {
        // SAFETY: as in method_number.
        unsafe { (*self.r).finfo.filetype }
    }

    /// The frec type of the first output filter (None without filters).
    pub fn first_output_filter_type(self) -> Option<ap_filter_type> {
        // SAFETY: the request is live; its output filter list is NULL-terminated and each
        // filter's frec (NULL or a registered filter) lives as long as the process.
        unsafe {
            let f = (*self.r).output_filters;
            if f.is_null() || (*f).frec.is_null() {
                None
            } else {
                Some((*(*f).frec).ftype)
            }
        }
    }

    /// The connection's local address (SERVER_ADDR).
    pub fn local_ip(self) -> Option<&'a [u8]> {
        // SAFETY: the connection is live with the request (Req::new); local_ip is NULL or
        // a string in the connection's pool, which outlives the request.
        unsafe { c_bytes((*self.connection()).local_ip) }
    }

    /// The client's port (of the connection's peer; None without an address).
    pub fn client_port(self) -> Option<apr_port_t> {
        // SAFETY: the connection is live; client_addr is NULL or a sockaddr in the
        // connection's pool.
        unsafe {
            let addr = (*self.connection()).client_addr;
            (!addr.is_null()).then(|| (*addr).port)
        }
    }

    /// The virtual host's ServerName.
    pub fn server_hostname(self) -> Option<&'a [u8]> {
        // SAFETY: the server_rec lives as long as the configuration, longer than any
        // request (Req::new); its strings are in the config pool.
        unsafe { c_bytes((*self.server()).server_hostname) }
    }

    /// The virtual host's ServerAdmin.
    pub fn server_admin(self) -> Option<&'a [u8]> {
        // SAFETY: as in server_hostname.
        unsafe { c_bytes((*self.server()).server_admin) }
    }

    /// The connection is over TLS (mod_ssl or another provider says so).
    pub fn is_tls(self) -> bool {
        // SAFETY: the connection is live; the call only queries the SSL providers.
        unsafe { ap_ssl_conn_is_ssl(self.connection()) != 0 }
    }

    /// DocumentRoot for the request.
    pub fn document_root(self) -> Option<&'a [u8]> {
        // SAFETY: the request is live; httpd returns NULL or a pool/config string.
        unsafe { c_bytes(ap_document_root(self.r)) }
    }

    /// The URL prefix of the context (an Alias), for CONTEXT_PREFIX.
    pub fn context_prefix(self) -> Option<&'a [u8]> {
        // SAFETY: as in document_root.
        unsafe { c_bytes(ap_context_prefix(self.r)) }
    }

    /// The directory the context maps to, for CONTEXT_DOCUMENT_ROOT.
    pub fn context_document_root(self) -> Option<&'a [u8]> {
        // SAFETY: as in document_root.
        unsafe { c_bytes(ap_context_document_root(self.r)) }
    }

    /// "http" or "https", as the http_scheme hook answers.
    pub fn http_scheme(self) -> Option<&'a [u8]> {
        // SAFETY: as in document_root (the hook returns a static or pool string).
        unsafe { c_bytes(ap_run_http_scheme(self.r)) }
    }

    /// The server name for self-referential URLs (UseCanonicalName applies).
    pub fn server_name_for_url(self) -> Option<&'a [u8]> {
        // SAFETY: as in document_root.
        unsafe { c_bytes(ap_get_server_name_for_url(self.r)) }
    }

    /// The server port for self-referential URLs.
    pub fn server_port(self) -> apr_port_t {
        // SAFETY: the request is live; the call only reads it and its server.
        unsafe { ap_get_server_port(self.r) }
    }

    /// The Options in effect for the request's directory (OPT_* bits).
    pub fn allow_options(self) -> c_int {
        // SAFETY: the request is live and its directory walk is done (handler phase).
        unsafe { ap_allow_options(self.r) }
    }

    /// LimitRequestBody for the request (0: unlimited).
    pub fn limit_req_body(self) -> apr_off_t {
        // SAFETY: as in server_port.
        unsafe { ap_get_limit_req_body(self.r) }
    }

    /// `apr_table_get` on one of the request's tables: the first value of `key`.
    pub fn table_get(self, table: Table, key: &CStr) -> Option<&'a [u8]> {
        let t = self.table(table);
        // SAFETY: t is a live table of the request; apr_table_get only reads it and
        // returns NULL or a string in the request's pool.
        let v = unsafe { apr_table_get(t, key.as_ptr()) };
        if v.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string in a pool that lives for 'a.
        Some(unsafe { bytes(v) })
    }

    /// The entries of one of the request's tables, in order (NULL keys skipped).
    pub fn table_entries(self, table: Table) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        // SAFETY: a live table of the request; nothing modifies it while the caller, who
        // holds the request for 'a, iterates.
        unsafe { table_entries(self.table(table)) }
    }

    fn table(self, table: Table) -> *const apr_table_t {
        // SAFETY: the request is live (Req::new); reading a pointer field.
        unsafe {
            match table {
                Table::HeadersIn => (*self.r).headers_in,
                Table::SubprocessEnv => (*self.r).subprocess_env,
                Table::Notes => (*self.r).notes,
            }
        }
    }
}

/// The request's tables a [`Req`] reads.
#[derive(Clone, Copy, Debug)]
pub enum Table {
    HeadersIn,
    SubprocessEnv,
    Notes,
}

/// Accessors for the request's C string fields: None for NULL.
macro_rules! c_string_fields {
    ($($field:ident),+ $(,)?) => {
        impl<'a> Req<'a> {
            $(
                pub fn $field(self) -> Option<&'a [u8]> {
                    // SAFETY: the request is live for 'a (Req::new); httpd keeps this
                    // field NULL or a NUL-terminated string in the request's pool (or a
                    // longer-lived one: a static, the connection's, the config pool).
                    unsafe { c_bytes((*self.r).$field) }
                }
            )+
        }
    };
}

/// A C string as bytes, None for NULL.
///
/// # Safety
/// As for [`bytes`].
unsafe fn c_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: forwarded contract.
    (!p.is_null()).then(|| unsafe { bytes(p) })
}

c_string_fields!(
    uri,
    unparsed_uri,
    method,
    args,
    protocol,
    handler,
    filename,
    path_info,
    user,
    ap_auth_type,
    log_id,
    the_request,
    useragent_ip,
    hostname,
);

/// The entries of an APR table as byte strings, in order; entries with a NULL key are
/// skipped, a NULL value reads as "".
///
/// # Safety
/// `t` is NULL or a live table whose entries outlive `'a`, and nobody changes the table
/// while the iterator is used.
unsafe fn table_entries<'a>(t: *const apr_table_t) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    let entries: &'a [apr_table_entry_t] = if t.is_null() {
        &[]
    } else {
        // SAFETY: t is live (the contract): its array header holds nelts entries at elts,
        // unchanged while nobody changes the table.
        unsafe {
            let array = apr_table_elts(t);
            let (first, n) = if array.is_null() {
                (std::ptr::null(), 0)
            } else {
                ((*array).elts as *const apr_table_entry_t, (*array).nelts)
            };
            if first.is_null() || n <= 0 {
                &[]
            } else {
                std::slice::from_raw_parts(first, n as usize)
            }
        }
    };
    entries.iter().filter(|e| !e.key.is_null()).map(|e| {
        // SAFETY: table keys and values are NULL or NUL-terminated strings in a pool that
        // outlives the table (the contract).
        unsafe { (bytes(e.key), bytes(e.val)) }
    })
}

/// httpd's banner (SERVER_SOFTWARE).
pub fn server_banner() -> Vec<u8> {
    // SAFETY: ap_get_server_banner returns a NUL-terminated string in the configuration
    // pool (replaced only while httpd re-reads its configuration); copied at once.
    unsafe { bytes(ap_get_server_banner()) }.to_vec()
}

/// The running httpd's version.
pub fn server_revision() -> (c_int, c_int, c_int) {
    let mut version = ap_version_t {
        major: 0,
        minor: 0,
        patch: 0,
        add_string: std::ptr::null(),
    };
    // SAFETY: ap_get_server_revision only fills the struct it is given.
    unsafe { ap_get_server_revision(&mut version) };
    (version.major, version.minor, version.patch)
}
