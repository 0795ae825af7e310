//! The `saeshare` command line. Each subcommand is a thin layer over the library.

fn main() -> std::process::ExitCode {
    saeshare::torch::keep_float32_exact();
    keep_freed_memory_for_reuse();
    end_quietly_on_a_closed_pipe();
    saeshare::cli::main()
}

/// `saeshare dataset inspect ... | head`: when the reader of stdout goes away, end as Unix
/// tools do (killed by SIGPIPE, no message) instead of panicking in `println!`. Rust ignores
/// SIGPIPE by default; timely's sockets send with MSG_NOSIGNAL, so they still see an error.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// libtorch allocates and frees its activations (tens to hundreds of MB) at every batch. glibc
/// serves blocks that large with a fresh mmap and returns them with munmap, and gives a
/// thread's arena heaps back whole when they empty, so every batch page-faults its whole
/// working set again: in `saeshare run` on MobileNetV2 and EfficientNet-Lite0 the kernel time
/// (293 s) was larger than the compute (268 s). One heap for all threads (the worker threads
/// spend their time in libtorch, not in malloc), no mmap, and freed memory kept for the next
/// batch: 2.3x faster end to end, the same outputs, peak memory +13%. `GLIBC_TUNABLES`, when
/// set, is left to decide.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
