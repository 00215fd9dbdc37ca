//! Fetching web pages for URL previews: a GET of a URL a user chose, bounded in size and time,
//! following a few redirects, and (unless the operator allows private addresses) reaching only
//! publicly routable addresses, checked as for push gateways ([`crate::public_addresses`]):
//! names by the resolver, IP literals before the request and at every redirect.

use std::time::Duration;

use crate::public_addresses::{PublicOnlyResolver, is_public};

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// Why a page was not fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("could not build the web client: {0}")]
    Client(String),
    #[error("not an http(s) URL: {0}")]
    BadUrl(String),
    #[error("address {0} is not publicly routable")]
    PrivateAddress(String),
    #[error("could not fetch the page: {0}")]
    Transport(String),
    #[error("the page answered HTTP {0}")]
    Status(u16),
    #[error("the page is larger than {0} bytes")]
    TooLarge(usize),
}

/// A fetched page: where it ended up, its type, and (at most the limit of) its body.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// An HTTP client for pages users link to, cheap to clone.
#[derive(Debug, Clone)]
pub struct WebFetcher {
    http: reqwest::Client,
    allow_private: bool,
    max_bytes: usize,
}

/// Whether `url`'s host is an IP literal that is not publicly routable.
fn private_literal(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<std::net::IpAddr>() {
        Ok(ip) if !is_public(ip) => Some(host.to_owned()),
        _ => None,
    }
}

impl WebFetcher {
    /// A fetcher that gives up after `timeout`, reads at most `max_bytes` of a body, reaches
    /// private addresses only if `allow_private`, and reaches the hosts of `overrides` at the
    /// given addresses without asking DNS (a private one only if `allow_private`).
    pub fn new(
        timeout: Duration,
        max_bytes: usize,
        allow_private: bool,
        overrides: &[(String, std::net::IpAddr)],
    ) -> Result<Self, FetchError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if !matches!(attempt.url().scheme(), "http" | "https") {
                attempt.error("redirect to a URL that is not http(s)")
            } else if !allow_private && let Some(host) = private_literal(attempt.url()) {
                attempt.error(format!(
                    "redirect to {host}, which is not publicly routable"
                ))
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirects)
            .user_agent(concat!(
                "Myelin/",
                env!("CARGO_PKG_VERSION"),
                " (URL preview)"
            ));
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnlyResolver));
        }
        for (host, ip) in overrides {
            if !allow_private && !is_public(*ip) {
                return Err(FetchError::PrivateAddress(format!("{ip} (for {host})")));
            }
            // The port is ignored: the URL's own port is used.
            builder = builder.resolve(host, std::net::SocketAddr::new(*ip, 0));
        }
        let http = builder
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(WebFetcher {
            http,
            allow_private,
            max_bytes,
        })
    }

    /// GETs `url`; refuses bodies over the size limit.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::BadUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        if !self.allow_private
            && let Some(host) = private_literal(&parsed)
        {
            return Err(FetchError::PrivateAddress(host));
        }
        let mut response = self
            .http
            .get(parsed)
            .header(reqwest::header::ACCEPT, "text/html, */*;q=0.5")
            .send()
            .await
            .map_err(|e| FetchError::Transport(crate::push_gateway::with_causes(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes as u64)
        {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let final_url = response.url().to_string();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Transport(crate::push_gateway::with_causes(&e)))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            url: final_url,
            content_type,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_to_a_private_address_needs_private_addresses_allowed() {
        let loopback = [("pages.example".to_owned(), "127.0.0.1".parse().unwrap())];
        let public = [("pages.example".to_owned(), "93.184.215.14".parse().unwrap())];
        let refused = WebFetcher::new(Duration::from_secs(1), 1024, false, &loopback);
        assert!(matches!(refused, Err(FetchError::PrivateAddress(_))));
        assert!(WebFetcher::new(Duration::from_secs(1), 1024, true, &loopback).is_ok());
        assert!(WebFetcher::new(Duration::from_secs(1), 1024, false, &public).is_ok());
    }
}
