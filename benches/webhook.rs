//! Webhook signature verification throughput, 1 KiB and 16 KiB bodies.
//!
//! The anchor is `openssl speed -hmac sha256` on the same machine
//! (`shared/bench/hmac_limit.sh`); the target is ≥ 0.9× of it at 16 KiB.
//! Throughput is reported in decimal MB/s to compare with OpenSSL directly.
//!
//! - `verify/paymongo`: the full check a delivery gets (header parse, hex
//!   decode, HMAC over `t`, `.`, body, constant-time compare, timestamp).
//! - `verify/paymongo_rotation`: the worst case during a rotation (the
//!   matching secret is listed second, so the body is MACed twice).
//! - `verify/hmac_hex`: the timestamp-free scheme.
//! - `hmac_sha256_raw`: the `hmac` crate alone on the body, no gateway code:
//!   what the verifier could at best approach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{KeyInit, Mac};
use paymongo_gateway::config::{Mode, SignatureScheme, WebhookSecret};
use paymongo_gateway::webhook::signature::{Verifier, hmac_hex_header, paymongo_header};
use secrecy::SecretString;

const SECRET: &str = "whsk_benchSECRETvalue0123456789abcdef";
const T: u64 = 1_700_000_000;
const TOLERANCE: Duration = Duration::from_secs(300);

fn secret(s: &str) -> WebhookSecret {
    WebhookSecret::new(SecretString::from(s.to_owned()))
}

/// A JSON-looking body of exactly `len` bytes.
fn body(len: usize) -> Vec<u8> {
    let mut b = br#"{"data":{"id":"evt_bench","type":"event","attributes":{"type":"payment.paid","livemode":false,"data":{"description":""#.to_vec();
    while b.len() < len - 6 {
        b.push(b'a' + (b.len() % 26) as u8);
    }
    b.extend_from_slice(br#""}}}}"#);
    b.resize(len, b' ');
    b
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    let one = Verifier::new(SignatureScheme::Paymongo, &[secret(SECRET)]);
    let rotating = Verifier::new(
        SignatureScheme::Paymongo,
        &[secret("whsk_new"), secret(SECRET)],
    );
    let hex = Verifier::new(SignatureScheme::HmacHex, &[secret(SECRET)]);
    for size in [1024usize, 16384] {
        let b = body(size);
        let pm = paymongo_header(SECRET.as_bytes(), T, &b, Mode::Test);
        let hh = hmac_hex_header(SECRET.as_bytes(), &b);
        assert!(
            one.verify(pm.as_bytes(), &b, Mode::Test, TOLERANCE, T)
                .is_ok()
        );
        g.throughput(Throughput::BytesDecimal(size as u64));
        g.bench_with_input(BenchmarkId::new("paymongo", size), &b, |bench, b| {
            bench.iter(|| {
                one.verify(
                    black_box(pm.as_bytes()),
                    black_box(b),
                    Mode::Test,
                    TOLERANCE,
                    T,
                )
                .unwrap()
            })
        });
        g.bench_with_input(
            BenchmarkId::new("paymongo_rotation", size),
            &b,
            |bench, b| {
                bench.iter(|| {
                    rotating
                        .verify(
                            black_box(pm.as_bytes()),
                            black_box(b),
                            Mode::Test,
                            TOLERANCE,
                            T,
                        )
                        .unwrap()
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("hmac_hex", size), &b, |bench, b| {
            bench.iter(|| {
                hex.verify(
                    black_box(hh.as_bytes()),
                    black_box(b),
                    Mode::Test,
                    TOLERANCE,
                    T,
                )
                .unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("hmac_sha256_raw");
    let keyed = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    for size in [1024usize, 16384] {
        let b = body(size);
        g.throughput(Throughput::BytesDecimal(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &b, |bench, b| {
            bench.iter(|| {
                let mut m = keyed.clone();
                m.update(black_box(b));
                m.finalize().into_bytes()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
