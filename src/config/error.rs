//! Configuration errors: every problem names the key at fault and, where the
//! TOML gives one, the line. Messages never quote secret values and never echo
//! config source lines (a literal key pasted into the file must not be printed
//! back into a terminal or a log).

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `service[0].secret_key`; empty for the document itself.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong and what is expected instead.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(
        key: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            line,
            message: redact_secrets(message.into()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text was read but is not a valid configuration.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// 1-based line number of a byte offset in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Prefixes of values that are credentials: PayMongo secret, public and
/// restricted keys, and webhook signing secrets.
const SECRET_PREFIXES: [&str; 4] = ["sk_", "pk_", "rk_", "whsk_"];

/// Shortest token treated as a credential by [`redact_secrets`].
const MIN_SECRET_LEN: usize = 12;

/// Whether `s` looks like a credential value (used to refuse it where a
/// name or a path was expected, without repeating it).
pub(crate) fn looks_like_secret(s: &str) -> bool {
    SECRET_PREFIXES.iter().any(|p| s.starts_with(p))
}

/// Replaces anything that looks like a credential in a message with
/// `[REDACTED]`. Messages quote the values they complain about, and a value
/// pasted into the wrong key (a key into `env = ..`, a secret where a list
/// was expected) must not reach a terminal or a log through that quote.
pub(crate) fn redact_secrets(msg: String) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg.as_str();
    let mut redacted = false;
    while !rest.is_empty() {
        let at_boundary = out.chars().last().is_none_or(|c| !is_word(c));
        if at_boundary && SECRET_PREFIXES.iter().any(|p| rest.starts_with(p)) {
            let end = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
            // Bare prefixes in help text ("sk_test_...", "whsk_...") stay;
            // real credentials are far longer than this.
            if end >= MIN_SECRET_LEN {
                out.push_str("[REDACTED]");
                rest = &rest[end..];
                redacted = true;
                continue;
            }
        }
        let Some(c) = rest.chars().next() else { break };
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if redacted { out } else { msg }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_messages() {
        let m = redact_secrets("environment variable sk_live_51AbC is not set".into());
        assert_eq!(m, "environment variable [REDACTED] is not set");
        let m =
            redact_secrets("invalid type: string \"whsk_abcdef-ghij\", expected a sequence".into());
        assert_eq!(
            m,
            "invalid type: string \"[REDACTED]\", expected a sequence"
        );
        let m = redact_secrets("cannot read ./pk_test_xyz123: not found".into());
        assert_eq!(m, "cannot read ./[REDACTED]: not found");
        // Not at a word boundary: left alone.
        assert_eq!(redact_secrets("mask_x task_y".into()), "mask_x task_y");
        assert_eq!(redact_secrets("plain".into()), "plain");
        // Help text naming the prefixes is kept.
        let help = "expected sk_test_... or sk_live_..., or the whsk_... secret";
        assert_eq!(redact_secrets(help.into()), help);
    }
}
