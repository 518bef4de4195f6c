//! Partition moves, driven from the command line (`imsg-broker
//! move-partition`, `imsg-broker rebalance`), so a cluster can grow or
//! shrink while clients keep chatting.
//!
//! One move of partition `p` from its owner (epoch `e`) to node `t`:
//! 1. **Freeze** on the owner: client writes to `p` are refused with
//!    UNAVAILABLE (clients retry), the partition drains (everything durable,
//!    every fan-out it sent confirmed), closes its sessions and stops.
//! 2. **Import** on `t`: it copies every row from the owner, makes the copy
//!    durable with the ownership record at epoch `e + 1`, and serves `p`.
//!    From here every map refresh routes `p` to `t` (highest epoch wins).
//! 3. **Release** on the old owner: it records epoch `e + 1` as released,
//!    never serves `p` again, even after a restart, and deletes its copy of
//!    the rows (the ownership record stays).
//!
//! A failure before step 2 completes thaws the partition on its owner
//! (nothing changed); a failure of step 3 is repaired by the old owner
//! itself, which steps down when it sees the higher claim (at once, or
//! before serving anything when it was down). Fan-out bound for `p` waits
//! in the senders' lanes during the move and follows it.

use std::time::Duration;

use imsg_proto::internal::v1::{
    FreezePartitionRequest, GetClusterStateRequest, ImportPartitionRequest, PartitionState, ReleasePartitionRequest,
    Route, ThawPartitionRequest,
};

use super::peers::connect;
use crate::ids::PartitionId;

/// One node's claims as it reported them.
#[derive(Debug, Clone)]
pub struct NodeClaims {
    pub node: u32,
    pub url: String,
    /// `(partition, epoch, serving)`; `None` when the node did not answer.
    pub claims: Option<Vec<(PartitionId, u64, bool)>>,
}

/// Asks every node for its claims.
pub async fn cluster_state(nodes: &[String]) -> anyhow::Result<Vec<NodeClaims>> {
    let mut out = Vec::with_capacity(nodes.len());
    for (node, url) in nodes.iter().enumerate() {
        let mut client = connect(url)?;
        let answer = tokio::time::timeout(Duration::from_secs(3), client.get_cluster_state(GetClusterStateRequest {}))
            .await
            .ok()
            .and_then(|answer| answer.ok())
            .map(|answer| {
                answer
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| (c.partition, c.epoch, c.state == PartitionState::Serving as i32))
                    .collect()
            });
        out.push(NodeClaims { node: node as u32, url: url.clone(), claims: answer });
    }
    Ok(out)
}

/// The owner of each claimed partition: `(node, epoch)` of the highest claim.
pub fn owners(state: &[NodeClaims]) -> std::collections::BTreeMap<PartitionId, (u32, u64)> {
    let mut owners = std::collections::BTreeMap::new();
    for node in state {
        for (partition, epoch, _) in node.claims.iter().flatten() {
            let entry = owners.entry(*partition).or_insert((node.node, *epoch));
            if *epoch > entry.1 {
                *entry = (node.node, *epoch);
            }
        }
    }
    owners
}

/// What one move did.
#[derive(Debug, Clone)]
pub struct MoveReport {
    pub partition: PartitionId,
    pub from: u32,
    pub to: u32,
    pub epoch: u64,
    pub rows: u64,
    pub elapsed: Duration,
}

/// Moves `partition` to node `to` (freeze, import, release; see the module
/// docs). Every node of `nodes` must be reachable.
pub async fn move_partition(nodes: &[String], partition: PartitionId, to: u32) -> anyhow::Result<MoveReport> {
    let started = std::time::Instant::now();
    let target_url = nodes.get(to as usize).ok_or_else(|| anyhow::anyhow!("node {to} is not in --nodes"))?;
    let state = cluster_state(nodes).await?;
    if let Some(down) = state.iter().find(|n| n.claims.is_none()) {
        anyhow::bail!("node {} ({}) does not answer; a move needs every node", down.node, down.url);
    }
    let (from, epoch) =
        *owners(&state).get(&partition).ok_or_else(|| anyhow::anyhow!("no node owns partition {partition}"))?;
    if from == to {
        anyhow::bail!("partition {partition} is already on node {to}");
    }
    let source_url = nodes[from as usize].clone();
    let mut source = connect(&source_url)?;
    let mut target = connect(target_url)?;
    source.freeze_partition(FreezePartitionRequest { route: Some(Route { partition, epoch }) }).await?;
    let new_epoch = epoch + 1;
    let import = ImportPartitionRequest {
        route: Some(Route { partition, epoch: new_epoch }),
        source_url: source_url.clone(),
        source_epoch: epoch,
    };
    let rows = match target.import_partition(import).await {
        Ok(answer) => answer.into_inner().rows,
        Err(status) => {
            let thawed = source.thaw_partition(ThawPartitionRequest { route: Some(Route { partition, epoch }) }).await;
            anyhow::bail!(
                "import on node {to} failed ({}); partition {partition} {} on node {from}",
                status.message(),
                if thawed.is_ok() { "is serving again" } else { "stays frozen: thaw it by hand" }
            );
        }
    };
    let release = ReleasePartitionRequest { route: Some(Route { partition, epoch: new_epoch }), new_owner: to };
    if let Err(status) = source.release_partition(release).await {
        // Safe: node `to` now has the higher claim, and the old owner steps
        // down by itself as soon as its map shows it.
        tracing::warn!(partition, from, %status, "release failed; the old owner will step down on its own");
    }
    Ok(MoveReport { partition, from, to, epoch: new_epoch, rows, elapsed: started.elapsed() })
}

/// Moves to apply so every node holds `P / N` partitions (±1): from the
/// fullest node to the emptiest, one partition at a time.
pub fn plan_rebalance(state: &[NodeClaims], partitions: u32) -> Vec<(PartitionId, u32)> {
    let owners = owners(state);
    let mut held: Vec<Vec<PartitionId>> = vec![Vec::new(); state.len()];
    for (partition, (node, _)) in &owners {
        held[*node as usize].push(*partition);
    }
    let nodes = state.len().max(1) as u32;
    let most = partitions.div_ceil(nodes) as usize;
    let least = (partitions / nodes) as usize;
    let mut moves = Vec::new();
    loop {
        let (full, _) =
            held.iter().enumerate().max_by_key(|(i, h)| (h.len(), std::cmp::Reverse(*i))).unwrap_or((0, &Vec::new()));
        let (empty, _) = held.iter().enumerate().min_by_key(|(i, h)| (h.len(), *i)).unwrap_or((0, &Vec::new()));
        if held[full].len() <= most && held[empty].len() >= least {
            break;
        }
        let Some(partition) = held[full].pop() else { break };
        held[empty].push(partition);
        moves.push((partition, empty as u32));
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node: u32, partitions: impl IntoIterator<Item = PartitionId>) -> NodeClaims {
        NodeClaims { node, url: String::new(), claims: Some(partitions.into_iter().map(|p| (p, 1, true)).collect()) }
    }

    #[test]
    fn rebalance_from_three_to_four_nodes_moves_a_quarter_evenly() {
        let state = vec![
            node(0, (0..64).filter(|p| p % 3 == 0)),
            node(1, (0..64).filter(|p| p % 3 == 1)),
            node(2, (0..64).filter(|p| p % 3 == 2)),
            node(3, []),
        ];
        let moves = plan_rebalance(&state, 64);
        assert_eq!(moves.len(), 16, "{moves:?}");
        assert!(moves.iter().all(|(_, to)| *to == 3));
        let mut counts = [22usize, 21, 21, 0];
        for (partition, to) in &moves {
            counts[(*partition % 3) as usize] -= 1;
            counts[*to as usize] += 1;
        }
        assert_eq!(counts, [16, 16, 16, 16]);
    }

    #[test]
    fn the_highest_epoch_claim_owns_a_partition() {
        let mut old = node(0, [5]);
        old.claims = Some(vec![(5, 1, false)]);
        let mut new = node(1, []);
        new.claims = Some(vec![(5, 2, true)]);
        assert_eq!(owners(&[old, new]).get(&5), Some(&(1, 2)));
    }
}
