//! The HTTP side: one listener serving the login, API, blob and `/sim` control paths.
//!
//! This module holds the running server (`SimServer`: start, shutdown and the calls tests make on
//! it directly). Each API family has its own module, and they stand on what they all share:
//!
//! - `routes`: the route table, the endpoint names, the call counts
//! - `guard`: what a call passes before its handler: injected faults, the bearer, the limits
//! - `auth`: the OAuth token endpoint and the bearer check
//! - `actions`: runliveresponse, machine actions (get, list, cancel) and result links
//! - `commands`: validation of a runliveresponse body
//! - `filter`: the OData `$filter` subset the list endpoint accepts
//! - `library`: the live response library (list, upload, delete)
//! - `blob`: result links (issued and checked) and the download itself (Range, HEAD, cuts)
//! - `control`: the `/sim/*` endpoints
//! - `sim`: `Sim`, what every handler shares: the config, the clock, the state behind one lock
//! - `state`: what the simulator remembers between requests, and its `Stats`
//! - `reply`: how each service answers an error (API, login, storage), and reading a request
//! - `tenants`: several tenants behind one listener, each request to the tenant it belongs to
//!
//! The imports run one way, down: this module starts `routes`; `routes` names the handlers and
//! `guard`; they stand on `sim`, `sim` on `state`; `reply`, `filter` and `state` import nothing of
//! the server.

// Handlers pass ready-made error responses up; boxing them would only add noise.
#![allow(clippy::result_large_err)]

mod actions;
mod auth;
mod blob;
mod commands;
mod control;
mod filter;
mod guard;
mod library;
mod reply;
mod routes;
mod sim;
mod state;
mod tenants;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::clock::SimClock;
use crate::config::{Faults, SimConfig};
use sim::Sim;
use state::State;
pub use state::Stats;

/// A running simulator. Dropping it stops the server.
pub struct SimServer {
    pub addr: SocketAddr,
    pub api_base: String,
    pub login_base: String,
    pub blob_base: String,
    sim: Arc<Sim>,
    sims: Vec<Arc<Sim>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds `bind` (port 0 for an ephemeral port) and serves until dropped or shut down.
    pub async fn start(
        config: SimConfig,
        bind: SocketAddr,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_tenants(vec![config], bind).await
    }

    /// Several Defender tenants behind one listener, as Defender's one API host serves every
    /// tenant: each config is a tenant of its own (its clients, devices, actions, library, limits
    /// and 429s, faults, statistics), and a request reaches the tenant its token was issued in (a
    /// token endpoint call, the tenant in its path; a download, the tenant that issued the link).
    /// A token of one tenant never reads another's actions: they are not in its tenant. The
    /// methods of [`SimServer`] act on the first tenant; [`SimServer::tenant`] on any.
    pub async fn start_tenants(
        configs: Vec<SimConfig>,
        bind: SocketAddr,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        if configs.is_empty() {
            return Err("no tenant to simulate".into());
        }
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let mut sims = Vec::new();
        for config in configs {
            config.validate()?;
            let start = match &config.sim.start_time {
                Some(s) => OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("sim.start_time {s:?} is not RFC 3339: {e}"))?,
                None => OffsetDateTime::now_utc(),
            };
            let clock = SimClock::new(start, config.sim.time_scale);
            let mut key = [0u8; 32];
            key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            sims.push(Arc::new(Sim {
                state: Mutex::new(State::new(&config, start)),
                config,
                clock,
                key,
                api_base: base.clone(),
                blob_base: format!("{base}/blob"),
            }));
        }
        let sim = sims[0].clone();
        let app = match sims.len() {
            1 => Router::new()
                .fallback(routes::dispatch)
                .layer(DefaultBodyLimit::disable())
                .with_state(sim.clone()),
            _ => Router::new()
                .fallback(tenants::dispatch)
                .layer(DefaultBodyLimit::disable())
                .with_state(Arc::new(tenants::Tenants(sims.clone()))),
        };
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
            sims,
            shutdown: Some(tx),
            join: Some(join),
        })
    }

    /// Tenant `i` (in the order given to [`SimServer::start_tenants`]): its statistics and
    /// actions.
    pub fn tenant(&self, i: usize) -> Option<TenantView<'_>> {
        self.sims.get(i).map(|sim| TenantView { sim })
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
        self.sim.lock().set_faults(faults);
    }

    /// Every action created, as the API shows it now.
    pub fn actions(&self) -> Vec<Value> {
        self.sim.action_entities()
    }

    pub fn reset(&self) {
        self.sim.reset();
    }

    /// The large-file working folders left on a device (split and not cleaned up).
    pub fn working_folders(&self, machine_id: &str) -> Vec<String> {
        self.sim.lock().folders.on(machine_id)
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

/// One tenant of a simulator serving several.
pub struct TenantView<'a> {
    sim: &'a Arc<Sim>,
}

impl TenantView<'_> {
    pub fn stats(&self) -> Stats {
        self.sim.lock().stats.clone()
    }

    /// Every action created in this tenant, as the API shows it now.
    pub fn actions(&self) -> Vec<Value> {
        self.sim.action_entities()
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
