//! Progress bars and logs for long work, set up once per process.
//!
//! Logs (tracing) and bars (indicatif) both write to stderr; log lines are printed through the
//! bars' [`MultiProgress`] so that a line never tears a bar. `--quiet` hides the bars and keeps
//! warnings; `RUST_LOG` chooses the log level as usual.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()))
}

/// Installs the log subscriber and the bar target. Call once, first thing in `main`.
pub fn init(quiet: bool) {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    bars().set_draw_target(target);
    let default_level = if quiet { "warn" } else { "info" };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A second init (tests call commands in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SuspendingStderr)
        .with_target(false)
        .try_init();
}

/// A bar counting `len` items (`None`: unknown length, a spinner), labelled `what`, rates in
/// `unit`s per second.
pub fn bar(len: Option<u64>, what: &str, unit: &str) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(&format!(
                "{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::no_length().with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {{msg}} {{human_pos}} {unit} {{per_sec}} {{elapsed}}"
            ))
            .expect("valid template"),
        ),
    };
    let bar = bar.with_message(what.to_string());
    let bar = bars().add(bar);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Writes log lines to stderr with the bars lifted out of the way.
#[derive(Clone, Copy)]
struct SuspendingStderr;

impl Write for SuspendingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for SuspendingStderr {
    type Writer = SuspendingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}
