//! Limits on how a request is sent, checked before anything reads its token: header
//! size and count (431), framing that two HTTP parsers could read differently (400,
//! never forwarded), and the body deadline (408).
//!
//! pingora already refuses, with 400, what its parser cannot read: headers over 1 MiB or
//! 256 fields, obsolete line folding, differing duplicate `Content-Length` values, a
//! `Transfer-Encoding` in HTTP/1.0 or whose last coding is not `chunked`. When a request
//! has both `Transfer-Encoding` and `Content-Length` it drops the latter and closes the
//! connection after the response (RFC 9112 §6.1); warden refuses such requests outright,
//! since a front end that honoured the `Content-Length` would disagree with everything
//! behind warden. Warden reads the raw header bytes for that: pingora's parsed header no
//! longer shows the dropped field.

use std::time::{Duration, Instant};

use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use warden_config::model::Limits;
use warden_metrics::HttpRefusal;

/// Checks a request's header against the limits. `None`: within them.
pub(crate) fn check_header(session: &Session, limits: &Limits) -> Option<HttpRefusal> {
    let req = session.req_header();
    if req.headers.len() > limits.max_headers {
        return Some(HttpRefusal::TooManyHeaders);
    }
    let raw = match session.as_downstream() {
        ServerSession::H1(s) => Some(s.get_headers_raw_bytes()),
        _ => None,
    };
    let size = raw.as_ref().map_or_else(
        || {
            // HTTP/2 (no raw bytes): the decoded fields, as nginx counts them.
            req.uri.to_string().len()
                + req
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>()
        },
        |r| r.len(),
    );
    if size > limits.max_header_bytes {
        return Some(HttpRefusal::HeaderTooLarge);
    }
    // Only requests that declare a body are scanned (pingora keeps one of the two framing
    // fields in its parsed header whenever the raw one had any): GETs pay nothing.
    let declares_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req.headers.contains_key(http::header::CONTENT_LENGTH);
    if let Some(raw) = raw.filter(|_| declares_body) {
        if ambiguous_framing(&raw) {
            return Some(HttpRefusal::AmbiguousFraming);
        }
    }
    None
}

/// Whether the framing fields of a raw HTTP/1 header could be read two ways: more than
/// one `Content-Length` or `Transfer-Encoding` field, both kinds at once, or a
/// `Transfer-Encoding` other than exactly `chunked`, or a `Content-Length` that is not
/// one plain number.
#[must_use]
pub fn ambiguous_framing(raw: &[u8]) -> bool {
    let mut content_length = 0;
    let mut transfer_encoding = 0;
    let mut te_not_chunked = false;
    let mut cl_not_digits = false;
    // The request line is first; header fields follow, one per line (pingora refuses
    // obsolete folding before warden sees the request).
    for line in raw.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length += 1;
            // One plain decimal number: no lists ("5, 5"), signs or spaces inside.
            cl_not_digits |= value.is_empty() || !value.iter().all(u8::is_ascii_digit);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding += 1;
            te_not_chunked |= !value.eq_ignore_ascii_case(b"chunked");
        }
    }
    content_length > 1
        || transfer_encoding > 1
        || (content_length > 0 && transfer_encoding > 0)
        || te_not_chunked
        || cl_not_digits
}

/// The body clock of one request: started when its header is accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyClock {
    deadline: Instant,
}

impl BodyClock {
    /// Starts the clock and bounds each body read by the time left.
    pub(crate) fn start(session: &mut Session, limits: &Limits) -> Self {
        session
            .as_downstream_mut()
            .set_read_timeout(Some(limits.body_timeout));
        Self {
            deadline: Instant::now() + limits.body_timeout,
        }
    }

    /// After a chunk of body: `Err` once the deadline has passed; otherwise the next read
    /// waits at most for the time left.
    pub(crate) fn check(&self, session: &mut Session) -> Result<(), ()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        session
            .as_downstream_mut()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ambiguous_framing;

    #[test]
    fn framing_is_ambiguous_unless_one_length_or_exactly_chunked() {
        let ok: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding:\tCHUNKED \r\n\r\n",
            b"POST /content-length:1 HTTP/1.1\r\nX-Content-Length: 1\r\nContent-Length: 1\r\n\r\n",
        ];
        for r in ok {
            assert!(!ambiguous_framing(r), "{}", String::from_utf8_lossy(r));
        }
        let bad: [&[u8]; 8] = [
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 3\n\n",
        ];
        for r in bad {
            assert!(ambiguous_framing(r), "{}", String::from_utf8_lossy(r));
        }
    }
}
