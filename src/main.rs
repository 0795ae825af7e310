//! The `saeshare` command line. Each subcommand is a thin layer over the library.

/// glibc's malloc, set up by `keep_freed_memory_for_reuse`, except on the threads that prepare
/// an encoder's inputs (`saeshare::allocator`).
#[global_allocator]
static ALLOCATOR: saeshare::allocator::SplitAllocator = saeshare::allocator::SplitAllocator;

fn main() -> std::process::ExitCode {
    saeshare::torch::keep_float32_exact();
    saeshare::allocator::keep_freed_memory_for_reuse();
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
