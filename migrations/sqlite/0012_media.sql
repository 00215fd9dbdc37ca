-- Media repository: local media ids and the thumbnails made of them. Content lives on the
-- filesystem under the data directory, named by its SHA-256 (so identical uploads share one
-- file); a file is deleted only when no row here names its hash.
CREATE TABLE media (
    -- The mxc:// id's path part ([A-Za-z0-9_-], chosen by the server).
    media_id     TEXT PRIMARY KEY,
    -- Who created it (uploaded it, or reserved it with /create).
    user_id      TEXT NOT NULL,
    -- NULL while an asynchronous upload is pending; then the content's SHA-256, lowercase hex.
    sha256       TEXT,
    size         INTEGER,
    content_type TEXT,
    -- As the uploader gave it (any Unicode).
    filename     TEXT,
    created_ts   INTEGER NOT NULL,
    -- A pending id nobody uploaded to by then is dead (NULL once uploaded).
    expires_ts   INTEGER,
    uploaded_ts  INTEGER
);
CREATE INDEX media_sha256 ON media (sha256);
-- Pending uploads per user (the per-user limit) and deletion by age.
CREATE INDEX media_user_pending ON media (user_id, expires_ts);
CREATE INDEX media_created ON media (created_ts);

-- Thumbnails, made once per (media, requested size, method) and kept; their content is stored
-- like media content (same directory, same naming, same reference counting by hash).
CREATE TABLE media_thumbnails (
    media_id     TEXT NOT NULL REFERENCES media (media_id) ON DELETE CASCADE,
    -- The size and method asked for (what a later identical request looks up).
    req_width    INTEGER NOT NULL,
    req_height   INTEGER NOT NULL,
    method       TEXT NOT NULL,
    -- What was made.
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    created_ts   INTEGER NOT NULL,
    PRIMARY KEY (media_id, req_width, req_height, method)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);
