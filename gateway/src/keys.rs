//! The host application's token keys: a JWKS document from a file or a
//! URL, loaded at start (a gateway does not serve without them) and
//! re-read every `--jwks-refresh-secs`, so a rotation (a new `kid` added,
//! an old one removed) takes effect without a restart. A failed refresh
//! keeps the keys it had and says so.

use std::{path::PathBuf, time::Duration};

use imsg_common::token::Authenticator;
use tokio_util::sync::CancellationToken;

/// Where the JWKS document is.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    Url(String),
}

async fn fetch(source: &KeySource, client: &reqwest::Client) -> anyhow::Result<String> {
    Ok(match source {
        KeySource::File(path) => tokio::fs::read_to_string(path).await?,
        KeySource::Url(url) => client.get(url).send().await?.error_for_status()?.text().await?,
    })
}

/// Loads the keys into `auth`, then keeps them fresh until `stop`.
pub async fn keep_fresh(
    auth: Authenticator,
    source: KeySource,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut current = fetch(&source, &client).await?;
    let count = auth.set_key_set(&current).map_err(anyhow::Error::msg)?;
    tracing::info!(?source, count, "token keys loaded");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match fetch(&source, &client).await {
                Ok(document) if document == current => {}
                Ok(document) => match auth.set_key_set(&document) {
                    Ok(count) => {
                        tracing::info!(?source, count, "token keys rotated");
                        current = document;
                    }
                    Err(error) => tracing::warn!(?source, %error, "new token keys refused; keeping the old ones"),
                },
                Err(error) => tracing::warn!(?source, %error, "token keys not refreshed; keeping the old ones"),
            }
        }
    });
    Ok(())
}
