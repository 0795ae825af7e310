//! Joining code streams by sample id: the codes of one dataset row from every encoder meet here.

use std::path::PathBuf;

use crate::codes::{CodeBatch, CodesReader, SparseCode};

use super::StatsError;

/// What to do with a sample that some streams hold and others do not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingSamples {
    /// Stop with an error naming the sample and the files: streams of one study should hold the
    /// same samples, and a silent difference would change `N` unnoticed.
    #[default]
    Error,
    /// Leave the sample out of every statistic, and count it.
    Drop,
}

/// What an alignment pass saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlignReport {
    /// Samples held by every stream, hence accumulated.
    pub samples: u64,
    /// Samples left out because some stream lacked them.
    pub dropped: u64,
    /// The first sample left out, and a file that lacked it.
    pub first_dropped: Option<(u64, PathBuf)>,
}

struct Stream {
    reader: CodesReader,
    batch: CodeBatch,
    index: usize,
}

impl Stream {
    fn head(&self) -> Option<u64> {
        self.batch.sample_ids().get(self.index).copied()
    }

    fn advance(&mut self) -> Result<(), StatsError> {
        self.index += 1;
        if self.index >= self.batch.len() {
            self.index = 0;
            self.batch = match self.reader.next() {
                Some(batch) => batch?,
                None => CodeBatch::new(),
            };
        }
        Ok(())
    }
}

/// Walks all streams in increasing sample id and calls `each` with the codes of every sample that
/// all streams hold (in the order of `readers`). Each reader must be sorted by sample id, which
/// [`CodesReader`] checks.
pub fn align(
    readers: Vec<CodesReader>,
    missing: MissingSamples,
    mut each: impl FnMut(&[SparseCode<'_>]) -> Result<(), StatsError>,
) -> Result<AlignReport, StatsError> {
    let mut streams = Vec::with_capacity(readers.len());
    for mut reader in readers {
        let batch = match reader.next() {
            Some(batch) => batch?,
            None => CodeBatch::new(),
        };
        streams.push(Stream {
            reader,
            batch,
            index: 0,
        });
    }
    let mut report = AlignReport::default();
    loop {
        let Some(id) = streams.iter().filter_map(Stream::head).min() else {
            return Ok(report);
        };
        let lacking = streams.iter().position(|s| s.head() != Some(id));
        match lacking {
            None => {
                let codes: Vec<SparseCode<'_>> =
                    streams.iter().map(|s| s.batch.get(s.index)).collect();
                each(&codes)?;
                report.samples += 1;
            }
            Some(lacking) => {
                let lacking_file = streams[lacking].reader.path().to_path_buf();
                if missing == MissingSamples::Error {
                    let holding = streams
                        .iter()
                        .find(|s| s.head() == Some(id))
                        .expect("the minimum comes from some stream");
                    return Err(StatsError::MissingSample {
                        sample_id: id,
                        present_in: holding.reader.path().to_path_buf(),
                        missing_from: lacking_file,
                    });
                }
                report.dropped += 1;
                report.first_dropped.get_or_insert((id, lacking_file));
            }
        }
        for stream in streams.iter_mut().filter(|s| s.head() == Some(id)) {
            stream.advance()?;
        }
    }
}
