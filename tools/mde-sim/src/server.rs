//! The HTTP side: one listener serving the login, API, blob and `/sim` control paths.

// Handlers pass ready-made error responses up; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::action::{
    Action, CommandSpec, CommandStatus, CommandType, ResultBody, Status, Submission,
};
use crate::clock::{SimClock, format_se, format_ts};
use crate::config::{Faults, SimConfig, valid_library_name};
use crate::content::{FileContent, GzipPackage};
use crate::limits::{SeededRng, SlidingWindow};

const BLOB_CONTAINER: &str = "investigation-actions-data";
const CHUNK: usize = 256 * 1024;

/// Calls and outcomes, for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Stats {
    /// Calls by endpoint, then by HTTP status.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// 429 responses sent, for any reason.
    pub throttled: u64,
    /// 429s sent because a documented limit was reached (not injected).
    pub throttled_by_limit: u64,
    /// Faults injected (429, 500, 503, early 404s, cut downloads, early link expiry).
    pub injected_faults: u64,
    /// Most submission calls (any outcome) in one sliding minute of simulated time.
    pub max_submissions_per_minute: u32,
    /// Most sessions (Pending or InProgress) at one time.
    pub max_concurrent_sessions: u32,
    pub actions_created: u64,
    pub links_issued: u64,
    pub downloads_cut: u64,
    pub blob_bytes_sent: u64,
    /// Blob requests that carried an Authorization header (a client leaking its bearer token).
    pub blob_requests_with_authorization: u64,
    /// Where each ranged blob request started, in order.
    pub blob_range_starts: Vec<u64>,
}

struct Link {
    action_id: String,
    index: usize,
    /// Set when the link was chosen to stop working before its `se`.
    dies_at: Option<OffsetDateTime>,
}

#[derive(Clone)]
struct LibraryFile {
    sha256: String,
    description: String,
    parameters_description: String,
    has_parameters: bool,
    created: OffsetDateTime,
    updated: OffsetDateTime,
    created_by: String,
}

struct State {
    clients: Vec<crate::config::Client>,
    /// Every token ever issued (tests scan logs for them).
    issued: Vec<String>,
    actions: Vec<Action>,
    by_id: HashMap<String, usize>,
    tokens: HashMap<String, (OffsetDateTime, usize)>,
    links: HashMap<String, Link>,
    submit_window: SlidingWindow,
    submit_calls: SlidingWindow,
    get_windows: HashMap<&'static str, (SlidingWindow, SlidingWindow)>,
    library: BTreeMap<String, (String, LibraryFile)>,
    crc_cache: HashMap<FileContent, u32>,
    rng: SeededRng,
    faults: Faults,
    stats: Stats,
}

impl State {
    fn new(config: &SimConfig, now: OffsetDateTime) -> Self {
        let mut library = BTreeMap::new();
        let seeded = config
            .scripts
            .iter()
            .map(|s| (s.name.clone(), s.description.clone(), s.has_parameters))
            .chain(
                config
                    .library_files
                    .iter()
                    .map(|n| (n.clone(), String::new(), false)),
            );
        for (name, description, has_parameters) in seeded {
            library.insert(
                name.to_ascii_lowercase(),
                (
                    name.clone(),
                    LibraryFile {
                        sha256: hex::encode(Sha256::digest(name.as_bytes())),
                        description,
                        parameters_description: String::new(),
                        has_parameters,
                        created: now,
                        updated: now,
                        created_by: "mde-sim".into(),
                    },
                ),
            );
        }
        let l = &config.limits;
        Self {
            clients: config.clients.clone(),
            issued: Vec::new(),
            actions: Vec::new(),
            by_id: HashMap::new(),
            tokens: HashMap::new(),
            links: HashMap::new(),
            submit_window: SlidingWindow::new(Duration::minutes(1), l.submissions_per_minute),
            submit_calls: SlidingWindow::new(Duration::minutes(1), u32::MAX),
            get_windows: HashMap::new(),
            library,
            crc_cache: HashMap::new(),
            rng: SeededRng::new(config.faults.seed),
            faults: config.faults.clone(),
            stats: Stats::default(),
        }
    }

    fn running_sessions(&self, now: OffsetDateTime) -> usize {
        self.actions
            .iter()
            .filter(|a| !a.status(now).is_final())
            .count()
    }
}

pub(crate) struct Sim {
    config: SimConfig,
    clock: SimClock,
    state: Mutex<State>,
    key: [u8; 32],
    api_base: String,
    blob_base: String,
}

/// A running simulator. Dropping it stops the server.
pub struct SimServer {
    pub addr: SocketAddr,
    pub api_base: String,
    pub login_base: String,
    pub blob_base: String,
    sim: Arc<Sim>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds `bind` (port 0 for an ephemeral port) and serves until dropped or shut down.
    pub async fn start(
        config: SimConfig,
        bind: SocketAddr,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let start = match &config.sim.start_time {
            Some(s) => OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("sim.start_time {s:?} is not RFC 3339: {e}"))?,
            None => OffsetDateTime::now_utc(),
        };
        let clock = SimClock::new(start, config.sim.time_scale);
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let sim = Arc::new(Sim {
            state: Mutex::new(State::new(&config, start)),
            config,
            clock,
            key,
            api_base: base.clone(),
            blob_base: format!("{base}/blob"),
        });
        let app = Router::new()
            .fallback(dispatch)
            .layer(DefaultBodyLimit::disable())
            .with_state(sim.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            login_base: format!("{base}/login"),
            blob_base: sim.blob_base.clone(),
            api_base: base,
            sim,
            shutdown: Some(tx),
            join: Some(join),
        })
    }

    pub fn stats(&self) -> Stats {
        self.sim.lock().stats.clone()
    }

    pub fn now(&self) -> OffsetDateTime {
        self.sim.clock.now()
    }

    pub fn advance(&self, by: Duration) {
        self.sim.clock.advance(by);
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.sim.lock();
        st.rng = SeededRng::new(faults.seed);
        st.faults = faults;
    }

    /// Every action created, as the API shows it now.
    pub fn actions(&self) -> Vec<Value> {
        let now = self.sim.clock.now();
        self.sim
            .lock()
            .actions
            .iter()
            .map(|a| a.entity(now))
            .collect()
    }

    pub fn reset(&self) {
        self.sim.reset();
    }

    /// Every access token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.sim.lock().issued.clone()
    }

    /// Rotates a client's secret: the old one stops working at once.
    pub fn set_client_secret(&self, client_id: &str, secret: &str) {
        let mut st = self.sim.lock();
        for c in st.clients.iter_mut().filter(|c| c.client_id == client_id) {
            c.client_secret = secret.to_string();
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Sim {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reset(&self) {
        let mut st = self.lock();
        let tokens = std::mem::take(&mut st.tokens);
        let clients = std::mem::take(&mut st.clients);
        let issued = std::mem::take(&mut st.issued);
        let faults = st.faults.clone();
        *st = State::new(&self.config, self.clock.now());
        st.tokens = tokens;
        st.clients = clients;
        st.issued = issued;
        st.rng = SeededRng::new(faults.seed);
        st.faults = faults;
    }

    fn sign(&self, path: &str, se: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{path}\n{se}\nr\n2019-07-07\nb").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    fn retry_after(&self, sim_wait: Duration, with_header: bool) -> Response {
        let mut resp = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests, retry later",
        );
        if with_header {
            let secs = self.clock.real_secs_for(sim_wait);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    /// Random 429/500/503 for an endpoint, as configured.
    fn inject(&self, endpoint: &str) -> Option<Response> {
        let mut st = self.lock();
        let f = st.faults.endpoints.get(endpoint).cloned()?;
        if st.rng.chance(f.p429) {
            st.stats.injected_faults += 1;
            let with_header =
                self.config.limits.retry_after_header && !st.rng.chance(f.p429_without_retry_after);
            drop(st);
            return Some(self.retry_after(Duration::seconds(2), with_header));
        }
        if st.rng.chance(f.p500) {
            st.stats.injected_faults += 1;
            return Some(api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Internal server error (injected)",
            ));
        }
        if st.rng.chance(f.p503) {
            st.stats.injected_faults += 1;
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service unavailable (injected)",
                )
                    .into_response(),
            );
        }
        None
    }

    /// The client behind the bearer token, or a 401.
    fn authorize(&self, headers: &HeaderMap) -> Result<usize, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                api_error(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Authorization header with a Bearer token is required",
                )
            })?;
        let now = self.clock.now();
        match self.lock().tokens.get(token) {
            Some((exp, client)) if *exp > now => Ok(*client),
            Some(_) => Err(api_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The access token has expired",
            )),
            None => Err(api_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The access token is not valid",
            )),
        }
    }

    /// The per-API GET limits (100 per minute, 1500 per hour) for an endpoint group.
    fn get_budget(&self, group: &'static str) -> Result<(), Response> {
        let now = self.clock.now();
        let l = &self.config.limits;
        let mut st = self.lock();
        let (minute, hour) = st.get_windows.entry(group).or_insert_with(|| {
            (
                SlidingWindow::new(Duration::minutes(1), l.gets_per_minute),
                SlidingWindow::new(Duration::hours(1), l.gets_per_hour),
            )
        });
        let wait = match (minute.wait(now), hour.wait(now)) {
            (None, None) => {
                minute.record(now);
                hour.record(now);
                return Ok(());
            }
            (a, b) => a.max(b).unwrap_or(Duration::SECOND),
        };
        st.stats.throttled_by_limit += 1;
        drop(st);
        Err(self.retry_after(wait, l.retry_after_header))
    }
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "target": uuid::Uuid::new_v4().to_string()}});
    (status, axum::Json(body)).into_response()
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{}\nTime:{}</Message></Error>",
        uuid::Uuid::new_v4(),
        format_ts(OffsetDateTime::now_utc())
    );
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp.headers_mut().insert(
        "x-ms-error-code",
        HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("Error")),
    );
    resp
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

async fn dispatch(AxState(sim): AxState<Arc<Sim>>, req: Request) -> Response {
    let method = req.method().clone();
    let segs: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let (endpoint, resp) = match (&method, l.as_slice()) {
        (&Method::POST, ["login", _, "oauth2", "v2.0", "token"]) => (
            "token",
            guarded(&sim, "token", None, req, |s, r| Box::pin(token(s, r))).await,
        ),
        (&Method::POST, ["api", "machines", _, "runliveresponse"]) => {
            let id = segs[2].clone();
            (
                "submit",
                guarded(&sim, "submit", None, req, move |s, r| {
                    Box::pin(submit(s, r, id))
                })
                .await,
            )
        }
        (&Method::GET, ["api", "machineactions"]) => (
            "list_actions",
            guarded(&sim, "list_actions", Some("status"), req, |s, r| {
                Box::pin(list_actions(s, r))
            })
            .await,
        ),
        (&Method::GET, ["api", "machineactions", _]) => {
            let id = segs[2].clone();
            (
                "get_action",
                guarded(&sim, "get_action", Some("status"), req, move |s, _| {
                    Box::pin(get_action(s, id))
                })
                .await,
            )
        }
        (&Method::GET, ["api", "machineactions", _, link])
            if link.starts_with("getliveresponseresultdownloadlink(") =>
        {
            let id = segs[2].clone();
            let arg = segs[3].clone();
            (
                "link",
                guarded(&sim, "link", Some("link"), req, move |s, _| {
                    Box::pin(result_link(s, id, arg))
                })
                .await,
            )
        }
        (&Method::POST, ["api", "machineactions", _, "cancel"]) => {
            let id = segs[2].clone();
            (
                "cancel",
                guarded(&sim, "cancel", Some("cancel"), req, move |s, r| {
                    Box::pin(cancel(s, r, id))
                })
                .await,
            )
        }
        (&Method::GET, ["api", "libraryfiles"]) => (
            "library_list",
            guarded(&sim, "library", None, req, |s, _| Box::pin(library_list(s))).await,
        ),
        (&Method::POST, ["api", "libraryfiles"]) => (
            "library_upload",
            guarded(&sim, "library", None, req, |s, r| {
                Box::pin(library_upload(s, r))
            })
            .await,
        ),
        (&Method::DELETE, ["api", "libraryfiles", _]) => {
            let name = segs[2].clone();
            (
                "library_delete",
                guarded(&sim, "library", None, req, move |s, _| {
                    Box::pin(library_delete(s, name))
                })
                .await,
            )
        }
        (&Method::GET | &Method::HEAD, ["blob", ..]) => {
            let r = match sim.inject("blob") {
                Some(r) => r,
                None => blob(&sim, req).await,
            };
            ("blob", r)
        }
        (_, ["sim", ..]) => ("sim", control(&sim, req, &l[1..]).await),
        _ => (
            "unknown",
            api_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("No route for {method} {}", segs.join("/")),
            ),
        ),
    };
    let status = resp.status();
    let mut st = sim.lock();
    *st.stats
        .calls
        .entry(endpoint.to_string())
        .or_default()
        .entry(status.as_u16().to_string())
        .or_default() += 1;
    if status == StatusCode::TOO_MANY_REQUESTS {
        st.stats.throttled += 1;
    }
    resp
}

/// Faults, then the bearer token (all but the token endpoint), then the GET budget, then the handler.
async fn guarded<F>(
    sim: &Arc<Sim>,
    fault_key: &str,
    get_group: Option<&'static str>,
    req: Request,
    handler: F,
) -> Response
where
    F: FnOnce(
            Arc<Sim>,
            Request,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>
        + Send
        + 'static,
{
    if let Some(r) = sim.inject(fault_key) {
        return r;
    }
    let mut req = req;
    if fault_key != "token" {
        match sim.authorize(req.headers()) {
            // Handlers read the caller from here rather than checking the token a second time.
            Ok(client) => {
                req.extensions_mut().insert(ClientIndex(client));
            }
            Err(r) => return r,
        }
    }
    if let Some(group) = get_group
        && let Err(r) = sim.get_budget(group)
    {
        return r;
    }
    handler(sim.clone(), req).await
}

async fn token(sim: Arc<Sim>, req: Request) -> Response {
    let tenant = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let form = match axum::Form::<HashMap<String, String>>::from_request(req, &()).await {
        Ok(axum::Form(f)) => f,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("AADSTS900144: the request body must be form-encoded: {e}"),
            );
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: only client_credentials is supported",
        );
    }
    if !form.get("scope").is_some_and(|s| s.ends_with("/.default")) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: the scope must end with /.default",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let secret = form.get("client_secret").cloned().unwrap_or_default();
    let clients = sim.lock().clients.clone();
    let Some(idx) = clients
        .iter()
        .position(|c| c.tenant_id.eq_ignore_ascii_case(&tenant) && c.client_id == client_id)
    else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'"
            ),
        );
    };
    if clients[idx].client_secret != secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided",
        );
    }
    let lifetime = sim.config.sim.token_lifetime_secs;
    let token = format!("simtok-{}", uuid::Uuid::new_v4().simple());
    // Any lifetime can be configured (a client must survive an absurd expires_in); the token's own
    // expiry stops at ten years.
    let exp = sim.clock.now() + Duration::seconds(lifetime.min(10 * 365 * 86_400) as i64);
    {
        let mut st = sim.lock();
        st.tokens.insert(token.clone(), (exp, idx));
        st.issued.push(token.clone());
    }
    // expires_in is in real seconds, like Retry-After, so that a client's cache follows the scaled clock.
    let expires_in = (lifetime as f64 / sim.clock.scale()).floor() as u64;
    json_response(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": 0, "access_token": token}),
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description, "error_codes": [], "timestamp": format_ts(OffsetDateTime::now_utc()), "trace_id": uuid::Uuid::new_v4().to_string()}),
    )
}

/// The API client `guarded` authorised for this request.
#[derive(Clone, Copy)]
struct ClientIndex(usize);

fn client_of(req: &Request) -> usize {
    req.extensions().get::<ClientIndex>().map_or(0, |c| c.0)
}

fn parse_commands(body: &Value) -> Result<(Vec<CommandSpec>, String), Response> {
    let bad = |code: &str, msg: String| api_error(StatusCode::BAD_REQUEST, code, &msg);
    let obj = body.as_object().ok_or_else(|| {
        bad(
            "InvalidRequestBody",
            "Request body must be a JSON object".into(),
        )
    })?;
    for key in obj.keys() {
        if key != "Commands" && key != "Comment" {
            return Err(bad(
                "InvalidRequestBody",
                format!("Unknown property '{key}' (property names are case-sensitive)"),
            ));
        }
    }
    let comment = match obj.get("Comment") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("InvalidRequestBody", "Comment must be a string".into())),
        None => {
            return Err(bad(
                "MissingRequiredParameter",
                "Comment is required".into(),
            ));
        }
    };
    let commands = match obj.get("Commands") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(bad(
                "InvalidRequestBody",
                "Commands must not be empty".into(),
            ));
        }
        Some(_) => {
            return Err(bad(
                "InvalidRequestBody",
                "Commands must be an array".into(),
            ));
        }
        None => {
            return Err(bad(
                "MissingRequiredParameter",
                "Commands is required".into(),
            ));
        }
    };
    let mut specs = Vec::with_capacity(commands.len());
    for (i, c) in commands.iter().enumerate() {
        let c = c.as_object().ok_or_else(|| {
            bad(
                "InvalidRequestBody",
                format!("Commands[{i}] must be an object"),
            )
        })?;
        let kind = match c.get("type") {
            Some(Value::String(t)) => CommandType::parse(t).ok_or_else(|| {
                bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}].type '{t}' is not one of PutFile, RunScript, GetFile"),
                )
            })?,
            Some(_) => {
                return Err(bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}].type must be a string"),
                ));
            }
            None => {
                return Err(bad(
                    "MissingRequiredParameter",
                    format!("Commands[{i}].type is required"),
                ));
            }
        };
        let params = match c.get("params") {
            Some(Value::Array(p)) => p,
            Some(_) => {
                return Err(bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}].params must be an array"),
                ));
            }
            None => {
                return Err(bad(
                    "MissingRequiredParameter",
                    format!("Commands[{i}].params is required"),
                ));
            }
        };
        let mut kv = Vec::with_capacity(params.len());
        for p in params {
            let (Some(Value::String(k)), Some(Value::String(v))) = (p.get("key"), p.get("value"))
            else {
                return Err(bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}].params entries need string 'key' and 'value'"),
                ));
            };
            if !kind.allowed_keys().contains(&k.as_str()) {
                return Err(bad(
                    "InvalidRequestBody",
                    format!("Commands[{i}]: {} takes no parameter '{k}'", kind.as_str()),
                ));
            }
            kv.push((k.clone(), v.clone()));
        }
        if !kv
            .iter()
            .any(|(k, v)| k == kind.required_key() && !v.is_empty())
        {
            return Err(bad(
                "MissingRequiredParameter",
                format!(
                    "Commands[{i}]: {} requires parameter '{}'",
                    kind.as_str(),
                    kind.required_key()
                ),
            ));
        }
        specs.push(CommandSpec { kind, params: kv });
    }
    Ok((specs, comment))
}

async fn submit(sim: Arc<Sim>, req: Request, machine_id: String) -> Response {
    let now = sim.clock.now();
    let client = client_of(&req);
    {
        let mut st = sim.lock();
        st.submit_calls.record(now);
        let seen = st.submit_calls.count(now) as u32;
        st.stats.max_submissions_per_minute = st.stats.max_submissions_per_minute.max(seen);
        if let Some(wait) = st.submit_window.wait(now) {
            st.stats.throttled_by_limit += 1;
            drop(st);
            return sim.retry_after(wait, sim.config.limits.retry_after_header);
        }
        st.submit_window.record(now);
    }
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestBody",
                "Request body too large or unreadable",
            );
        }
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestBody",
                &format!("Request body is not valid JSON: {e}"),
            );
        }
    };
    let (commands, comment) = match parse_commands(&body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if machine_id.len() != 40 || !machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return api_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Machine {machine_id} was not found"),
        );
    }
    let Some(device) = sim.config.device(&machine_id) else {
        return api_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Machine {machine_id} was not found"),
        );
    };
    let mut st = sim.lock();
    let busy = st
        .actions
        .iter()
        .any(|a| a.machine_id.eq_ignore_ascii_case(&machine_id) && !a.status(now).is_final());
    if busy {
        return api_error(
            StatusCode::BAD_REQUEST,
            "ActiveRequestAlreadyExists",
            "Action is already in progress",
        );
    }
    let running = st.running_sessions(now);
    if running >= sim.config.limits.running_sessions as usize {
        st.stats.throttled_by_limit += 1;
        // A session slot frees when the earliest running session ends; a rough hint is enough.
        drop(st);
        return sim.retry_after(Duration::seconds(30), sim.config.limits.retry_after_header);
    }
    let requestor = sim
        .config
        .clients
        .get(client)
        .map(|c| c.requestor.clone())
        .unwrap_or_default();
    let library: Vec<String> = st.library.keys().cloned().collect();
    let has = |n: &str| library.iter().any(|x| x.eq_ignore_ascii_case(n));
    let action = Action::plan(
        Submission {
            id: uuid::Uuid::new_v4().to_string(),
            requestor,
            comment,
            commands,
            created: now,
        },
        device,
        &sim.config,
        sim.clock.start(),
        &has,
    );
    let body = action.to_json(now, &sim.api_base);
    let slot = st.actions.len();
    st.by_id.insert(action.id.clone(), slot);
    st.actions.push(action);
    st.stats.actions_created += 1;
    st.stats.max_concurrent_sessions = st.stats.max_concurrent_sessions.max(running as u32 + 1);
    json_response(StatusCode::CREATED, body)
}

fn find_action<'a>(st: &'a State, id: &str) -> Option<&'a Action> {
    st.by_id
        .get(&id.to_ascii_lowercase())
        .and_then(|i| st.actions.get(*i))
}

fn action_not_found(id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("Machine action {id} was not found"),
    )
}

async fn get_action(sim: Arc<Sim>, id: String) -> Response {
    let now = sim.clock.now();
    let st = sim.lock();
    match find_action(&st, &id) {
        Some(a) if !sim_not_found(&st, a, now) => {
            json_response(StatusCode::OK, a.to_json(now, &sim.api_base))
        }
        _ => action_not_found(&id),
    }
}

fn sim_not_found(st: &State, a: &Action, now: OffsetDateTime) -> bool {
    let secs = st.faults.not_found_after_create_secs;
    secs > 0 && now < a.created + Duration::seconds(secs as i64)
}

/// `$filter` clauses `field eq 'value'`, joined by `and` (binds tighter) and `or`.
fn parse_filter(filter: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut any = Vec::new();
    for alt in split_keyword(filter, "or") {
        let mut all = Vec::new();
        for clause in split_keyword(&alt, "and") {
            let clause = clause.trim();
            let mut parts = clause.splitn(3, ' ');
            let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("cannot parse filter clause '{clause}'"));
            };
            if !op.eq_ignore_ascii_case("eq") {
                return Err(format!("operator '{op}' is not supported (only eq)"));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(|| format!("value in '{clause}' must be quoted"))?;
            let field = match field.to_ascii_lowercase().as_str() {
                "id" => "id",
                "status" => "status",
                "machineid" => "machineId",
                "type" => "type",
                "requestor" => "requestor",
                other => return Err(format!("cannot filter on '{other}'")),
            };
            all.push((field.to_string(), value.replace("''", "'")));
        }
        any.push(all);
    }
    Ok(any)
}

fn split_keyword(s: &str, kw: &str) -> Vec<String> {
    // Split on ` kw ` outside quotes, without regard to case.
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let chars: Vec<char> = s.chars().collect();
    let pat: Vec<char> = format!(" {kw} ").chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            in_quote = !in_quote;
        }
        if !in_quote
            && i + pat.len() <= chars.len()
            && chars[i..i + pat.len()]
                .iter()
                .zip(&pat)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
        {
            out.push(std::mem::take(&mut cur));
            i += pat.len();
            continue;
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out
}

async fn list_actions(sim: Arc<Sim>, req: Request) -> Response {
    let now = sim.clock.now();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(q, _)| q.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let filter = match get("$filter").map(|f| parse_filter(&f)).transpose() {
        Ok(f) => f,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                &format!("$filter: {e}"),
            );
        }
    };
    let number = |k: &str, default: usize| -> Result<usize, Response> {
        match get(k) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidInput",
                    &format!("{k} must be a whole number"),
                )
            }),
        }
    };
    let top = match number("$top", 10_000) {
        Ok(n) if n <= 10_000 => n,
        Ok(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "$top is at most 10000",
            );
        }
        Err(r) => return r,
    };
    let skip = match number("$skip", 0) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let st = sim.lock();
    let values: Vec<Value> = st
        .actions
        .iter()
        .map(|a| a.entity(now))
        .filter(|v| match &filter {
            None => true,
            Some(any) => any.iter().any(|all| {
                all.iter().all(|(field, want)| {
                    v.get(field)
                        .and_then(Value::as_str)
                        .is_some_and(|got| got.eq_ignore_ascii_case(want))
                })
            }),
        })
        .skip(skip)
        .take(top)
        .collect();
    json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/api/$metadata#MachineActions", sim.api_base), "value": values}),
    )
}

async fn result_link(sim: Arc<Sim>, id: String, arg: String) -> Response {
    let now = sim.clock.now();
    let index = arg
        .find('(')
        .and_then(|p| arg[p + 1..].strip_suffix(')'))
        .and_then(|inner| {
            let inner = inner.trim();
            let v = inner
                .strip_prefix("index=")
                .or_else(|| inner.strip_prefix("Index="))
                .unwrap_or(inner);
            v.trim().parse::<usize>().ok()
        });
    let Some(index) = index else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "index must be a whole number: (index={n})",
        );
    };
    let mut st = sim.lock();
    let Some(action) = find_action(&st, &id) else {
        return action_not_found(&id);
    };
    if sim_not_found(&st, action, now) {
        return action_not_found(&id);
    }
    let Some(cmd) = action.commands.get(index) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("Command index {index} is out of range for action {id}"),
        );
    };
    if cmd.spec.kind == CommandType::PutFile {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("Command {index} ({}) has no result", cmd.spec.kind.as_str()),
        );
    }
    if action.command_status(index, now) != CommandStatus::Completed {
        return api_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Command {index} of action {id} has not completed"),
        );
    }
    let action_id = action.id.clone();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let path = format!("/blob/{BLOB_CONTAINER}/{action_id}/CustomPlaybookCommandOutput/{nonce}");
    let se = format_se(now + Duration::seconds(sim.config.sim.link_lifetime_secs as i64));
    let sig = sim.sign(&path, &se);
    let early = st.faults.link_early_expiry_probability;
    let dies_at = if st.rng.chance(early) {
        st.stats.injected_faults += 1;
        Some(now + Duration::seconds(st.faults.link_early_expiry_secs as i64))
    } else {
        None
    };
    st.links.insert(
        nonce,
        Link {
            action_id,
            index,
            dies_at,
        },
    );
    st.stats.links_issued += 1;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let url = format!(
        "{}{}?se={}&sp=r&sv=2019-07-07&sr=b&sig={}",
        sim.api_base,
        path,
        enc(&se),
        enc(&sig)
    );
    json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/api/$metadata#Edm.String", sim.api_base), "value": url}),
    )
}

async fn cancel(sim: Arc<Sim>, req: Request, id: String) -> Response {
    let now = sim.clock.now();
    let client = client_of(&req);
    let body = axum::body::to_bytes(req.into_body(), 1 << 16)
        .await
        .unwrap_or_default();
    let comment = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("Comment") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "MissingRequiredParameter",
                    "Comment is required",
                );
            }
        },
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestBody",
                &format!("Request body is not valid JSON: {e}"),
            );
        }
    };
    let requestor = sim
        .config
        .clients
        .get(client)
        .map(|c| c.requestor.clone())
        .unwrap_or_default();
    let mut st = sim.lock();
    let Some(&i) = st.by_id.get(&id.to_ascii_lowercase()) else {
        return action_not_found(&id);
    };
    let action = &mut st.actions[i];
    if action.status(now).is_final() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestBody",
            &format!(
                "Action {id} is already in a final state ({})",
                action.status(now).as_str()
            ),
        );
    }
    action.cancellation = Some(crate::action::Cancellation {
        at: now,
        requestor,
        comment,
    });
    let body = action.to_json(now, &sim.api_base);
    debug_assert_eq!(action.status(now), Status::Cancelled);
    json_response(StatusCode::OK, body)
}

fn library_entity(name: &str, f: &LibraryFile) -> Value {
    json!({
        "fileName": name,
        "sha256": f.sha256,
        "description": f.description,
        "creationTime": format_ts(f.created),
        "lastUpdatedTime": format_ts(f.updated),
        "createdBy": f.created_by,
        "hasParameters": f.has_parameters,
        "parametersDescription": f.parameters_description,
    })
}

async fn library_list(sim: Arc<Sim>) -> Response {
    let st = sim.lock();
    let values: Vec<Value> = st
        .library
        .values()
        .map(|(n, f)| library_entity(n, f))
        .collect();
    json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/api/$metadata#LibraryFiles", sim.api_base), "value": values}),
    )
}

async fn library_upload(sim: Arc<Sim>, req: Request) -> Response {
    let client = client_of(&req);
    let bad = |msg: String| api_error(StatusCode::BAD_REQUEST, "InvalidRequestBody", &msg);
    let mut mp = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) => return bad(format!("Expected multipart/form-data: {e}")),
    };
    let max = sim.config.sim.library_max_bytes;
    let mut file: Option<(String, String)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return bad(format!("Malformed multipart body: {e}")),
        };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let fname = field.file_name().unwrap_or_default().to_string();
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            loop {
                match field.chunk().await {
                    Ok(Some(c)) => {
                        len += c.len() as u64;
                        if len > max {
                            return bad(format!(
                                "File is larger than the {max}-byte limit for API uploads"
                            ));
                        }
                        hasher.update(&c);
                    }
                    Ok(None) => break,
                    Err(e) => return bad(format!("Malformed multipart body: {e}")),
                }
            }
            file = Some((fname, hex::encode(hasher.finalize())));
        } else {
            match field.text().await {
                Ok(t) => {
                    fields.insert(name, t);
                }
                Err(e) => return bad(format!("Malformed multipart body: {e}")),
            }
        }
    }
    let Some((fname, sha)) = file else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "MissingRequiredParameter",
            "file is required",
        );
    };
    if !valid_library_name(&fname) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("File name '{fname}' may hold only letters, digits, '-', '_' and '.'"),
        );
    }
    let flag = |k: &str| {
        fields
            .get(k)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    let now = sim.clock.now();
    let mut st = sim.lock();
    let key = fname.to_ascii_lowercase();
    let created = match st.library.get(&key) {
        Some(_) if !flag("OverrideIfExists") => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestBody",
                &format!(
                    "File {fname} already exists in the library; set OverrideIfExists to replace it"
                ),
            );
        }
        Some((_, f)) => f.created,
        None => now,
    };
    let entry = LibraryFile {
        sha256: sha,
        description: fields.get("Description").cloned().unwrap_or_default(),
        parameters_description: fields
            .get("ParametersDescription")
            .cloned()
            .unwrap_or_default(),
        has_parameters: flag("HasParameters"),
        created,
        updated: now,
        created_by: sim
            .config
            .clients
            .get(client)
            .map(|c| c.requestor.clone())
            .unwrap_or_default(),
    };
    let body = library_entity(&fname, &entry);
    st.library.insert(key, (fname, entry));
    json_response(StatusCode::OK, body)
}

async fn library_delete(sim: Arc<Sim>, name: String) -> Response {
    match sim.lock().library.remove(&name.to_ascii_lowercase()) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Library file {name} was not found"),
        ),
    }
}

enum Package {
    Bytes(bytes::Bytes),
    Gzip(GzipPackage),
}

impl Package {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Gzip(g) => g.len(),
        }
    }
}

/// Parses a single `Range: bytes=...` against a body of `len` bytes into an inclusive range.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: answer the whole body, as a server may
    }
    let (a, b) = spec.split_once('-')?;
    let r = if a.is_empty() {
        let n: u64 = b.trim().parse().ok()?;
        if n == 0 || len == 0 {
            Err(())
        } else {
            Ok((len.saturating_sub(n), len - 1))
        }
    } else {
        let start: u64 = a.trim().parse().ok()?;
        let end: u64 = if b.trim().is_empty() {
            len.saturating_sub(1)
        } else {
            b.trim().parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            Err(())
        } else {
            Ok((start, end))
        }
    };
    Some(r)
}

async fn blob(sim: &Arc<Sim>, req: Request) -> Response {
    let now = sim.clock.now();
    if req.headers().contains_key(header::AUTHORIZATION) {
        sim.lock().stats.blob_requests_with_authorization += 1;
    }
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let nonce = path.rsplit('/').next().unwrap_or_default().to_string();
    let (Some(se), Some(sig)) = (query.get("se"), query.get("sig")) else {
        return azure_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        );
    };
    let ok_params = query.get("sp").map(String::as_str) == Some("r")
        && query.get("sv").map(String::as_str) == Some("2019-07-07")
        && query.get("sr").map(String::as_str) == Some("b");
    if !ok_params || sim.sign(&path, se) != *sig {
        return azure_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Signature did not match.",
        );
    }
    let expiry = match OffsetDateTime::parse(se, &time::format_description::well_known::Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            return azure_error(
                StatusCode::FORBIDDEN,
                "AuthenticationFailed",
                "Signed expiry time is not valid.",
            );
        }
    };
    let (package, cut) = {
        let mut st = sim.lock();
        let Some(link) = st.links.get(&nonce) else {
            return azure_error(
                StatusCode::NOT_FOUND,
                "BlobNotFound",
                "The specified blob does not exist.",
            );
        };
        if now >= expiry || link.dies_at.is_some_and(|d| now >= d) {
            return azure_error(
                StatusCode::FORBIDDEN,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Signed expiry time must be after the current time.",
            );
        }
        let Some(cmd) = find_action(&st, &link.action_id).and_then(|a| a.commands.get(link.index))
        else {
            return azure_error(
                StatusCode::NOT_FOUND,
                "BlobNotFound",
                "The specified blob does not exist.",
            );
        };
        let body = cmd.result.clone();
        let p = st.faults.download_cut_probability;
        let cut = if st.rng.chance(p) {
            st.stats.injected_faults += 1;
            st.stats.downloads_cut += 1;
            Some(st.faults.download_cut_after_bytes)
        } else {
            None
        };
        let package = match body {
            Some(ResultBody::Transcript(b)) => Ok(Package::Bytes(b)),
            Some(ResultBody::File(f)) => match st.crc_cache.get(&f) {
                Some(crc) => Ok(Package::Gzip(GzipPackage {
                    file: f,
                    crc32: *crc,
                })),
                None => Err(f),
            },
            None => {
                return azure_error(
                    StatusCode::NOT_FOUND,
                    "BlobNotFound",
                    "The specified blob does not exist.",
                );
            }
        };
        (package, cut)
    };
    let package = match package {
        Ok(p) => p,
        Err(f) => {
            // The trailer needs the whole file's CRC: one pass, off the async threads, then cached.
            let crc = tokio::task::spawn_blocking(move || f.crc32())
                .await
                .unwrap_or(0);
            sim.lock().crc_cache.insert(f, crc);
            Package::Gzip(GzipPackage {
                file: f,
                crc32: crc,
            })
        }
    };
    let len = package.len();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((a, b))) => {
            sim.lock().stats.blob_range_starts.push(a);
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
        Some(Err(())) => {
            let mut r = azure_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The range specified is invalid for the current size of the resource.",
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            return r;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"0x{:016X}\"", len ^ 0x5eed))
            .unwrap_or(HeaderValue::from_static("\"0\"")),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
                .unwrap_or(HeaderValue::from_static("bytes */0")),
        );
    }
    if req.method() == Method::HEAD {
        return (status, headers).into_response();
    }
    let stop = cut.map(|n| (start + n).min(end)).unwrap_or(end);
    let sim2 = sim.clone();
    let stream = futures_util::stream::unfold((start, package), move |(pos, package)| {
        let sim = sim2.clone();
        async move {
            if pos >= stop {
                if stop < end {
                    // Let what was sent so far reach the client first, then break off.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    // An error mid-body makes the server drop the connection: a cut download.
                    return Some((
                        Err(std::io::Error::other("download cut (injected)")),
                        (end, package),
                    ));
                }
                return None;
            }
            let n = ((stop - pos) as usize).min(CHUNK);
            let chunk = match &package {
                Package::Bytes(b) => b.slice(pos as usize..pos as usize + n),
                Package::Gzip(g) => {
                    let mut buf = vec![0u8; n];
                    let w = g.fill(pos, &mut buf);
                    buf.truncate(w);
                    bytes::Bytes::from(buf)
                }
            };
            sim.lock().stats.blob_bytes_sent += chunk.len() as u64;
            let next = pos + chunk.len() as u64;
            Some((Ok::<_, std::io::Error>(chunk), (next, package)))
        }
    });
    (status, headers, Body::from_stream(stream)).into_response()
}

async fn control(sim: &Arc<Sim>, req: Request, rest: &[&str]) -> Response {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, ["stats"]) => {
            let stats = sim.lock().stats.clone();
            json_response(
                StatusCode::OK,
                serde_json::to_value(stats).unwrap_or_default(),
            )
        }
        (&Method::GET, ["time"]) => json_response(
            StatusCode::OK,
            json!({"now": format_ts(sim.clock.now()), "scale": sim.clock.scale()}),
        ),
        (&Method::GET, ["actions"]) => {
            let now = sim.clock.now();
            let v: Vec<Value> = sim.lock().actions.iter().map(|a| a.entity(now)).collect();
            json_response(StatusCode::OK, json!({"value": v}))
        }
        (&Method::POST, ["advance"]) => {
            let body = axum::body::to_bytes(req.into_body(), 1 << 16)
                .await
                .unwrap_or_default();
            let secs = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("seconds").and_then(Value::as_f64));
            match secs {
                Some(s) if s >= 0.0 && s.is_finite() => {
                    sim.clock.advance(Duration::seconds_f64(s));
                    json_response(StatusCode::OK, json!({"now": format_ts(sim.clock.now())}))
                }
                _ => api_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidInput",
                    "body must be {\"seconds\": <non-negative number>}",
                ),
            }
        }
        (&Method::POST, ["reset"]) => {
            sim.reset();
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::PUT, ["faults"]) => {
            let body = axum::body::to_bytes(req.into_body(), 1 << 16)
                .await
                .unwrap_or_default();
            match serde_json::from_slice::<Faults>(&body) {
                Ok(f) => {
                    let mut st = sim.lock();
                    st.rng = SeededRng::new(f.seed);
                    st.faults = f;
                    StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => api_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidInput",
                    &format!("faults: {e}"),
                ),
            }
        }
        _ => api_error(StatusCode::NOT_FOUND, "NotFound", "unknown /sim endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_and_or() {
        let f =
            parse_filter("machineId eq 'abc' and status eq 'Pending' or type eq 'LiveResponse'")
                .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            vec![
                ("machineId".into(), "abc".into()),
                ("status".into(), "Pending".into())
            ]
        );
        assert!(parse_filter("machineId gt 'a'").is_err());
        assert!(parse_filter("foo eq 'a'").is_err());
        let q = parse_filter("requestor eq 'a or b'").unwrap();
        assert_eq!(q, vec![vec![("requestor".into(), "a or b".into())]]);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-200", 100), Some(Ok((5, 99))));
        assert_eq!(parse_range("items=1-2", 100), None);
    }
}
