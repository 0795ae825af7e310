//! The binary's split allocator (glibc's malloc, mimalloc on the threads that prepare inputs),
//! installed in this test executable as in `saeshare`: blocks cross threads in both directions
//! and are freed and grown by whichever thread holds them.

use saeshare::allocator::{is_from_thread_heaps, use_thread_heap};
use std::alloc::Layout;

#[test]
fn blocks_from_either_allocator_are_freed_and_grown_on_any_thread() {
    // Made on a preparing thread, as tokens and pixels are, then used here.
    let (mut captions, pixels) = std::thread::spawn(|| {
        use_thread_heap();
        let captions: Vec<String> = (0..10_000).map(|i| format!("caption {i}")).collect();
        (captions, vec![3u8; 8 << 20])
    })
    .join()
    .unwrap();
    assert!(is_from_thread_heaps(captions.as_ptr().cast()));
    assert!(is_from_thread_heaps(pixels.as_ptr()));
    captions.extend((10_000..60_000).map(|i| format!("caption {i}")));
    assert!(is_from_thread_heaps(captions.as_ptr().cast()));
    assert!(captions
        .iter()
        .enumerate()
        .all(|(i, c)| *c == format!("caption {i}")));
    assert!(pixels.iter().all(|&p| p == 3));
    drop(pixels);

    // Made here, on glibc, then grown and freed on a preparing thread.
    let mut here: Vec<u64> = (0..1000).collect();
    assert!(!is_from_thread_heaps(here.as_ptr().cast()));
    std::thread::spawn(move || {
        use_thread_heap();
        here.extend(1000..200_000);
        assert!(!is_from_thread_heaps(here.as_ptr().cast()));
        assert!(here.iter().enumerate().all(|(i, &v)| v == i as u64));
        // Over-aligned blocks, both ways.
        let layout = Layout::from_size_align(1 << 16, 4096).unwrap();
        // SAFETY: a non-zero size; freed with the layout it was made with.
        unsafe {
            let block = std::alloc::alloc_zeroed(layout);
            assert_eq!(block as usize % 4096, 0);
            assert!(is_from_thread_heaps(block));
            assert!((0..1 << 16).all(|i| *block.add(i) == 0));
            std::alloc::dealloc(block, layout);
        }
    })
    .join()
    .unwrap();

    // Many threads exchanging blocks: a block freed by the wrong allocator would abort.
    let (tx, rx) = crossbeam_channel::bounded::<Vec<String>>(8);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let tx = tx.clone();
            scope.spawn(move || {
                if t % 2 == 0 {
                    use_thread_heap();
                }
                for round in 0..200 {
                    tx.send((0..50).map(|i| format!("{t}.{round}.{i}")).collect())
                        .unwrap();
                }
            });
        }
        drop(tx);
        let mut kept = Vec::new();
        for mut block in rx {
            block.truncate(10);
            block.shrink_to_fit();
            kept.push(block);
            if kept.len() > 100 {
                kept.drain(..50);
            }
        }
    });
}
