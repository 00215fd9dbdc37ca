//! The service layer's error: what went wrong in the spec's terms (each variant is one errcode),
//! without HTTP. The API layer maps it to a status and body in one place.

/// A failure the client should hear about, or an internal one it should not see details of.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Forbidden(String),
    /// An invite the invitee's invite rules block (MSC4155; 403 `M_INVITE_BLOCKED`).
    #[error("{0}")]
    InviteBlocked(String),
    #[error("{0}")]
    UserDeactivated(String),
    #[error("User ID already taken")]
    UserInUse,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    NotFound(String),
    /// A room alias that already exists (409 `M_UNKNOWN`, as the spec gives it).
    #[error("{0}")]
    AliasInUse(String),
    /// `createRoom` with an alias that already exists (400 `M_ROOM_IN_USE`).
    #[error("{0}")]
    RoomInUse(String),
    /// A canonical alias that is invalid or does not point to the room (400 `M_BAD_ALIAS`).
    #[error("{0}")]
    BadAlias(String),
    /// Account data of a type the server manages (405 `M_BAD_JSON`).
    #[error("{0}")]
    ServerManagedAccountData(String),
    /// A 400 the spec gives no more specific code (`M_UNKNOWN`).
    #[error("{0}")]
    Unknown(String),
    /// The event would be larger than the spec allows (`M_TOO_LARGE`).
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    /// A restricted join no local user can authorise (`M_UNABLE_TO_AUTHORISE_JOIN`).
    #[error("{0}")]
    UnableToAuthoriseJoin(String),
    /// A restricted join this server cannot judge: it is in none of the rooms the `allow`
    /// conditions name (`M_UNABLE_TO_GRANT_JOIN`, 400: the joining server should try another).
    #[error("{0}")]
    UnableToGrantJoin(String),
    /// A room version one of the two servers does not support, over federation: a
    /// `make_join`/`make_knock` from a server without the room's version, or an invite to a
    /// room of a version this server lacks (`M_INCOMPATIBLE_ROOM_VERSION`, 400, with it).
    #[error("Room version {room_version} is not supported by both servers")]
    IncompatibleRoomVersion { room_version: String },
    /// Too many requests (`M_LIMIT_EXCEEDED`, 429).
    #[error("Too many requests; retry in {retry_after_ms} ms")]
    LimitExceeded { retry_after_ms: u64 },
    /// A signature that does not verify (`M_INVALID_SIGNATURE`, 400).
    #[error("{0}")]
    InvalidSignature(String),
    /// Keys for a backup version that is not the current one (`M_WRONG_ROOM_KEYS_VERSION`, 403).
    #[error("This is not the current backup version")]
    WrongRoomKeysVersion { current_version: Option<String> },
    /// A pending asynchronous upload that did not arrive in time (504 `M_NOT_YET_UPLOADED`).
    #[error("{0}")]
    NotYetUploaded(String),
    /// An upload to a media id that already has content (409 `M_CANNOT_OVERWRITE_MEDIA`).
    #[error("{0}")]
    CannotOverwriteMedia(String),
    /// Another server's media larger than this server fetches (502 `M_TOO_LARGE`).
    #[error("{0}")]
    RemoteTooLarge(String),
    /// Something the server had to fetch for the request failed (502 `M_UNKNOWN`).
    #[error("{0}")]
    BadGateway(String),
    /// A federation request without a valid X-Matrix signature (401 `M_UNAUTHORIZED`).
    #[error("{0}")]
    Unauthorized(String),
    /// A body that is not JSON (400 `M_NOT_JSON`).
    #[error("{0}")]
    NotJson(String),
    #[error("Missing access token")]
    MissingToken,
    #[error("Unknown or expired access token")]
    UnknownToken { soft_logout: bool },
    #[error("{0}")]
    UnrecognisedNonce(String),
    /// User-interactive authentication is needed (or a stage failed): a 401 with the flows.
    #[error("Additional authentication required")]
    Uia(Box<crate::uia::UiaChallenge>),
    /// Another server's Matrix error on a request made for the client (a join through a
    /// resident), passed on with its status, errcode and fields.
    #[error("{message}")]
    Remote {
        status: u16,
        errcode: String,
        message: String,
        body: serde_json::Map<String, serde_json::Value>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<myelin_store::StoreError> for Error {
    fn from(err: myelin_store::StoreError) -> Self {
        Error::Internal(err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
