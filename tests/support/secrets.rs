//! What the tests that look for secrets share: every `tracing` event and span
//! of the test binary captured in memory, and the search of a text for
//! secrets that reports each place one showed up.

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
};

use tracing_subscriber::fmt::format::FmtSpan;

type Buffer = Arc<Mutex<Vec<u8>>>;

struct Capture(Buffer);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts the capture: the process-wide subscriber, TRACE for every target,
/// spans on open and close with their fields, into one buffer. Global, so
/// that tasks on any thread (hyper's connection tasks, the grant task) are
/// captured, and events whose callsites other threads registered first.
pub(crate) fn capture_logs() {
    logs();
}

fn logs() -> &'static Buffer {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(FmtSpan::FULL)
            .with_ansi(false)
            .with_target(true)
            .with_writer(move || Capture(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        buffer
    })
}

/// Everything logged in this test binary since [`capture_logs`].
pub(crate) fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Fails with every place in `text` where one of `secrets` shows; `what`
/// names the text.
pub(crate) fn assert_no_secret(text: &str, secrets: &[impl AsRef<str>], what: &str) {
    assert!(!secrets.is_empty());
    let mut found = Vec::new();
    for secret in secrets {
        let secret = secret.as_ref();
        if let Some(at) = text.find(secret) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(80)
                .map_or(0, |(i, _)| i);
            found.push(format!(
                "{secret}: ...{}...",
                &text[start..(at + secret.len()).min(text.len())]
            ));
        }
    }
    assert!(found.is_empty(), "secrets in {what}:\n{}", found.join("\n"));
}
