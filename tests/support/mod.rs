//! Shared test fixtures: a throwaway CA (rcgen), a fake PayMongo over real
//! TLS on 127.0.0.1:0, HTTP clients, and ways to run the gateway in-process
//! or as a real process, a real inward webhook receiver, and an independent
//! webhook signer. Nothing here stands in for gateway code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod ca;
pub mod client;
pub mod gw;
pub mod inward;
pub mod redis_server;
pub mod upstream;
pub mod webhook;

#[allow(unused_imports)]
pub use ca::TestCa;
#[allow(unused_imports)]
pub use client::{Resp, send, send_unix};
#[allow(unused_imports)]
pub use gw::{GatewayProcess, Harness, TestGateway, WAIT, base_config, start_gateway};
#[allow(unused_imports)]
pub use inward::{Inward, InwardReply, Received};
#[allow(unused_imports)]
pub use upstream::{FakeUpstream, Gate, Reply, Seen};
