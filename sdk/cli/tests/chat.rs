//! `imsg chat` as a person uses it: two users in two terminals (real
//! pseudo-terminals, through util-linux `script`), typing, messages, read
//! state and presence appearing as they change.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

mod common;

use common::SECRET;

/// One `imsg chat` running in a pseudo-terminal.
struct Terminal {
    child: Child,
    keyboard: ChildStdin,
    screen: Arc<Mutex<String>>,
}

impl Terminal {
    fn start(server: SocketAddr, user: &str, conversation: &str) -> Self {
        let command =
            format!("{} --server http://{server} --user {user} chat {conversation}", env!("CARGO_BIN_EXE_imsg"));
        let mut child = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env("IMSG_JWT_SECRET", SECRET)
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("util-linux `script` runs the chat in a pseudo-terminal");
        let keyboard = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = output.read(&mut buffer) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self { child, keyboard, screen }
    }

    fn keys(&mut self, keys: &str) {
        for key in keys.chars() {
            write!(self.keyboard, "{key}").unwrap();
            self.keyboard.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the screen shows `text`; panics with the screen if not.
    async fn shows(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.screen.lock().unwrap().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("screen never showed {text:?}:\n{}", self.screen.lock().unwrap());
    }

    async fn exits_cleanly(mut self) {
        self.keys("\u{3}"); // Ctrl-C (a key in raw mode)
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "imsg chat exited with {status}:\n{}", self.screen.lock().unwrap());
                return;
            }
            assert!(Instant::now() < deadline, "imsg chat did not exit on Ctrl-C");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_people_chat_in_two_terminals_with_typing_read_state_and_presence() {
    let data = tempfile::tempdir().unwrap();
    let server = common::server(data.path()).await;

    let mut alice = Terminal::start(server.addr, "alice", "@bob");
    alice.shows("chatting in").await;
    let mut bob = Terminal::start(server.addr, "bob", "@alice");
    bob.shows("chatting in").await;
    alice.shows("bob is online").await;

    alice.keys("hello bob");
    bob.shows("alice is typing...").await;
    alice.keys("\r");
    bob.shows("alice: hello bob").await;
    alice.shows("read by bob").await;

    bob.keys("hi alice\r");
    alice.shows("bob: hi alice").await;
    bob.shows("read by alice").await;

    bob.exits_cleanly().await;
    alice.shows("bob is offline").await;
    alice.exits_cleanly().await;
    server.shutdown().await.unwrap();
}
