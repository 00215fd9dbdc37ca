-- The account-key look-ups that queries make per room member: "is this member's key unverified
-- or erased" (left out of member lists, presence and device lists) and "which account name is
-- this member's verified key for" (how clients see them). Nearly every row of `account_keys` is
-- a local account's key (state 'local'), which neither look-up wants: these indexes hold only
-- the remote keys each one asks about, so a member costs one probe of a small index. Without
-- them PostgreSQL, which estimates one member per room, scanned the whole table for each member
-- (presence's room mates at every sync: 0.35 ms against 0.05 ms before account keys, with ~100
-- local accounts; it grows with the number of accounts).
CREATE INDEX account_keys_unnamed_member ON account_keys (user_id) WHERE state IN ('unverified', 'erased');
CREATE INDEX account_keys_verified_member ON account_keys (user_id) WHERE state = 'verified';
