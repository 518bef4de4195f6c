//! Exporting one's data (a privacy right): one JSON document, streamed in
//! chunks as it is assembled from the caller's own reads (settings,
//! blocks, each conversation of the inbox and the requests folder with
//! the messages the caller sent in it), so no new authority is needed and
//! memory stays bounded by one conversation's page.
//!
//! ```json
//! {"format": "imsg-export-1", "user_id": "...", "exported_at_ms": 0,
//!  "settings": {...}, "blocked_user_ids": [...],
//!  "conversations": [{"conversation": {...}, "messages_sent": [...]}, ...]}
//! ```

use std::sync::Arc;

use imsg_proto::internal::v1::{Caller, execute_request::Command, execute_response::Result as Outcome};
use imsg_proto::v1::{
    Conversation, ExportMyDataResponse, Folder, GetSettingsRequest, ListBlockedUsersRequest, ListConversationsRequest,
    ListMessagesRequest, Message, message::Content,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::service::Gateway;

/// The stream of an export.
pub type Export = ReceiverStream<Result<ExportMyDataResponse, Status>>;

/// Starts writing `caller`'s export; it ends with an error if a read fails.
pub fn start(gateway: Arc<Gateway>, caller: Caller) -> Export {
    let (chunks, stream) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(status) = write(&gateway, &caller, &chunks).await {
            let _ = chunks.send(Err(status)).await;
        }
    });
    ReceiverStream::new(stream)
}

async fn run(gateway: &Gateway, caller: &Caller, command: Command) -> Result<Outcome, Status> {
    gateway.backend.execute(caller.clone(), command).await
}

fn wrong() -> Status {
    Status::internal("broker answered with the wrong result kind")
}

async fn send(chunks: &mpsc::Sender<Result<ExportMyDataResponse, Status>>, text: String) -> Result<(), Status> {
    chunks
        .send(Ok(ExportMyDataResponse { chunk: text.into_bytes() }))
        .await
        .map_err(|_| Status::cancelled("the client went away"))
}

async fn write(
    gateway: &Gateway,
    caller: &Caller,
    chunks: &mpsc::Sender<Result<ExportMyDataResponse, Status>>,
) -> Result<(), Status> {
    let Outcome::GetSettings(settings) = run(gateway, caller, Command::GetSettings(GetSettingsRequest {})).await?
    else {
        return Err(wrong());
    };
    let Outcome::ListBlockedUsers(blocked) =
        run(gateway, caller, Command::ListBlockedUsers(ListBlockedUsersRequest {})).await?
    else {
        return Err(wrong());
    };
    let settings = settings.settings.unwrap_or_default();
    let head = json!({
        "format": "imsg-export-1",
        "user_id": caller.user_id,
        "exported_at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        "settings": {
            "hide_read_receipts": settings.hide_read_receipts,
            "hide_activity_status": settings.hide_activity_status,
            "who_may_message": settings.who_may_message().as_str_name(),
            "notifications_muted_until_ms": settings.notifications_muted_until_ms,
            "hide_push_previews": settings.hide_push_previews,
        },
        "blocked_user_ids": blocked.user_ids,
    })
    .to_string();
    // The head without its closing brace, then the conversations array.
    send(chunks, format!("{},\"conversations\":[", &head[..head.len() - 1])).await?;
    let mut first = true;
    for folder in [Folder::Inbox, Folder::Requests] {
        let mut page_token = String::new();
        loop {
            let request = ListConversationsRequest { page_size: 200, page_token, folder: folder as i32 };
            let Outcome::ListConversations(page) = run(gateway, caller, Command::ListConversations(request)).await?
            else {
                return Err(wrong());
            };
            for summary in page.conversations {
                let Some(conversation) = summary.conversation else { continue };
                let sent = messages_sent(gateway, caller, &conversation.conversation_id).await?;
                let entry = json!({ "folder": folder.as_str_name(), "conversation": conversation_json(&conversation), "messages_sent": sent });
                send(chunks, format!("{}{entry}", if first { "" } else { "," })).await?;
                first = false;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    send(chunks, "]}".into()).await
}

/// Every message the caller sent in a conversation, oldest first.
async fn messages_sent(gateway: &Gateway, caller: &Caller, conversation: &str) -> Result<Vec<Value>, Status> {
    let mut sent = Vec::new();
    let mut after = 0;
    loop {
        let request = ListMessagesRequest {
            conversation_id: conversation.into(),
            page_size: 200,
            page_token: String::new(),
            after_seq: Some(after),
        };
        let Outcome::ListMessages(page) = run(gateway, caller, Command::ListMessages(request)).await? else {
            return Err(wrong());
        };
        let Some(last) = page.messages.last().map(|m| m.seq) else { break };
        sent.extend(page.messages.iter().filter(|m| m.sender_id == caller.user_id).map(message_json));
        after = last;
    }
    Ok(sent)
}

fn conversation_json(conversation: &Conversation) -> Value {
    json!({
        "conversation_id": conversation.conversation_id,
        "kind": conversation.kind().as_str_name(),
        "title": conversation.title,
        "member_ids": conversation.members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        "create_time_ms": conversation.create_time_ms,
    })
}

fn message_json(message: &Message) -> Value {
    let content = match &message.content {
        Some(Content::Text(text)) => json!({ "text": text.text }),
        Some(Content::Media(media)) => json!({
            "media": { "kind": media.kind().as_str_name(), "media_id": media.media_id, "caption": media.caption }
        }),
        Some(Content::Link(link)) => json!({ "link": { "url": link.url, "text": link.text } }),
        Some(Content::Shared(shared)) => {
            json!({ "shared": { "kind": shared.kind().as_str_name(), "item_id": shared.item_id, "url": shared.url } })
        }
        None => Value::Null,
    };
    json!({
        "seq": message.seq,
        "server_time_ms": message.server_time_ms,
        "reply_to_seq": message.reply_to_seq,
        "edit_time_ms": message.edit_time_ms,
        "unsent": message.unsent,
        "forwarded": message.forwarded,
        "content": content,
    })
}
