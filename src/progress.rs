//! Progress bars and logs for long work, set up once per process.
//!
//! Logs (tracing) and bars (indicatif) both write to stderr; log lines are printed through the
//! bars' [`MultiProgress`] so that a line never tears a bar. `--quiet` hides the bars and keeps
//! warnings; `RUST_LOG` chooses the log level as usual.
//!
//! When stderr is not a terminal (a log file, a pipe, a batch job), bars are not drawn: each
//! bar logs a line when it starts, then every [`LOG_EVERY_SECS`] seconds (or
//! `SAESHARE_PROGRESS_EVERY` seconds) its count, rate and ETA, and a line when it ends.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, WeakProgressBar};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()))
}

/// Seconds between two progress lines of a bar when stderr is not a terminal.
pub const LOG_EVERY_SECS: u64 = 30;

/// Bars reported as log lines, when stderr is not a terminal.
static LOGGED: OnceLock<Mutex<Vec<LoggedBar>>> = OnceLock::new();

struct LoggedBar {
    bar: WeakProgressBar,
    what: String,
    unit: String,
    /// When the first item was counted: a bar made ahead of its stage is silent until then.
    started: Option<(Instant, u64)>,
    /// The count at the last report.
    last: u64,
}

/// Installs the log subscriber and the bar target. Call once, first thing in `main`.
pub fn init(quiet: bool) {
    let lines = !quiet && !std::io::stderr().is_terminal();
    let target = if quiet || lines {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    bars().set_draw_target(target);
    if lines && LOGGED.set(Mutex::new(Vec::new())).is_ok() {
        let every = std::env::var("SAESHARE_PROGRESS_EVERY")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(LOG_EVERY_SECS as f64);
        let _ = std::thread::Builder::new()
            .name("progress-lines".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs_f64(every));
                log_bars();
            });
    }
    let default_level = if quiet { "warn" } else { "info" };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A second init (tests call commands in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SuspendingStderr)
        .with_ansi(std::io::stderr().is_terminal())
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
    if let Some(logged) = LOGGED.get() {
        let mut logged = logged.lock().unwrap_or_else(|p| p.into_inner());
        logged.push(LoggedBar {
            bar: bar.downgrade(),
            what: what.to_string(),
            unit: unit.to_string(),
            started: None,
            last: 0,
        });
    } else {
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    bar
}

/// One line per bar at work: count, rate, ETA; a first line when it starts counting, a last
/// one when it ends.
fn log_bars() {
    let Some(logged) = LOGGED.get() else {
        return;
    };
    let mut logged = logged.lock().unwrap_or_else(|p| p.into_inner());
    logged.retain_mut(|entry| {
        let (what, unit) = (entry.what.as_str(), entry.unit.as_str());
        let Some(bar) = entry.bar.upgrade() else {
            // Dropped: its work is over.
            if let Some((since, _)) = entry.started {
                let (done, seconds) = (entry.last, since.elapsed().as_secs_f64());
                tracing::info!("{what}: done, {done} {unit} in {seconds:.1} s");
            }
            return false;
        };
        let done = bar.position();
        entry.last = done;
        if entry.started.is_none() {
            if done == 0 && !bar.is_finished() {
                return true;
            }
            match bar.length() {
                Some(len) => tracing::info!("{what}: started, {len} {unit}"),
                None => tracing::info!("{what}: started"),
            }
            entry.started = Some((Instant::now(), done));
            if !bar.is_finished() && bar.length().is_none_or(|len| done < len) {
                // Its rate is known from the next line on.
                return true;
            }
        }
        let (since, at_start) = entry.started.expect("set above");
        let seconds = since.elapsed().as_secs_f64();
        if bar.is_finished() || bar.length().is_some_and(|len| done >= len) {
            tracing::info!("{what}: done, {done} {unit} in {seconds:.1} s");
            return false;
        }
        let rate = (done - at_start) as f64 / seconds.max(1e-9);
        match bar.length() {
            Some(len) => {
                let percent = 100.0 * done as f64 / len.max(1) as f64;
                let eta = eta_text(len.saturating_sub(done), rate);
                tracing::info!(
                    "{what}: {done}/{len} {unit} ({percent:.0}%), {rate:.1} {unit}/s, eta {eta}"
                );
            }
            None => tracing::info!("{what}: {done} {unit}, {rate:.1} {unit}/s"),
        }
        true
    });
}

/// The last lines, at the end of a command: bars that ended since the last report.
pub fn log_finished() {
    log_bars();
}

/// The time `left` items take at `rate`: `1h02m`, `4m10s`, `12s`; `unknown` at no rate.
fn eta_text(left: u64, rate: f64) -> String {
    if rate <= 0.0 {
        return "unknown".to_string();
    }
    let s = (left as f64 / rate).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
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
