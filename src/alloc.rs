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

/// `mi_option_arena_eager_commit` in mimalloc 2's option enum (the
/// version `libmimalloc-sys` builds by default; the crate has no constant
/// for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Tunes the allocator; call first thing in `main`. By default mimalloc
/// commits its 1 GiB arenas in one go on Linux, and transparent huge pages
/// then back what is touched in 2 MiB units: with 100,000 open inquiries
/// the daemon peaked at 115–128 MiB. Committing on demand keeps it at
/// about 108 MiB peak and 84 MiB settled (routing bench), without a
/// measurable CPU cost at intake. `MIMALLOC_*` environment variables still
/// override this.
pub fn configure() {
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: setting an option has no preconditions; mimalloc reads
        // this one when it reserves its next arena.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
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
