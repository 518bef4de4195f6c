//! The id secret (`imsg_common::ids::IdKey`) of a node not given one: made
//! at random on first start and kept in the data directory, synced before
//! anything is derived from it, since an id, once handed out, must be
//! derived the same way for ever.

use std::{io::Write, path::Path};

use rand::RngCore;

use super::sled_files::sync_dir;
use crate::{
    config::BrokerConfig,
    error::{Error, Result},
    ids::IdKey,
};

/// The key conversation ids are derived with: configured, or (standalone
/// only) kept in the data directory. Cluster nodes must be given the same
/// one, or a pair's direct conversation would have one id per node.
pub fn id_key(config: &BrokerConfig) -> Result<IdKey> {
    let secret = match &config.id_secret {
        Some(secret) => secret.clone(),
        None if config.cluster.is_standalone() => load_or_create(&config.data_dir)?,
        None => {
            return Err(Error::FailedPrecondition(
                "a cluster node needs --id-secret (or --id-secret-file), the same on every node".into(),
            ));
        }
    };
    IdKey::new(secret.as_bytes()).map_err(Error::FailedPrecondition)
}

/// The file holding it.
pub const FILE: &str = "id.secret";

/// The secret in `dir`, created (durably) if there is none.
pub fn load_or_create(dir: &Path) -> Result<String> {
    let path = dir.join(FILE);
    let io = |what: &str, e: std::io::Error| Error::Internal(format!("{what} {}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(secret) => return Ok(secret.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let partial = dir.join(format!("{FILE}.partial"));
    let mut file = std::fs::File::create(&partial).map_err(|e| io("creating", e))?;
    file.write_all(secret.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| io("writing", e))?;
    std::fs::rename(&partial, &path).map_err(|e| io("renaming into", e))?;
    sync_dir(dir)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_made_once_and_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        assert!(!dir.path().join(format!("{FILE}.partial")).exists());
    }
}
