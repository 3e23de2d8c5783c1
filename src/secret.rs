//! Secrets: bearer tokens that never appear in a `Debug`, log line or error message, token
//! sets compared in constant time over SHA-256 digests, and the file-permission checks of
//! key and token files (docs/security.md).

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string (a bearer token). `Debug` and `Display` print `<redacted>`; only
/// [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value itself: for the one place that must send or hash it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// SHA-256 of a presented or configured token: the fixed-length form every comparison uses.
pub type TokenDigest = [u8; 32];

/// The digest of a token.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// A set of valid tokens, held as SHA-256 digests only.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Vec<TokenDigest>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    /// The digests of `tokens`.
    pub fn new(tokens: &[Secret]) -> TokenSet {
        TokenSet {
            digests: tokens.iter().map(|t| digest(t.0.as_bytes())).collect(),
        }
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// True when it holds no token.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` (a digest) is one of the tokens. Compares against every token in
    /// constant time, without stopping at a match: neither the length of a token nor which
    /// token matched shows in the time taken.
    pub fn contains(&self, presented: &TokenDigest) -> bool {
        let mut hit = subtle::Choice::from(0u8);
        for d in &self.digests {
            hit |= d.ct_eq(presented);
        }
        bool::from(hit)
    }
}

/// A key or token file readable by group or others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {path} is readable by group or others (mode {mode:04o}); it holds a secret: \
     run `chmod 600 {path}` (and keep its directory 0700)"
)]
pub struct PermissionError {
    /// What the file is ("identity key", "config file", "token file").
    pub what: String,
    /// The file.
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
}

/// Refuses a secret file that group or others may read (Unix; a no-op elsewhere).
pub fn check_private(path: &Path, what: &str) -> Result<(), PermissionError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(PermissionError {
                    what: what.to_string(),
                    path: path.display().to_string(),
                    mode,
                });
            }
        }
    }
    let _ = (path, what);
    Ok(())
}

/// Writes a secret file: created 0600 (never readable by others, not even for an instant),
/// truncated if it exists, then forced to 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_secret(path, bytes, false)
}

/// Creates a new secret file 0600; fails with `ErrorKind::AlreadyExists` if the path exists
/// (nothing is overwritten, not even in a race with another writer).
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_secret(path, bytes, true)
}

fn write_secret(path: &Path, bytes: &[u8], new: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    if new {
        o.write(true).create_new(true);
    } else {
        o.write(true).create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// Creates a directory (and its parents) as 0700. A directory that already exists is left as
/// it is (it may be shared, like `/tmp`); the secret files in it are 0600 anyway.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("0123456789abcdef-very-secret");
        assert!(!format!("{s:?} {s}").contains("very-secret"));
        let set = TokenSet::new(std::slice::from_ref(&s));
        assert!(!format!("{set:?}").contains("very-secret"));
    }

    #[test]
    fn token_set_matches_any_of_several_tokens() {
        let a = Secret::new("aaaaaaaaaaaaaaaa1");
        let b = Secret::new("bbbbbbbbbbbbbbbb2");
        let set = TokenSet::new(&[a.clone(), b.clone()]);
        assert!(set.contains(&digest(a.expose().as_bytes())));
        assert!(set.contains(&digest(b.expose().as_bytes())));
        assert!(!set.contains(&digest(b"aaaaaaaaaaaaaaaa")));
        assert!(!set.contains(&digest(b"")));
        assert!(!TokenSet::default().contains(&digest(b"")));
    }

    #[cfg(unix)]
    #[test]
    fn private_files_and_the_permission_check() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("secrets");
        create_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("k");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_private(&f, "token file").unwrap_err();
        assert_eq!(e.mode, 0o644);
        assert!(e.to_string().contains("chmod 600"), "{e}");
        write_private(&f, b"y").unwrap();
        assert_eq!(mode(&f), 0o600);
        check_private(&f, "token file").unwrap();
        let e = create_private(&f, b"z").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&f).unwrap(), b"y");
        let g = dir.join("new");
        create_private(&g, b"n").unwrap();
        assert_eq!(mode(&g), 0o600);
    }
}
