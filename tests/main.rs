//! The crate's behaviour through its public API, one module for each thing
//! checked. One test binary, so that the tests that wait on real time (a
//! fleet across token lifetimes, a Redis failover, a soak under faults)
//! overlap instead of running one binary after another. Three keep a binary
//! of their own: `alloc` (a counting global allocator), `secrets` (a
//! process-wide capture of every log line) and `load` (the `load` example's
//! modules, built into the test as its crate root).
//!
//! `cargo test --all-features --test behaviour fleet::` runs one module.

mod support;

mod cancellation;
mod chaos;
mod close;
mod config;
mod credentials;
mod fetcher;
mod fleet;
mod fleet_endpoints;
mod fleet_outage;
mod hyper;
mod keep_authorization;
mod layer;
mod leases;
mod login;
mod many_callers;
mod metrics;
mod mock_server;
mod odd_fetchers;
mod proptest_parsers;
mod redirects;
mod refresh_token_lifetime;
mod refusal_edge_cases;
mod refusals;
mod replays;
mod reqwest;
mod runtime_loss;
mod store_file;
mod store_foreign_data;
mod store_memory;
mod store_redis;
mod store_redis_replicated;
mod streaming;
mod tonic;
mod wait_budget;
