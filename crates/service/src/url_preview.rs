//! URL previews (`/preview_url`): fetching a page a user links to, reading its OpenGraph
//! properties (with the page's `<title>` and `description` as fallbacks), and keeping the
//! answer for a while so that every client in a room asking about the same link costs one
//! fetch. Off unless `media.url_preview.enabled`; pages are fetched only from publicly routable
//! addresses unless the operator allows private ones.
//!
//! The image a page names in `og:image` (or the linked URL itself, when it is an image) is
//! fetched under the same rules and stored in the media repository as the asking user's upload,
//! since clients can only show `mxc://` images: the preview then carries its `mxc://` URI,
//! type, size and dimensions. An image that cannot be fetched or stored (too large, not an
//! image, over the user's quota) leaves `og:image` out rather than failing the preview.

use std::{collections::HashMap, sync::Arc, time::Duration};

use myelin_federation::web_fetch::{FetchError, WebFetcher};
use serde_json::{Map, Value};

use crate::{Error, Result, config::UrlPreviewConfig, media::Media, now_millis};

/// How long one page may take to fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Previews kept at most; past it, the cache starts over.
const CACHE_CAPACITY: usize = 10_000;
/// The longest property value kept (descriptions can be whole articles).
const MAX_VALUE_CHARS: usize = 1000;

/// URL previews (see the module documentation).
#[derive(Debug)]
pub struct UrlPreviews {
    fetcher: WebFetcher,
    cache_millis: i64,
    cache: std::sync::Mutex<HashMap<String, (i64, Value)>>,
}

impl UrlPreviews {
    pub fn new(config: &UrlPreviewConfig) -> Result<Self> {
        let fetcher = WebFetcher::new(
            FETCH_TIMEOUT,
            config.max_page_size,
            config.allow_private_addresses,
            &config
                .host_overrides
                .iter()
                .map(|(host, ip)| (host.clone(), *ip))
                .collect::<Vec<_>>(),
        )
        .map_err(|err| Error::Internal(err.to_string()))?;
        Ok(UrlPreviews {
            fetcher,
            cache_millis: i64::try_from(config.cache_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            cache: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The preview of `url` for `user_id`: an object of OpenGraph properties (only the image
    /// ones for a URL that is an image, none for other pages that are not HTML). The image is
    /// stored in `media` as `user_id`'s upload.
    pub async fn preview(&self, media: &Arc<Media>, user_id: &str, url: &str) -> Result<Value> {
        let now = now_millis();
        if let Some((fetched_at, preview)) = self.cache_lock().get(url)
            && now.saturating_sub(*fetched_at) < self.cache_millis
        {
            return Ok(preview.clone());
        }
        let page = self.fetcher.fetch(url).await.map_err(|err| match err {
            FetchError::BadUrl(_) => Error::InvalidParam(err.to_string()),
            FetchError::PrivateAddress(_) => Error::Forbidden(err.to_string()),
            FetchError::Client(_) => Error::Internal(err.to_string()),
            FetchError::Transport(_) | FetchError::Status(_) | FetchError::TooLarge(_) => {
                Error::BadGateway(err.to_string())
            }
        })?;
        let content_type = page.content_type.as_deref().map(str::to_ascii_lowercase);
        let mut props = Map::new();
        if content_type.as_deref().is_some_and(|t| t.contains("html")) {
            props = opengraph(&String::from_utf8_lossy(&page.body));
            if let Some(Value::String(image_url)) = props.remove("og:image") {
                let image = match url::Url::parse(&page.url).and_then(|base| base.join(&image_url))
                {
                    Ok(absolute) => match self.fetcher.fetch(absolute.as_str()).await {
                        Ok(image) => store_image(media, user_id, image).await,
                        Err(err) => {
                            tracing::debug!(%absolute, error = %err, "preview image not fetched");
                            None
                        }
                    },
                    Err(err) => {
                        tracing::debug!(%image_url, error = %err, "preview image URL unusable");
                        None
                    }
                };
                props.extend(image.unwrap_or_default());
            }
        } else if content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("image/"))
        {
            props = store_image(media, user_id, page).await.unwrap_or_default();
        }
        let preview = Value::Object(props);
        let mut cache = self.cache_lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(url.to_owned(), (now, preview.clone()));
        Ok(preview)
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, Value)>> {
        // A panic while holding it leaves a usable map behind.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stores a fetched image as `user_id`'s upload; its preview properties (`og:image` as an
/// `mxc://` URI, `og:image:type`, `matrix:image:size`, `og:image:width`/`height` when its
/// header can be read), or `None` when it is not an image or cannot be stored.
async fn store_image(
    media: &Arc<Media>,
    user_id: &str,
    image: myelin_federation::web_fetch::Fetched,
) -> Option<Map<String, Value>> {
    let content_type = image
        .content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| t.starts_with("image/"))?;
    let size = image.body.len();
    let dimensions = crate::media::image_dimensions(&image.body);
    let stored = async {
        let mut writer = media.begin_upload().await?;
        writer.write(&image.body).await?;
        media
            .upload(user_id, Some(&content_type), None, writer)
            .await
    }
    .await;
    let mxc = match stored {
        Ok(mxc) => mxc,
        Err(err) => {
            tracing::info!(url = %image.url, error = %err, "preview image not stored");
            return None;
        }
    };
    let mut props = Map::new();
    props.insert("og:image".to_owned(), Value::String(mxc.to_string()));
    props.insert("og:image:type".to_owned(), Value::String(content_type));
    props.insert("matrix:image:size".to_owned(), Value::from(size));
    if let Some((width, height)) = dimensions {
        props.insert("og:image:width".to_owned(), Value::from(width));
        props.insert("og:image:height".to_owned(), Value::from(height));
    }
    Some(props)
}

/// The OpenGraph properties of an HTML page (`<meta property="og:..." content="...">`, first
/// one of each name wins), with `og:title` from `<title>` and `og:description` from
/// `<meta name="description">` when the page has none. Of the image properties only `og:image`
/// (the image's URL as the page gives it) is kept: the others describe that remote image, and
/// the preview describes the stored copy instead (see the module documentation).
pub fn opengraph(html: &str) -> Map<String, Value> {
    let mut props = Map::new();
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("<meta") {
        let start = pos + found + "<meta".len();
        let Some(end) = tag_end(html, start) else {
            break;
        };
        let attrs = attributes(&html[start..end]);
        let get = |name: &str| {
            attrs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(content) = get("content") {
            let key = get("property").or_else(|| get("name")).unwrap_or_default();
            let key = key.to_ascii_lowercase();
            if key.starts_with("og:") && (key == "og:image" || !key.starts_with("og:image")) {
                props
                    .entry(key)
                    .or_insert_with(|| Value::String(clip(content)));
            } else if key == "description" && description.is_none() {
                description = Some(clip(content));
            }
        }
        pos = end;
    }
    if !props.contains_key("og:title")
        && let Some(open) = lower.find("<title")
        && let Some(open_end) = tag_end(html, open + "<title".len())
        && let Some(close) = lower[open_end..].find("</title")
    {
        let title = decode_entities(html[open_end + 1..open_end + close].trim());
        if !title.is_empty() {
            props.insert("og:title".to_owned(), Value::String(clip(&title)));
        }
    }
    if !props.contains_key("og:description")
        && let Some(description) = description
    {
        props.insert("og:description".to_owned(), Value::String(description));
    }
    props
}

fn clip(value: &str) -> String {
    value.chars().take(MAX_VALUE_CHARS).collect()
}

/// The index of the `>` closing a tag whose attributes start at `from` (quotes respected).
fn tag_end(html: &str, from: usize) -> Option<usize> {
    let mut quote = None;
    for (i, c) in html.get(from..)?.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(from + i),
            _ => {}
        }
    }
    None
}

/// A tag's attributes as lowercase names and entity-decoded values.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag.trim_start();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, remaining) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let inner = &after[1..];
                    let close = inner.find(q).unwrap_or(inner.len());
                    (&inner[..close], inner.get(close + 1..).unwrap_or_default())
                }
                _ => {
                    let close = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            value = decode_entities(raw);
            rest = remaining.trim_start();
        } else if name.is_empty() {
            // A lone `/` or other stray character.
            rest = rest.get(1..).unwrap_or_default().trim_start();
            continue;
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
    out
}

/// Decodes the character references pages commonly use in attribute values and titles.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // A reference is short: look for its `;` in the next few characters only.
        let Some(semi) = rest
            .char_indices()
            .take(12)
            .find(|(_, c)| *c == ';')
            .map(|(i, _)| i)
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_properties_with_fallbacks() {
        let html = r#"<!doctype html><html><head>
            <TITLE>Fallback &amp; title</TITLE>
            <meta name="description" content="Plain description">
            <meta property="og:description" content='The &quot;real&quot; one &#x263A;'>
            <meta property="og:site_name" content=Unquoted />
            <meta property="og:description" content="second, ignored">
            <meta property="og:image" content="https://example.org/x.png">
            <meta content="reversed order" property="og:type">
            <meta charset="utf-8">
        </head></html>"#;
        let props = opengraph(html);
        assert_eq!(props["og:title"], "Fallback & title");
        assert_eq!(props["og:description"], "The \"real\" one \u{263A}");
        assert_eq!(props["og:site_name"], "Unquoted");
        assert_eq!(props["og:type"], "reversed order");
        assert_eq!(props["og:image"], "https://example.org/x.png");
        assert_eq!(props.len(), 5, "{props:?}");

        let only_title = opengraph("<title>Hi</title><meta name=description content=\"D\">");
        assert_eq!(only_title["og:title"], "Hi");
        assert_eq!(only_title["og:description"], "D");
        // Broken markup gives what it can, never a panic.
        for broken in [
            "<meta",
            "<meta property=\"og:title",
            "<title>",
            "<meta =>",
            "<meta é=é content=\"&é;&#xFFFFFFFF;\" property=og:x>",
            "<title>&ééééééééééééé</title>",
        ] {
            let _ = opengraph(broken);
        }
        assert_eq!(
            decode_entities("a &unknown; b & c &#65;"),
            "a &unknown; b & c A"
        );
    }
}
