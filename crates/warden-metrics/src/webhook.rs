//! Event delivery to a webhook: batches of events POSTed as a JSON array to an `http://`
//! URL, retried with exponential backoff, from a bounded queue that drops its oldest
//! events when full (counted), so a dead receiver never grows memory or slows requests.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use prometheus::IntCounter;

/// Most events in one POST.
const BATCH: usize = 500;

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// Most events waiting.
    pub queue: usize,
    /// Time allowed for one delivery.
    pub timeout: Duration,
    /// Attempts per batch.
    pub retries: u32,
}

/// Counters of the webhook.
#[derive(Clone)]
pub struct WebhookCounters {
    /// Batches delivered.
    pub delivered: IntCounter,
    /// Delivery attempts that failed (each retry counts).
    pub failed: IntCounter,
    /// Events dropped: queue full, or every attempt failed.
    pub dropped: IntCounter,
}

pub(crate) struct Queue {
    items: Mutex<VecDeque<String>>,
    ready: Condvar,
    cap: usize,
    dropped: IntCounter,
}

impl Queue {
    pub(crate) fn push(&self, line: String) {
        let mut q = match self.items.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        if q.len() >= self.cap {
            q.pop_front();
            self.dropped.inc();
        }
        q.push_back(line);
        self.ready.notify_one();
    }
}

fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Some((host, path.to_owned()))
}

fn post(host: &str, path: &str, body: &[u8], timeout: Duration) -> Result<(), String> {
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: warden\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut status = [0u8; 12];
    s.read_exact(&mut status).map_err(|e| e.to_string())?;
    // "HTTP/1.1 200"
    match status.get(9) {
        Some(b'2') => Ok(()),
        _ => Err(format!("answered {:?}", String::from_utf8_lossy(&status))),
    }
}

/// Starts the delivery thread; returns the queue events are pushed to.
pub(crate) fn start(cfg: WebhookConfig, counters: WebhookCounters) -> std::io::Result<Arc<Queue>> {
    let (host, path) = split_url(&cfg.url).ok_or_else(|| {
        std::io::Error::other(format!("webhook {:?} is not an http:// URL", cfg.url))
    })?;
    let queue = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
        cap: cfg.queue.max(1),
        dropped: counters.dropped.clone(),
    });
    let q = Arc::clone(&queue);
    std::thread::Builder::new()
        .name("warden-webhook".into())
        .spawn(move || loop {
            let batch: Vec<String> = {
                let mut items = match q.items.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                while items.is_empty() {
                    items = match q.ready.wait(items) {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                }
                let n = items.len().min(BATCH);
                items.drain(..n).collect()
            };
            let mut body = Vec::with_capacity(batch.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, line) in batch.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(line.as_bytes());
            }
            body.push(b']');
            let mut delay = Duration::from_millis(100);
            let mut delivered = false;
            for attempt in 0..=cfg.retries {
                match post(&host, &path, &body, cfg.timeout) {
                    Ok(()) => {
                        counters.delivered.inc();
                        delivered = true;
                        break;
                    }
                    Err(e) => {
                        counters.failed.inc();
                        log::warn!("event webhook: attempt {} failed: {e}", attempt + 1);
                        if attempt < cfg.retries {
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
            if !delivered {
                counters.dropped.inc_by(batch.len() as u64);
            }
        })?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/hook"),
            Some(("127.0.0.1:9000".into(), "/hook".into()))
        );
        assert_eq!(
            split_url("http://siem"),
            Some(("siem:80".into(), "/".into()))
        );
        assert_eq!(split_url("https://x"), None);
    }
}
