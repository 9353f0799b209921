//! A stand-in Kubernetes API server for the agent's Kubernetes pod source:
//! it serves `GET /api/v1/pods` the way the real one does on the wire (a
//! `PodList` with `metadata.resourceVersion`; with `watch=1`, a chunked stream
//! of newline-separated `{"type":"ADDED|MODIFIED|DELETED|ERROR","object":..}`
//! events after the asked resourceVersion), from pod objects the test puts,
//! changes and deletes. It can also expire every resourceVersion seen so far
//! (watches then get the `410 Gone` ERROR event and a relist is needed) and
//! drop open watch streams without a word. Every request's path and query is
//! recorded for the test to check (the field selector, the resourceVersion a
//! watch resumed from).
//!
//! The pod objects come from recorded API responses
//! (`netns-agent/tests/fixtures/kube/pod-istio.json`): [`pod`] fills in name, UID and
//! annotations.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A recorded pod of an Istio-injected deployment, as the API server sent it.
pub const RECORDED_POD: &str = include_str!("../fixtures/kube/pod-istio.json");

/// The recorded pod with `name`, `uid`, `node` and `annotations` (the
/// recorded ones replaced), in the default namespace.
#[must_use]
pub fn pod(name: &str, uid: &str, node: &str, annotations: &[(&str, &str)]) -> Value {
    let mut pod: Value = serde_json::from_str(RECORDED_POD).expect("the recorded pod parses");
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["uid"] = json!(uid);
    pod["spec"]["nodeName"] = json!(node);
    pod["metadata"]["annotations"] = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    pod
}

#[derive(Debug, Default)]
struct Inner {
    /// Current pods by UID.
    pods: BTreeMap<String, Value>,
    /// Every change: (resourceVersion, type, object).
    history: Vec<(u64, &'static str, Value)>,
    version: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    expired_below: u64,
    watches: Vec<mpsc::UnboundedSender<String>>,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on a free loopback port.
    #[must_use]
    pub fn start() -> ApiServer {
        let shared = Shared::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/api/v1/pods", axum::routing::get(pods))
                    .with_state(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ApiServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig naming this server, written to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: replay\n  cluster:\n    server: {}\n\
             contexts:\n- name: replay\n  context:\n    cluster: replay\n    user: replay\n\
             current-context: replay\nusers:\n- name: replay\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, config).expect("write the kubeconfig");
    }

    /// Adds the pod, or changes it (by UID): ADDED or MODIFIED to watches.
    pub fn put(&self, mut pod: Value) {
        let mut inner = lock(&self.shared);
        let uid = pod["metadata"]["uid"]
            .as_str()
            .expect("a pod UID")
            .to_owned();
        inner.version += 1;
        pod["metadata"]["resourceVersion"] = json!(inner.version.to_string());
        let kind = if inner.pods.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.pods.insert(uid, pod.clone());
        publish(&mut inner, kind, pod);
    }

    /// Deletes the pod with `uid`: DELETED to watches.
    pub fn delete(&self, uid: &str) {
        let mut inner = lock(&self.shared);
        if let Some(mut pod) = inner.pods.remove(uid) {
            inner.version += 1;
            pod["metadata"]["resourceVersion"] = json!(inner.version.to_string());
            publish(&mut inner, "DELETED", pod);
        }
    }

    /// Changes the pods with no event at all: what a watcher misses while
    /// its resourceVersion expires (apply [`ApiServer::expire`] next).
    pub fn put_silently(&self, pods: Vec<Value>) {
        let mut inner = lock(&self.shared);
        inner.version += 1;
        inner.pods = pods
            .into_iter()
            .map(|mut p| {
                p["metadata"]["resourceVersion"] = json!(inner.version.to_string());
                (p["metadata"]["uid"].as_str().unwrap().to_owned(), p)
            })
            .collect();
    }

    /// Every resourceVersion so far is too old: open watches get a 410 Gone
    /// ERROR event and end; a watch from an old version gets the same.
    pub fn expire(&self) {
        let mut inner = lock(&self.shared);
        inner.version += 1;
        inner.expired_below = inner.version;
        inner.history.clear();
        let gone = gone_event(inner.version);
        for watch in inner.watches.drain(..) {
            let _ = watch.send(gone.clone());
        }
    }

    /// Ends every open watch stream without a word (a dropped connection).
    pub fn drop_watches(&self) {
        lock(&self.shared).watches.clear();
    }

    /// The requests so far (path and query).
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared).requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        lock(&self.shared).watches.clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn publish(inner: &mut Inner, kind: &'static str, object: Value) {
    let version = inner.version;
    let line = event_line(kind, &object);
    inner.history.push((version, kind, object));
    inner.watches.retain(|w| w.send(line.clone()).is_ok());
}

fn event_line(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": object }))
}

fn gone_event(version: u64) -> String {
    event_line(
        "ERROR",
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: 1 ({version})"),
            "reason": "Expired",
            "code": 410
        }),
    )
}

fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn pods(State(shared): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let mut inner = lock(&shared);
    inner.requests.push(format!("/api/v1/pods?{query}"));
    let watch = matches!(query_value(&query, "watch"), Some("true" | "1"));
    if !watch {
        let list = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": { "resourceVersion": inner.version.to_string() },
            "items": inner.pods.values().cloned().collect::<Vec<_>>(),
        });
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            list.to_string(),
        )
            .into_response();
    }
    let from: u64 = query_value(&query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < inner.expired_below {
        let _ = tx.send(gone_event(inner.version));
    } else {
        for (version, kind, object) in &inner.history {
            if *version > from {
                let _ = tx.send(event_line(kind, object));
            }
        }
        inner.watches.push(tx);
    }
    drop(inner);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
