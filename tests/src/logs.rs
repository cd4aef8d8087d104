//! Log capture: a tracing writer that keeps every line in memory, for tests that read the logs.
//!
//! ```ignore
//! let capture = LogCapture::default();
//! tracing_subscriber::fmt().json().with_writer(capture.clone()).init();
//! // ...
//! assert!(!capture.text().contains(secret));
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// What was logged since the capture was made; clones share it.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// A panicking test must not hide the logs from the next one: a poisoned lock is still read.
    fn buf(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything logged, as written.
    pub fn bytes(&self) -> Vec<u8> {
        self.buf().clone()
    }

    /// Everything logged, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf()).into_owned()
    }

    /// The last `n` lines logged.
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
