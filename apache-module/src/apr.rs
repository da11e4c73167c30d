//! Re-implementations of the APR/httpd macros bindgen cannot translate (bucket rings,
//! `ap_get_module_config`) and small helpers for C strings and pool memory.

use crate::bindings::*;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;

/// The bytes of a C string, or an empty slice for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the returned slice.
pub unsafe fn bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        &[]
    } else {
        // SAFETY: non-NULL and NUL-terminated per the caller's contract.
        unsafe { CStr::from_ptr(p) }.to_bytes()
    }
}

/// A C string as an owned Rust string (invalid UTF-8 replaced), None for NULL.
///
/// # Safety
/// Same as [`bytes`].
pub unsafe fn string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: forwarded contract.
        Some(String::from_utf8_lossy(unsafe { bytes(p) }).into_owned())
    }
}

/// Copies `s` into `pool` as a NUL-terminated C string (an interior NUL cuts it short,
/// as C would read it).
///
/// # Safety
/// `pool` is a live APR pool; the result lives as long as the pool.
pub unsafe fn pstr(pool: *mut apr_pool_t, s: &[u8]) -> *const c_char {
    // SAFETY: apr_pstrmemdup copies exactly s.len() bytes from a valid slice and appends NUL.
    unsafe { apr_pstrmemdup(pool, s.as_ptr().cast(), s.len() as apr_size_t) }
}

/// `ap_get_module_config(vector, module)`: the module's slot in a config vector.
///
/// # Safety
/// `vector` is a config vector built by httpd (one slot per loaded module) and `index` is
/// the module_index httpd assigned to a loaded module.
pub unsafe fn module_config(vector: *mut ap_conf_vector_t, index: i32) -> *mut c_void {
    if vector.is_null() || index < 0 {
        return ptr::null_mut();
    }
    // SAFETY: httpd sizes every config vector for all loaded modules.
    unsafe { *(vector as *mut *mut c_void).add(index as usize) }
}

/// `ap_set_module_config(vector, module, value)`.
///
/// # Safety
/// As for [`module_config`]; `value` must live as long as the vector's owner.
pub unsafe fn set_module_config(vector: *mut ap_conf_vector_t, index: i32, value: *mut c_void) {
    if vector.is_null() || index < 0 {
        return;
    }
    // SAFETY: as in module_config.
    unsafe { *(vector as *mut *mut c_void).add(index as usize) = value }
}

/// `APR_BRIGADE_SENTINEL(bb)`: the ring head viewed as a bucket (`link` is the first
/// field of apr_bucket, so the head and a bucket's link overlay).
///
/// # Safety
/// `bb` is a live brigade.
pub unsafe fn sentinel(bb: *mut apr_bucket_brigade) -> *mut apr_bucket {
    // SAFETY: only the address is computed; nothing is read.
    unsafe { ptr::addr_of_mut!((*bb).list) as *mut apr_bucket }
}

/// `APR_BRIGADE_INSERT_TAIL(bb, e)`.
///
/// # Safety
/// `bb` is a live brigade and `e` a fresh bucket from the same allocator, in no ring.
pub unsafe fn insert_tail(bb: *mut apr_bucket_brigade, e: *mut apr_bucket) {
    // SAFETY: ring surgery on a valid brigade; the head's fields are written through the
    // brigade itself (never through the sentinel pseudo-bucket).
    unsafe {
        let head = sentinel(bb);
        let last = (*bb).list.prev;
        (*e).link.next = head;
        (*e).link.prev = last;
        if last == head {
            (*bb).list.next = e;
        } else {
            (*last).link.next = e;
        }
        (*bb).list.prev = e;
    }
}

/// The buckets of a brigade in order (the brigade must not change while iterating).
///
/// # Safety
/// `bb` is a live brigade that nobody else modifies during the iteration.
pub unsafe fn buckets(bb: *mut apr_bucket_brigade) -> impl Iterator<Item = *mut apr_bucket> {
    // SAFETY: per the caller's contract bb is live; only an address is computed.
    let head = unsafe { sentinel(bb) };
    // SAFETY: per the caller's contract the ring is well formed and stable.
    let mut next = unsafe { (*bb).list.next };
    std::iter::from_fn(move || {
        if next == head {
            return None;
        }
        let current = next;
        // SAFETY: current is a bucket of the ring.
        next = unsafe { (*current).link.next };
        Some(current)
    })
}

/// True when `b` is of the given bucket type (`APR_BUCKET_IS_EOS` and friends).
///
/// # Safety
/// `b` is a live bucket.
pub unsafe fn is_type(b: *const apr_bucket, kind: *const apr_bucket_type_t) -> bool {
    // SAFETY: reading the type pointer of a live bucket.
    ptr::eq(unsafe { (*b).type_ }, kind)
}

/// `apr_bucket_read(b, &data, &len, block)`: the bucket's bytes.
///
/// # Safety
/// `b` is a live bucket; the returned slice is valid until the bucket is changed or freed.
pub unsafe fn read_bucket<'a>(
    b: *mut apr_bucket,
    block: apr_read_type_e,
) -> Result<&'a [u8], apr_status_t> {
    let mut data: *const c_char = ptr::null();
    let mut len: apr_size_t = 0;
    // SAFETY: every bucket type has a read function; it fills data/len on success.
    let rv = unsafe {
        match (*(*b).type_).read {
            Some(read) => read(b, &mut data, &mut len, block),
            None => return Ok(&[]),
        }
    };
    if rv != APR_SUCCESS as apr_status_t {
        return Err(rv);
    }
    if data.is_null() || len == 0 {
        return Ok(&[]);
    }
    // SAFETY: the bucket's read returned len valid bytes at data.
    Ok(unsafe { std::slice::from_raw_parts(data.cast(), len as usize) })
}

/// Moves a Rust value into `pool`'s lifetime: it is dropped when the pool is cleared.
///
/// # Safety
/// `pool` is a live pool, and the module's code stays loaded until its cleanups ran
/// (true for pconf: mod_so registers the unload cleanup before any config is created).
pub unsafe fn pool_box<T>(pool: *mut apr_pool_t, value: T) -> *mut T {
    let raw = Box::into_raw(Box::new(value));
    // SAFETY: the cleanup receives exactly this pointer once, when the pool is cleared.
    unsafe {
        apr_pool_cleanup_register(
            pool,
            raw as *const c_void,
            Some(drop_boxed::<T>),
            Some(apr_pool_cleanup_null),
        );
    }
    raw
}

unsafe extern "C" fn drop_boxed<T>(data: *mut c_void) -> apr_status_t {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: data came from Box::into_raw in pool_box and is dropped only here.
        drop(unsafe { Box::from_raw(data as *mut T) });
    });
    APR_SUCCESS as apr_status_t
}

/// Allocates a plain-data value in `pool` (no destructor runs; use for Copy types).
///
/// # Safety
/// `pool` is a live pool.
pub unsafe fn pool_value<T: Copy>(pool: *mut apr_pool_t, value: T) -> *mut T {
    assert!(
        std::mem::align_of::<T>() <= 8,
        "apr_palloc aligns to 8 bytes"
    );
    // SAFETY: apr_palloc returns at least size_of::<T>() bytes aligned to 8 (or aborts).
    unsafe {
        let p = apr_palloc(pool, std::mem::size_of::<T>() as apr_size_t) as *mut T;
        p.write(value);
        p
    }
}
