//! What the gRPC service sees of a call before tonic decodes it: the request body is held
//! against the in-flight budget and the size limit as it arrives, and a body that cannot
//! be decoded is answered `INVALID_ARGUMENT` (the client's fault) rather than tonic's
//! `INTERNAL`.
//!
//! Tonic buffers a whole message before the handler runs, and checks its size against
//! `max_decoding_message_size` with `OUT_OF_RANGE`. Here the length prefix of each
//! message (a flag byte and a big-endian `u32`) is read as it passes, so a message over
//! `max_body_bytes` is refused with `RESOURCE_EXHAUSTED` before its payload is read, and
//! the declared length is reserved against the budget up front, as an HTTP body's
//! `Content-Length` is.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::budget::{Budget, Reservation};

/// The budget's hold on one call's message, shared by the body (which grows it as the
/// message arrives) and the handler (which takes it over with [`Ticket::take`], so that
/// it lasts while the decoded message does).
#[derive(Clone)]
pub struct Ticket(Arc<Mutex<Reservation>>);

impl Ticket {
    /// What the call's body has reserved, moved out (the body is read by then).
    pub fn take(&self) -> Reservation {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A gRPC service behind the budget and the size limit.
#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    budget: Arc<Budget>,
    max_message_bytes: usize,
}

impl<S> Admitted<S> {
    pub fn new(inner: S, budget: Arc<Budget>, max_message_bytes: usize) -> Admitted<S> {
        Admitted { inner, budget, max_message_bytes }
    }
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for Admitted<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let ticket = Ticket(Arc::new(Mutex::new(self.budget.empty())));
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ticket.clone());
        let body =
            Metered { inner: body, ticket, limit: self.max_message_bytes, prefix: Vec::new(), remaining: 0, seen: 0 };
        let response = self.inner.call(http::Request::from_parts(parts, Body::new(body)));
        Box::pin(async move {
            let mut response = response.await?;
            decode_failure_is_invalid_argument(response.headers_mut());
            Ok(response)
        })
    }
}

/// Tonic answers a message it cannot decode with `INTERNAL` and the text of prost's
/// error; such a message is the client's, so it becomes `INVALID_ARGUMENT`. Tonic sends a
/// call refused before its handler as headers only, so the status is in the headers.
fn decode_failure_is_invalid_argument(headers: &mut http::HeaderMap) {
    let internal = headers.get("grpc-status").is_some_and(|s| s.as_bytes() == b"13");
    let undecodable = headers.get("grpc-message").is_some_and(|m| {
        let m = m.as_bytes();
        m.starts_with(b"failed%20to%20decode%20Protobuf%20message")
            || m.starts_with(b"failed to decode Protobuf message")
    });
    if internal && undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// A request body whose bytes are held against the budget as they arrive, and whose
/// messages' length prefixes are checked against the limit.
struct Metered {
    inner: Body,
    ticket: Ticket,
    limit: usize,
    /// The bytes of the current message's 5-byte prefix read so far.
    prefix: Vec<u8>,
    /// Payload bytes of the current message still to come.
    remaining: usize,
    /// Bytes of the body so far.
    seen: usize,
}

impl Metered {
    /// Walks `data` through the messages' framing: checks each prefix and reserves the
    /// rest of its message.
    fn admit(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                continue;
            }
            let take = (5 - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.prefix.len() == 5 {
                let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "the request message is {len} bytes, over the limit of {} bytes (--max-body-bytes)",
                        self.limit
                    )));
                }
                self.prefix.clear();
                self.remaining = len;
            }
        }
        // Everything seen, and the rest of the message now arriving, is held.
        let held = self.seen.saturating_add(self.remaining);
        self.ticket
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ensure(held)
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }
}

impl http_body::Body for Metered {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len();
            let data = data.clone();
            if let Err(status) = this.admit(&data) {
                return Poll::Ready(Some(Err(status)));
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
    use crate::metrics::Metrics;

    fn metered(limit: usize, budget: usize) -> (Metered, Arc<Budget>) {
        let budget = Budget::new(budget, Arc::new(Metrics::new("m")));
        let ticket = Ticket(Arc::new(Mutex::new(budget.empty())));
        (Metered { inner: Body::empty(), ticket, limit, prefix: Vec::new(), remaining: 0, seen: 0 }, budget)
    }

    fn feed(m: &mut Metered, data: &[u8]) -> Result<(), Status> {
        m.seen += data.len();
        m.admit(data)
    }

    #[test]
    fn a_message_is_held_from_its_prefix_split_anywhere() {
        let mut message = vec![0u8];
        message.extend_from_slice(&1000u32.to_be_bytes());
        message.extend(std::iter::repeat_n(7u8, 1000));
        for cut in 0..message.len() {
            let (mut m, budget) = metered(4096, 1 << 20);
            feed(&mut m, &message[..cut]).unwrap();
            if cut >= 5 {
                assert_eq!(budget.used(), 1005, "the declared message is held once its prefix is read (cut {cut})");
            }
            feed(&mut m, &message[cut..]).unwrap();
            assert_eq!((budget.used(), m.remaining, m.prefix.len()), (1005, 0, 0), "cut {cut}");
            let held = m.ticket.take();
            assert_eq!(held.bytes(), 1005);
            drop(held);
            assert_eq!(budget.used(), 0);
        }
    }

    #[test]
    fn an_oversized_declaration_or_a_full_budget_is_resource_exhausted() {
        let (mut m, _) = metered(100, 1 << 20);
        let e = feed(&mut m, &[0, 0, 0, 0, 101]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("over the limit of 100 bytes"), "{}", e.message());
        let (mut m, budget) = metered(1 << 20, 1000);
        let _other = budget.reserve(500).unwrap();
        let e = feed(&mut m, &[0, 0, 0, 2, 0]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("max-inflight-bytes"), "{}", e.message());
    }

    #[test]
    fn only_decode_failures_become_invalid_argument() {
        let status = |code: &'static str, message: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", http::HeaderValue::from_static(code));
            h.insert("grpc-message", http::HeaderValue::from_static(message));
            decode_failure_is_invalid_argument(&mut h);
            h["grpc-status"].to_str().unwrap().to_string()
        };
        assert_eq!(status("13", "failed%20to%20decode%20Protobuf%20message:%20invalid%20wire%20type"), "3");
        assert_eq!(status("13", "the%20inference%20stream%20stopped"), "13");
        assert_eq!(status("8", "failed%20to%20decode%20Protobuf%20message"), "8");
    }
}
