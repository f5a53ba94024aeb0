//! The one configuration loader: typed environment variables, validated at start-up with an
//! error that names the variable.

use std::str::FromStr;

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("{0} is required but not set")]
    Missing(&'static str),
    /// A variable is set but unusable.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// A source of variables (the process environment, or a map in tests).
pub trait Source {
    /// The raw value, if set and non-empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.trim().is_empty())
    }
}

/// Reads variables with typed errors.
pub struct Env<'a>(pub &'a dyn Source);

impl Env<'_> {
    /// An optional string.
    pub fn optional(&self, name: &'static str) -> Option<String> {
        self.0.get(name)
    }

    /// A required string.
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.0.get(name).ok_or(ConfigError::Missing(name))
    }

    /// A parsed value with a default.
    pub fn parsed<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    reason: e.to_string(),
                }),
        }
    }

    /// A secret from `name`, or from the file named by `file_name`; both set is an error, and
    /// so is an unreadable or empty file. A trailing newline in the file is not part of the
    /// secret.
    pub fn secret(
        &self,
        name: &'static str,
        file_name: &'static str,
    ) -> Result<Option<String>, ConfigError> {
        match (self.optional(name), self.optional(file_name)) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                name,
                reason: format!("set either {name} or {file_name}, not both"),
            }),
            (Some(value), None) => Ok(Some(value)),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path.trim()).map_err(|e| ConfigError::Invalid {
                        name: file_name,
                        reason: format!("cannot read {path}: {e}"),
                    })?;
                let value = text.trim_end_matches(['\r', '\n']).to_owned();
                if value.trim().is_empty() {
                    return Err(ConfigError::Invalid {
                        name: file_name,
                        reason: format!("{path} is empty"),
                    });
                }
                Ok(Some(value))
            }
            (None, None) => Ok(None),
        }
    }

    /// A boolean (`true`/`false`/`1`/`0`).
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.0.get(name).as_deref().map(str::trim) {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ConfigError::Invalid {
                name,
                reason: format!("expected true or false, got {other}"),
            }),
        }
    }
}
