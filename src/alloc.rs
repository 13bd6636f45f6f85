//! glibc malloc tuning for a process that holds many clients or sessions.
//!
//! glibc raises its mmap threshold (from 128 KiB up to 32 MiB) whenever a large block it had
//! mmapped is freed: one zlib deflate (minting a UserSig frees ~860 KiB of deflate state) or a
//! GStreamer plugin load is enough. From then on, every allocation below the new threshold
//! comes from the main heap, and a heap that many small, long-lived allocations pin down
//! cannot shrink. Measured with `cargo bench -p rtcroom --bench join100 -- 1000` (1,000
//! joined engine clients, external server): 439 MiB RSS with the dynamic threshold, 138 MiB
//! with it pinned at 128 KiB. Pinning it (which also disables the dynamic adjustment) is what
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072` does; the CLI does it at start.

/// Pin glibc's mmap threshold at its default (128 KiB), turning off its dynamic growth.
/// A no-op on other C libraries.
pub fn pin_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets an allocator parameter; it is called at the start of
        // `main`, before any other thread exists, with a valid parameter and value.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        debug_assert_eq!(ok, 1, "mallopt(M_MMAP_THRESHOLD) refused");
    }
}
