//! The daemon's allocator, and giving memory back to the system after a
//! burst.
//!
//! Rust allocations go to mimalloc (`main.rs` installs [`Allocator`]):
//! under intake load glibc's allocator spent a sixth of the daemon's CPU
//! in its own bookkeeping (consolidating fast bins whenever a buffer of a
//! kilobyte or more was requested), and mimalloc's thread-local free
//! lists cut that by more than half. SQLite's C code still allocates from
//! glibc.
//!
//! Both keep freed memory for reuse. After the start-up snapshot, or after
//! the router has worked off a restored backlog, most of what was
//! allocated is free again but stays resident; [`release_free_memory`]
//! hands it back. It costs a walk over the free lists (a few milliseconds
//! for a heap of a hundred MiB), so it is called after such bursts only.

/// The global allocator the binary installs.
pub type Allocator = mimalloc::MiMalloc;

/// Tunes the allocator; call first thing in `main`. mimalloc asks for
/// transparent huge pages on its arenas, and the kernel then backs what
/// is touched in 2 MiB units: with 100,000 open inquiries the daemon
/// peaked at 115–128 MiB instead of 111 MiB (routing bench), and settled
/// at 102 MiB instead of 87. mimalloc's own switch
/// (`MIMALLOC_ALLOW_THP=0`) is read before `main` runs, so the daemon
/// turns huge pages off for itself here; faults from now on get normal
/// pages. Setting `MIMALLOC_ALLOW_THP` leaves the choice to mimalloc.
pub fn configure() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's
        // memory map; it takes no pointers.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            // Nothing is wrong, the daemon just keeps a larger heap.
            eprintln!(
                "switchboard: cannot turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Returns free heap pages to the system: mimalloc's, and glibc's (used
/// by SQLite).
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees and decommits the allocator's own
    // unused pages; it has no preconditions.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and madvises the allocator's own
        // free chunks under the arenas' locks; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
