//! Uncached signature verification with jsonwebtoken's two backends,
//! RustCrypto and aws-lc-rs, side by side in one run: each `aws_lc/<alg>`
//! reads against `rust_crypto/<alg>` (the reference) measured in the same
//! process. Each iteration is what one `jsonwebtoken::decode` spends on the
//! signature: build the backend's verifier from the key, verify.
//!
//! Run: `cargo bench --features aws-lc --bench crypto` (both backends are
//! compiled in with that feature).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    crypto::{CryptoProvider, aws_lc, rust_crypto},
};
use support::*;

fn decoding_key(alg: Algorithm) -> DecodingKey {
    let k = keys();
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            DecodingKey::from_rsa_pem(k.rsa.public_pem.as_bytes()).unwrap()
        }
        Algorithm::ES256 => DecodingKey::from_ec_pem(k.ec256.public_pem.as_bytes()).unwrap(),
        Algorithm::ES384 => DecodingKey::from_ec_pem(k.ec384.public_pem.as_bytes()).unwrap(),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(k.ed.public_pem.as_bytes()).unwrap(),
        _ => unreachable!(),
    }
}

fn verify(
    provider: &CryptoProvider,
    alg: Algorithm,
    key: &DecodingKey,
    message: &[u8],
    signature: &Vec<u8>,
) {
    let verifier = (provider.verifier_factory)(&alg, key).unwrap();
    verifier.verify(message, signature).unwrap();
}

fn backends(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let token = mint(alg, None, &claims("alice", &["user"]));
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        let key = decoding_key(alg);
        for (name, provider) in [
            ("rust_crypto", &rust_crypto::DEFAULT_PROVIDER),
            ("aws_lc", &aws_lc::DEFAULT_PROVIDER),
        ] {
            // Both backends accept the token before anything is timed.
            verify(provider, alg, &key, message.as_bytes(), &signature);
            g.bench_function(format!("{name}/{alg:?}"), |b| {
                b.iter(|| {
                    verify(
                        provider,
                        alg,
                        &key,
                        black_box(message.as_bytes()),
                        black_box(&signature),
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, backends);
criterion_main!(benches);
