//! The media scenarios (issue 18): concurrent uploads and authenticated downloads of 1 MiB
//! files (throughput), and thumbnails of a 4000×3000 JPEG at sizes neither server has made yet.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use crate::client::{Body, Mxc};
use crate::stats::{Filler, round3, summarize};
use crate::{Args, Ctx};

const MIB: f64 = 1024.0 * 1024.0;
const OCTET_STREAM: &str = "application/octet-stream";
/// The source image of the thumbnail scenario: a 12-megapixel photo's size.
pub const PHOTO_SIZE: (u32, u32) = (4000, 3000);
/// How long the thumbnail scenario waits after its upload: Myelin makes its five pre-generated
/// sizes in the background after answering the upload, and that work should not overlap the
/// timed requests (Synapse makes them before answering).
const AFTER_UPLOAD: Duration = Duration::from_secs(5);

/// The content of file `index` of a run: `size` deterministic pseudo-random bytes.
fn content(index: usize, size: usize) -> Bytes {
    Bytes::from(Filler::new(0x6d65_6469_6100_0000 + index as u64).bytes(size))
}

/// `media-upload`: `--clients` users (default 16 in run-comparison) each uploading
/// `--count` files (default 8) of `--file-kib` KiB (default 1024) one after another, all at
/// once, through `POST /_matrix/media/v3/upload` as `application/octet-stream`. MiB/s = all
/// bytes / wall time. Afterwards (untimed) each client's first file is downloaded and compared.
pub async fn media_upload(ctx: &Ctx, args: &Args) -> Result<Value> {
    let per_client = args.count.unwrap_or(8);
    let size = args.file_kib * 1024;
    let users = ctx
        .users("mu", args.clients, args.setup_concurrency)
        .await?;
    let files: Vec<Vec<Bytes>> = (0..args.clients)
        .map(|c| {
            (0..per_client)
                .map(|k| content(c * per_client + k, size))
                .collect()
        })
        .collect();
    // Warm-up, not timed: one upload (connections, the upload path's first use).
    ctx.server
        .upload_media(
            &users[0],
            content(usize::MAX / 2, size),
            OCTET_STREAM,
            "warm-up",
        )
        .await?;

    let start = Instant::now();
    let tasks = users.iter().zip(&files).map(|(user, mine)| async move {
        let mut done = Vec::with_capacity(mine.len());
        for (k, file) in mine.iter().enumerate() {
            if ctx.timed_out() {
                break;
            }
            let t = Instant::now();
            let mxc = ctx
                .server
                .upload_media(user, file.clone(), OCTET_STREAM, &format!("file-{k}.bin"))
                .await?;
            done.push((mxc, t.elapsed()));
        }
        anyhow::Ok(done)
    });
    let per_task = futures::future::try_join_all(tasks).await?;
    let wall = start.elapsed().as_secs_f64();

    let lat: Vec<Duration> = per_task.iter().flatten().map(|(_, d)| *d).collect();
    let uploaded = lat.len();
    for ((user, mine), done) in users.iter().zip(&files).zip(&per_task) {
        if let Some((mxc, _)) = done.first() {
            let body = ctx.server.download_media(user, mxc).await?;
            same_content(&body, &mine[0], mxc)?;
        }
    }
    let total = (uploaded * size) as f64;
    Ok(json!({
        "clients": args.clients,
        "per_client": per_client,
        "file_bytes": size,
        "files": uploaded,
        "total_mib": round3(total / MIB),
        "wall_s": round3(wall),
        "mib_per_second": round3(total / MIB / wall),
        "latency": summarize(&lat),
        "verified_files": per_task.iter().filter(|d| !d.is_empty()).count(),
    }))
}

/// `media-download`: `--files` files (default `--clients`) of `--file-kib` KiB uploaded and
/// each downloaded once and compared (untimed); then `--clients` users each download
/// `--count` of them (default 8) one after another, all at once, through the authenticated
/// `GET /_matrix/client/v1/media/download/{server}/{id}`, reading every body whole and
/// comparing it with what was uploaded. MiB/s = all bytes / wall time.
pub async fn media_download(ctx: &Ctx, args: &Args) -> Result<Value> {
    let per_client = args.count.unwrap_or(8);
    let size = args.file_kib * 1024;
    let n_files = args.files.unwrap_or(args.clients).max(1);
    let users = ctx
        .users("md", args.clients, args.setup_concurrency)
        .await?;
    let uploader = &users[0];
    let files: Vec<(Mxc, Bytes)> = stream::iter(0..n_files)
        .map(|i| async move {
            let file = content(i, size);
            let mxc = ctx
                .server
                .upload_media(
                    uploader,
                    file.clone(),
                    OCTET_STREAM,
                    &format!("file-{i}.bin"),
                )
                .await?;
            anyhow::Ok((mxc, file))
        })
        .buffered(args.setup_concurrency.max(1))
        .try_collect()
        .await?;
    for (mxc, file) in &files {
        same_content(&ctx.server.download_media(uploader, mxc).await?, file, mxc)?;
    }

    let files = Arc::new(files);
    let start = Instant::now();
    let tasks = users.iter().enumerate().map(|(c, user)| {
        let files = files.clone();
        async move {
            let mut lat = Vec::with_capacity(per_client);
            for k in 0..per_client {
                if ctx.timed_out() {
                    break;
                }
                let (mxc, file) = &files[(c * per_client + k) % files.len()];
                let t = Instant::now();
                let body = ctx.server.download_media(user, mxc).await?;
                lat.push(t.elapsed());
                same_content(&body, file, mxc)?;
            }
            anyhow::Ok(lat)
        }
    });
    let per_task = futures::future::try_join_all(tasks).await?;
    let wall = start.elapsed().as_secs_f64();
    let lat: Vec<Duration> = per_task.into_iter().flatten().collect();
    let total = (lat.len() * size) as f64;
    Ok(json!({
        "clients": args.clients,
        "per_client": per_client,
        "file_bytes": size,
        "distinct_files": files.len(),
        "downloads": lat.len(),
        "total_mib": round3(total / MIB),
        "wall_s": round3(wall),
        "mib_per_second": round3(total / MIB / wall),
        "latency": summarize(&lat),
    }))
}

fn same_content(body: &Body, expected: &[u8], mxc: &Mxc) -> Result<()> {
    if body.bytes.as_ref() != expected {
        bail!(
            "{}/{}: downloaded {} bytes that differ from the {} uploaded",
            mxc.server,
            mxc.media_id,
            body.bytes.len(),
            expected.len()
        );
    }
    Ok(())
}

/// A `width`×`height` JPEG (quality 90) that looks enough like a photo to compress like one:
/// smooth colour gradients and shapes with a little pixel noise. Deterministic.
pub fn test_photo(width: u32, height: u32) -> Result<Vec<u8>> {
    let mut noise = Filler::new(0x7068_6f74_6f00_0000);
    let mut img = image::RgbImage::new(width, height);
    let (w, h) = (f64::from(width), f64::from(height));
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (fx, fy) = (f64::from(x) / w, f64::from(y) / h);
        let ring = ((fx - 0.6).hypot(fy - 0.4) * 40.0).sin() * 0.5 + 0.5;
        let n = noise.next_u64();
        let jitter = |shift: u32| ((n >> shift) & 0x0f) as f64 - 7.5;
        let r = 40.0 + 160.0 * fx + 40.0 * ring + jitter(0);
        let g = 60.0 + 120.0 * fy + 50.0 * (fx * 9.0).sin() + jitter(8);
        let b = 90.0 + 100.0 * ring * (1.0 - fy) + jitter(16);
        *px = image::Rgb([r, g, b].map(|c| c.clamp(0.0, 255.0) as u8));
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .context("encoding the test photo")?;
    Ok(out)
}

/// The width and height an image's header declares (PNG, JPEG, ...), and its format.
pub fn image_dimensions(bytes: &[u8]) -> Result<(u32, u32, image::ImageFormat)> {
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let format = reader.format().context("not an image format we know")?;
    let (w, h) = reader.into_dimensions()?;
    Ok((w, h, format))
}

/// Whether a thumbnail of `got` pixels is what `method=scale` into a `box_side` square makes
/// of an original of `orig`: the long side fills the box, the other keeps the aspect ratio
/// (servers round it differently, so within one pixel).
pub fn is_scaled_thumbnail(orig: (u32, u32), box_side: u32, got: (u32, u32)) -> bool {
    let (long, short) = (orig.0.max(orig.1), orig.0.min(orig.1));
    let want_short = f64::from(box_side) * f64::from(short) / f64::from(long);
    let (got_long, got_short) = if orig.0 >= orig.1 {
        (got.0, got.1)
    } else {
        (got.1, got.0)
    };
    got_long == box_side && (f64::from(got_short) - want_short).abs() <= 1.0
}

/// `thumbnail`: one 4000×3000 JPEG uploaded (the upload's time reported), one untimed
/// thumbnail of a pre-generated size (320×240 scale), a pause for background work, then
/// `--reps` timed `GET /_matrix/client/v1/media/thumbnail/...?method=scale` into a
/// `W`×`W` box with W = `--thumb-width` + i: a size neither server has made yet, so every
/// request decodes the original and makes a new thumbnail. Each answer must be an image/*
/// of W × 3/4 W pixels.
pub async fn thumbnail(ctx: &Ctx, args: &Args) -> Result<Value> {
    let user = ctx.user("t").await?;
    let (ow, oh) = PHOTO_SIZE;
    let photo = tokio::task::spawn_blocking(move || test_photo(ow, oh)).await??;
    let photo_bytes = photo.len();
    let t = Instant::now();
    let mxc = ctx
        .server
        .upload_media(&user, Bytes::from(photo), "image/jpeg", "photo.jpg")
        .await?;
    let upload_ms = t.elapsed().as_secs_f64() * 1000.0;
    let check = |body: &Body, box_side: Option<u32>| -> Result<(u32, u32)> {
        let content_type = body.content_type.as_deref().unwrap_or("");
        if !content_type.starts_with("image/") {
            bail!("thumbnail has Content-Type {content_type:?}");
        }
        let (w, h, _) = image_dimensions(&body.bytes).context("thumbnail is not an image")?;
        if let Some(side) = box_side
            && !is_scaled_thumbnail((ow, oh), side, (w, h))
        {
            bail!("thumbnail into a {side}×{side} box is {w}×{h}");
        }
        Ok((w, h))
    };
    let warm = ctx.server.thumbnail(&user, &mxc, 320, 240, "scale").await?;
    check(&warm, None)?;
    tokio::time::sleep(AFTER_UPLOAD).await;

    let deadline = crate::keys::timed_deadline(args);
    let mut lat = Vec::with_capacity(args.reps);
    let mut sizes = Vec::with_capacity(args.reps);
    let mut content_type = None;
    for i in 0..args.reps {
        if Instant::now() >= deadline {
            break;
        }
        let side = args.thumb_width + i as u32;
        let t = Instant::now();
        let body = ctx
            .server
            .thumbnail(&user, &mxc, side, side, "scale")
            .await?;
        lat.push(t.elapsed());
        let (w, h) = check(&body, Some(side))?;
        sizes.push(json!([w, h, body.bytes.len()]));
        content_type = body.content_type;
    }
    if lat.is_empty() {
        bail!("no timed thumbnail within --time-limit-secs");
    }
    Ok(json!({
        "source": format!("{ow}x{oh} JPEG"),
        "source_bytes": photo_bytes,
        "upload_ms": round3(upload_ms),
        "reps": args.reps,
        "first_box": args.thumb_width,
        "content_type": content_type,
        "thumbnails": sizes,
        "latency": summarize(&lat),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_photo_is_a_jpeg_of_the_size_asked() {
        let photo = test_photo(64, 48).unwrap();
        let (w, h, format) = image_dimensions(&photo).unwrap();
        assert_eq!((w, h, format), (64, 48, image::ImageFormat::Jpeg));
        assert_eq!(photo, test_photo(64, 48).unwrap());
    }

    #[test]
    fn scaled_thumbnails_fill_the_box_on_the_long_side() {
        // 4000×3000 into 400×400: 400×300; rounding either way of 321×240.75 is fine.
        assert!(is_scaled_thumbnail((4000, 3000), 400, (400, 300)));
        assert!(is_scaled_thumbnail((4000, 3000), 321, (321, 240)));
        assert!(is_scaled_thumbnail((4000, 3000), 321, (321, 241)));
        assert!(!is_scaled_thumbnail((4000, 3000), 400, (320, 240)));
        assert!(!is_scaled_thumbnail((4000, 3000), 400, (400, 400)));
        assert!(is_scaled_thumbnail((3000, 4000), 400, (300, 400)));
    }

    #[test]
    fn file_contents_differ_and_repeat() {
        assert_eq!(content(3, 1024), content(3, 1024));
        assert_ne!(content(3, 1024), content(4, 1024));
        assert_eq!(content(0, 1 << 20).len(), 1 << 20);
    }
}
