//! Where an encoder's time goes: the helper thread's work (cutting windows, preparing inputs)
//! and the model lanes' (waiting for work, inputs, forward, outputs). `bench encoders` prints
//! them, so a slow encoding says which side of the loop sets its pace.

use std::time::Instant;

/// Seconds spent in each stage of [`Encoder::encode_batches`](super::Encoder::encode_batches),
/// summed over the batches run since the last [`take`](super::Encoder::take_stage_times).
///
/// The helper thread's stages overlap the model lanes': the lanes' stages are each lane's,
/// averaged over the lanes, so the loop's wall time is close to their sum (`waiting` + `inputs`
/// + `forward` + `outputs`), and a large `waiting` says the helper thread is the bottleneck.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    /// Helper thread: tokenizing a reader batch's captions and cutting it into windows of model
    /// batches.
    pub cutting: f64,
    /// Helper thread: decoding and resizing images, or padding the distinct captions' tokens.
    pub preparing: f64,
    /// Model lanes: without a window to run, waiting for the helper thread's next (reading the
    /// next reader batch, which the helper does not time, shows here too), or for the caller to
    /// take the last one's rows.
    pub waiting: f64,
    /// Model lanes: copying ids or image bytes to the model's device (normalising images is
    /// queued there, and on a GPU counts with the forward).
    pub inputs: f64,
    /// Model lanes: the forward pass, until the device has finished it.
    pub forward: f64,
    /// Model lanes: token rows, pooling, copying back and the finiteness checks.
    pub outputs: f64,
}

/// A running stopwatch: `lap` returns the time since the last lap (or the start).
pub(super) struct Laps(Instant);

impl Laps {
    pub(super) fn start() -> Laps {
        Laps(Instant::now())
    }

    pub(super) fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let seconds = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        seconds
    }
}

impl StageTimes {
    /// Adds `other`'s seconds to these.
    pub(super) fn add(&mut self, other: &StageTimes) {
        self.cutting += other.cutting;
        self.preparing += other.preparing;
        self.waiting += other.waiting;
        self.inputs += other.inputs;
        self.forward += other.forward;
        self.outputs += other.outputs;
    }
}
