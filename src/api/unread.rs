//! Read what a rejected request still has in flight before answering it.
//!
//! A handler that refuses a request early (a bad knob, a value over the
//! limit, a wrong method) drops its body unread. HTTP/2 then has to end the
//! stream with `RST_STREAM` right after the response; curl (nghttp2) reports
//! that as `(92) Stream error in the HTTP/2 framing layer` and shows no
//! answer at all, and over HTTP/1.1 closing a socket with unread bytes makes
//! the kernel send a TCP reset that can overtake the response (Python's
//! `http.client` sees `ConnectionResetError` instead of the 413). So every
//! `/keys` request body is wrapped: what the handler did not read comes
//! back here and is read and discarded, within a byte and time budget,
//! before the response goes out. The stream then ends normally and every
//! client sees the status and its JSON body.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

/// How long a rejected request's remaining body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// The most bytes read and discarded for one rejected request; past it the
/// stream is reset after all (only a body over twice the value limit gets
/// there), so a client cannot make the node read forever.
#[derive(Clone, Copy)]
pub struct DrainBudget(pub usize);

/// A request body that hands itself back if dropped before its end.
struct Unread {
    inner: Option<Body>,
    finished: bool,
    /// Whether the handler asked for any of the body.
    polled: bool,
    back: Option<oneshot::Sender<(Body, bool)>>,
}

impl HttpBody for Unread {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let frame = Pin::new(inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finished = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !self.finished
            && !inner.is_end_stream()
            && let Some(back) = self.back.take()
        {
            let _ = back.send((inner, self.polled));
        }
    }
}

/// The middleware: run the handler with a wrapped body, then drain
/// whatever it left unread before returning its response.
pub async fn drain_unread(State(budget): State<DrainBudget>, request: Request, next: Next) -> Response {
    // Most requests (GETs, DELETEs) have no body: nothing to hand back.
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // A client that sent `Expect: 100-continue` waits for a go-ahead that
    // hyper gives only when the body is read: if the handler never asked
    // for it, the refusal goes out first and the body is never sent.
    let expects_continue = parts
        .headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (back, mut left) = oneshot::channel();
    let body = Body::new(Unread { inner: Some(body), finished: false, polled: false, back: Some(back) });
    let response = next.run(Request::from_parts(parts, body)).await;
    // The handler has returned, so its body is dropped and sent back here
    // if it was left unread.
    if let Ok((rest, polled)) = left.try_recv() {
        let hopeless = rest.size_hint().lower() > budget.0 as u64;
        if (!expects_continue || polled) && !hopeless {
            drain(rest, budget.0).await;
        }
    }
    response
}

async fn drain(body: Body, budget: usize) {
    let discard = async {
        let mut body = body;
        let mut left = budget;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    if len > left {
                        tracing::debug!(budget, "rejected request body over the drain budget; resetting");
                        return;
                    }
                    left -= len;
                }
                Err(_) => return,
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIME, discard).await.is_err() {
        tracing::debug!("rejected request body still arriving after {DRAIN_TIME:?}; resetting");
    }
}
