//! Sparse codes as tensors: what an SAE's activation function produces and its decoder consumes.

use tch::{Kind, Tensor};

/// The codes of a batch of `rows` samples.
#[derive(Debug)]
pub enum Code {
    /// The active latents of every row, row after row: `latents[nnz]` (int64) with `values[nnz]`;
    /// row `r`'s entries start at `offsets[r]` (int64, `rows` entries).
    Sparse {
        latents: Tensor,
        values: Tensor,
        offsets: Tensor,
    },
    /// `rows x d_sae`, mostly zeros.
    Dense(Tensor),
}

impl Code {
    /// Exactly `k` latents per row: `indices` and `values` are `rows x k`.
    pub fn from_topk(values: Tensor, indices: Tensor) -> Code {
        let (rows, k) = values.size2().expect("rows x k");
        let offsets = Tensor::arange_start_step(0, rows * k, k, (Kind::Int64, values.device()));
        Code::Sparse {
            latents: indices.reshape([-1]),
            values: values.reshape([-1]),
            offsets,
        }
    }

    /// The non-zero entries of `dense` (`rows x d_sae`), in row order. The values keep their
    /// gradient.
    pub fn from_dense_nonzeros(dense: &Tensor) -> Code {
        let rows = dense.size()[0];
        let nonzero = dense.ne(0.0).nonzero(); // nnz x 2, row-major order
        let row = nonzero.select(1, 0);
        let latents = nonzero.select(1, 1);
        let values = dense.index(&[Some(&row), Some(&latents)]);
        Code::from_row_major(rows, &row, latents, values)
    }

    /// Entries in row order, `row[nnz]` naming the row (of `rows`) of each: the offsets where
    /// each row's entries start are counted from it.
    pub fn from_row_major(rows: i64, row: &Tensor, latents: Tensor, values: Tensor) -> Code {
        let counts = row.bincount::<Tensor>(None, rows);
        let offsets = counts.cumsum(0, Kind::Int64) - &counts;
        Code::Sparse {
            latents,
            values,
            offsets,
        }
    }

    /// Active latents per row, averaged.
    pub fn mean_l0(&self, rows: i64) -> f64 {
        let active = match self {
            Code::Sparse { values, .. } => values.ne(0.0).sum(Kind::Int64).int64_value(&[]),
            Code::Dense(z) => z.ne(0.0).sum(Kind::Int64).int64_value(&[]),
        };
        active as f64 / rows.max(1) as f64
    }

    /// The latents that fired in this batch (with repeats).
    pub fn fired(&self) -> Tensor {
        match self {
            Code::Sparse {
                latents, values, ..
            } => latents.masked_select(&values.ne(0.0)),
            Code::Dense(z) => z.ne(0.0).any_dim(0, false).nonzero().reshape([-1]),
        }
    }

    /// `(row, latent, value)` triples in row order, for writing code files: every entry of a
    /// sparse code (a TopK code gives exactly k per row, even where ReLU left a zero among
    /// them), the non-zero entries of a dense one.
    pub fn triples(&self) -> (Vec<i64>, Vec<i64>, Vec<f32>) {
        let sparse;
        let (latents, values, offsets) = match self {
            Code::Sparse {
                latents,
                values,
                offsets,
            } => (latents, values, offsets),
            Code::Dense(z) => {
                sparse = Code::from_dense_nonzeros(z);
                let Code::Sparse {
                    latents,
                    values,
                    offsets,
                } = &sparse
                else {
                    unreachable!()
                };
                (latents, values, offsets)
            }
        };
        let latents: Vec<i64> = latents
            .to_device(tch::Device::Cpu)
            .try_into()
            .expect("int64");
        let values: Vec<f32> = values
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .try_into()
            .expect("float");
        let offsets: Vec<i64> = offsets
            .to_device(tch::Device::Cpu)
            .try_into()
            .expect("int64");
        let mut rows = vec![0i64; latents.len()];
        for (r, start) in offsets.iter().enumerate() {
            let end = offsets.get(r + 1).copied().unwrap_or(latents.len() as i64);
            for row in &mut rows[*start as usize..end as usize] {
                *row = r as i64;
            }
        }
        (rows, latents, values)
    }
}
