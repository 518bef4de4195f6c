//! Where a node sits in the cluster: its index, every node's URL, how many
//! nodes the cluster was created with, and which partitions a node claims
//! at its first start. Plain configuration (the cluster machinery is in
//! [`crate::cluster`]), so the broker's configuration can hold it without
//! depending on that machinery.

use crate::ids::PartitionId;

/// Where this node sits in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's index into `nodes`.
    pub node_index: u32,
    /// Broker API URL of every node, by index (this one included).
    pub nodes: Vec<String>,
    /// How many nodes the cluster was created with: they split the
    /// partitions at first start; later nodes start empty.
    pub initial_nodes: u32,
}

impl ClusterConfig {
    /// A single node that owns every partition (no peers).
    pub fn standalone() -> Self {
        Self { node_index: 0, nodes: Vec::new(), initial_nodes: 1 }
    }

    pub fn is_standalone(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Whether this node claims `partition` when it starts for the first time.
    pub fn initially_owns(&self, partition: PartitionId) -> bool {
        self.node_index < self.initial_nodes && partition % self.initial_nodes == self.node_index
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.initial_nodes == 0 {
            return Err("initial nodes must be at least 1".into());
        }
        if !self.nodes.is_empty() {
            if self.node_index as usize >= self.nodes.len() {
                return Err(format!("node index {} is outside the {} listed nodes", self.node_index, self.nodes.len()));
            }
            if self.initial_nodes as usize > self.nodes.len() {
                return Err(format!(
                    "initial nodes {} exceeds the {} listed nodes",
                    self.initial_nodes,
                    self.nodes.len()
                ));
            }
        } else if self.node_index != 0 || self.initial_nodes != 1 {
            return Err("a node without --nodes is standalone: node index 0, initial nodes 1".into());
        }
        Ok(())
    }
}

/// Parses a node index: a number, or `auto` for the ordinal at the end of
/// the host name (`imsg-broker-2` is node 2, as a StatefulSet names pods).
pub fn parse_node_index(value: &str, hostname: Option<&str>) -> Result<u32, String> {
    if value != "auto" {
        return value.parse().map_err(|_| format!("node index must be a number or `auto`, got `{value}`"));
    }
    let hostname = hostname.ok_or("node index `auto` needs HOSTNAME to be set")?;
    hostname
        .rsplit('-')
        .next()
        .and_then(|ordinal| ordinal.parse().ok())
        .ok_or_else(|| format!("node index `auto`: host name `{hostname}` does not end in -<ordinal>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_layout_splits_partitions_round_robin_and_later_nodes_start_empty() {
        let nodes: Vec<String> = (0..4).map(|i| format!("http://n{i}")).collect();
        let node = |index| ClusterConfig { node_index: index, nodes: nodes.clone(), initial_nodes: 3 };
        for partition in 0..64 {
            let owners: Vec<u32> = (0..4).filter(|i| node(*i).initially_owns(partition)).collect();
            assert_eq!(owners, vec![partition % 3], "partition {partition}");
        }
        assert!(node(3).validate().is_ok());
        let bad = ClusterConfig { node_index: 4, nodes, initial_nodes: 3 };
        assert!(bad.validate().unwrap_err().contains("outside"));
    }

    #[test]
    fn node_index_auto_reads_the_statefulset_ordinal() {
        assert_eq!(parse_node_index("auto", Some("imsg-broker-2")), Ok(2));
        assert_eq!(parse_node_index("7", None), Ok(7));
        assert!(parse_node_index("auto", Some("broker")).is_err());
        assert!(parse_node_index("auto", None).is_err());
    }
}
