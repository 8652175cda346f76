//! Giving memory back to the system after a burst.
//!
//! glibc's allocator keeps what is freed in its arenas (one per thread that
//! allocated, up to eight per core) for reuse, and returns only the free
//! space at the very top of each heap. After the start-up snapshot, or
//! after the router has worked off a restored backlog, most of what was
//! allocated is free again but stays resident, scattered between the
//! allocations that live on. `malloc_trim(0)` releases every free page of
//! every arena; it costs a walk over the free lists (a few milliseconds
//! for a heap of a hundred MiB), so it is called after such bursts only.

/// Returns free heap pages to the system. A no-op where the allocator is
/// not glibc's.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and madvises the allocator's own
        // free chunks under the arenas' locks; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
