//! Diagnostics with a place: `file:line:column: error: message`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The configuration is refused.
    Error,
    /// Accepted, but probably not what was meant.
    Warning,
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong, with the offending value and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Collects diagnostics for one source text.
pub struct Sink<'a> {
    file: &'a Path,
    src: &'a str,
    /// Everything found so far.
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    /// A sink for `src`, read from `file`.
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Self {
            file,
            src,
            diagnostics: Vec::new(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..floor_char_boundary(self.src, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn push(&mut self, severity: Severity, span: Range<usize>, message: String) {
        let (line, column) = self.position(span.start);
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.to_owned(),
            line,
            column,
            message,
        });
    }

    /// Records an error at `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(Severity::Error, span, message.into());
    }

    /// Records a warning at `span`.
    pub fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(Severity::Warning, span, message.into());
    }

    /// Records a TOML or serde error, at its own span if it has one, else at `fallback`.
    pub fn toml_error(&mut self, e: &toml::de::Error, fallback: Range<usize>) {
        let span = e.span().unwrap_or(fallback);
        self.error(span, e.message().trim().to_owned());
    }

    /// Whether any error (not warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
