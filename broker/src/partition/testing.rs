//! What the shells' tests share.

use std::sync::Arc;

use super::Partition;
use crate::router::Router;

/// Partition 0 of a fresh store of `partitions` partitions in a temp dir
/// (kept alive by the returned handle), for the shells' tests.
pub(crate) fn loaded_partition(partitions: u32) -> (tempfile::TempDir, Arc<crate::storage::Store>, Partition) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::BrokerConfig::new(dir.path());
    config.partitions = partitions;
    config.cache_capacity_bytes = 4 * 1024 * 1024;
    let store = crate::storage::Store::open(&config).unwrap();
    let router = Router::new(config.partitions, None, tokio_util::sync::CancellationToken::new());
    let partition = Partition::load(
        0,
        config.limits.clone(),
        store.partition(0).unwrap(),
        store.durability().clone(),
        router,
        None,
    )
    .unwrap();
    (dir, store, partition)
}
