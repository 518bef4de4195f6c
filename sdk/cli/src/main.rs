//! `imsg`: try imsg from a terminal.
//!
//! `imsg token` mints a local token; `send` (a text, a link, or a photo,
//! video, voice note or file it uploads first), `download`, `react`,
//! `edit`, `unsend`, `delete-for-me`, `forward`, `inbox` and `history` are
//! one call each;
//! `chat` is an interactive session showing messages, reactions, edits,
//! unsends, who is typing, read state and presence as they change. A
//! conversation is named by its id or, for a 1:1, by `@user`.

mod render;
mod safety;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crossterm::{
    event::{Event as Key, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    terminal,
};
use imsg_client::{Client, ClientConfig, Event};
use imsg_common::token::Authenticator;
use imsg_proto::v1::{LinkContent, ListConversationsRequest, MediaContent, MediaKind, send_message_request};
use tokio::sync::mpsc;

/// A terminal client for imsg.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The gateway (`https://...` for TLS).
    #[arg(long, env = "IMSG_SERVER", default_value = "http://127.0.0.1:7000", global = true)]
    server: String,
    /// Trust this CA certificate (PEM) for an https server, besides the
    /// system's.
    #[arg(long, env = "IMSG_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// A bearer token; without one, `--user` and IMSG_JWT_SECRET mint one.
    #[arg(long, env = "IMSG_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Who to be when minting a token locally.
    #[arg(long, env = "IMSG_USER", global = true)]
    user: Option<String>,
    #[arg(long, env = "IMSG_DEVICE", default_value = "cli", global = true)]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a token signed with IMSG_JWT_SECRET (local use).
    Token {
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// Send one message: a text, or with --link a link and optional text.
    Send {
        conversation: String,
        #[arg(default_value = "")]
        text: String,
        /// Reply to this seq (recipients see a preview of it).
        #[arg(long, default_value_t = 0)]
        reply_to: u64,
        /// Send a link (http or https); the text goes with it.
        #[arg(long)]
        link: Option<String>,
        /// Send a photo (JPEG, PNG, WebP, HEIC); the text is its caption.
        #[arg(long, conflicts_with_all = ["link", "video", "voice", "file"])]
        photo: Option<std::path::PathBuf>,
        #[arg(long, conflicts_with_all = ["link", "voice", "file"])]
        video: Option<std::path::PathBuf>,
        /// A voice note (AAC, M4A, Ogg Opus).
        #[arg(long, conflicts_with_all = ["link", "file"])]
        voice: Option<std::path::PathBuf>,
        #[arg(long, conflicts_with = "link")]
        file: Option<std::path::PathBuf>,
    },
    /// Save the medium (or its thumbnail) of a message to a file.
    Download {
        conversation: String,
        seq: u64,
        #[arg(long, short)]
        output: std::path::PathBuf,
        #[arg(long)]
        thumbnail: bool,
    },
    /// React to a message with one emoji; an empty emoji ("") removes yours.
    React { conversation: String, seq: u64, emoji: String },
    /// Change the text of your message (within the edit window).
    Edit { conversation: String, seq: u64, text: String },
    /// Unsend your message for everyone.
    Unsend { conversation: String, seq: u64 },
    /// Hide a message from your own history, on all your devices.
    DeleteForMe { conversation: String, seq: u64 },
    /// Forward a message to up to 5 conversations.
    Forward {
        conversation: String,
        seq: u64,
        #[arg(required = true, num_args = 1..=5)]
        to: Vec<String>,
    },
    /// List conversations, newest first, with unread counts.
    Inbox,
    /// Print the newest messages of a conversation.
    History {
        conversation: String,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Chat interactively (Enter sends, Ctrl-C leaves).
    Chat { conversation: String },
    #[command(flatten)]
    Safety(safety::SafetyCommand),
}

fn local_token(user: Option<&str>, device: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let user = user.context("--user (or IMSG_USER) is needed to mint a token")?;
    let secret = std::env::var("IMSG_JWT_SECRET").context("IMSG_JWT_SECRET is needed to mint a token")?;
    let auth = Authenticator::new(&secret).map_err(anyhow::Error::msg)?;
    auth.issue(user, device, ttl_secs).map_err(anyhow::Error::msg)
}

/// The user id a token names (its `sub`), for display only.
fn token_user(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64_url_decode(payload)?;
    let text = String::from_utf8(bytes).ok()?;
    let start = text.find("\"sub\":\"")? + 7;
    Some(text[start..].split('"').next()?.to_owned())
}

fn base64_url_decode(input: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in input.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

async fn resolve(client: &Client, conversation: &str) -> anyhow::Result<String> {
    match conversation.strip_prefix('@') {
        Some(peer) => Ok(client.direct_with(peer).await?),
        None => Ok(conversation.to_owned()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Token { ttl_secs } = cli.command {
        println!("{}", local_token(cli.user.as_deref(), &cli.device, ttl_secs)?);
        return Ok(());
    }
    let token = match cli.token {
        Some(token) => token,
        None => local_token(cli.user.as_deref(), &cli.device, 86_400)?,
    };
    let me = token_user(&token).unwrap_or_default();
    let mut config = ClientConfig::new(cli.server.clone(), token);
    if let Some(path) = &cli.ca_file {
        config.ca_pem = Some(std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?);
    }
    let client = Client::connect(config).await?;
    match cli.command {
        Command::Token { .. } => unreachable!("handled above"),
        Command::Send { conversation, text, reply_to, link, photo, video, voice, file } => {
            let conversation = resolve(&client, &conversation).await?;
            let medium = [
                (photo, MediaKind::Photo),
                (video, MediaKind::Video),
                (voice, MediaKind::Voice),
                (file, MediaKind::File),
            ]
            .into_iter()
            .find_map(|(path, kind)| path.map(|path| (path, kind)));
            let content = match (link, medium) {
                (Some(url), _) => send_message_request::Content::Link(LinkContent { url, text, preview: None }),
                (None, Some((path, kind))) => {
                    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let media = client.upload(kind, &bytes, &name).await?;
                    println!("uploaded {}", render::medium(&media));
                    send_message_request::Content::Media(MediaContent { caption: text, ..media })
                }
                (None, None) => send_message_request::Content::Text(imsg_proto::v1::TextContent { text }),
            };
            let ack = client.send(&conversation, content, reply_to).await?;
            println!("sent to {conversation} as seq {}", ack.seq);
        }
        Command::Download { conversation, seq, output, thumbnail } => {
            let conversation = resolve(&client, &conversation).await?;
            let bytes = client.download(&conversation, seq, thumbnail).await?;
            std::fs::write(&output, &bytes).with_context(|| format!("writing {}", output.display()))?;
            println!("saved {} bytes to {}", bytes.len(), output.display());
        }
        Command::React { conversation, seq, emoji } => {
            let conversation = resolve(&client, &conversation).await?;
            client.react(&conversation, seq, &emoji).await?;
            println!(
                "{} [{seq}] in {conversation}",
                if emoji.is_empty() { "reaction removed from" } else { "reacted to" }
            );
        }
        Command::Edit { conversation, seq, text } => {
            let conversation = resolve(&client, &conversation).await?;
            client.edit(&conversation, seq, &text).await?;
            println!("edited [{seq}] in {conversation}");
        }
        Command::Unsend { conversation, seq } => {
            let conversation = resolve(&client, &conversation).await?;
            client.unsend(&conversation, seq).await?;
            println!("unsent [{seq}] in {conversation}");
        }
        Command::DeleteForMe { conversation, seq } => {
            let conversation = resolve(&client, &conversation).await?;
            client.delete_for_me(&conversation, seq).await?;
            println!("deleted [{seq}] in {conversation} for you");
        }
        Command::Forward { conversation, seq, to } => {
            let conversation = resolve(&client, &conversation).await?;
            let mut targets = Vec::with_capacity(to.len());
            for target in &to {
                targets.push(resolve(&client, target).await?);
            }
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            for copy in client.forward(&conversation, seq, &targets).await?.messages {
                println!("forwarded to {} as seq {}", copy.conversation_id, copy.seq);
            }
        }
        Command::Inbox => {
            let inbox = client.api().list_conversations(ListConversationsRequest::default()).await?.into_inner();
            for row in inbox.conversations {
                let Some(conversation) = row.conversation else { continue };
                let others: Vec<_> =
                    conversation.members.iter().map(|m| m.user_id.as_str()).filter(|u| *u != me).collect();
                let name = if conversation.title.is_empty() { others.join(", ") } else { conversation.title };
                let last = row
                    .last_message
                    .as_ref()
                    .map(|m| format!("{}: {}", m.sender_id, render::content(m)))
                    .unwrap_or_default();
                println!("{}  {:<24} unread {:>3}  {}", conversation.conversation_id, name, row.unread_count, last);
            }
        }
        Command::History { conversation, limit } => {
            let conversation = resolve(&client, &conversation).await?;
            for message in client.history(&conversation, limit, "").await?.messages {
                println!("{}", render::line(&message));
            }
        }
        Command::Chat { conversation } => chat(client, &me, &conversation).await?,
        Command::Safety(command) => safety::run(&client, command).await?,
    }
    Ok(())
}

/// Keys from the terminal, read on a blocking thread.
fn keys() -> mpsc::UnboundedReceiver<KeyEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if let Key::Key(key) = event
                && key.kind != KeyEventKind::Release
                && tx.send(key).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The interactive screen: lines scroll above a prompt holding the input.
struct Screen {
    prompt: String,
    input: String,
}

impl Screen {
    /// Prints a line above the prompt (raw mode: explicit `\r\n`).
    fn line(&self, text: &str) {
        print!("\r\x1b[2K{text}\r\n{}{}", self.prompt, self.input);
        flush();
    }

    fn redraw(&self) {
        print!("\r\x1b[2K{}{}", self.prompt, self.input);
        flush();
    }
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Leaves raw mode even on an early return.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<Self> {
        terminal::enable_raw_mode().context("this command needs a terminal")?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
    }
}

async fn chat(mut client: Client, me: &str, conversation: &str) -> anyhow::Result<()> {
    let conversation = resolve(&client, conversation).await?;
    let history = client.history(&conversation, 20, "").await?.messages;
    // Newest seq on screen, and newest of mine (read receipts refer to it).
    let mut shown = history.last().map_or(0, |m| m.seq);
    let mut newest_mine = 0;
    let _raw = RawMode::enable()?;
    let mut screen = Screen { prompt: format!("{me}> "), input: String::new() };
    screen.line(&format!("-- chatting in {conversation} as {me}; Enter sends, Ctrl-C leaves --"));
    for message in &history {
        screen.line(&render::line(message));
        if message.sender_id == me {
            newest_mine = message.seq;
        }
    }
    if let Some(last) = history.last() {
        client.mark_read(&conversation, last.seq).await;
    }
    let mut keys = keys();
    loop {
        tokio::select! {
            key = keys.recv() => {
                let Some(key) = key else { break };
                match key.code {
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => break,
                    KeyCode::Enter => {
                        let text = std::mem::take(&mut screen.input);
                        screen.redraw();
                        if text == "/quit" {
                            break;
                        }
                        if !text.trim().is_empty() {
                            match client.send_text(&conversation, &text).await {
                                Ok(ack) => newest_mine = newest_mine.max(ack.seq),
                                Err(error) => screen.line(&format!("!! not sent: {error}")),
                            }
                        }
                    }
                    KeyCode::Backspace => {
                        screen.input.pop();
                        screen.redraw();
                    }
                    KeyCode::Char(c) => {
                        screen.input.push(c);
                        screen.redraw();
                        client.typing(&conversation).await;
                    }
                    _ => {}
                }
            }
            event = client.next_event() => {
                let Some(event) = event else { break };
                match event {
                    Event::Message(message) if message.conversation_id == conversation && message.seq > shown => {
                        shown = message.seq;
                        if message.sender_id == me {
                            newest_mine = newest_mine.max(message.seq);
                        } else {
                            // On screen means read.
                            client.mark_read(&conversation, message.seq).await;
                        }
                        screen.line(&render::line(&message));
                    }
                    Event::Reaction(reaction) if reaction.conversation_id == conversation => {
                        screen.line(&render::reaction(&reaction));
                    }
                    Event::MessageUpdated(message) if message.conversation_id == conversation => {
                        screen.line(&render::update(&message));
                    }
                    Event::MessageHidden(hidden) if hidden.conversation_id == conversation => {
                        screen.line(&format!("   [{}] deleted for you", hidden.seq));
                    }
                    Event::Typing(typing) if typing.conversation_id == conversation => {
                        let state = if typing.active { "is typing..." } else { "stopped typing" };
                        screen.line(&format!("   {} {state}", typing.user_id));
                    }
                    // Shown once they have read my newest message.
                    Event::Receipt(receipt)
                        if receipt.conversation_id == conversation
                            && receipt.user_id != me
                            && newest_mine > 0
                            && receipt.read_seq >= newest_mine =>
                    {
                        screen.line(&format!("   read by {} (up to {})", receipt.user_id, receipt.read_seq));
                    }
                    Event::Presence(presence) => {
                        let state = if presence.online { "online" } else { "offline" };
                        screen.line(&format!("   {} is {state}", presence.user_id));
                    }
                    Event::Disconnected { reason } => screen.line(&format!("!! disconnected ({reason}); reconnecting")),
                    Event::ResyncRequired { .. } => screen.line("!! missed too much; restart the chat to reload"),
                    _ => {}
                }
            }
        }
    }
    print!("\r\n");
    flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_read_from_a_token() {
        let auth = Authenticator::new("0123456789abcdef0123").unwrap();
        let token = auth.issue("alice", "cli", 60).unwrap();
        assert_eq!(token_user(&token).as_deref(), Some("alice"));
        assert_eq!(token_user("not-a-token"), None);
    }
}
