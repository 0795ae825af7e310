//! Decodes every imported image on a pool of threads, so that an import reports its unreadable
//! images without slowing down to decode them one by one. A bounded channel holds the writer
//! back when decoding falls behind.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use crate::dataset::EncodedImage;

struct Job {
    sample_id: u64,
    origin: String,
    image: EncodedImage,
}

/// Decodes images in the background and counts those that fail.
pub(crate) struct ImageVerifier {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<u64>>,
}

impl ImageVerifier {
    pub(crate) fn start() -> ImageVerifier {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (jobs, queue) = bounded::<Job>(64 * threads);
        let threads = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut unreadable = 0;
                    for job in queue {
                        if let Err(reason) = job.image.decode() {
                            tracing::warn!(
                                "{} (sample_id {}): unreadable image: {reason}; kept, encoders will skip it",
                                job.origin,
                                job.sample_id
                            );
                            unreadable += 1;
                        }
                    }
                    unreadable
                })
            })
            .collect();
        ImageVerifier {
            jobs: Some(jobs),
            threads,
        }
    }

    /// Queues an image for decoding; `origin` names the input in the warning if it fails.
    pub(crate) fn check(&self, sample_id: u64, origin: &str, image: EncodedImage) {
        let job = Job {
            sample_id,
            origin: origin.to_string(),
            image,
        };
        self.jobs
            .as_ref()
            .expect("not finished")
            .send(job)
            .expect("verifier threads outlive the sender");
    }

    /// Waits for every queued image and returns how many did not decode.
    pub(crate) fn finish(&mut self) -> u64 {
        self.jobs = None;
        self.threads
            .drain(..)
            .map(|t| t.join().expect("a verifier thread panicked"))
            .sum()
    }
}

impl Drop for ImageVerifier {
    fn drop(&mut self) {
        self.finish();
    }
}
