//! What the dataset's footers tell of the rows each fit's pass gives its SAEs, and the check
//! that refuses, before any work, a fit that cannot fill one batch.

use std::path::Path;

use super::study::FitRows;
use super::PlannedEncoder;
use crate::dataset::Dataset;

/// The rows a pass of encoder `e`'s fit gives each of its SAEs, as far as the dataset's footers
/// tell: exactly for pooled rows (one a sample), at most for token rows drawn `per_sample` (a
/// caption can be shorter), unknown for every token of variable-length captions.
pub fn fit_rows_per_pass(e: &PlannedEncoder, samples: u64) -> FitRowsEstimate {
    match &e.fit_rows {
        FitRows::Pooled => FitRowsEstimate::Exactly(samples),
        FitRows::Tokens(selection) => match selection.per_sample {
            Some(n) => FitRowsEstimate::AtMost(samples * n as u64),
            None => FitRowsEstimate::AtLeast(samples),
        },
    }
}

/// What the footers tell of the rows of a fit's pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitRowsEstimate {
    Exactly(u64),
    AtMost(u64),
    AtLeast(u64),
}

impl FitRowsEstimate {
    /// The passes over those rows that `steps` batches of `batch_size` take (for `AtLeast`,
    /// at most that many).
    pub fn passes(self, steps: usize, batch_size: usize) -> f64 {
        let rows = match self {
            FitRowsEstimate::Exactly(r)
            | FitRowsEstimate::AtMost(r)
            | FitRowsEstimate::AtLeast(r) => r,
        };
        (steps as f64 * batch_size as f64) / rows.max(1) as f64
    }
}

/// Refuses, before any work, a fit whose first pass cannot fill one batch: the run would
/// fail after encoding the whole dataset.
pub(super) fn check_fit_rows(
    e: &PlannedEncoder,
    dataset: &Dataset,
    path: &Path,
) -> anyhow::Result<()> {
    if !e.fits_any() || e.twin_of.is_some() {
        return Ok(());
    }
    let rows = match fit_rows_per_pass(e, dataset.rows()) {
        FitRowsEstimate::Exactly(r) | FitRowsEstimate::AtMost(r) => r,
        FitRowsEstimate::AtLeast(_) => return Ok(()),
    };
    anyhow::ensure!(
        rows >= e.sae.batch_size as u64,
        "{}: [encoders.{}]: its SAEs take batches of {} rows, and a pass over the dataset gives \
         {} {rows} rows ({} samples); set [sae] batch_size (or this encoder's `sae = {{ \
         batch_size = ... }}`) to at most {rows}",
        path.display(),
        e.name,
        e.sae.batch_size,
        if matches!(e.fit_rows, FitRows::Pooled) {
            "exactly"
        } else {
            "at most"
        },
        dataset.rows()
    );
    Ok(())
}
