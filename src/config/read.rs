//! Reading the files a configuration names: only regular files (a symlink to one is fine,
//! as Kubernetes mounts secrets), and only up to a size, so a config naming `/dev/zero`, a
//! FIFO or a folder gets a clear error instead of hanging or eating memory.

use std::io::Read;
use std::path::Path;

/// The largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The largest file a configuration names (certificates, keys, CRLs, secrets).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} is not a regular file (a folder, device, FIFO or socket); name the file itself")]
    NotRegular(String),
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Reads the regular file at `path` (symlinks followed), at most `limit` bytes.
pub fn regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let shown = || path.display().to_string();
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ReadError::NotFound(shown())
        } else {
            ReadError::Io {
                path: shown(),
                source,
            }
        }
    };
    // Looked at before opening: opening a FIFO for reading blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(shown()));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            path: shown(),
            limit,
        });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    // Checked again on the open file (it may have been replaced in between).
    if !file.metadata().map_err(io)?.is_file() {
        return Err(ReadError::NotRegular(shown()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: shown(),
            limit,
        });
    }
    Ok(bytes)
}

/// [`regular_file`] as UTF-8 text.
pub fn regular_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    let bytes = regular_file(path, limit)?;
    String::from_utf8(bytes).map_err(|e| ReadError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pem");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(regular_file(&file, 5).unwrap(), b"hello");
        assert!(matches!(
            regular_file(&file, 4),
            Err(ReadError::TooLarge { limit: 4, .. })
        ));
        assert!(matches!(
            regular_file(dir.path(), 100),
            Err(ReadError::NotRegular(_))
        ));
        assert!(matches!(
            regular_file(&dir.path().join("missing"), 100),
            Err(ReadError::NotFound(_))
        ));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.pem");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            assert_eq!(
                regular_file(&link, 5).unwrap(),
                b"hello",
                "symlinks are fine"
            );
            assert!(matches!(
                regular_file(Path::new("/dev/zero"), MAX_FILE_BYTES),
                Err(ReadError::NotRegular(_))
            ));
            let fifo = dir.path().join("fifo");
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo");
            assert!(status.success());
            assert!(
                matches!(regular_file(&fifo, 100), Err(ReadError::NotRegular(_))),
                "a FIFO is refused without blocking"
            );
        }
    }
}
