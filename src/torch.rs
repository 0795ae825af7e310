//! What libtorch this binary runs on, and the devices it can use.

use std::fmt;

/// A device named on the command line: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec(pub tch::Device);

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let device = match s {
            "cpu" => tch::Device::Cpu,
            "cuda" => tch::Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => tch::Device::Cuda(n),
                _ => return Err(format!("unknown device {s:?}: use cpu, cuda or cuda:N")),
            },
        };
        Ok(DeviceSpec(device))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            tch::Device::Cpu => write!(f, "cpu"),
            tch::Device::Cuda(n) => write!(f, "cuda:{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl DeviceSpec {
    /// Fails with a message a user can act on when the device does not exist here.
    pub fn check_available(self) -> anyhow::Result<tch::Device> {
        if let tch::Device::Cuda(n) = self.0 {
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                anyhow::bail!(
                    "device cuda:{n} was asked for but libtorch sees {count} CUDA device(s); \
                     run with --device cpu, or check the driver with nvidia-smi"
                );
            }
        }
        Ok(self.0)
    }
}

/// The libtorch release this binary was built against (e.g. `2.13.0+cu130`): it runs on that
/// release only, which is why scripts/device-check.sh compares it with a machine's own PyTorch.
pub const LIBTORCH_VERSION: &str = env!("SAESHARE_LIBTORCH_VERSION");

/// The variable through which NVIDIA's cuDNN and cuBLAS choose TF32 (a 10-bit mantissa) for
/// float32 work.
pub const TF32_VARIABLE: &str = "NVIDIA_TF32_OVERRIDE";

/// Keeps float32 work in float32 on GPUs. libtorch lets cuDNN run float32 convolutions in TF32
/// by default: on an H200, MobileNetV2's last layer then differed from the CPU's by 6e-3
/// (relative to its largest value), where the transformers, in float32 matrix products, differed
/// by 2e-6; enough to change which features a TopK SAE picks. A user who sets the variable
/// (`1`: TF32 allowed, faster) keeps their choice. Called first thing in `main`, before any
/// thread or CUDA context exists.
pub fn keep_float32_exact() {
    if std::env::var_os(TF32_VARIABLE).is_none() {
        std::env::set_var(TF32_VARIABLE, "0");
    }
}

/// The variable that turns TorchScript's graph optimiser back on (`1`) for the encoders'
/// forward passes; it is off by default. The profiling executor specialises a package's graph
/// to the input shapes it has seen and optimises it again when they change, which captions
/// grouped by length (and a shard's last, shorter batch) do all the time: on an H200 the
/// forward passes of a BERT-base encoding took 0.51 s with it and 0.054 s without, for the same
/// 7,060 captions/s of the forward alone on one shape (scripts/device-check.sh, README "GPUs").
pub const TORCHSCRIPT_OPTIMIZE_VARIABLE: &str = "SAESHARE_TORCHSCRIPT_OPTIMIZE";

/// Sets libtorch's intra-op threads for the calling thread, for good. libtorch gives a thread
/// its count once, at its first parallel operation, from the count some thread set last: a
/// thread that sets its own before that can have it replaced by another thread's setting
/// (model lanes of one thread beside workers of several). Reading the count first spends that
/// one-time setting.
pub fn set_thread_torch_threads(threads: usize) {
    let _ = tch::get_num_threads();
    tch::set_num_threads(threads.max(1) as i32);
}

/// Whether the encoders' forward passes run through TorchScript's optimiser (read once).
pub fn torchscript_optimize() -> bool {
    static OPTIMIZE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OPTIMIZE.get_or_init(|| std::env::var(TORCHSCRIPT_OPTIMIZE_VARIABLE).as_deref() == Ok("1"))
}

/// One line describing the libtorch in use, for logs and `saeshare info`.
pub fn describe() -> String {
    let cuda = if tch::Cuda::is_available() {
        let tf32 = match std::env::var(TF32_VARIABLE).as_deref() {
            Ok("0") => "float32 exact",
            _ => "TF32 allowed",
        };
        format!(
            "CUDA with {} device(s), {tf32} ({TF32_VARIABLE})",
            tch::Cuda::device_count()
        )
    } else {
        "no CUDA device".to_string()
    };
    format!(
        "libtorch {LIBTORCH_VERSION} with {} CPU thread(s), {cuda}",
        tch::get_num_threads()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn tensors_multiply_through_libtorch() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0, 7.0, 8.0]).reshape([2, 2]);
        let c = a.matmul(&b);
        let got: Vec<f32> = c.reshape([4]).try_into().unwrap();
        assert_eq!(got, vec![19.0, 22.0, 43.0, 50.0]);
        assert_eq!(c.kind(), Kind::Float);
    }

    #[test]
    fn devices_parse_as_users_write_them() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap().0, tch::Device::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceSpec>().unwrap().0,
            tch::Device::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceSpec>().unwrap().0,
            tch::Device::Cuda(3)
        );
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn a_threads_own_torch_thread_count_outlasts_another_threads_setting() {
        let (set, other_done) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            let mine = scope.spawn(|| {
                set_thread_torch_threads(1);
                set.wait();
                other_done.wait();
                // Its first parallel operation after another thread set 3.
                let _ = Tensor::ones([64, 64], (Kind::Float, tch::Device::Cpu)).sum(Kind::Float);
                tch::get_num_threads()
            });
            scope.spawn(|| {
                set.wait();
                set_thread_torch_threads(3);
                other_done.wait();
            });
            assert_eq!(mine.join().unwrap(), 1);
        });
    }
}
