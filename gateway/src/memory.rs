//! Gives heap memory that bursts freed back to the operating system.
//!
//! A flood of connections (each a few tens of KiB of buffers) leaves glibc's
//! arenas holding what they freed: the process's resident memory stays at
//! its peak long after the connections closed, and under a memory limit the
//! next flood starts from there. `malloc_trim` returns free pages from every
//! arena; called every few seconds it costs microseconds on an idle heap.

use std::time::Duration;

/// How often freed memory is given back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Runs forever: spawn it once per process.
pub async fn give_back_freed_memory() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and may be called from any thread
    // at any time; glibc serialises it against allocations per arena.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
