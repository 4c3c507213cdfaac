//! A stand-in for the Hugging Face Hub on 127.0.0.1, answering the requests
//! that hf-hub's blocking client makes, the way huggingface.co answers them:
//!
//! - `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: the commit (`sha`)
//!   and file list (`siblings`, with `blobId` and `lfs.sha256` when asked) as
//!   JSON; an unknown repo or revision is a 401 / 404 with the Hub's
//!   `x-error-code`.
//! - `GET /{repo}/resolve/{rev}/{file}` with `Range: bytes=0-0` (hf-hub's
//!   metadata probe) or `bytes=N-` (the download, resumable): small files are
//!   answered directly with an `ETag`; LFS files (weights) with a `302` to a
//!   content URL, `X-Linked-Etag` (their sha256, which names the cache blob)
//!   and `X-Repo-Commit`, as the Hub redirects to its CDN.
//! - `GET /lfs/{sha256}`: the content, honouring `Range`. The redirect names
//!   the server as `localhost` rather than `127.0.0.1`, another host, as the
//!   Hub's CDN is: a client must not send its token there.
//! - A repo with a `token` answers 401 to requests without
//!   `Authorization: Bearer <token>`, as the Hub does for private repos.
//!
//! Every request is logged (`METHOD path`), so tests can assert exactly what a
//! resolution fetched. No machine here reaches the real Hub; this lets the
//! download path run end to end in tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// One repo: branches (name → commit) and, per commit, its files.
#[derive(Clone, Default)]
pub struct MockRepo {
    pub id: String,
    pub branches: BTreeMap<String, String>,
    pub commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// `(branch, commit)`: once the first repo info has been answered, the
    /// branch moves to that commit (a push during a download).
    pub move_after_info: Option<(String, String)>,
    /// A private repo: the token its requests must carry.
    pub token: Option<String>,
}

impl MockRepo {
    /// A repo whose `main` branch is `commit`, holding `files`.
    pub fn new(id: &str, commit: &str, files: Vec<(String, Vec<u8>)>) -> Self {
        let mut repo = MockRepo {
            id: id.to_string(),
            ..Default::default()
        };
        repo.add_commit("main", commit, files);
        repo
    }

    /// Adds a commit and points `branch` at it.
    pub fn add_commit(&mut self, branch: &str, commit: &str, files: Vec<(String, Vec<u8>)>) {
        self.branches.insert(branch.to_string(), commit.to_string());
        self.commits
            .insert(commit.to_string(), files.into_iter().collect());
    }

    fn commit_of(&self, revision: &str) -> Option<&str> {
        if self.commits.contains_key(revision) {
            return self
                .commits
                .get_key_value(revision)
                .map(|(k, _)| k.as_str());
        }
        self.branches.get(revision).map(String::as_str)
    }
}

/// Whether the Hub stores a file through LFS (and so redirects its downloads).
fn is_lfs(path: &str) -> bool {
    [
        ".safetensors",
        ".bin",
        ".ckpt",
        ".pt",
        ".pth",
        ".msgpack",
        ".onnx",
    ]
    .iter()
    .any(|ext| path.ends_with(ext))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The running server; dropping it stops it.
pub struct MockHub {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT` / `ResolveOptions::endpoint`.
    pub endpoint: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

struct State {
    /// The same server under another host name, for the LFS content URLs.
    cdn: String,
    repos: Mutex<Vec<MockRepo>>,
    /// sha256 → content, for the LFS content URLs.
    lfs: BTreeMap<String, Vec<u8>>,
    log: Arc<Mutex<Vec<Logged>>>,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Logged {
    /// `GET /path?query [range]`.
    pub line: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl MockHub {
    pub fn start(repos: Vec<MockRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = format!("http://{addr}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lfs = BTreeMap::new();
        for repo in &repos {
            for files in repo.commits.values() {
                for (path, bytes) in files {
                    if is_lfs(path) {
                        lfs.insert(sha256_hex(bytes), bytes.clone());
                    }
                }
            }
        }
        let state = Arc::new(State {
            cdn: format!("http://localhost:{}", addr.port()),
            repos: Mutex::new(repos),
            lfs,
            log: log.clone(),
        });
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let state = state.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        MockHub {
            endpoint,
            log,
            stop,
            addr,
        }
    }

    /// The requests so far (`GET /path`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.line.clone())
            .collect()
    }

    /// The requests so far with their `Authorization` headers.
    pub fn logged(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// The repo files downloaded so far (the `resolve` requests that were not
    /// metadata probes), as `rev/file`.
    pub fn downloads(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.line.as_str())
            .filter(|r| !r.ends_with("[bytes=0-0]"))
            .filter_map(|r| r.split_once("/resolve/").map(|(_, rest)| rest))
            .map(|rest| rest.split(" [").next().unwrap_or(rest).to_string())
            .collect()
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut r = Response::new(status)
            .header("x-error-code", code)
            .header("Content-Type", "application/json");
        r.body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap();
        r
    }
}

fn serve(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let entry = match &range {
        Some(r) => format!("{method} {target} [{r}]"),
        None => format!("{method} {target}"),
    };
    state.log.lock().unwrap().push(Logged {
        line: entry,
        authorization: authorization.clone(),
    });
    let blobs = query.split('&').any(|kv| kv == "blobs=true");
    let response = route(
        state,
        &path,
        range.as_deref(),
        blobs,
        authorization.as_deref(),
    );
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} X\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&response.body);
    let _ = out.flush();
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers `body` for a `Range` header (`bytes=A-` or `bytes=A-B`), or whole.
fn ranged(body: &[u8], range: Option<&str>) -> Response {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        let mut r = Response::new(200);
        r.body = body.to_vec();
        return r;
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let len = body.len();
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = b.parse().map(|e: usize| e + 1).unwrap_or(len).min(len);
    if start >= len || start >= end {
        return Response::new(416).header("Content-Range", format!("bytes */{len}"));
    }
    let mut r =
        Response::new(206).header("Content-Range", format!("bytes {start}-{}/{len}", end - 1));
    r.body = body[start..end].to_vec();
    r
}

/// The blob name a file gets in the cache: the ETag the Hub sends for it.
fn blob_id(path: &str, bytes: &[u8]) -> String {
    if is_lfs(path) {
        sha256_hex(bytes)
    } else {
        // The Hub uses the git blob hash; any stable digest names the blob the
        // same way for hf-hub and huggingface_hub.
        sha256_hex(bytes)[..40].to_string()
    }
}

/// A private repo's answer to a request without its token.
fn unauthorized(repo: &MockRepo, authorization: Option<&str>) -> Option<Response> {
    let token = repo.token.as_deref()?;
    if authorization == Some(&format!("Bearer {token}")) {
        return None;
    }
    Some(Response::error(401, "RepoNotFound", "Repository not found"))
}

fn route(
    state: &State,
    path: &str,
    range: Option<&str>,
    blobs: bool,
    authorization: Option<&str>,
) -> Response {
    let mut repos = state.repos.lock().unwrap();
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, revision)) = rest.split_once("/revision/") else {
            return Response::error(404, "EntryNotFound", "bad api path");
        };
        let revision = percent_decode(revision);
        let Some(repo) = repos.iter_mut().find(|r| r.id == repo_id) else {
            return Response::error(401, "RepoNotFound", "Repository not found");
        };
        if let Some(denied) = unauthorized(repo, authorization) {
            return denied;
        }
        let Some(commit) = repo.commit_of(&revision).map(str::to_string) else {
            return Response::error(404, "RevisionNotFound", "Invalid rev id");
        };
        let siblings: Vec<_> = repo.commits[&commit]
            .iter()
            .map(|(f, bytes)| {
                let mut s = serde_json::json!({ "rfilename": f });
                if blobs {
                    s["blobId"] = serde_json::json!(blob_id(f, bytes)[..40]);
                    if is_lfs(f) {
                        s["lfs"] = serde_json::json!({
                            "sha256": sha256_hex(bytes),
                            "size": bytes.len(),
                            "pointerSize": 134,
                        });
                    }
                }
                s
            })
            .collect();
        let mut r = Response::new(200).header("Content-Type", "application/json");
        r.body = serde_json::to_vec(&serde_json::json!({
            "_id": "0",
            "id": repo.id,
            "modelId": repo.id,
            "sha": commit,
            "siblings": siblings,
        }))
        .unwrap();
        if let Some((branch, to)) = repo.move_after_info.take() {
            repo.branches.insert(branch, to);
        }
        return r;
    }
    if let Some(sha) = path.strip_prefix("/lfs/") {
        return match state.lfs.get(sha) {
            Some(bytes) => ranged(bytes, range),
            None => Response::error(404, "EntryNotFound", "no such object"),
        };
    }
    let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return Response::error(404, "EntryNotFound", "unknown path");
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return Response::error(404, "EntryNotFound", "no file");
    };
    let (revision, file) = (percent_decode(revision), percent_decode(file));
    let Some(repo) = repos.iter().find(|r| r.id == repo_id) else {
        return Response::error(401, "RepoNotFound", "Repository not found");
    };
    if let Some(denied) = unauthorized(repo, authorization) {
        return denied;
    }
    let Some(commit) = repo.commit_of(&revision) else {
        return Response::error(404, "RevisionNotFound", "Invalid rev id");
    };
    let Some(bytes) = repo.commits[commit].get(&file) else {
        return Response::error(404, "EntryNotFound", "Entry not found");
    };
    if is_lfs(&file) {
        let sha = sha256_hex(bytes);
        return Response::new(302)
            .header("Location", format!("{}/lfs/{sha}", state.cdn))
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len().to_string())
            .header("X-Repo-Commit", commit);
    }
    let etag = blob_id(&file, bytes);
    let mut r = ranged(bytes, range);
    r.headers.push(("ETag".into(), format!("\"{etag}\"")));
    r.headers.push(("X-Repo-Commit".into(), commit.to_string()));
    r
}
