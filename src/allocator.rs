//! The `saeshare` binary's memory allocator: glibc's malloc for every thread, set to one heap
//! that keeps freed memory ([`keep_freed_memory_for_reuse`]), except the threads that prepare
//! an encoder's inputs, which allocate from mimalloc's per-thread heaps ([`SplitAllocator`]).
//!
//! Why two: glibc's one heap stops libtorch's per-batch buffers from page-faulting in again at
//! every batch and makes a run on the CPU 2.3x faster. But one heap has one lock, and tokenizing allocates many small
//! objects: on one heap, 256 captions took 24 ms on 2 threads against 6 ms on 1, so the threads
//! that feed a GPU slowed each other down. mimalloc's heaps are per thread, and the same work
//! took 3.0 ms on 2 threads. mimalloc for everything instead made the CPU demo slower (twice
//! the kernel time), so only the preparing threads use it (BENCHMARKS.md, "allocator").
//!
//! A thread opts in with [`use_thread_heap`]. Whatever thread frees or grows a block, the block
//! goes back to the allocator it came from: mimalloc knows its own addresses. (A mimalloc block
//! grown on another thread stays mimalloc's, from that thread's heap.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_void;

/// libtorch allocates and frees its activations (tens to hundreds of MB) at every batch. glibc
/// serves blocks that large with a fresh mmap and returns them with munmap, and gives a
/// thread's arena heaps back whole when they empty, so every batch page-faults its whole
/// working set again: in `saeshare run` on MobileNetV2 and EfficientNet-Lite0 the kernel time
/// (293 s) was larger than the compute (268 s). One heap for all threads (the worker threads
/// spend their time in libtorch, not in malloc), no mmap, and freed memory kept for the next
/// batch: 2.3x faster end to end, the same outputs, peak memory +13%. (One arena per thread
/// with the same settings faulted 2.7 times as often as one heap in the demo.) `GLIBC_TUNABLES`,
/// when set, is left to decide. Call it first thing in `main`, before any other thread exists.
///
/// It also keeps mimalloc's page map to the process's end whatever `MIMALLOC_DESTROY_ON_EXIT`
/// says: [`SplitAllocator`] asks it who owns each block it frees, threads that outlive `main`
/// included.
pub fn keep_freed_memory_for_reuse() {
    /// mimalloc.h's `mi_option_destroy_on_exit`, which libmimalloc-sys does not name.
    const MI_OPTION_DESTROY_ON_EXIT: libmimalloc_sys::mi_option_t = 22;
    // SAFETY: sets one of mimalloc's options; any thread may, at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_DESTROY_ON_EXIT, 0) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only sets allocator parameters; the caller runs it before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

thread_local! {
    static THREAD_HEAP: Cell<bool> = const { Cell::new(false) };
}

/// From now on, this thread's allocations come from its own mimalloc heap (when the program's
/// global allocator is a [`SplitAllocator`]; otherwise nothing changes).
pub fn use_thread_heap() {
    THREAD_HEAP.with(|t| t.set(true));
}

/// Whether `pointer` was allocated from the mimalloc heaps.
pub fn is_from_thread_heaps(pointer: *const u8) -> bool {
    // SAFETY: mimalloc answers for any address, allocated by it or not.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(pointer.cast()) }
}

fn on_thread_heap() -> bool {
    // `try_with`: during a thread's teardown, fall back to glibc rather than fail.
    THREAD_HEAP.try_with(Cell::get).unwrap_or(false)
}

/// glibc's malloc, or mimalloc on threads that called [`use_thread_heap`].
pub struct SplitAllocator;

// SAFETY: every block is freed and reallocated by the allocator that made it, which mimalloc's
// address check decides; both allocators honour the layout's alignment.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_thread_heap() {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_thread_heap() {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if is_from_thread_heaps(pointer) {
            libmimalloc_sys::mi_free(pointer.cast::<c_void>())
        } else {
            System.dealloc(pointer, layout)
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if is_from_thread_heaps(pointer) {
            libmimalloc_sys::mi_realloc_aligned(pointer.cast(), new_size, layout.align()).cast()
        } else {
            System.realloc(pointer, layout, new_size)
        }
    }
}
