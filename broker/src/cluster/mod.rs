//! The cluster: which node owns which partition, and how nodes and gateways
//! reach each other.
//!
//! P is fixed when the cluster is created. Each node knows its index and
//! the broker API address of every node (the *layout*: flags, or in
//! Kubernetes the StatefulSet ordinal and a ConfigMap). On its first start
//! a node of the initial cluster claims the partitions `p` with
//! `p % initial_nodes == index` at epoch 1; a node added later starts with
//! none and receives partitions by moves ([`moves`]).
//!
//! Claims are stored with the partitions (`OwnershipRecord`), so ownership
//! survives restarts and moves without a coordinator. Everyone else learns
//! them by asking every node ([`Peers::refresh`]): for each partition the
//! claim with the highest epoch wins. A node that sees a higher claim than
//! its own for a partition it serves steps down (invariant 8); and every
//! request between nodes names the partition and the epoch the sender saw,
//! which the owner checks, so a request routed on a stale map is refused
//! (ABORTED) before it can write.

pub mod moves;
pub mod peers;
pub mod wire;

pub use self::peers::{Owner, Peers};

pub use crate::layout::{ClusterConfig, parse_node_index};
