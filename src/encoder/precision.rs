//! The arithmetic an encoder's forward pass runs in.

use std::fmt;

/// `float32` runs the package as it was exported. `float16` runs it under CUDA autocast (mixed
/// precision, as `torch.autocast("cuda")` does): matrix products and convolutions in float16,
/// reductions, softmax and normalisations in float32; the pooled rows and token rows stay
/// float32. Faster on a GPU's tensor cores, and less exact: 1e-5 to 3e-2 (relative) on the
/// packages `scripts/device-check.sh` measured, the most for MobileNetV2's depthwise
/// convolutions; a GPU only.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The package as exported.
    #[default]
    Float32,
    /// CUDA autocast to float16.
    Float16,
}

impl Precision {
    /// Why `device` cannot run this precision, if it cannot.
    pub fn refused_on(self, device: tch::Device) -> Option<String> {
        match (self, device) {
            (Precision::Float16, tch::Device::Cpu) => Some(
                "precision \"float16\" is CUDA autocast and runs on a GPU only: \
                 use precision \"float32\" (the default) on the CPU"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "float32" => Ok(Precision::Float32),
            "float16" => Ok(Precision::Float16),
            other => Err(format!(
                "unknown precision {other:?}: use float32 or float16"
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Float32 => "float32",
            Precision::Float16 => "float16",
        })
    }
}
