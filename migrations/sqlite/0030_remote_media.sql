-- Other servers' media cached here: what a local user downloaded through this server, fetched
-- once over federation and then answered from the cache. Content is stored like local media
-- (the same content-addressed files, the same reference counting by hash: a file is deleted
-- only when no row of media, media_thumbnails, remote_media or remote_media_thumbnails names
-- it).
CREATE TABLE remote_media (
    -- The server of the mxc:// URI and its media id, as the URI gives them.
    origin       TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT,
    -- As the origin's Content-Disposition gave it (any Unicode).
    filename     TEXT,
    fetched_ts   INTEGER NOT NULL,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX remote_media_sha256 ON remote_media (sha256);
CREATE INDEX remote_media_fetched ON remote_media (fetched_ts);

-- Thumbnails of other servers' media, as their origin made them (asked for by size and
-- method, and kept under what was asked: a later identical request finds them).
CREATE TABLE remote_media_thumbnails (
    origin       TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    req_width    INTEGER NOT NULL,
    req_height   INTEGER NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    fetched_ts   INTEGER NOT NULL,
    PRIMARY KEY (origin, media_id, req_width, req_height, method)
);
CREATE INDEX remote_media_thumbnails_sha256 ON remote_media_thumbnails (sha256);
CREATE INDEX remote_media_thumbnails_fetched ON remote_media_thumbnails (fetched_ts);
