//! `walletd keygen --out FILE`: a new ed25519 identity key, in the format `walletd init` and
//! `walletd run` read (libp2p protobuf encoding), written 0600 into a 0700 directory; the
//! caller prints its peer id (for every member's `[[members]]`).

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::secret;

/// Why no key was written.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// The file exists: a key is an identity, never replaced by accident.
    #[error("{0} already exists: refusing to overwrite an identity key (move it away first)")]
    Exists(PathBuf),
    /// The directory or the file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key could not be encoded.
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// Writes a new ed25519 key to `out` (its directory created 0700 if missing; the file created
/// 0600, never over an existing one) and returns its peer id.
pub fn keygen(out: &Path) -> Result<PeerId, KeygenError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeygenError::Io { path, source }
    };
    if out.exists() {
        return Err(KeygenError::Exists(out.to_path_buf()));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        secret::create_private_dir(dir).map_err(io(dir))?;
    }
    let kp = Keypair::generate_ed25519();
    let bytes = kp
        .to_protobuf_encoding()
        .map_err(|e| KeygenError::Encode(e.to_string()))?;
    secret::create_private(out, &bytes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeygenError::Exists(out.to_path_buf())
        } else {
            io(out)(e)
        }
    })?;
    Ok(wallet_p2p::peer_id_of(&kp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_key_that_loads_back_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys").join("eu.key");
        let peer = keygen(&f).unwrap();
        let kp = wallet_p2p::load_or_create_keypair(&f).unwrap();
        assert_eq!(wallet_p2p::peer_id_of(&kp), peer);
        crate::secret::check_private(&f, "identity key").unwrap();
        let before = std::fs::read(&f).unwrap();
        assert!(matches!(keygen(&f), Err(KeygenError::Exists(_))));
        assert_eq!(std::fs::read(&f).unwrap(), before);
    }
}
