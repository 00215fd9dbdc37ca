//! The media part of the matrix-sdk flow: an avatar (upload, the profile names it, another user
//! downloads the same bytes) and an image message (sent with `send_attachment`, found in the
//! other user's sync, downloaded whole and as thumbnails). The SDK downloads through the
//! authenticated `/_matrix/client/v1/media` endpoints because the server advertises v1.11; the
//! thumbnail is also asked for once through the raw request, to see its content type.

use anyhow::{Context, Result, ensure};
use matrix_sdk::Room;
use matrix_sdk::attachment::{AttachmentConfig, AttachmentInfo, BaseImageInfo};
use matrix_sdk::media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings};
use matrix_sdk::ruma::api::client::authenticated_media::{get_content, get_content_thumbnail};
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::media::Method;
use matrix_sdk::ruma::{OwnedUserId, UInt};

use crate::png::{gradient_png, image_size};
use crate::{User, step};

/// The image message's size: not square, so a thumbnail that loses the aspect ratio shows.
const IMAGE_WIDTH: u32 = 64;
const IMAGE_HEIGHT: u32 = 48;

fn plain(source: MediaSource, format: MediaFormat) -> MediaRequestParameters {
    MediaRequestParameters { source, format }
}

pub async fn run(
    alice: &mut User,
    bob: &mut User,
    room: &Room,
    alice_id: &OwnedUserId,
) -> Result<()> {
    avatar(alice, bob, alice_id).await?;
    image_message(bob, room).await
}

async fn avatar(alice: &User, bob: &User, alice_id: &OwnedUserId) -> Result<()> {
    let avatar = gradient_png(32, 32);
    let mxc = alice
        .client
        .account()
        .upload_avatar(&mime::IMAGE_PNG, avatar.clone())
        .await
        .context("alice: POST /_matrix/media/v3/upload then PUT /profile/{user}/avatar_url")?;
    step(&format!(
        "alice uploads an avatar ({} bytes) as {mxc}",
        avatar.len()
    ));

    let own = alice
        .client
        .account()
        .get_avatar_url()
        .await
        .context("alice: GET /profile/{user}/avatar_url")?;
    ensure!(
        own.as_ref() == Some(&mxc),
        "alice: her avatar_url reads back as {own:?}, not {mxc}"
    );
    let profile = bob
        .client
        .account()
        .fetch_user_profile_of(alice_id)
        .await
        .context("bob: GET /profile/{alice}")?;
    let named = profile
        .get("avatar_url")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    ensure!(
        named.as_deref() == Some(mxc.as_str()),
        "bob: alice's profile names avatar_url {named:?}, not {mxc}"
    );
    step("alice's profile names the avatar, for her and for bob");

    let downloaded = bob
        .client
        .media()
        .get_media_content(
            &plain(MediaSource::Plain(mxc.clone()), MediaFormat::File),
            false,
        )
        .await
        .with_context(|| format!("bob: GET /_matrix/client/v1/media/download for {mxc}"))?;
    ensure!(
        downloaded == avatar,
        "bob: the avatar downloaded as {} bytes that differ from the {} uploaded",
        downloaded.len(),
        avatar.len()
    );
    step("bob downloads alice's avatar: the same bytes");
    Ok(())
}

async fn image_message(bob: &mut User, room: &Room) -> Result<()> {
    let image = gradient_png(IMAGE_WIDTH, IMAGE_HEIGHT);
    let info = BaseImageInfo {
        width: Some(UInt::from(IMAGE_WIDTH)),
        height: Some(UInt::from(IMAGE_HEIGHT)),
        size: Some(UInt::try_from(image.len())?),
        ..Default::default()
    };
    let config = AttachmentConfig::new().info(AttachmentInfo::Image(info));
    let sent = room
        .send_attachment("gradient.png", &mime::IMAGE_PNG, image.clone(), config)
        .await
        .context(
            "alice: send_attachment (POST /_matrix/media/v3/upload, then PUT /send/m.room.message)",
        )?;
    let event_id = sent.event_id;
    step(&format!(
        "alice sends a {IMAGE_WIDTH}x{IMAGE_HEIGHT} PNG ({} bytes) as {event_id}",
        image.len()
    ));

    let room_id = room.room_id().to_owned();
    bob.sync_until("alice's image message", |u| {
        u.seen
            .lock()
            .unwrap()
            .images
            .iter()
            .any(|(r, e, _)| *r == room_id && *e == event_id)
    })
    .await?;
    let content = bob
        .seen
        .lock()
        .unwrap()
        .images
        .iter()
        .find(|(_, e, _)| *e == event_id)
        .map(|(_, _, c)| c.clone())
        .context("bob: the image event vanished")?;
    let MediaSource::Plain(mxc) = content.source.clone() else {
        anyhow::bail!(
            "bob: the image in an unencrypted room came with an encrypted source: {:?}",
            content.source
        );
    };
    let mimetype = content.info.as_ref().and_then(|i| i.mimetype.clone());
    ensure!(
        mimetype.as_deref() == Some("image/png"),
        "bob: the image event's info.mimetype is {mimetype:?}"
    );
    ensure!(
        content.body == "gradient.png",
        "bob: the image event's body is {:?}",
        content.body
    );
    step(&format!("bob's sync shows the image message with {mxc}"));

    let media = bob.client.media();
    let file = media
        .get_media_content(&plain(content.source.clone(), MediaFormat::File), false)
        .await
        .with_context(|| format!("bob: GET /_matrix/client/v1/media/download for {mxc}"))?;
    ensure!(
        file == image,
        "bob: the image downloaded as {} bytes that differ from the {} sent",
        file.len(),
        image.len()
    );
    let raw = bob
        .client
        .send(get_content::v1::Request::from_uri(&mxc)?)
        .await
        .with_context(|| format!("bob: GET /_matrix/client/v1/media/download for {mxc} (raw)"))?;
    ensure!(
        raw.content_type.as_deref() == Some("image/png"),
        "bob: the download's Content-Type is {:?}, not image/png",
        raw.content_type
    );
    step("bob downloads the image: the same bytes, Content-Type image/png");

    // Scale into 32x32: fits within it, the 4:3 aspect kept (32x24 give or take rounding).
    let settings = MediaThumbnailSettings::new(UInt::from(32u32), UInt::from(32u32));
    let thumbnail = media
        .get_media_content(
            &plain(content.source.clone(), MediaFormat::Thumbnail(settings)),
            false,
        )
        .await
        .with_context(|| {
            format!("bob: GET /_matrix/client/v1/media/thumbnail for {mxc} 32x32 scale")
        })?;
    let (format, width, height) = image_size(&thumbnail).with_context(|| {
        format!(
            "bob: the 32x32 thumbnail is no PNG or JPEG (starts {:02x?})",
            &thumbnail[..thumbnail.len().min(8)]
        )
    })?;
    ensure!(
        width <= 32 && height <= 32 && width > 0 && height > 0,
        "bob: the 32x32 scale thumbnail is {width}x{height}"
    );
    ensure!(
        (width * IMAGE_HEIGHT).abs_diff(height * IMAGE_WIDTH) <= IMAGE_WIDTH.max(IMAGE_HEIGHT),
        "bob: the scale thumbnail {width}x{height} lost the {IMAGE_WIDTH}x{IMAGE_HEIGHT} aspect ratio"
    );
    step(&format!(
        "bob gets a 32x32 scale thumbnail: a {format} of {width}x{height}"
    ));

    // Crop to 16x16, through the raw request to see the content type too.
    let mut request =
        get_content_thumbnail::v1::Request::from_uri(&mxc, UInt::from(16u32), UInt::from(16u32))?;
    request.method = Some(Method::Crop);
    let cropped = bob.client.send(request).await.with_context(|| {
        format!("bob: GET /_matrix/client/v1/media/thumbnail for {mxc} 16x16 crop")
    })?;
    let (format, width, height) =
        image_size(&cropped.file).context("bob: the 16x16 crop thumbnail is no PNG or JPEG")?;
    let expected_type = format!("image/{format}");
    ensure!(
        cropped.content_type.as_deref() == Some(expected_type.as_str()),
        "bob: the crop thumbnail is a {format} served as {:?}",
        cropped.content_type
    );
    ensure!(
        (width, height) == (16, 16),
        "bob: the 16x16 crop thumbnail is {width}x{height}"
    );
    step(&format!(
        "bob gets a 16x16 crop thumbnail: a {format} of exactly 16x16, served as {expected_type}"
    ));
    Ok(())
}
