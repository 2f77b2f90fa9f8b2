//! The guide: how the layer behaves, how to configure it, share its login
//! across a fleet, test against it without a server, put it into hyper, tonic
//! and reqwest clients, and watch it. Each page is a module with nothing in it
//! but its documentation; the [crate's root](crate) says what the layer does.
//!
//! | Page | What |
//! |---|---|
//! | [`configuration`] | Every setting of the builder, custom fetchers and transports, and the application's handle on its login. |
//! | [`integrations`] | hyper, tonic (with [`Refusal::grpc()`](crate::Refusal::grpc)) and reqwest-middleware. |
//! | [`fleet`] | Many replicas, one login: the token stores, Redis on one server, a Cluster or Sentinel, failover, the protocol. |
//! | [`without_a_server`] | The embedded Daxium-compatible server (feature `mock`) for tests and examples. |
//! | [`metrics`] | The counters, through [`Stats`](crate::Stats) and the `metrics` facade, and the tracing spans. |
//! | [`guarantees`] | What holds under load, faults and bad input, each with the test that checks it. |
//! | [`benchmarks`] | What the layer costs, each figure with the command that gives it. |
//! | [`compared`] | Other ways to the same job, in Go and in Rust. |

#[doc = include_str!("../docs/guide/configuration.md")]
pub mod configuration {}

#[doc = include_str!("../docs/guide/integrations.md")]
pub mod integrations {}

#[doc = include_str!("../docs/guide/fleet.md")]
pub mod fleet {}

#[doc = include_str!("../docs/guide/without_a_server.md")]
pub mod without_a_server {}

#[doc = include_str!("../docs/guide/metrics.md")]
pub mod metrics {}

#[doc = include_str!("../docs/GUARANTEES.md")]
pub mod guarantees {}

#[doc = include_str!("../BENCHMARKS.md")]
pub mod benchmarks {}

#[doc = include_str!("../docs/guide/compared.md")]
pub mod compared {}
