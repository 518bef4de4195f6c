//! Wire limits on the public port, answered per request with
//! RESOURCE_EXHAUSTED instead of what the transport would do.
//!
//! Left to tonic and h2, an oversize message gets OUT_OF_RANGE (a code
//! meant for reading past the end of a file), and a header block larger
//! than h2's default list size (16 KiB) exceeds its CONTINUATION-flood
//! guard: a GOAWAY that ends every other stream of the client's
//! connection with a retryable UNAVAILABLE. So the server accepts header
//! blocks up to [`HEADER_LIST_ACCEPTED`] (only larger ones close the
//! connection, h2's defence against memory floods) and this layer refuses
//! anything over [`WireLimits`] for that one request.
//!
//! Message sizes are read from each gRPC frame's 5-byte prefix as the body
//! arrives, so an oversize message is refused before it is buffered.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use http_body::Frame;
use tonic::{Status, body::Body};

/// The header block size h2 accepts before closing the connection.
pub const HEADER_LIST_ACCEPTED: u32 = 1024 * 1024;

/// Limits for one request on the public port.
#[derive(Debug, Clone, Copy)]
pub struct WireLimits {
    /// Bytes of request headers (names and values), tokens included.
    pub header_bytes: usize,
    /// Bytes of one encoded request message (one frame of a stream).
    pub message_bytes: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self { header_bytes: 64 * 1024, message_bytes: 256 * 1024 }
    }
}

impl<S> tower::Layer<S> for WireLimits {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited { inner, limits: *self }
    }
}

/// A service whose requests are held to [`WireLimits`].
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limits: WireLimits,
}

impl<S> tower::Service<http::Request<Body>> for Limited<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let header_bytes = header_bytes(request.headers());
        if header_bytes > self.limits.header_bytes {
            let limit = self.limits.header_bytes;
            let status = Status::resource_exhausted(format!(
                "request headers are {header_bytes} bytes; the limit is {limit} (is the token oversized?)"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let (parts, body) = request.into_parts();
        let body =
            Body::new(SizeChecked { inner: body, limit: self.limits.message_bytes, frame: FrameState::default() });
        Box::pin(self.inner.call(http::Request::from_parts(parts, body)))
    }
}

/// Header bytes as HTTP/2 counts them for its list size (name, value and
/// 32 bytes of overhead per field).
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum()
}

/// Where the body is in its sequence of length-prefixed gRPC messages.
#[derive(Debug, Default)]
struct FrameState {
    prefix: [u8; 5],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    message_left: usize,
}

impl FrameState {
    /// Follows `data`; the length of the first message over `limit`.
    fn oversize_in(&mut self, mut data: &[u8], limit: usize) -> Option<usize> {
        while !data.is_empty() {
            if self.message_left > 0 {
                let skip = self.message_left.min(data.len());
                self.message_left -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + take].copy_from_slice(&data[..take]);
            self.prefix_read += take;
            data = &data[take..];
            if self.prefix_read == 5 {
                self.prefix_read = 0;
                let length =
                    u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as usize;
                if length > limit {
                    return Some(length);
                }
                self.message_left = length;
            }
        }
        None
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED at the prefix of a
/// message over the limit. tonic passes a `Status` from the body through
/// as the call's answer.
struct SizeChecked {
    inner: Body,
    limit: usize,
    frame: FrameState,
}

impl http_body::Body for SizeChecked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        if let Some(data) = frame.data_ref() {
            let limit = self.limit;
            if let Some(length) = self.frame.oversize_in(data.chunk(), limit) {
                return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                    "request message is {length} bytes; the limit is {limit}"
                )))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes
    }

    #[test]
    fn message_lengths_are_followed_across_data_frames() {
        let mut state = FrameState::default();
        let mut body = prefix(3);
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&prefix(100));
        // Split inside the second prefix: nothing oversize yet.
        assert_eq!(state.oversize_in(&body[..10], 50), None);
        assert_eq!(state.oversize_in(&body[10..], 50), Some(100));
    }

    #[test]
    fn messages_within_the_limit_pass() {
        let mut state = FrameState::default();
        let mut body = prefix(50);
        body.extend_from_slice(&[7; 50]);
        body.extend_from_slice(&prefix(0));
        assert_eq!(state.oversize_in(&body, 50), None);
        assert_eq!(state.message_left, 0);
    }
}
