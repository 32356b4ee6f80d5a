//! Diagnostics: what is wrong (errors) or suspicious (warnings) in the
//! config, rule and key files, each at a file, line and column and, where
//! it concerns one rule, naming it. Loading collects them all rather than
//! stopping at the first, so `usher check` can list every problem at once.

use std::fmt;
use std::ops::Range;

use super::{ConfigError, Origin, line_column};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration cannot be used; usher refuses to start.
    Error,
    /// Valid, but probably not what was meant; usher starts and logs it.
    Warning,
}

/// One problem at one place.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    #[serde(skip)]
    pub severity: Severity,
    /// The file, as its path was given.
    pub file: String,
    /// 1-based line; `None` when the problem concerns the whole file.
    pub line: Option<usize>,
    /// 1-based column (in characters); `None` with `line`.
    pub column: Option<usize>,
    /// The rule it concerns, if one.
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a byte span of a file (`None`: the whole file).
    pub fn at(
        severity: Severity,
        origin: &Origin,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = line_column(&origin.text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Diagnostic {
            severity,
            file: origin.file.clone(),
            line,
            column,
            rule: rule.filter(|r| !r.is_empty()).map(str::to_owned),
            message: message.into(),
        }
    }

    /// An error about a whole file.
    pub fn file_error(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.into(),
            line: None,
            column: None,
            rule: None,
            message: message.into(),
        }
    }

    /// The same diagnostic about a rule.
    pub fn for_rule(mut self, rule: &str) -> Self {
        if self.rule.is_none() && !rule.is_empty() {
            self.rule = Some(rule.to_owned());
        }
        self
    }

    /// `file:line:column`, or `file` for a whole-file diagnostic.
    pub fn place(&self) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => format!("{}:{line}:{column}", self.file),
            (Some(line), None) => format!("{}:{line}", self.file),
            _ => self.file.clone(),
        }
    }
}

/// `file:line:column: error: rule `name`: message`
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {severity}: ", self.place())?;
        if let Some(rule) = &self.rule {
            write!(f, "rule `{rule}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl From<ConfigError> for Diagnostic {
    /// A single error as a diagnostic (a list of them becomes its first).
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Read { path, source } => {
                Diagnostic::file_error(path.display().to_string(), format!("cannot read: {source}"))
            }
            ConfigError::Invalid {
                file,
                line,
                column,
                message,
            } => Diagnostic {
                severity: Severity::Error,
                file,
                line: Some(line),
                column: Some(column),
                rule: None,
                message,
            },
            ConfigError::Inconsistent { file, message } => Diagnostic::file_error(file, message),
            ConfigError::Diagnostics(d) => d
                .errors()
                .next()
                .cloned()
                .unwrap_or_else(|| Diagnostic::file_error("<config>", "invalid configuration")),
        }
    }
}

/// Everything found while loading: errors and warnings, in the order of
/// the files and, within a file, of the lines. As an error (any error in
/// the list), its message lists every error, one per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    /// No diagnostics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one.
    pub fn push(&mut self, d: Diagnostic) {
        self.list.push(d);
    }

    /// Add an error from a loader that stops at its first: a list keeps
    /// all its diagnostics.
    pub fn absorb(&mut self, e: ConfigError) {
        match e {
            ConfigError::Diagnostics(d) => self.list.extend(d.list),
            e => self.list.push(e.into()),
        }
    }

    /// Add all of these.
    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        self.list.extend(ds);
    }

    /// Whether any is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.list.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.list.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// All of them, errors and warnings.
    pub fn all(&self) -> &[Diagnostic] {
        &self.list
    }

    /// Order by file (the order files were first met in) then line and
    /// column, and drop repeats (a list file shared by several rules).
    pub fn sort(&mut self) {
        let mut files: Vec<&str> = Vec::new();
        for d in &self.list {
            if !files.contains(&d.file.as_str()) {
                files.push(&d.file);
            }
        }
        let rank: Vec<usize> = self
            .list
            .iter()
            .map(|d| files.iter().position(|f| *f == d.file).unwrap_or(0))
            .collect();
        let mut keyed: Vec<(usize, Diagnostic)> =
            rank.into_iter().zip(self.list.drain(..)).collect();
        keyed.sort_by_key(|(rank, d)| (*rank, d.line, d.column));
        let mut out: Vec<Diagnostic> = Vec::with_capacity(keyed.len());
        for (_, d) in keyed {
            let repeat = out
                .iter()
                .rev()
                .take_while(|o| (&o.file, o.line, o.column) == (&d.file, d.line, d.column))
                .any(|o| o.severity == d.severity && o.message == d.message);
            if !repeat {
                out.push(d);
            }
        }
        self.list = out;
    }

    /// The whole list, sorted, as an error.
    pub fn into_error(mut self) -> ConfigError {
        self.sort();
        ConfigError::Diagnostics(self)
    }

    /// `Ok` with the warnings when there is no error; the whole list as a
    /// [`ConfigError`] otherwise.
    pub fn into_result(mut self) -> Result<Vec<Diagnostic>, ConfigError> {
        self.sort();
        if self.has_errors() {
            Err(ConfigError::Diagnostics(self))
        } else {
            Ok(self.list)
        }
    }
}

impl std::error::Error for Diagnostics {}

impl From<ConfigError> for Diagnostics {
    fn from(e: ConfigError) -> Self {
        let mut d = Diagnostics::new();
        d.absorb(e);
        d
    }
}

/// The error, or `N errors:` and one per line (warnings are not errors
/// and are left out).
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors().count();
        if count > 1 {
            write!(f, "{count} errors:")?;
        }
        for (i, e) in self.errors().enumerate() {
            if count > 1 {
                f.write_str("\n  ")?;
            } else if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        Origin {
            file: "r.toml".to_owned(),
            dir: ".".into(),
            text: text.into(),
        }
    }

    #[test]
    fn display_names_place_severity_and_rule() {
        let o = origin("a = 1\nb = 2\n");
        let d = Diagnostic::at(Severity::Warning, &o, Some(8..9), Some("x"), "odd");
        assert_eq!(d.to_string(), "r.toml:2:3: warning: rule `x`: odd");
        let d = Diagnostic::at(Severity::Error, &o, None, None, "bad");
        assert_eq!(d.to_string(), "r.toml: error: bad");
    }

    #[test]
    fn sorted_by_file_order_then_line_without_repeats() {
        let o = origin("1\n2\n3\n");
        let mut ds = Diagnostics::new();
        let w = |at: usize, m: &str| Diagnostic::at(Severity::Warning, &o, Some(at..at), None, m);
        ds.push(Diagnostic::file_error("usher.toml", "first file"));
        ds.push(w(4, "line 3"));
        ds.push(w(0, "line 1"));
        ds.push(w(4, "line 3"));
        ds.sort();
        let lines: Vec<String> = ds.all().iter().map(|d| d.message.clone()).collect();
        assert_eq!(lines, ["first file", "line 1", "line 3"]);
        assert!(ds.has_errors());
        assert_eq!(ds.to_string(), "usher.toml: error: first file");
        ds.push(Diagnostic::file_error("r.toml", "second"));
        assert_eq!(
            ds.to_string(),
            "2 errors:\n  usher.toml: error: first file\n  r.toml: error: second"
        );
    }
}
