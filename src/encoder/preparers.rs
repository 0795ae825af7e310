//! The threads that prepare an encoder's inputs (decode and resize images, tokenize captions):
//! the helper thread alone beside a CPU's forward passes, which take the other cores, or a pool
//! of every core feeding a GPU, which one thread would leave idle.
//!
//! The pool's threads live as long as the encoder, so a batch costs no thread starts, and they
//! take work an item at a time (rayon's work stealing), so a slow image holds up no fixed share
//! of the batch. Each allocates from its own mimalloc heap ([`crate::allocator`]): tokenizing
//! and decoding allocate many small objects, and glibc's one heap has one lock.

use std::sync::Arc;

use rayon::prelude::*;

/// Where an encoder's inputs are prepared: on the calling thread, or on a pool of threads.
#[derive(Clone, Default)]
pub struct Preparers {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Preparers {
    /// The calling thread alone.
    pub fn here() -> Preparers {
        Preparers::default()
    }

    /// Where an encoder on `device` prepares: on the helper thread beside a model on the CPU,
    /// whose forward takes the other cores; on every core feeding a GPU, which one thread leaves
    /// idle (on an H200's machine, a 224-pixel image took about 5 ms to decode and resize and a
    /// caption 0.27 ms to tokenize; MobileNetV2's forward took 0.06 ms an image, BERT-base's
    /// 0.14 ms a caption).
    pub fn for_device(device: tch::Device) -> Preparers {
        if device.is_cuda() {
            Preparers::pool(std::thread::available_parallelism().map_or(1, |n| n.get()))
        } else {
            Preparers::here()
        }
    }

    /// A pool of `threads` threads (the calling thread alone for fewer than 2, or where the
    /// system refuses the threads, which a warning says).
    pub fn pool(threads: usize) -> Preparers {
        if threads < 2 {
            return Preparers::here();
        }
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("saeshare-prepare-{i}"))
            .start_handler(|_| crate::allocator::use_thread_heap())
            .build();
        match built {
            Ok(pool) => Preparers {
                pool: Some(Arc::new(pool)),
            },
            Err(e) => {
                tracing::warn!(
                    "{threads} preparing threads could not start ({e}); preparing on one"
                );
                Preparers::here()
            }
        }
    }

    /// Threads that prepare.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// `f` of every item, in the items' order.
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        match &self.pool {
            None => items.iter().map(f).collect(),
            Some(pool) => {
                let f = &f;
                pool.install(|| items.par_iter().map(f).collect())
            }
        }
    }

    /// `f` of every item with its own `each` bytes of `out` (item `i`: bytes `i * each..`), in
    /// the items' order. `out` holds `items.len() * each` bytes, `each` at least one.
    pub fn map_into<T: Sync, R: Send>(
        &self,
        items: &[T],
        out: &mut [u8],
        each: usize,
        f: impl Fn(&T, &mut [u8]) -> R + Sync,
    ) -> Vec<R> {
        assert!(
            each > 0 && out.len() == items.len() * each,
            "a slot of bytes for every item"
        );
        match &self.pool {
            None => (items.iter().zip(out.chunks_exact_mut(each)))
                .map(|(item, slot)| f(item, slot))
                .collect(),
            Some(pool) => {
                let f = &f;
                pool.install(|| {
                    (items.par_iter().zip(out.par_chunks_exact_mut(each)))
                        .map(|(item, slot)| f(item, slot))
                        .collect()
                })
            }
        }
    }
}

impl std::fmt::Debug for Preparers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Preparers({} threads)", self.threads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_keeps_the_order_and_fills_each_slot_with_its_item() {
        let items: Vec<u32> = (0..1000).collect();
        for preparers in [Preparers::here(), Preparers::pool(1), Preparers::pool(3)] {
            let threads = preparers.threads();
            assert_eq!(
                preparers.map(&items, |i| i * 2),
                (0..2000).step_by(2).collect::<Vec<_>>()
            );
            let mut out = vec![0u8; items.len() * 2];
            let sums = preparers.map_into(&items, &mut out, 2, |&i, slot| {
                slot.copy_from_slice(&[(i % 256) as u8, (i / 256) as u8]);
                i + 1
            });
            assert_eq!(sums, (1..=1000).collect::<Vec<_>>(), "{threads} threads");
            for (i, slot) in out.chunks_exact(2).enumerate() {
                assert_eq!(
                    slot,
                    [(i % 256) as u8, (i / 256) as u8],
                    "{threads} threads"
                );
            }
        }
        assert_eq!(Preparers::pool(1).threads(), 1);
        assert_eq!(Preparers::pool(3).threads(), 3);
    }
}
