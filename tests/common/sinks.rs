//! Receivers for alert notifications: a webhook server (axum on 127.0.0.1:0) recording every
//! body, able to answer 500 a number of times first or never to answer; and an SMTP server
//! speaking the real conversation (EHLO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA, QUIT) on a free
//! port, recording every message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One webhook call: the path it came to and its JSON body.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
pub struct HookState {
    pub hooks: Mutex<Vec<Hook>>,
    /// Calls answered 500 before the first 200.
    pub fail_first: AtomicUsize,
    /// Every call, failed ones included.
    pub calls: AtomicUsize,
}

/// A webhook receiver at `url` (append any path).
pub struct Receiver {
    pub url: String,
    pub state: Arc<HookState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(HookState::default());
        async fn hook(
            State(s): State<Arc<HookState>>,
            Path(path): Path<String>,
            body: String,
        ) -> StatusCode {
            s.calls.fetch_add(1, Ordering::SeqCst);
            let failing = s
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
            s.hooks.lock().unwrap().push(Hook {
                path: format!("/{path}"),
                body,
            });
            StatusCode::OK
        }
        let app = axum::Router::new()
            .route("/{*path}", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, state }
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.state.hooks.lock().unwrap().clone()
    }

    /// Bodies received on `path`.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.hooks()
            .into_iter()
            .filter(|h| h.path == path)
            .map(|h| h.body)
            .collect()
    }
}

/// A server that accepts connections and never answers: the receiver that hangs.
pub struct Blackhole {
    pub url: String,
    pub accepted: Arc<AtomicUsize>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(sock);
            }
        });
        Blackhole { url, accepted }
    }
}

/// One e-mail as the SMTP server received it.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// The AUTH line's argument(s), when the client authenticated.
    pub auth: Option<String>,
}

impl Mail {
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string()
    }
}

/// An SMTP server on 127.0.0.1 at `port`, offering AUTH PLAIN and LOGIN, no STARTTLS.
pub struct SmtpSink {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let store = mails.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(session(sock, store.clone()));
            }
        });
        SmtpSink { port, mails }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

async fn session(sock: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) {
    let (read, mut write) = sock.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 sink.test ESMTP ready\r\n").await;
    let mut mail = Mail::default();
    let mut auth: Option<String> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            auth = Some(line[10..].trim().to_string());
            b"235 2.7.0 Authentication successful\r\n"
        } else if upper.starts_with("AUTH LOGIN") {
            // Username and password follow, one base64 line each.
            let _ = write.write_all(b"334 VXNlcm5hbWU6\r\n").await;
            let user = lines.next_line().await.ok().flatten().unwrap_or_default();
            let _ = write.write_all(b"334 UGFzc3dvcmQ6\r\n").await;
            let pass = lines.next_line().await.ok().flatten().unwrap_or_default();
            auth = Some(format!("{user} {pass}"));
            b"235 2.7.0 Authentication successful\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            mail = Mail {
                from: line[10..].trim().to_string(),
                auth: auth.clone(),
                ..Mail::default()
            };
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(line[8..].trim().to_string());
            b"250 2.1.5 Ok\r\n"
        } else if upper == "DATA" {
            let _ = write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await;
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push('\n');
            }
            mail.data = data;
            mails.lock().unwrap().push(std::mem::take(&mut mail));
            b"250 2.0.0 Ok: queued\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            b"250 Ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}
