//! Profiles: display name and avatar URL of local users, read by anyone and changed by their
//! owner; those of other servers' users asked of their server (`/query/profile`) when a
//! client reads them.
//!
//! Changing a profile here only stores it, with the fan-out that follows journaled in the same
//! transaction: a new `m.room.member` event in each joined room, which the rooms area sends
//! (`Services::set_displayname`, `crate::operations`).

use std::sync::Arc;

use myelin_store::{NewOperation, ProfileField, ProfileRow, Store};
use ruma::{OwnedServerName, UserId, api::federation::query::get_profile_information};
use serde_json::Value;

use crate::{Error, Result, accounts::AuthedUser};

/// Longest display name accepted, in bytes (Synapse's limit).
const MAX_DISPLAYNAME_LEN: usize = 256;
/// Longest avatar URL accepted, in bytes (Synapse's limit).
const MAX_AVATAR_URL_LEN: usize = 1000;
/// The largest `/query/profile` answer read.
const MAX_REMOTE_PROFILE_BYTES: usize = 64 * 1024;

/// The profiles area.
#[derive(Debug)]
pub struct Profiles {
    store: Store,
    server_name: OwnedServerName,
    federation: Arc<crate::federation::Outbound>,
}

impl Profiles {
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        federation: Arc<crate::federation::Outbound>,
    ) -> Self {
        Profiles {
            store,
            server_name,
            federation,
        }
    }

    /// A user's profile, for a client: a local user's, or one of another server's asked of
    /// that server (its `M_NOT_FOUND` passed on; unreachable: 502).
    pub async fn profile(&self, user_id: &UserId) -> Result<ProfileRow> {
        if user_id.server_name() == self.server_name {
            return self.local_profile(user_id).await;
        }
        let answer = self
            .federation
            .send_limited(
                user_id.server_name(),
                get_profile_information::v1::Request::new(user_id.to_owned()),
                MAX_REMOTE_PROFILE_BYTES,
            )
            .await
            .map_err(|err| crate::remote_membership::remote_error(user_id.server_name(), err))?;
        let text = |field: &str| {
            answer
                .data
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(ProfileRow {
            displayname: text("displayname"),
            avatar_url: text("avatar_url"),
        })
    }

    /// A local user's profile (what `/query/profile` answers other servers: never relayed).
    /// Unknown users are `M_NOT_FOUND`.
    pub async fn local_profile(&self, user_id: &UserId) -> Result<ProfileRow> {
        let not_found = || Error::NotFound("Profile was not found".to_owned());
        if user_id.server_name() != self.server_name {
            return Err(not_found());
        }
        if self
            .store
            .user_by_localpart(user_id.localpart())
            .await?
            .is_none()
        {
            return Err(not_found());
        }
        Ok(self
            .store
            .profile(user_id.as_str())
            .await?
            .unwrap_or_default())
    }

    fn ensure_owner(user: &AuthedUser, target: &UserId) -> Result<()> {
        if user.user_id != target {
            return Err(Error::Forbidden(
                "Cannot change another user's profile".to_owned(),
            ));
        }
        Ok(())
    }

    /// Sets (or, with `None`, removes) the user's display name, journaling `fan_out` with it;
    /// returns its id.
    pub async fn set_displayname(
        &self,
        user: &AuthedUser,
        target: &UserId,
        displayname: Option<&str>,
        fan_out: &NewOperation<'_>,
    ) -> Result<i64> {
        Self::ensure_owner(user, target)?;
        if displayname.is_some_and(|name| name.len() > MAX_DISPLAYNAME_LEN) {
            return Err(Error::BadJson(format!(
                "Display name is longer than {MAX_DISPLAYNAME_LEN} bytes"
            )));
        }
        Ok(self
            .store
            .set_profile_with_operation(
                target.as_str(),
                ProfileField::Displayname(displayname),
                fan_out,
            )
            .await?)
    }

    /// Sets (or, with `None`, removes) the user's avatar URL, journaling `fan_out` with it;
    /// returns its id.
    pub async fn set_avatar_url(
        &self,
        user: &AuthedUser,
        target: &UserId,
        avatar_url: Option<&str>,
        fan_out: &NewOperation<'_>,
    ) -> Result<i64> {
        Self::ensure_owner(user, target)?;
        if avatar_url.is_some_and(|url| url.len() > MAX_AVATAR_URL_LEN) {
            return Err(Error::BadJson(format!(
                "Avatar URL is longer than {MAX_AVATAR_URL_LEN} bytes"
            )));
        }
        Ok(self
            .store
            .set_profile_with_operation(
                target.as_str(),
                ProfileField::AvatarUrl(avatar_url),
                fan_out,
            )
            .await?)
    }
}
