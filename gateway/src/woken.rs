//! A stream polled only when it has something: after it woke its task, or
//! after it gave an item.
//!
//! A device stream's relay waits on several sources at once (the broker's
//! frames, the device's own frames, the token's expiry, shutdown) and is
//! polled again for every frame it sends down. Polling the device's side
//! each time cost more than the frame's encoding: tonic decodes, the HTTP/2
//! stream takes its connection's lock and registers the waker again,
//! nearly always to answer `Pending` (4% of a gateway's CPU in a group of
//! 50 at 1,000 msg/s; docs/benchmarks.md, "Performance, fifth steps").
//! Wrapped here, the inner stream gets a waker of ours that records the
//! wake-up before passing it on, and is polled again only once one came.
//! The relay's shutdown signal is wrapped the same way: a future polled
//! anew per frame takes the lock of the token that every stream waits on.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures::{Stream, task::AtomicWaker};

/// `inner`, polled only when it may have an item.
pub struct WokenStream<S> {
    inner: S,
    signal: Arc<Signal>,
    /// [`Self::signal`] as a waker, made once.
    waker: Waker,
}

/// What the inner stream wakes: a flag, then the task that polls.
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.task.wake();
    }
}

impl<S> WokenStream<S> {
    pub fn new(inner: S) -> Self {
        // Woken to begin with: the first poll reaches the inner stream.
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { inner, waker: Waker::from(signal.clone()), signal }
    }
}

impl<S: Stream + Unpin> Stream for WokenStream<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        // Registered before the flag is read: a wake-up after the read
        // reaches this task.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        let item = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if item.is_ready() {
            // It may have more: polled again next time.
            this.signal.woken.store(true, Ordering::SeqCst);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::StreamExt;

    use super::*;

    /// A stream over a channel that counts its polls.
    struct Counted {
        items: tokio::sync::mpsc::UnboundedReceiver<u32>,
        polls: Arc<AtomicUsize>,
    }

    impl Stream for Counted {
        type Item = u32;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.items.poll_recv(cx)
        }
    }

    #[tokio::test]
    async fn the_inner_stream_is_polled_again_only_after_it_woke_or_gave_an_item() {
        let (send, items) = tokio::sync::mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut stream = WokenStream::new(Counted { items, polls: polls.clone() });
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        for _ in 0..10 {
            assert!(stream.poll_next_unpin(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled again");
        send.send(1).unwrap();
        send.send(2).unwrap();
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(Some(2)), "after an item it is polled again");
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        drop(send);
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(None), "its end is a wake-up too");
    }

    #[tokio::test]
    async fn an_item_sent_from_another_task_wakes_the_waiting_task() {
        let (send, items) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = WokenStream::new(Counted { items, polls: Arc::default() });
        let sender = tokio::spawn(async move {
            for item in 0..100u32 {
                send.send(item).unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut received = Vec::new();
        while let Some(item) = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("a wake-up was lost: the task waited for good")
        {
            received.push(item);
        }
        sender.await.unwrap();
        assert_eq!(received, (0..100).collect::<Vec<_>>());
    }
}
