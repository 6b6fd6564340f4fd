//! Which jsonwebtoken backend checks signatures.
//!
//! jsonwebtoken 11 routes all signing and verification through one
//! process-wide `CryptoProvider`. With exactly one backend compiled in
//! (feature `aws-lc`, the default, or `rust-crypto`) it picks that one;
//! with both (every `--all-features` build) it cannot choose and installs
//! a provider whose every call panics. This crate therefore installs its
//! backend explicitly (aws-lc when both are on).

use std::sync::Once;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, crypto::CryptoProvider};

/// Makes this crate's signature backend jsonwebtoken's process-wide
/// provider: aws-lc-rs with feature `aws-lc`, RustCrypto otherwise.
///
/// [`JwtAuthLayer::builder`](super::JwtAuthLayer::builder) calls it, so
/// most programs never need to. Call it first thing in `main` if the
/// program uses `jsonwebtoken` itself before building a layer: jsonwebtoken
/// fixes its provider on first use, and with both backends compiled in (the
/// `aws-lc` feature), the one it fixes on its own panics on every call.
/// A provider installed earlier (yours, or this one) is kept; calling this
/// again does nothing.
///
/// ```
/// tower_gateway::auth::install_crypto_backend();
/// let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
/// let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &serde_json::json!({}), &key);
/// assert!(token.is_ok());
/// ```
pub fn install_crypto_backend() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: a provider is in place already; it stays (and `build()`
        // checks that it works).
        let _ = backend().install_default();
    });
}

#[cfg(not(any(feature = "aws-lc", feature = "rust-crypto")))]
compile_error!(
    "tower-gateway's `jwt` feature needs a signature backend: enable `aws-lc` (the default) or `rust-crypto`"
);

fn backend() -> &'static CryptoProvider {
    #[cfg(feature = "aws-lc")]
    {
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
    }
    #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc")))]
    {
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
    }
}

/// Whether the process-wide provider signs and verifies: false when it is
/// jsonwebtoken's panicking placeholder (fixed by some earlier use of
/// jsonwebtoken with both backends compiled in). Checked once per layer
/// built, so a broken provider is a configuration error, never a panic on
/// a request.
pub(crate) fn backend_works() -> bool {
    const SECRET: &[u8] = b"tower-gateway provider self-test";
    std::panic::catch_unwind(|| {
        let signature = jsonwebtoken::crypto::sign(
            b"probe",
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )?;
        jsonwebtoken::crypto::verify(
            &signature,
            b"probe",
            &DecodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
    })
    .is_ok_and(|verified| verified.is_ok_and(|ok| ok))
}
