//! (pending) YAML file types and validation.
use std::path::Path;

use super::{Config, ConfigError};

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: "(file)".into(),
        message: e.to_string(),
    })?;
    from_yaml(&text, path)
}

pub fn from_yaml(_text: &str, path: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: "(file)".into(),
        message: "pending".into(),
    })
}
