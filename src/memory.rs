//! Gives the heap's free memory back to the system. glibc's allocator keeps what a burst freed
//! (the buffers of thousands of closed streams: about 30 MB per 1,000) for reuse by the same
//! arena, so without this a replica's resident memory only ever grows to its worst moment.
// One system call needs `unsafe` here, with its reason.
#![allow(unsafe_code)]

use std::time::Duration;

/// Trims the heap every `every`, off the async workers (a trim walks every arena).
pub async fn trim_every(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists,
    // under the allocator's locks; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
