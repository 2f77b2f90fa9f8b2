//! `RUST_LOG` for the `load` example: tracing-subscriber's `EnvFilter` and a
//! writer that prints each event through the progress bar, which it clears
//! first and draws again after, so that log lines and the bar do not mix.
//! Without `RUST_LOG` nothing is installed and nothing extra is printed.

use std::{
    io::{self, IsTerminal, Write},
    sync::Arc,
};

use indicatif::ProgressBar;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, fmt::format::FmtSpan};

/// Where a formatted event finally goes.
type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Installs the subscriber when `RUST_LOG` is set. `Ok(false)` without it;
/// an error (in one line) when its directives do not parse.
pub(crate) fn init(bar: &ProgressBar) -> Result<bool, String> {
    if std::env::var_os("RUST_LOG").is_none_or(|value| value.is_empty()) {
        return Ok(false);
    }
    let filter = EnvFilter::try_from_default_env().map_err(|err| format!("RUST_LOG: {err}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A grant's span closes with its duration.
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(BarWriter::stderr(bar.clone()))
        .try_init()
        .map_err(|err| format!("RUST_LOG: {err}"))?;
    Ok(true)
}

/// Makes one [`BarLine`] per event.
#[derive(Clone)]
pub(crate) struct BarWriter {
    bar: ProgressBar,
    sink: Sink,
}

impl BarWriter {
    /// Events to stderr.
    pub(crate) fn stderr(bar: ProgressBar) -> Self {
        Self::new(
            bar,
            Arc::new(|bytes: &[u8]| {
                // Nowhere to report a failed write to stderr.
                let _ = io::stderr().lock().write_all(bytes);
            }),
        )
    }

    pub(crate) fn new(bar: ProgressBar, sink: Sink) -> Self {
        Self { bar, sink }
    }
}

impl<'a> MakeWriter<'a> for BarWriter {
    type Writer = BarLine;

    fn make_writer(&'a self) -> BarLine {
        BarLine {
            bar: self.bar.clone(),
            sink: Arc::clone(&self.sink),
            buf: Vec::new(),
        }
    }
}

/// One event, collected as the formatter writes it and printed whole when
/// dropped, with the bar out of the way.
pub(crate) struct BarLine {
    bar: ProgressBar,
    sink: Sink,
    buf: Vec<u8>,
}

impl Write for BarLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BarLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.bar.suspend(|| (self.sink)(&self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use indicatif::{ProgressDrawTarget, ProgressStyle, TermLike};

    use super::*;

    /// A terminal that writes down what is done to it, in one list with
    /// what the sink receives.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        fn push(&self, what: String) -> io::Result<()> {
            self.0.lock().unwrap().push(what);
            Ok(())
        }

        fn seen(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, n: usize) -> io::Result<()> {
            self.push(format!("up {n}"))
        }
        fn move_cursor_down(&self, n: usize) -> io::Result<()> {
            self.push(format!("down {n}"))
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.push(format!("bar {s}"))
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            if s.is_empty() {
                return Ok(());
            }
            self.push(format!("bar {s}"))
        }
        fn clear_line(&self) -> io::Result<()> {
            self.push("clear".into())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_event_is_printed_whole_with_the_bar_cleared_and_drawn_again() {
        let screen = Screen::default();
        let bar = ProgressBar::with_draw_target(
            Some(10),
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(ProgressStyle::with_template("[{pos}/{len}]").unwrap());
        bar.set_position(3);
        bar.tick();
        assert!(
            screen.seen().iter().any(|s| s == "bar [3/10]"),
            "{:?}",
            screen.seen()
        );

        let sink_screen = screen.clone();
        let writer = BarWriter::new(
            bar.clone(),
            Arc::new(move |bytes: &[u8]| {
                sink_screen
                    .push(format!("log {}", String::from_utf8_lossy(bytes)))
                    .unwrap();
            }),
        );
        let before = screen.seen().len();
        {
            let mut line = writer.make_writer();
            write!(line, "INFO daxium_grant: ").unwrap();
            line.write_all(b"grant succeeded\n").unwrap();
            // Nothing is printed while the event is being written.
            assert_eq!(screen.seen().len(), before);
        }
        let after: Vec<String> = screen.seen()[before..].to_vec();
        let log = after
            .iter()
            .position(|s| s == "log INFO daxium_grant: grant succeeded\n")
            .unwrap_or_else(|| panic!("the event, whole: {after:?}"));
        assert!(after[..log].iter().any(|s| s == "clear"), "{after:?}");
        assert!(
            after[log + 1..].iter().any(|s| s == "bar [3/10]"),
            "the bar again below the event: {after:?}"
        );
    }

    #[test]
    fn a_hidden_bar_passes_events_straight_through() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        let writer = BarWriter::new(
            ProgressBar::hidden(),
            Arc::new(move |bytes: &[u8]| into.lock().unwrap().extend_from_slice(bytes)),
        );
        writeln!(writer.make_writer(), "one").unwrap();
        writeln!(writer.make_writer(), "two").unwrap();
        assert_eq!(&*seen.lock().unwrap(), b"one\ntwo\n");
    }
}
