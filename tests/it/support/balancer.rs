//! A small TCP load balancer, as a Kubernetes Service with readiness probes behaves: it
//! sends each new client connection to the next backend whose `/readyz` answered 200 at its
//! last probe (every 100 ms) and relays bytes both ways. Existing connections stay where
//! they are, however the backend's readiness changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// One backend: where clients go, and where it is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backend {
    proxy: SocketAddr,
    admin: SocketAddr,
    ready: bool,
}

pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<Backend>>>,
}

impl Balancer {
    pub async fn start() -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends: Arc<Mutex<Vec<Backend>>> = Arc::default();
        tokio::spawn(probe(backends.clone()));
        let next = Arc::new(AtomicUsize::new(0));
        let routing = backends.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (backends, next) = (routing.clone(), next.clone());
                tokio::spawn(async move {
                    if let Some(mut upstream) = connect_ready(&backends, &next).await {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Balancer { addr, backends }
    }

    /// Adds a backend; it takes connections once its readiness probe passes.
    pub fn add(&self, proxy: SocketAddr, admin: SocketAddr) {
        self.backends.lock().unwrap().push(Backend {
            proxy,
            admin,
            ready: false,
        });
    }

    /// Forgets a backend (its pod is gone).
    pub fn remove(&self, proxy: SocketAddr) {
        self.backends.lock().unwrap().retain(|b| b.proxy != proxy);
    }

    /// Whether the backend's last probe passed.
    pub fn is_ready(&self, proxy: SocketAddr) -> bool {
        self.backends
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.proxy == proxy && b.ready)
    }
}

/// The next ready backend, round robin; waits (bounded) while none is ready. A backend that
/// refuses the connection is not replaced by another: as with kube-proxy's rules, the
/// client's connection fails (the probe has not caught up yet).
async fn connect_ready(backends: &Mutex<Vec<Backend>>, next: &AtomicUsize) -> Option<TcpStream> {
    for _ in 0..100 {
        let ready: Vec<SocketAddr> = backends
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.ready)
            .map(|b| b.proxy)
            .collect();
        if !ready.is_empty() {
            let pick = ready[next.fetch_add(1, Ordering::Relaxed) % ready.len()];
            return TcpStream::connect(pick).await.ok();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Probes every backend's `/readyz` every 100 ms.
async fn probe(backends: Arc<Mutex<Vec<Backend>>>) {
    loop {
        let list: Vec<Backend> = backends.lock().unwrap().clone();
        for backend in list {
            let ready = readyz(backend.admin).await;
            if let Some(b) = backends
                .lock()
                .unwrap()
                .iter_mut()
                .find(|b| b.proxy == backend.proxy)
            {
                b.ready = ready;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
