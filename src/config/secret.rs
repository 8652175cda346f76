//! Secrets in configuration: given inline, by environment variable name, or
//! by file path, and never printed.

use std::fmt;
use std::path::Path;

/// A resolved secret. `Debug` and `Display` print `***`, so a secret that
/// ends up in a log line or an error message stays hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: call only where it is used (HMAC key, auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The three ways to give one secret, as they appear in a config table:
/// `<key>`, `<key>_env`, `<key>_file`. Adapters keep these three fields in
/// their own `Config` (serde cannot flatten with `deny_unknown_fields`) and
/// build a `SecretSource` to resolve them.
#[derive(Debug, Clone, Default)]
pub struct SecretSource<'a> {
    pub key: &'a str,
    pub inline: Option<String>,
    pub env: Option<String>,
    pub file: Option<String>,
}

impl<'a> SecretSource<'a> {
    pub fn new(
        key: &'a str,
        inline: &Option<String>,
        env: &Option<String>,
        file: &Option<String>,
    ) -> Self {
        SecretSource {
            key,
            inline: inline.clone(),
            env: env.clone(),
            file: file.clone(),
        }
    }

    /// Resolves to `Ok(None)` when none of the three is set. `base` is the
    /// directory relative `_file` paths are taken from. Errors say which key
    /// and why, never the value.
    pub fn resolve(&self, base: &Path) -> Result<Option<Secret>, String> {
        let given = [
            self.inline.is_some(),
            self.env.is_some(),
            self.file.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given > 1 {
            return Err(format!(
                "give only one of `{0}`, `{0}_env`, `{0}_file`",
                self.key
            ));
        }
        let value = if let Some(v) = &self.inline {
            v.clone()
        } else if let Some(var) = &self.env {
            std::env::var(var).map_err(|_| {
                format!(
                    "`{}_env` names environment variable `{var}`, which is not set",
                    self.key
                )
            })?
        } else if let Some(file) = &self.file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("`{}_file`: cannot read {}: {e}", self.key, path.display()))?;
            text.trim_end_matches(['\r', '\n']).to_owned()
        } else {
            return Ok(None);
        };
        if value.is_empty() {
            return Err(format!("`{}` is empty", self.key));
        }
        Ok(Some(Secret(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(inline: Option<&str>, env: Option<&str>, file: Option<&str>) -> SecretSource<'static> {
        SecretSource {
            key: "secret",
            inline: inline.map(str::to_owned),
            env: env.map(str::to_owned),
            file: file.map(str::to_owned),
        }
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
    }

    #[test]
    fn resolves_each_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "from-file\n").unwrap();
        let base = dir.path();
        assert_eq!(
            src(Some("x"), None, None).resolve(base).unwrap(),
            Some(Secret::new("x"))
        );
        assert_eq!(
            src(None, None, Some("key")).resolve(base).unwrap(),
            Some(Secret::new("from-file"))
        );
        assert_eq!(src(None, None, None).resolve(base).unwrap(), None);
        // PATH is set in every test environment.
        assert!(
            src(None, Some("PATH"), None)
                .resolve(base)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn resolution_errors_name_the_key() {
        let base = Path::new("/nonexistent");
        let e = src(Some("a"), Some("B"), None).resolve(base).unwrap_err();
        assert!(e.contains("only one of `secret`"), "{e}");
        let e = src(None, Some("SWITCHBOARD_TEST_UNSET_VAR"), None)
            .resolve(base)
            .unwrap_err();
        assert!(e.contains("SWITCHBOARD_TEST_UNSET_VAR"), "{e}");
        let e = src(None, None, Some("missing")).resolve(base).unwrap_err();
        assert!(e.contains("secret_file"), "{e}");
        let e = src(Some(""), None, None).resolve(base).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
}
