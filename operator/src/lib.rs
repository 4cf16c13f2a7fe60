//! Tollgate's control plane.
//!
//! ```text
//! Pod ─ admission ─> inject (sidecar, token)            ┐
//! McpPolicy / McpClusterPolicy ─ admission ─> validate  ├─ HTTPS, every replica
//! Index (pods, namespaces, policies) ─> stream ─> sidecar┘
//!   └─> controller (status, events), leader only (lease)
//! tls: CA + serving certificate, rotated; caBundle of the webhooks
//! health: every part supervised; /readyz says which is failing
//! ```
#![forbid(unsafe_code)]

pub mod admission;
pub mod approvals;
pub mod baseline;
pub mod boundary;
pub mod cli;
pub mod controller;
pub mod health;
pub mod index;
pub mod inject;
pub mod lease;
pub mod pins;
pub mod respond;
pub mod server;
pub mod stream;
pub mod telemetry;
pub mod tls;
