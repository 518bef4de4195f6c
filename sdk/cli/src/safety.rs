//! `imsg` subcommands of safety and privacy: message requests, blocking,
//! mutes, reports, and the privacy rights (export, account deletion).

use anyhow::Context;
use clap::Subcommand;
use imsg_client::Client;
use imsg_proto::v1::ReportReason;

use crate::resolve;

#[derive(Subcommand, Debug)]
pub enum SafetyCommand {
    /// List message requests waiting for you.
    Requests,
    /// Accept a message request (it moves to your inbox).
    Accept { conversation: String },
    /// Decline a message request (hidden; the sender is not told).
    Decline { conversation: String },
    /// Block a user.
    Block { user: String },
    /// Lift a block.
    Unblock { user: String },
    /// List the users you block.
    Blocked,
    /// Mute a conversation's notifications (for some hours, or until unmuted).
    Mute {
        conversation: String,
        #[arg(long)]
        hours: Option<u64>,
    },
    /// Unmute a conversation.
    Unmute { conversation: String },
    /// Report a message (seq 0: the whole conversation) to the moderators.
    Report {
        conversation: String,
        seq: u64,
        /// spam, harassment, nudity, scam or other.
        reason: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// Also block the sender.
        #[arg(long)]
        block: bool,
    },
    /// Save all your data as one JSON document.
    Export {
        #[arg(long, short)]
        output: std::path::PathBuf,
    },
    /// Delete your account for good.
    DeleteAccount {
        /// Say you mean it.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(client: &Client, command: SafetyCommand) -> anyhow::Result<()> {
    match command {
        SafetyCommand::Requests => {
            for row in client.requests().await?.conversations {
                let Some(conversation) = row.conversation else { continue };
                let from = row.last_message.map(|m| m.sender_id).unwrap_or_default();
                println!("{}  from {from}  ({} unread)", conversation.conversation_id, row.unread_count);
            }
        }
        SafetyCommand::Accept { conversation } => {
            client.accept(&conversation).await?;
            println!("accepted {conversation}");
        }
        SafetyCommand::Decline { conversation } => {
            client.decline(&conversation).await?;
            println!("declined {conversation}");
        }
        SafetyCommand::Block { user } => {
            client.block(&user).await?;
            println!("blocked {user}");
        }
        SafetyCommand::Unblock { user } => {
            client.unblock(&user).await?;
            println!("unblocked {user}");
        }
        SafetyCommand::Blocked => {
            for user in client.blocked_users().await? {
                println!("{user}");
            }
        }
        SafetyCommand::Mute { conversation, hours } => {
            let conversation = resolve(client, &conversation).await?;
            let until = match hours {
                Some(hours) => now_ms() + (hours as i64) * 3_600_000,
                None => -1,
            };
            client.mute(&conversation, until, false).await?;
            println!("muted {conversation}");
        }
        SafetyCommand::Unmute { conversation } => {
            let conversation = resolve(client, &conversation).await?;
            client.mute(&conversation, 0, false).await?;
            println!("unmuted {conversation}");
        }
        SafetyCommand::Report { conversation, seq, reason, comment, block } => {
            let reason = ReportReason::from_str_name(&format!("REPORT_REASON_{}", reason.to_ascii_uppercase()))
                .context("reason: spam, harassment, nudity, scam or other")?;
            let id = client.report(&conversation, seq, reason, &comment, block).await?;
            println!("reported as {id}");
        }
        SafetyCommand::Export { output } => {
            let document = client.export_my_data().await?;
            std::fs::write(&output, &document).with_context(|| format!("writing {}", output.display()))?;
            println!("saved {} bytes to {}", document.len(), output.display());
        }
        SafetyCommand::DeleteAccount { yes } => {
            anyhow::ensure!(yes, "this deletes your account for good: add --yes");
            let deleted = client.delete_account().await?;
            println!("account deleted ({} messages erased)", deleted.messages_erased);
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
